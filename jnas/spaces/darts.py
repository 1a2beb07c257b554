"""The DARTS search space (Liu et al., ICLR 2019): search cell, search network, `DartsSpace`.

The network takes the relaxation's per-edge op weights as an ARGUMENT, never as a variable
of the module, so alpha is its own pytree: `{"normal": (edges, ops), "reduce": (edges, ops)}`.
Its cells run their edges with the shared DAG runner (`jnas.spaces.dag`): the edges from the
two cell inputs at once, those between nodes one per `scan` iteration.
"""

from __future__ import annotations

import ast
import dataclasses
from typing import ClassVar

import flax.linen as nn
import jax.numpy as jnp

from jnas.errors import JnasError
from jnas.genotype import (
    CELL_TYPES,
    GENOTYPES,
    PRIMITIVES,
    Genotype,
    genotype_from_derived,
    genotype_from_dict,
    genotype_to_dict,
    validate_genotype,
)
from jnas.ops import MixedOp, batch_norm, check_primitives
from jnas.plotting import darts_edge_labels, plot_genotype
from jnas.spaces import base, dag
from jnas.spaces.darts_cells import FixedReductionCell, preprocess, reduction_layers
from jnas.spaces.darts_eval import EvalNetwork


class SearchCell(nn.Module):
    """A DARTS cell: 2 inputs, `steps` nodes, every node mixes all earlier states.

    `weights` has shape (edges, ops); the output concatenates the last `multiplier` states.
    With `index` (edges, paths) each edge computes its indexed ops only (GDAS: one path, with
    one-hot straight-through `weights`; `jnas.ops.MixedOp.sampled`).
    """

    channels: int
    reduction: bool
    reduction_prev: bool
    primitives: tuple[str, ...] = PRIMITIVES
    steps: int = 4
    multiplier: int = 4
    train: bool = True
    partial_channels: int = 1

    @nn.compact
    def __call__(self, s0, s1, weights, index=None):
        c = self.channels
        s0, s1 = preprocess(c, self.reduction_prev, False, self.train, s0, s1)
        stride = (2 if self.reduction else 1, 1)

        def make_op(group, name):
            return MixedOp(c, stride[group], self.primitives, self.train,
                           partial=self.partial_channels, name=name)

        states = [s0, s1, *dag.cell_nodes(make_op, [s0, s1], self.steps, weights, index)]
        return jnp.concatenate(states[-self.multiplier :], axis=-1)


def check_fixed_reduction(steps: int, primitives) -> None:
    """The FRC belongs to GDAS's DARTS space: it stands in for a 4-node cell of the 8 ops."""
    if steps != 4 or tuple(primitives) != PRIMITIVES:
        raise JnasError(
            "the fixed reduction cell (`fix_reduction`) is GDAS's cell for the DARTS space: "
            f"it needs `nodes` 4 and the 8 DARTS ops as `primitives`, got `nodes` {steps} and "
            f"`primitives` {','.join(primitives)}"
        )


class SearchNetwork(nn.Module):
    """DARTS's search network: stem, `layers` cells, global average pool, linear classifier.

    Reduction cells sit at `layers // 3` and `2 * layers // 3`. Call as
    `model.apply(variables, x, weights, index, mutable=["batch_stats"])` with NHWC images `x`,
    `weights = {"normal": (edges, ops), "reduce": (edges, ops)}` op weights from a relaxation
    (`jnas.relax`; DARTS's: softmax(alpha)) and, for path-sampling relaxations (GDAS), `index`
    {cell type: (edges, paths)}: each edge then computes its indexed ops only.

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
    partial_channels: int = 1

    def reduction_layers(self) -> tuple[int, ...]:
        return reduction_layers(self.layers, self.reductions)

    @nn.compact
    def __call__(self, x, weights, index=None):
        primitives = check_primitives(self.primitives)
        space = DartsSpace(primitives, self.init_channels, self.layers, self.steps,
                           self.fixed_reduction, self.reductions, self.stem_stride,
                           self.partial_channels)
        space.check_alpha(weights, "weights")
        if index is not None:
            space.check_index(index)
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
                    self.train, self.partial_channels,
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
    `stem_stride` serve T-NAS's few-shot network; `partial_channels` K > 1 sends 1/K of each
    edge's channels through its ops (PC-DARTS)."""

    name: ClassVar[str] = "darts"
    derivation: ClassVar[str] = "darts"
    sample_inputs: ClassVar[int | None] = 2  # a genotype's two inputs per node
    known_archs: ClassVar[dict[str, Genotype]] = GENOTYPES
    primitives: tuple[str, ...] = PRIMITIVES
    init_channels: int = 16
    layers: int = 8
    nodes: int = 4
    fix_reduction: bool = False
    reductions: tuple[int, ...] | None = None
    stem_stride: int = 1
    partial_channels: int = 1

    def __post_init__(self):
        check_primitives(self.primitives)
        for name in ("init_channels", "layers", "nodes", "partial_channels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise JnasError(f"`{name}` must be a positive int, got {value!r}")
        base.check_partial_channels(self.partial_channels, self.init_channels)
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
            partial_channels=self.partial_channels,
        )

    def architecture(self, derived):
        return genotype_from_derived(derived, self.primitives, self.incoming(), self.nodes)

    def to_dict(self, arch):
        return genotype_to_dict(arch)

    def from_dict(self, d):
        return genotype_from_dict(d, self.primitives)

    def to_string(self, arch):
        return str(tuple(validate_genotype(arch, self.primitives)))

    def from_string(self, text):
        """A genotype written as Python: `to_string`'s tuple, or `Genotype(normal=[...], ...)`
        as DARTS's genotypes.py writes it."""
        try:
            tree = ast.parse(text.strip(), mode="eval").body
            if isinstance(tree, ast.Call) and getattr(tree.func, "id", None) == "Genotype":
                return genotype_from_dict(
                    {k.arg: ast.literal_eval(k.value) for k in tree.keywords}, self.primitives
                )
            return validate_genotype(Genotype(*ast.literal_eval(tree)), self.primitives)
        except (SyntaxError, ValueError, TypeError):
            raise JnasError(
                f"{text!r} is not a known genotype ({', '.join(self.known_archs)}), a genotype "
                "JSON file (genotype.json) or a genotype written as Python "
                "(`Genotype(normal=[('sep_conv_3x3', 0), ...], normal_concat=[2, 3, 4, 5], "
                "reduce=[...], reduce_concat=[...])`)"
            ) from None

    def eval_network(self, arch, num_classes, *, train, auxiliary=False, drop_path=False):
        del drop_path  # the network always takes its probability
        return EvalNetwork(
            validate_genotype(arch, self.primitives), num_classes, self.init_channels,
            self.layers, auxiliary, train=train,
        )

    def draw(self, arch, path, title=""):
        plot_genotype(arch, path, title=title or None)

    def edge_labels(self):
        return darts_edge_labels(self.nodes)
