"""PC-DARTS's edge normalisation (Xu et al., ICLR 2020): DARTS's softmax over each edge's
ops, times a softmax of per-edge parameters beta over each node's incoming edges.

As the official code (yuhuixu1993/PC-DARTS b74702f, model_search.py): alpha carries, beside
each cell type's (edges, ops) logits, one beta per edge, `alpha["beta_<cell type>"]` (edges,),
both initialised to 1e-3 * N(0, 1) (L172-175), normal and reduction cells each their own;
one Adam updates them all (architect.py L17-18). The forward pass normalises beta with a
softmax over each node's incoming edges (L137-158: slices [0:2], [2:5], [5:9], [9:14] of
the 14 DARTS edges, here the space's `incoming`) and multiplies each mixed op's whole output
by it (L85). Here the op weights carry that factor, softmax(alpha_e) * beta_e, and the mixed
op scales its partial-channel bypass by the edge's total weight, which is beta_e
(`jnas.ops.MixedOp`): the same network function. The official genotype ranks a node's edges
by the best non-'none' entry of the same product (L196-198), which is DARTS's top-2 rule on
these op weights; beta, a positive factor per edge, never changes an edge's op. On
NAS-Bench-201's space the rule is the benchmark's per-edge argmax, which beta cannot change:
there it acts on the search through the network alone.

The partial channels themselves are a property of the supernet (`partial_channels`,
`jnas.ops.MixedOp`), not of this relaxation.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import numpy as np

from jnas.errors import JnasError
from jnas.relax.base import Relaxation, per_cell_type, register, softmax

BETA = "beta_"  # alpha's key of cell type t's edge parameters: BETA + t


def node_softmax(beta, incoming):
    """(edges,) beta -> the softmax of beta over each node's incoming edges, in edge order
    (numpy in float64 or jax, as `softmax`)."""
    xp = jax.numpy if isinstance(beta, jax.Array) else np
    rows = np.concatenate([np.asarray(r, int) for r in incoming])
    parts = [softmax(beta[np.asarray(r, int)]) for r in incoming]
    return xp.concatenate(parts)[np.argsort(rows)]


@register
@dataclasses.dataclass(frozen=True)
class EdgeNormalised(Relaxation):
    name: ClassVar[str] = "pcdarts"

    def __post_init__(self):
        rows = sorted(r for node in self.incoming for r in node)
        if not rows or rows != list(range(len(rows))):
            raise JnasError(
                "the pcdarts relaxation normalises beta over each node's incoming edges: it "
                "needs `incoming`, every edge's row in exactly one node (the space's "
                f"`incoming()`), got {self.incoming!r}"
            )

    def init_alpha(self, key, shapes):
        """DARTS's alpha and one beta per edge, both 1e-3 * N(0, 1) (model_search.py
        L172-175)."""
        k_alpha, k_beta = jax.random.split(key)
        alpha = super().init_alpha(k_alpha, shapes)
        edges = {BETA + t: (s[0],) for t, s in shapes.items()}
        betas = per_cell_type(lambda k, s: 1e-3 * jax.random.normal(k, s), k_beta, edges)
        return {**alpha, **betas}

    def edge_weights(self, alpha):
        """{cell type: (edges,)} beta normalised over each node's incoming edges."""
        return {t[len(BETA):]: node_softmax(b, self.incoming) for t, b in alpha.items()
                if t.startswith(BETA)}

    def op_weights(self, alpha):
        """softmax(alpha_e) * beta_e: what the network runs and derivation reads."""
        missing = [t for t in alpha if not t.startswith(BETA) and BETA + t not in alpha]
        if missing:
            raise JnasError(
                f"the pcdarts relaxation needs alpha[{BETA!r} + t] for every cell type t, "
                f"missing for {missing}: an alpha from another relaxation?"
            )
        edges = self.edge_weights(alpha)
        return {t: softmax(a) * edges[t][:, None] for t, a in alpha.items()
                if not t.startswith(BETA)}

    def train_weights(self, alpha, key, epoch):
        del key, epoch
        return self.eval_weights(alpha)
