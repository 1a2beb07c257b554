"""The DARTS search space: search cell and search network as Flax modules.

The architecture parameters are an ARGUMENT of `SearchNetwork.__call__`, never a variable of
the module, so `alpha` is its own pytree: `{"normal": (edges, ops), "reduce": (edges, ops)}`.

Compile time is the cost that binds (a Python loop over 8 cells x 14 edges x 8 ops takes
minutes to compile), so a cell traces its mixed op twice: once for the 8 edges from the two
cell inputs (they depend on the inputs alone; DARTS runs them at once with `nn.vmap`), and once
for the edges between nodes, which run one per iteration of an `nn.scan` in an order where
every node is complete before it is read. GDAS runs both groups with `nn.scan`: each iteration
switches on one edge's sampled op, an unbatched index, so only that op is computed. Both modes
store a group's parameters stacked on axis 0 under the same names, so one set of weights
serves both.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jnas.errors import JnasError
from jnas.genotype import CELL_TYPES, PRIMITIVES, edge_index, num_edges
from jnas.ops import (
    FactorizedReduce,
    MixedOp,
    ReLUConvBN,
    batch_norm,
    check_primitives,
    pool_3x3,
)
from jnas.transforms import gumbel_softmax

MODES = ("darts", "gdas")
_STACKED = {"params": 0, "batch_stats": 0}


def edge_groups(steps: int) -> list[list[tuple[int, int]]]:
    """Edges `(source, node)` in the two groups a cell runs: the `2 * steps` edges that read
    the cell inputs, then the edges between nodes, ordered by node and then source, so that
    every node is complete before an edge reads it."""
    inputs = [(s, n) for s in (0, 1) for n in range(steps)]
    inner = [(s, n) for n in range(steps) for s in range(2, n + 2)]
    return [inputs, inner] if inner else [inputs]


def _input_edges(op: MixedOp, x, weights, index):
    """The edges from the cell inputs, which depend on the inputs alone. DARTS runs them at
    once with `vmap`, every op weighted. GDAS runs them one after another with `scan`, each
    switching on its sampled op (under `vmap` the switch would become a select that computes
    every op)."""
    if index is None:
        return nn.vmap(
            lambda mdl, x, w: mdl(x, w), variable_axes=_STACKED, split_rngs={"params": True}
        )(op, x, weights)
    _, ys = nn.scan(
        lambda mdl, carry, edge: (carry, mdl.sampled(*edge)),
        variable_axes=_STACKED,
        split_rngs={"params": True},
    )(op, None, (x, weights, index))
    return ys


def _inner_edges(op: MixedOp, nodes, edges, weights, index):
    """The edges between nodes, one per `scan` iteration: edge (s, n) adds its op's output on
    node s - 2 into node n. One traced mixed op serves them all, which is what keeps the
    compile time down (an unrolled loop is one copy of the op per edge)."""

    def body(mdl, nodes, edge):
        (source, node), w, k = edge
        x = nodes[source - 2]
        y = mdl(x, w) if k is None else mdl.sampled(x, w, k)
        return nodes.at[node].add(y), None

    edges = tuple(jnp.array(e) for e in zip(*edges, strict=True))
    return nn.scan(body, variable_axes=_STACKED, split_rngs={"params": True})(
        op, nodes, (edges, weights, index)
    )[0]


class SearchCell(nn.Module):
    """A DARTS cell: 2 inputs, `steps` nodes, every node mixes all earlier states.

    `weights` has shape (edges, ops); the output concatenates the last `multiplier` states.
    With `index` (edges,) the cell is GDAS's: `weights` are one-hot (straight-through) and edge
    e computes op `index[e]` only.
    """

    channels: int
    reduction: bool
    reduction_prev: bool
    primitives: tuple[str, ...] = PRIMITIVES
    steps: int = 4
    multiplier: int = 4
    train: bool = True

    @nn.compact
    def __call__(self, s0, s1, weights, index=None):
        c = self.channels
        s0, s1 = _preprocess(c, self.reduction_prev, self.train, s0, s1)
        groups = edge_groups(self.steps)
        rows = [np.array([edge_index(n, s) for s, n in group]) for group in groups]

        def pick(g):
            return weights[rows[g]], None if index is None else index[rows[g]]

        stride = 2 if self.reduction else 1
        op = MixedOp(c, stride, self.primitives, self.train, name="edges_0")
        ys = _input_edges(op, jnp.stack([s0] * self.steps + [s1] * self.steps), *pick(0))
        # Each node sums its inputs in the official order: source 0, source 1, then the nodes.
        nodes = ys[: self.steps] + ys[self.steps :]
        if len(groups) > 1:
            op = MixedOp(c, 1, self.primitives, self.train, name="edges_1")
            nodes = _inner_edges(op, nodes, groups[1], *pick(1))
        states = [s0, s1, *nodes]
        return jnp.concatenate(states[-self.multiplier :], axis=-1)


def _preprocess(c, reduction_prev, train, s0, s1):
    """Bring both cell inputs to `c` channels at the resolution of `s1`."""
    if reduction_prev:
        s0 = FactorizedReduce(c, affine=False, train=train)(s0)
    else:
        s0 = ReLUConvBN(c, affine=False, train=train)(s0)
    return s0, ReLUConvBN(c, affine=False, train=train)(s1)


def derived_edge_weights(alpha, primitives=PRIMITIVES, steps: int = 4) -> jax.Array:
    """`derive_genotype`'s rule for one cell as (edges, ops) 0/1 mixing weights, traceable.

    Each node keeps its 2 strongest incoming edges (strength: the largest softmax weight over
    ops other than 'none'; ties to the lower input, as `lax.top_k` orders them), each with its
    best such op: a one-hot row; dropped edges get a zero row. Passed as `edge_weights`, it
    makes the search network compute the derived architecture, inside jit, per task.
    """
    usable = jnp.array([op != "none" for op in primitives])
    masked = jnp.where(usable, jax.nn.softmax(alpha, axis=-1), -jnp.inf)
    chosen = jax.nn.one_hot(jnp.argmax(masked, -1), len(primitives), dtype=alpha.dtype)
    strength = jnp.max(masked, -1)
    keep = []
    for node in range(steps):
        lo, hi = edge_index(node, 0), edge_index(node + 1, 0)
        _, kept = jax.lax.top_k(strength[lo:hi], 2)
        keep.append(jnp.zeros(hi - lo, bool).at[kept].set(True))
    return jnp.where(jnp.concatenate(keep)[:, None], chosen, 0.0)


class FixedReductionCell(nn.Module):
    """GDAS's fixed reduction cell (FRC, Dong & Yang 2019), affine-free as in search.

    Each input (after the usual preprocessing) feeds two branches that halve the resolution:
    ReLU -> 1x3 conv stride (1, 2) -> 3x1 conv stride (2, 1) (both in 8 groups) -> BN -> ReLU
    -> 1x1 conv -> BN, and 3x3 max pool stride 2 -> BN. The output concatenates the four
    branches: 4 * channels, like a 4-node DARTS cell.
    """

    channels: int
    reduction_prev: bool
    train: bool = True

    @nn.compact
    def __call__(self, s0, s1):
        c = self.channels
        if c % 8:
            raise JnasError(
                f"the fixed reduction cell groups its convolutions by 8, so it needs a multiple "
                f"of 8 channels, got {c}; use --init_channels divisible by 4"
            )
        s0, s1 = _preprocess(c, self.reduction_prev, self.train, s0, s1)

        def factorized(x):
            x = nn.relu(x)
            x = nn.Conv(c, (1, 3), (1, 2), ((0, 0), (1, 1)), feature_group_count=8,
                        use_bias=False)(x)
            x = nn.Conv(c, (3, 1), (2, 1), ((1, 1), (0, 0)), feature_group_count=8,
                        use_bias=False)(x)
            x = nn.relu(batch_norm(self.train, affine=False)(x))
            return batch_norm(self.train, affine=False)(nn.Dense(c, use_bias=False)(x))

        def pool(x):
            return batch_norm(self.train, affine=False)(pool_3x3(x, "max", 2))

        return jnp.concatenate([factorized(s0), factorized(s1), pool(s0), pool(s1)], axis=-1)


def check_fixed_reduction(steps: int, primitives) -> None:
    """The FRC belongs to GDAS's DARTS space: it stands in for a 4-node cell of the 8 ops."""
    if steps != 4 or tuple(primitives) != PRIMITIVES:
        raise JnasError(
            "the fixed reduction cell (--fix_reduction) is GDAS's cell for the DARTS space: it "
            f"needs --nodes 4 and the 8 DARTS ops, got --nodes {steps} and --ops "
            f"{','.join(primitives)}"
        )


