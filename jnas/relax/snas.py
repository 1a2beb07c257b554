"""SNAS's relaxation (Xie et al., ICLR 2019): a soft Gumbel-softmax sample per batch.

As the official code (SNAS-Series/SNAS-Series, SNAS/model_search.py `_get_categ_mask`): one
(edges, ops) concrete sample per cell type and forward pass, shared by the batch and by every
cell of the type, with every op computed and weighted by it (no straight-through one-hot).
The temperature anneals linearly from `tau_max` 1.0 to `tau_min` 0.03 (train_search.py
`--temp 1 --temp_min 0.03 --temp_annealing`; utils.py `Temp_Scheduler`, stepped once before
the first epoch, so epoch k uses (k + 1) / epochs of the way). alpha starts at N(1, 0.01)
(`--loc_mean 1 --loc_std 0.01`). Evaluation runs the one-hot of each edge's argmax: the
child network (`--gen_max_child`).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from jnas.relax.base import Annealed, per_cell_type, register
from jnas.transforms import gumbel_softmax


@register
@dataclasses.dataclass(frozen=True)
class GumbelSoft(Annealed):
    name: ClassVar[str] = "snas"
    tau_max: float = 1.0
    tau_min: float = 0.03

    def init_alpha(self, key, shapes):
        return per_cell_type(lambda k, s: 1.0 + 0.01 * jax.random.normal(k, s), key, shapes)

    def tau(self, epoch):
        f = jnp.minimum((epoch + 1) / self.epochs, 1.0)
        return (1 - f) * (self.tau_max - self.tau_min) + self.tau_min

    def train_weights(self, alpha, key, epoch):
        tau = self.tau(epoch)
        return per_cell_type(lambda k, a: gumbel_softmax(k, a, tau), key, alpha), None

    def eval_weights(self, alpha):
        return {t: jax.nn.one_hot(jnp.argmax(a, -1), a.shape[-1]) for t, a in alpha.items()}, None
