"""GDAS (Dong & Yang, CVPR 2019): first-order grad_alpha L_val through the straight-through
Gumbel sample on the single-path network; the weight step first, as GDAS's code orders them
(search-cifar.py). 240 epochs in the paper."""

from __future__ import annotations

from jnas.algorithms.base import Algorithm, register
from jnas.algorithms.darts import first_order

GDAS = register(
    Algorithm(
        name="gdas",
        order=("weights", "arch"),
        relaxation="gdas",
        arch_gradient=first_order,
        defaults={"epochs": 240},
        doc=__doc__,
    )
)
