"""ASAP (Noy et al., AISTATS 2020): first-order DARTS steps on the annealed, pruned softmax
(`jnas.relax.asap`); alpha is trained once the temperature is under 1, after 10 epochs of
weight steps (UniNAS's transcription, uninas/methods/asap.py L39 and L50-57: the paper has no
released code)."""

from __future__ import annotations

from jnas.algorithms.base import Algorithm, register
from jnas.algorithms.darts import first_order

ASAP = register(
    Algorithm(
        name="asap",
        order=("arch", "weights"),
        relaxation="asap",
        arch_gradient=first_order,
        defaults={"warmup_epochs": 10},
        doc=__doc__,
    )
)
