"""SNAS (Xie et al., ICLR 2019): single-level. One loss on the train batch, through a soft
Gumbel-softmax sample, updates the weights and alpha together (SNAS-Series/SNAS-Series,
SNAS/train_search.py: one backward, then `optimizer.step()` and `arch_optimizer.step()`).
150 epochs, weight decay 3e-4 (train_search.py defaults)."""

from __future__ import annotations

from jnas.algorithms.base import Algorithm, register

SNAS = register(
    Algorithm(
        name="snas",
        order=("joint",),
        relaxation="snas",
        defaults={"epochs": 150},
        doc=__doc__,
    )
)
