"""GDAS's relaxation (Dong & Yang, CVPR 2019): one op per edge, sampled by Gumbel-max.

Per cell type and edge one op is drawn for the whole batch and every cell of the type; the
weights are its one-hot in value with the gradient of the soft sample (straight-through), and
the edge runs that op alone. tau falls linearly from `tau_max` in the first epoch to `tau_min`
in the last (GDAS's code: search-cifar.py, `tau_max - (tau_max - tau_min) * epoch /
(epochs - 1)`). Evaluation runs each edge's most likely op.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from jnas.relax.base import Annealed, per_cell_type, register
from jnas.transforms import gumbel_softmax


def _indexed(hard):
    """The one-hot weights and their single paths, (edges, 1)."""
    return hard, {t: jnp.argmax(h, -1)[:, None] for t, h in hard.items()}


@register
@dataclasses.dataclass(frozen=True)
class GumbelHard(Annealed):
    name: ClassVar[str] = "gdas"
    tau_max: float = 10.0
    tau_min: float = 0.1

    def tau(self, epoch):
        span = max(self.epochs - 1, 1)
        f = jnp.minimum(epoch, span) / span
        # Exact at both ends: tau_max - (tau_max - tau_min) rounds in float32.
        return (1 - f) * self.tau_max + f * self.tau_min

    def train_weights(self, alpha, key, epoch):
        tau = self.tau(epoch)
        return _indexed(per_cell_type(lambda k, a: gumbel_softmax(k, a, tau, hard=True), key,
                                      alpha))

    def eval_weights(self, alpha):
        return _indexed({t: jax.nn.one_hot(jnp.argmax(a, -1), a.shape[-1])
                         for t, a in alpha.items()})
