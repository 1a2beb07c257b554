"""ASAP's relaxation (Noy et al., AISTATS 2020): an annealed softmax, `softmax(alpha / T)`,
with the ops whose weight falls under a threshold pruned from the supernet for good.

The paper gives the method (anneal T, prune weak ops gradually, so that the search converges
to one op per edge) but has no released code, and its body was not reachable here; the
defaults are those of UniNAS's transcription (cogsys-tuebingen/uninas @ 1f4b38d,
uninas/methods/asap.py L11-21 and experiments/configs/tasks/d1_asap.run_config L17-20):
T = 1.6 * 0.95^epoch (here: exponential from `tau_max` 1.6 in the first epoch to `tau_min`
1.6 * 0.95^49 in the last, which is that schedule over 50 epochs), and an op pruned once
its weight among its edge's unpruned ops is under `prune_threshold` / ops (0.4 / ops).
An edge keeps its strongest op whatever its weight.

Pruned ops stop costing compute: the unpruned ops are the relaxation's state (`alive_<cell
type>`, kept beside alpha and checkpointed with it), and they are the mask of ops that each
edge runs (`jnas.ops.MixedOp.sampled`): every op sits in a conditional whose other branch is
zeros, so neither pass computes a pruned op. Pruning is checked after every step.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from jnas.errors import JnasError
from jnas.relax.base import Annealed, register

_ALIVE = "alive_"


def _xp(a):
    return jnp if isinstance(a, jax.Array) else np


@register
@dataclasses.dataclass(frozen=True)
class AnnealPrune(Annealed):
    name: ClassVar[str] = "asap"
    tau_max: float = 1.6
    tau_min: float = 1.6 * 0.95**49
    prune_threshold: float = 0.4

    def __post_init__(self):
        super().__post_init__()
        if not 0 < self.prune_threshold < 1:
            raise JnasError(
                f"`prune_threshold` must lie in (0, 1) (a share of the uniform weight 1/ops), "
                f"got {self.prune_threshold}"
            )

    def tau(self, epoch):
        f = jnp.minimum(epoch, max(self.epochs - 1, 1)) / max(self.epochs - 1, 1)
        return self.tau_max * (self.tau_min / self.tau_max) ** f

    def cells(self, alpha):
        return [t for t in alpha if not t.startswith(_ALIVE)]

    def masked_softmax(self, alpha, tau):
        """Per cell type, softmax(alpha / tau) over each edge's unpruned ops, 0 elsewhere."""
        out = {}
        for t in self.cells(alpha):
            xp, alive = _xp(alpha[t]), alpha[_ALIVE + t]
            z = xp.where(alive, alpha[t] / tau, -xp.inf)
            e = xp.exp(z - z.max(-1, keepdims=True))
            out[t] = e / e.sum(-1, keepdims=True)
        return out

    def init_state(self, alpha):
        return {_ALIVE + t: _xp(a).ones(a.shape, bool) for t, a in alpha.items()}

    def update_state(self, alpha, epoch):
        weights = self.masked_softmax(alpha, self.tau(epoch))
        state = {}
        for t, w in weights.items():
            strongest = jax.nn.one_hot(jnp.argmax(w, -1), w.shape[-1], dtype=bool)
            keep = w >= self.prune_threshold / w.shape[-1]
            state[_ALIVE + t] = alpha[_ALIVE + t] & (keep | strongest)
        return state

    def train_weights(self, alpha, key, epoch):
        del key
        weights = self.masked_softmax(alpha, self.tau(epoch))
        return weights, {t: alpha[_ALIVE + t] for t in weights}

    def eval_weights(self, alpha):
        return self.train_weights(alpha, None, self.epochs - 1)

    def metrics(self, alpha, epoch):
        alive = [alpha[_ALIVE + t] for t in self.cells(alpha)]
        return {**super().metrics(alpha, epoch),
                "unpruned": sum(a.sum() for a in alive) / sum(a.size for a in alive)}

    def op_weights(self, alpha):
        """The last epoch's weights, by which derivation and the drawings rank ops and edges."""
        return self.masked_softmax(alpha, self.tau_min)
