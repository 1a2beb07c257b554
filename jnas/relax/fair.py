"""FairDARTS's relaxation (Chu et al., ECCV 2020): independent sigmoid op weights and the
zero-one loss, with derivation by a threshold on the weights.

As the official code (xiaomi-automl/FairDARTS 270cfc9, folder fairdarts/):

- Every op of an edge is weighted by sigmoid(alpha) on its own, with no softmax over the ops
  (model_search.py L104-111), so ops do not compete for one unit of weight. alpha starts at
  zeros, every weight at 0.5 (L125-126).
- `loss` is the zero-one loss `w01 * -mean((sigmoid(alpha) - 0.5)^2)`, the mean over every
  entry of every cell type's alpha: the official code stacks the normal and the reduction
  weights into one (28, 7) matrix and takes `-mse_loss(., 0.5)` (architect.py L22,
  separate_loss.py L16), weighted by the constant `--aux_loss_weight` 10 (train_search.py
  L29, L81). It pushes each weight towards 0 or 1, away from the ambiguous 0.5. The search
  adds it to the architecture step's validation loss (architect.py L20-26). A 'none' op
  (NAS-Bench-201's) keeps its weight 0.5 from the zeros: its output is zero, and the zero-one
  loss's gradient vanishes at 0.5.
- Derivation (`derivation_rule`): the space's rule, then every kept edge whose chosen op
  weighs less than `op_threshold` (0.85, train_search.py L41) is dropped. On the DARTS space
  that is the official `threshold_sparse` parse (utils.py L161-184): per node the 2 incoming
  edges with the largest weight, each with its best op, kept only if that weight reaches the
  threshold, so a node keeps 0, 1 or 2 edges (the official cells have such nodes,
  genotypes.py L150); there is no fallback. The official op set has no 'none' (genotypes.py
  L8-16); where the candidate ops include one, it decides nothing, as in DARTS's rule. An
  edge from a node that kept no edge is left out of the genotype, as the official evaluation
  cell skips edges from such isolated nodes (model.py L104-110; `jnas.genotype`).
  On NAS-Bench-201, whose cells keep every edge, the analogue is the benchmark's rule with
  the threshold: each edge keeps its argmax op if that weight reaches the threshold, and is
  otherwise dropped ('none'). FairDARTS published nothing on NAS-Bench-201.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from jnas import derive
from jnas.errors import JnasError
from jnas.relax.base import Relaxation, register


def sigmoid(a):
    """sigmoid(alpha) per op: traced inside the steps; in float64 numpy for the files and
    drawings of a run, so that float32 rounding does not decide an edge at the threshold."""
    if isinstance(a, jax.Array):
        return jax.nn.sigmoid(a)
    return 1.0 / (1.0 + np.exp(-np.asarray(a, np.float64)))


def zero_one_loss(alpha) -> jax.Array:
    """-mean((sigmoid(alpha) - 0.5)^2) over every entry of every cell type's alpha."""
    weights = jnp.concatenate([jax.nn.sigmoid(a).ravel() for a in jax.tree.leaves(alpha)])
    return -jnp.mean((weights - 0.5) ** 2)


def thresholded(rule: derive.Rule, threshold: float) -> derive.Rule:
    """`rule`, then each kept edge whose strength (its chosen op's weight) is below
    `threshold` dropped (-1). Works on numpy and jax arrays, as the rules do."""

    def apply(weights, incoming, primitives):
        ops, strength = rule(weights, incoming, primitives)
        xp = jnp if isinstance(weights, jax.Array) else np
        return xp.where(strength >= threshold, ops, -1), strength

    return apply


@register
@dataclasses.dataclass(frozen=True)
class Sigmoid(Relaxation):
    name: ClassVar[str] = "fair"
    w01: float = 10.0
    op_threshold: float = 0.85

    def __post_init__(self):
        if self.w01 < 0:
            raise JnasError(f"`w01` (the zero-one loss's weight) must be >= 0, got {self.w01}")
        if not 0 <= self.op_threshold <= 1:
            raise JnasError(
                f"`op_threshold` compares with sigmoid weights, so it must lie in [0, 1], got "
                f"{self.op_threshold}"
            )

    def init_alpha(self, key, shapes):
        del key
        return {t: jnp.zeros(s) for t, s in shapes.items()}

    def train_weights(self, alpha, key, epoch):
        del key, epoch
        return self.op_weights(alpha), None

    def op_weights(self, alpha):
        return {t: sigmoid(a) for t, a in alpha.items()}

    def loss(self, alpha):
        return self.w01 * zero_one_loss(alpha)

    def derivation_rule(self, space_rule):
        return thresholded(derive.rule(space_rule), self.op_threshold)
