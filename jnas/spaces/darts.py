"""The DARTS search space (Liu et al., ICLR 2019): search cell, search network, `DartsSpace`.

The network takes the relaxation's per-edge op weights as an ARGUMENT, never as a variable
of the module, so alpha is its own pytree: `{"normal": (edges, ops), "reduce": (edges, ops)}`.
Its cells run their edges with the shared DAG runner (`jnas.spaces.dag`): the edges from the
two cell inputs at once, those between nodes one per `scan` iteration.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import flax.linen as nn
import jax.numpy as jnp

from jnas.errors import JnasError
from jnas.genotype import (
    CELL_TYPES,
    PRIMITIVES,
    genotype_from_derived,
    genotype_from_dict,
    genotype_to_dict,
    validate_genotype,
)
from jnas.ops import (
    FactorizedReduce,
    MixedOp,
    PatchConv,
    ReLUConvBN,
    batch_norm,
    check_primitives,
    pool_3x3,
)
from jnas.plotting import darts_edge_labels, plot_genotype
from jnas.spaces import base, dag


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
        stride = (2 if self.reduction else 1, 1)

        def make_op(group, name):
            return MixedOp(c, stride[group], self.primitives, self.train, name=name)

        states = [s0, s1, *dag.cell_nodes(make_op, [s0, s1], self.steps, weights, index)]
        return jnp.concatenate(states[-self.multiplier :], axis=-1)


def _preprocess(c, reduction_prev, train, s0, s1):
    """Bring both cell inputs to `c` channels at the resolution of `s1`."""
    if reduction_prev:
        s0 = FactorizedReduce(c, affine=False, train=train)(s0)
    else:
        s0 = ReLUConvBN(c, affine=False, train=train)(s0)
    return s0, ReLUConvBN(c, affine=False, train=train)(s1)


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
                f"of 8 channels, got {c}; use an `init_channels` divisible by 4"
            )
        s0, s1 = _preprocess(c, self.reduction_prev, self.train, s0, s1)

        def factorized(x):
            x = nn.relu(x)
            x = nn.Conv(c, (1, 3), (1, 2), ((0, 0), (1, 1)), feature_group_count=8,
                        use_bias=False)(x)
            x = nn.Conv(c, (3, 1), (2, 1), ((1, 1), (0, 0)), feature_group_count=8,
                        use_bias=False)(x)
            x = nn.relu(batch_norm(self.train, affine=False)(x))
            return batch_norm(self.train, affine=False)(PatchConv(c)(x))

        def pool(x):
            return batch_norm(self.train, affine=False)(pool_3x3(x, "max", 2))

        return jnp.concatenate([factorized(s0), factorized(s1), pool(s0), pool(s1)], axis=-1)


def check_fixed_reduction(steps: int, primitives) -> None:
    """The FRC belongs to GDAS's DARTS space: it stands in for a 4-node cell of the 8 ops."""
    if steps != 4 or tuple(primitives) != PRIMITIVES:
        raise JnasError(
            "the fixed reduction cell (`fix_reduction`) is GDAS's cell for the DARTS space: "
            f"it needs `nodes` 4 and the 8 DARTS ops as `primitives`, got `nodes` {steps} and "
            f"`primitives` {','.join(primitives)}"
        )