class SearchNetwork(nn.Module):
    """DARTS's search network: stem, `layers` cells, global average pool, linear classifier.

    Reduction cells sit at `layers // 3` and `2 * layers // 3`. Call as
    `model.apply(variables, x, alpha, mutable=["batch_stats"])` with NHWC images `x` and
    `alpha = {"normal": (edges, ops), "reduce": (edges, ops)}` (raw logits).

    - `mode="darts"`: every edge mixes all ops with `softmax(alpha)` weights.
    - `mode="gdas"`: every edge computes one op, sampled per cell type by `path_weights` from
      `key` at temperature `tau` (one sample shared by the batch and by all cells of a type).
      With `train=False` the path is each edge's most likely op, so evaluation is deterministic.
    - `fixed_reduction=True`: GDAS's FRC replaces the searched reduction cell, and alpha has
      the "normal" entry only.
    - `edge_weights={cell type: (edges, ops)}` replaces `softmax(alpha)` in DARTS mode: with
      `derived_edge_weights` it runs the derived (discrete) architecture on the supernet's
      weights.
    - `reductions` places the reduction cells (T-NAS's 2-cell network: `(1,)`), and
      `stem_stride` shrinks large few-shot images in the stem (84x84 -> 28x28 at 3).
    """

    num_classes: int
    init_channels: int = 16
    layers: int = 8
    steps: int = 4
    multiplier: int = 4
    stem_multiplier: int = 3
    primitives: tuple[str, ...] = PRIMITIVES
    train: bool = True
    mode: str = "darts"
    fixed_reduction: bool = False
    reductions: tuple[int, ...] | None = None  # reduction cell indices; None: DARTS's two
    stem_stride: int = 1

    def alpha_shape(self) -> tuple[int, int]:
        return num_edges(self.steps), len(self.primitives)

    def cell_types(self) -> tuple[str, ...]:
        """The searched cell types: the keys of alpha."""
        return ("normal",) if self.fixed_reduction else CELL_TYPES

    def init_alpha(self, key) -> dict[str, jax.Array]:
        """DARTS's initialisation: 1e-3 * N(0, 1) for each searched cell type."""
        types = self.cell_types()
        keys = jax.random.split(key, len(CELL_TYPES))[: len(types)]
        shape = self.alpha_shape()
        return {t: 1e-3 * jax.random.normal(k, shape) for t, k in zip(types, keys, strict=True)}

    def reduction_layers(self) -> tuple[int, ...]:
        if self.reductions is not None:
            return tuple(self.reductions)
        return (self.layers // 3, 2 * self.layers // 3)

    def check_alpha(self, alpha) -> None:
        want = self.alpha_shape()
        if sorted(alpha) != sorted(self.cell_types()):
            raise JnasError(f"alpha needs keys {self.cell_types()}, got {sorted(alpha)}")
        for t in self.cell_types():
            if tuple(alpha[t].shape) != want:
                raise JnasError(
                    f"alpha[{t!r}] has shape {tuple(alpha[t].shape)}, the network needs {want} "
                    f"({want[0]} edges for {self.steps} nodes, {want[1]} candidate ops)"
                )

    def path_weights(self, alpha, key=None, tau=None) -> dict[str, tuple[jax.Array, jax.Array]]:
        """GDAS's per-edge paths: `{cell type: (hard (edges, ops), index (edges,))}`.

        Training: `hard = gumbel_softmax(k, alpha[t], tau, hard=True)` with `k` the t-th key of
        `jax.random.split(key)`. Inference: the one-hot of `argmax(alpha[t])`.
        """
        keys = dict(zip(CELL_TYPES, jax.random.split(key), strict=True)) if self.train else {}
        out = {}
        for t in self.cell_types():
            if self.train:
                hard = gumbel_softmax(keys[t], alpha[t], tau, hard=True)
            else:
                hard = jax.nn.one_hot(jnp.argmax(alpha[t], -1), alpha[t].shape[-1])
            out[t] = (hard, jnp.argmax(hard, -1))
        return out

    @nn.compact
    def __call__(self, x, alpha, *, key=None, tau=None, edge_weights=None):
        primitives = check_primitives(self.primitives)
        if self.mode not in MODES:
            raise JnasError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.fixed_reduction:
            check_fixed_reduction(self.steps, primitives)
        self.check_alpha(alpha)
        if x.ndim != 4 or min(x.shape[1:3]) < 8:
            raise JnasError(f"inputs must be NHWC images of at least 8x8, got shape {x.shape}")
        if self.mode == "gdas":
            if self.train and (key is None or tau is None):
                raise JnasError("a GDAS network in training samples its paths: pass key and tau")
            paths = self.path_weights(alpha, key, tau)
        elif edge_weights is not None:
            paths = {t: (edge_weights[t], None) for t in alpha}
        else:
            paths = {t: (jax.nn.softmax(alpha[t], axis=-1), None) for t in alpha}

        c = self.init_channels
        x = nn.Conv(
            self.stem_multiplier * c,
            (3, 3),
            strides=self.stem_stride,
            padding=((1, 1), (1, 1)),
            use_bias=False,
        )(x)
        s0 = s1 = batch_norm(self.train, affine=True)(x)
        reduction_prev = False
        for i in range(self.layers):
            reduction = i in self.reduction_layers()
            if reduction:
                c *= 2
            if reduction and self.fixed_reduction:
                out = FixedReductionCell(c, reduction_prev, self.train)(s0, s1)
            else:
                cell = SearchCell(
                    c, reduction, reduction_prev, primitives, self.steps, self.multiplier,
                    self.train,
                )
                out = cell(s0, s1, *paths["reduce" if reduction else "normal"])
            s0, s1 = s1, out
            reduction_prev = reduction
        return nn.Dense(self.num_classes)(jnp.mean(s1, axis=(1, 2)))