def reduction_layers(layers: int, reductions: tuple[int, ...] | None) -> tuple[int, ...]:
    """The indices of the reduction cells: `reductions`, or DARTS's 1/3 and 2/3 of depth."""
    if reductions is not None:
        return tuple(reductions)
    return (layers // 3, 2 * layers // 3)


class SearchNetwork(nn.Module):
    """DARTS's search network: stem, `layers` cells, global average pool, linear classifier.

    Reduction cells sit at `layers // 3` and `2 * layers // 3`. Call as
    `model.apply(variables, x, weights, index, mutable=["batch_stats"])` with NHWC images `x`,
    `weights = {"normal": (edges, ops), "reduce": (edges, ops)}` op weights from a relaxation
    (`jnas.relax`; DARTS's: softmax(alpha)) and, for single-path relaxations (GDAS), `index`
    {cell type: (edges,)}: each edge then computes its indexed op only.

    - `fixed_reduction=True`: GDAS's FRC replaces the searched reduction cell, and the weights
      have the "normal" entry only.
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
    fixed_reduction: bool = False
    reductions: tuple[int, ...] | None = None  # reduction cell indices; None: DARTS's two
    stem_stride: int = 1

    def reduction_layers(self) -> tuple[int, ...]:
        return reduction_layers(self.layers, self.reductions)

    @nn.compact
    def __call__(self, x, weights, index=None):
        primitives = check_primitives(self.primitives)
        space = DartsSpace(primitives, self.init_channels, self.layers, self.steps,
                           self.fixed_reduction, self.reductions, self.stem_stride)
        space.check_alpha(weights, "weights")
        if x.ndim != 4 or min(x.shape[1:3]) < 8:
            raise JnasError(f"inputs must be NHWC images of at least 8x8, got shape {x.shape}")
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
                t = "reduce" if reduction else "normal"
                out = cell(s0, s1, weights[t], None if index is None else index[t])
            s0, s1 = s1, out
            reduction_prev = reduction
        return nn.Dense(self.num_classes)(jnp.mean(s1, axis=(1, 2)))


@base.register
@dataclasses.dataclass(frozen=True)
class DartsSpace(base.Space):
    """DARTS's CIFAR space: 8 ops, cells of 2 inputs and `nodes` nodes, separate normal and
    reduction alphas, derivation by DARTS's top-2 rule; the architecture is a `Genotype`.
    `fix_reduction` is GDAS's FRC (only the normal cell is searched); `reductions` and
    `stem_stride` serve T-NAS's few-shot network."""

    name: ClassVar[str] = "darts"
    derivation: ClassVar[str] = "darts"
    primitives: tuple[str, ...] = PRIMITIVES
    init_channels: int = 16
    layers: int = 8
    nodes: int = 4
    fix_reduction: bool = False
    reductions: tuple[int, ...] | None = None
    stem_stride: int = 1

    def __post_init__(self):
        check_primitives(self.primitives)
        for name in ("init_channels", "layers", "nodes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise JnasError(f"`{name}` must be a positive int, got {value!r}")
        self.check_cell_types()
        if self.fix_reduction:
            check_fixed_reduction(self.nodes, self.primitives)
            if self.init_channels % 4:
                raise JnasError(
                    "the fixed reduction cell groups its convolutions by 8 at 2 x "
                    "`init_channels`, so `init_channels` must be a multiple of 4, got "
                    f"{self.init_channels}"
                )

    def check_cell_types(self) -> None:
        """Every searched cell type must occur in the network: a type with no cell would get
        no gradient, and its derived cell would be initialisation noise."""
        have = {"reduce" if i in reduction_layers(self.layers, self.reductions) else "normal"
                for i in range(self.layers)}
        missing = [t for t in CELL_TYPES if t not in have]
        if not missing:
            return
        if self.reductions is None:
            fix = "the smallest `layers` with both cell types is 3"
        else:
            fix = f"reduction cells at the indices {list(self.reductions)}"
        raise JnasError(
            f"`layers` {self.layers} has no {' and no '.join(missing)} cell, so its alpha "
            f"could not be searched ({fix})"
        )

    def cell_types(self):
        return ("normal",) if self.fix_reduction else CELL_TYPES

    def num_edges(self):
        return dag.num_edges(self.nodes, 2)

    def incoming(self):
        return dag.incoming(self.nodes, 2)

    def network(self, num_classes, *, train):
        return SearchNetwork(
            num_classes=num_classes,
            init_channels=self.init_channels,
            layers=self.layers,
            steps=self.nodes,
            multiplier=self.nodes,
            primitives=self.primitives,
            train=train,
            fixed_reduction=self.fix_reduction,
            reductions=self.reductions,
            stem_stride=self.stem_stride,
        )

    def architecture(self, derived):
        return genotype_from_derived(derived, self.primitives, self.incoming(), self.nodes)

    def to_dict(self, arch):
        return genotype_to_dict(arch)

    def from_dict(self, d):
        return genotype_from_dict(d, self.primitives)

    def to_string(self, arch):
        return str(tuple(validate_genotype(arch, self.primitives)))

    def draw(self, arch, path, title=""):
        plot_genotype(arch, path, title=title or None)

    def edge_labels(self):
        return darts_edge_labels(self.nodes)
