"""NAS-Bench-201's search space (Dong & Yang, ICLR 2020; NATS-Bench's topology space "tss").

One cell type, searched once and shared by every cell: 4 nodes, node 0 the cell input and
nodes 1..3 each the sum of one mixed op on every earlier node, so 6 edges and one alpha of
shape (6, ops) under the key "cell". Alpha's rows follow the benchmark's `edge2index` (the
sorted keys "i<-j"): 1<-0, 2<-0, 2<-1, 3<-0, 3<-1, 3<-2, which is the shared DAG runner's
order with one input and 3 steps (`dag.edge_row(node - 1, source, 1)`). The cell's output is
node 3.

The network (xautodl's `TinyNetworkDarts`, models/cell_searchs/search_model_darts.py): a 3x3
conv stem of C channels and BN, 3 stages of N cells at C, 2C, 4C channels joined by ResNet
basic blocks of stride 2, then BN-ReLU, global average pooling and a linear classifier. The
N cells of a stage have equal shapes, so they run as one `nn.scan` over parameters stacked
on axis 0: compile time does not grow with N.

The architecture is a tuple of 6 op names in row order; its string is the benchmark's
(`Structure.tostr`, models/cell_searchs/genotypes.py), e.g.
`|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|`.
Derivation is the benchmark's: every edge keeps its argmax op, 'none' included.

Where this differs from the official code (xautodl at commit f46486e):
- BatchNorm uses batch statistics in training and running averages in evaluation
  (`jnas.ops.batch_norm`); the official search scripts may set `track_running_stats=False`,
  which uses batch statistics in evaluation too.
- A mixed op skips its 'none' op, which adds exact zeros (the official one computes
  `Zero(x) * w`): the same value, and the same gradient for alpha.
- Images must have a height and width divisible by 4: the official block would fail on odd
  sizes too (its two branches would then differ in size).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from jnas.errors import JnasError
from jnas.ops import MixedOp, PatchConv, ReLUConvBN, batch_norm, check_primitives, make_op
from jnas.spaces import base, dag

NB201_OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
STEPS = 3  # nodes 1..3; node 0 is the cell input
NUM_EDGES = dag.num_edges(STEPS, 1)  # 6
# (source, node) per alpha row, nodes numbered as the benchmark does (0 = the cell input).
EDGES = tuple((s, n + 1) for n in range(STEPS) for s in range(n + 1))
BEST_CIFAR10 = (
    "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|"
    "+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
)
_HINT = f"a valid architecture string is {BEST_CIFAR10!r}"


# -- the architecture ------------------------------------------------------------------------


def _arch_ops(primitives: Sequence[str]) -> tuple[str, ...]:
    """The op names an architecture may use: the candidates, and 'none' (a dropped edge)."""
    primitives = tuple(primitives)
    return primitives if "none" in primitives else ("none", *primitives)


def check_arch(ops, primitives: Sequence[str] = NB201_OPS) -> tuple[str, ...]:
    """`ops` as a 6-tuple of op names in alpha's row order, or raise saying what is wrong."""
    allowed = _arch_ops(primitives)
    if isinstance(ops, str) or not isinstance(ops, Sequence):
        raise JnasError(
            f"an NB201 architecture is a sequence of {NUM_EDGES} op names (edges "
            f"{', '.join(f'{s}->{n}' for s, n in EDGES)}), got {ops!r}"
        )
    ops = tuple(ops)
    if len(ops) != NUM_EDGES:
        raise JnasError(
            f"an NB201 architecture has {NUM_EDGES} ops, one per edge "
            f"({', '.join(f'{s}->{n}' for s, n in EDGES)}), got {len(ops)}: {list(ops)}"
        )
    for (s, n), op in zip(EDGES, ops, strict=True):
        if op not in allowed:
            raise JnasError(
                f"edge {s}->{n} of the architecture has the unknown op {op!r}; known: "
                f"{', '.join(allowed)}"
            )
    return ops


def to_string(ops, primitives: Sequence[str] = NB201_OPS) -> str:
    """The benchmark's string of an architecture: `|op~0|+|op~0|op~1|+|op~0|op~1|op~2|`."""
    ops = check_arch(ops, primitives)
    nodes, row = [], 0
    for node in range(1, STEPS + 1):
        nodes.append("|" + "|".join(f"{ops[row + s]}~{s}" for s in range(node)) + "|")
        row += node
    return "+".join(nodes)


def from_string(text, primitives: Sequence[str] = NB201_OPS) -> tuple[str, ...]:
    """The architecture (6 op names in row order) of a benchmark string, or raise naming the
    malformed part. Surrounding whitespace is ignored."""
    allowed = _arch_ops(primitives)
    if not isinstance(text, str):
        raise JnasError(f"an NB201 architecture string must be a str, got {text!r}; {_HINT}")
    nodes = text.strip().split("+")
    if len(nodes) != STEPS:
        raise JnasError(
            f"{text!r} has {len(nodes)} '+'-separated node(s); an NB201 cell has {STEPS} "
            f"(nodes 1, 2, 3); {_HINT}"
        )
    ops = []
    for node, part in enumerate(nodes, 1):
        if len(part) < 2 or not (part.startswith("|") and part.endswith("|")):
            raise JnasError(
                f"node {node} of {text!r} is {part!r}; each node is written between '|' "
                f"as '|op~0|op~1|'; {_HINT}"
            )
        inputs = part[1:-1].split("|")
        if len(inputs) != node:
            raise JnasError(
                f"node {node} of {text!r} has {len(inputs)} input(s) ({part!r}); it needs "
                f"{node}, one from each of nodes {', '.join(map(str, range(node)))}; {_HINT}"
            )
        for source, entry in enumerate(inputs):
            op, tilde, src = entry.partition("~")
            if not tilde:
                raise JnasError(
                    f"input {entry!r} of node {node} in {text!r} is not of the form "
                    f"'op~source'; {_HINT}"
                )
            if src != str(source):
                raise JnasError(
                    f"input {source} of node {node} in {text!r} must read node {source} "
                    f"('~{source}'), got '~{src}' in {entry!r}; {_HINT}"
                )
            if op not in allowed:
                raise JnasError(
                    f"input {entry!r} of node {node} in {text!r} has the unknown op {op!r}; "
                    f"known: {', '.join(allowed)}; {_HINT}"
                )
            ops.append(op)
    return tuple(ops)


# -- the supernet ----------------------------------------------------------------------------


class NB201Cell(nn.Module):
    """An NB201 search cell: node j (1..3) sums a mixed op on each node i < j; returns node 3.

    `weights` (6, ops) per-edge op weights in alpha's row order; with `index` (6, paths) each
    edge runs its indexed ops only (path-sampling relaxations such as GDAS). Parameters are grouped
    as the DAG runner stores them: `edges_0` the edges 1<-0, 2<-0, 3<-0 (rows 0, 1, 3) and
    `edges_1` the edges 2<-1, 3<-1, 3<-2 (rows 2, 4, 5), each stacked on axis 0 in that order.
    BatchNorm is affine-free and pooling has no BatchNorm, as in the benchmark's search cell.
    """

    channels: int
    primitives: tuple[str, ...] = NB201_OPS
    train: bool = True
    partial_channels: int = 1

    @nn.compact
    def __call__(self, x, weights, index=None):
        if x.shape[-1] != self.channels:
            raise JnasError(
                f"an NB201 cell of {self.channels} channels got an input of {x.shape[-1]}"
            )

        def make_op(group, name):
            del group  # every edge has stride 1
            return MixedOp(self.channels, 1, self.primitives, self.train, pool_bn=False,
                           partial=self.partial_channels, name=name)

        return dag.cell_nodes(make_op, [x], STEPS, weights, index, vmap_inputs=False)[-1]


class ResNetBlock(nn.Module):
    """xautodl's `ResNetBasicblock` (models/cell_operations.py): ReLU-conv3x3(stride)-BN,
    ReLU-conv3x3-BN, plus a shortcut: at stride 2 AvgPool 2x2 stride 2 then a 1x1 conv
    without bias (no BN); at stride 1, a ReLU-conv1x1-BN if the width changes, else identity.
    BatchNorm is affine; the convolutions have no bias."""

    features: int
    stride: int = 2
    train: bool = True

    @nn.compact
    def __call__(self, x):
        if self.stride not in (1, 2):
            raise JnasError(f"a ResNet block has stride 1 or 2, got {self.stride}")
        y = ReLUConvBN(self.features, 3, self.stride, True, self.train, name="conv_a")(x)
        y = ReLUConvBN(self.features, 3, 1, True, self.train, name="conv_b")(y)
        if self.stride == 2:
            x = nn.avg_pool(x, (2, 2), (2, 2), "VALID")
            x = PatchConv(self.features, name="downsample")(x)
        elif x.shape[-1] != self.features:
            x = ReLUConvBN(self.features, 1, 1, True, self.train, name="downsample")(x)
        return x + y


def _skeleton(module: nn.Module, x, channels: int, cells_per_stage: int, num_classes: int,
              train: bool, cell, *args):
    """The benchmark's macro skeleton around the cells `cell(channels, name)`, each called as
    `cell(x, *args)`: stem, 3 stages of N scanned cells joined by ResNet blocks, BN-ReLU, global
    average pooling, classifier. Called inside `module`'s compact method, so its modules are
    `module`'s; the pooled features (the classifier's input) are sown into `module`'s
    "intermediates" collection as "features" (read them with that collection mutable).
    """
    c = channels
    x = nn.Conv(c, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, name="stem")(x)
    x = batch_norm(train, affine=True)(x)  # BatchNorm_0
    for stage in range(3):
        if stage:
            c *= 2
            x = ResNetBlock(c, 2, train, name=f"block_{stage}")(x)
        x, _ = nn.scan(
            lambda mdl, x, *args: (mdl(x, *args), None),
            variable_axes=dag.STACKED,
            split_rngs={"params": True},
            in_axes=(nn.broadcast,) * len(args),
            length=cells_per_stage,
        )(cell(c, f"cells_{stage}"), x, *args)
    x = nn.relu(batch_norm(train, affine=True)(x))  # BatchNorm_1
    features = jnp.mean(x, axis=(1, 2))
    module.sow("intermediates", "features", features)
    return nn.Dense(num_classes, name="classifier")(features)


def _check_images(x):
    if x.ndim != 4 or x.shape[1] % 4 or x.shape[2] % 4 or min(x.shape[1:3]) < 4:
        raise JnasError(
            "inputs must be NHWC images whose height and width are multiples of 4 (two "
            f"ResNet blocks halve them), got shape {x.shape}"
        )


class NB201Network(nn.Module):
    """NAS-Bench-201's search network (xautodl `TinyNetworkDarts`).

    Call as `model.apply(variables, x, weights, index, mutable=["batch_stats"])` with NHWC
    images `x` (height and width divisible by 4), `weights = {"cell": (6, ops)}` op weights
    shared by every cell and, for path-sampling relaxations, `index = {"cell": (6, paths)}` ints.
    Parameters: `stem`, `BatchNorm_0` (the stem's), `cells_0`, `block_1`, `cells_1`,
    `block_2`, `cells_2`, `BatchNorm_1` (before the pooling), `classifier`; the N cells of
    stage s are stacked on axis 0 of `cells_s`.
    """

    num_classes: int
    channels: int = 16
    cells_per_stage: int = 5
    primitives: tuple[str, ...] = NB201_OPS
    train: bool = True
    partial_channels: int = 1

    @nn.compact
    def __call__(self, x, weights, index=None):
        space = NB201Space(tuple(self.primitives), self.channels, self.cells_per_stage,
                           self.partial_channels)
        space.check_alpha(weights, "weights")
        if index is not None:
            space.check_index(index)
        _check_images(x)

        def cell(c, name):
            return NB201Cell(c, space.primitives, self.train, self.partial_channels, name=name)

        w, i = weights["cell"], None if index is None else index["cell"]
        return _skeleton(self, x, self.channels, self.cells_per_stage, self.num_classes,
                         self.train, cell, w, i)


class NB201EvalCell(nn.Module):
    """One discrete cell (xautodl `InferCell`): node j sums the ops of its incoming edges;
    'none' edges are left out of the computation (the benchmark's Zero ops add zeros), and a
    node with no other edge is zero. BatchNorm is affine, so the convolutions have no bias.
    Edge r's op (alpha's row r) has the parameters `edge_<r>`."""

    arch: tuple[str, ...]
    channels: int
    train: bool = True

    @nn.compact
    def __call__(self, x):
        nodes = [x]
        for node in range(1, STEPS + 1):
            total = jnp.zeros_like(x)
            for source in range(node):
                row = dag.edge_row(node - 1, source, 1)
                op = self.arch[row]
                if op != "none":
                    module = make_op(op, self.channels, 1, affine=True, train=self.train)
                    total = total + module.clone(parent=self, name=f"edge_{row}")(nodes[source])
            nodes.append(total)
        return nodes[-1]


class NB201EvalNetwork(nn.Module):
    """The benchmark's discrete network (xautodl `TinyNetwork`): the search network's skeleton,
    parameter names included, around N copies of one discrete cell. Called as
    `model.apply(variables, x, mutable=["batch_stats"])` -> `(logits, None)`: it has no
    auxiliary head and no drop path. With "intermediates" mutable too, the updates hold
    `intermediates["features"] == (pooled,)`, the (batch, 4C) input of the classifier."""

    arch: tuple[str, ...]
    num_classes: int
    channels: int = 16
    cells_per_stage: int = 5
    train: bool = True

    @nn.compact
    def __call__(self, x, drop_prob=0.0):
        del drop_prob  # no drop path: the space refuses one (`NB201Space.eval_network`)
        _check_images(x)

        def cell(c, name):
            return NB201EvalCell(self.arch, c, self.train, name=name)

        logits = _skeleton(self, x, self.channels, self.cells_per_stage, self.num_classes,
                           self.train, cell)
        return logits, None


# -- the space -------------------------------------------------------------------------------


@base.register
@dataclasses.dataclass(frozen=True)
class NB201Space(base.Space):
    """NAS-Bench-201's space: 5 ops, one 4-node cell type ("cell") shared by all cells,
    derivation by the benchmark's argmax rule; the architecture is a 6-tuple of op names in
    alpha's row order, written as the benchmark's string (`to_string`)."""

    name: ClassVar[str] = "nas-bench-201"
    derivation: ClassVar[str] = "argmax"
    # The benchmark's released search settings (AutoDL-Projects, configs/nas-benchmark/algos/
    # DARTS.config and GDAS.config L2-12: SGD 0.025 cosine to 0.001, momentum 0.9, Nesterov,
    # weight decay 5e-4, batch 64, 50 and 250 epochs; scripts-search/NAS-Bench-201-algos/
    # *.sh: architecture Adam 3e-4, weight decay 1e-3, tau 10 -> 0.1), on the space's 5 ops.
    # The algorithms without a released config (MiLeNAS, SNAS, PC-DARTS, FairDARTS,
    # RobustDARTS, ASAP, ProxylessNAS) train the weights as DARTS.config does, so that a
    # comparison differs in the algorithm only, and keep their own architecture-side settings
    # (alpha's optimiser, relaxation, partial channels, warm-up, losses).
    search_base: ClassVar[dict[str, Any]] = {
        "batch_size": 64, "learning_rate": 0.025, "learning_rate_min": 0.001,
        "weight_decay": 5e-4, "nesterov": True, "epochs": 50, "primitives": None,
    }
    search_defaults: ClassVar[dict[str, dict]] = {"gdas": {"epochs": 250}, "rsps": {"epochs": 250}}
    # The benchmark's training (AutoDL-Projects f46486e, configs/nas-benchmark/CIFAR.config:
    # SGD 0.1, Nesterov momentum 0.9, weight decay 5e-4, batch 256, 200 epochs, cosine to 0
    # stepped per epoch, procedures/optimizers.py L81-107; crop and flip, no cutout, no
    # gradient clipping; C=16, N=5, scripts-search/NAS-Bench-201/train-models.sh).
    eval_defaults: ClassVar[dict[str, Any]] = dict(
        arch=BEST_CIFAR10, epochs=200, batch_size=256, learning_rate=0.1, nesterov=True,
        weight_decay=5e-4, init_channels=16, auxiliary_weight=0.0, cutout_length=0,
        drop_path_prob=0.0, grad_clip=0.0,
    )
    primitives: tuple[str, ...] = NB201_OPS
    init_channels: int = 16
    cells_per_stage: int = 5
    partial_channels: int = 1

    def __post_init__(self):
        if isinstance(self.primitives, str) or not isinstance(self.primitives, Sequence):
            raise JnasError(f"`primitives` must be a sequence of op names, got {self.primitives!r}")
        try:
            primitives = check_primitives(self.primitives)
        except JnasError as e:
            raise JnasError(f"`primitives`: {e}") from None
        object.__setattr__(self, "primitives", primitives)
        for name in ("init_channels", "cells_per_stage", "partial_channels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
                raise JnasError(f"`{name}` must be a positive int, got {value!r}")
        base.check_partial_channels(self.partial_channels, self.init_channels)

    # -- alpha -------------------------------------------------------------------------------
    def cell_types(self):
        return ("cell",)

    def num_edges(self):
        return NUM_EDGES

    # -- the supernet ------------------------------------------------------------------------
    def network(self, num_classes, *, train):
        return NB201Network(
            num_classes=num_classes,
            channels=self.init_channels,
            cells_per_stage=self.cells_per_stage,
            primitives=self.primitives,
            train=train,
            partial_channels=self.partial_channels,
        )

    # -- derivation --------------------------------------------------------------------------
    def incoming(self):
        return dag.incoming(STEPS, 1)

    def architecture(self, derived):
        if not isinstance(derived, Mapping) or "cell" not in derived:
            raise JnasError(f"derived ops need the key 'cell', got {derived!r}")
        columns = np.asarray(derived["cell"][0])
        if columns.shape != (NUM_EDGES,):
            raise JnasError(f"derived ops have shape {columns.shape}, need ({NUM_EDGES},)")
        # -1: the edge is dropped (its 'none' won), which the benchmark writes as 'none'.
        return tuple("none" if k < 0 else self.primitives[k] for k in columns.tolist())

    # -- the architecture --------------------------------------------------------------------
    def to_dict(self, arch):
        arch = check_arch(arch, self.primitives)
        return {"arch": to_string(arch, self.primitives), "ops": list(arch)}

    def from_dict(self, d):
        if not isinstance(d, Mapping) or not ({"arch", "ops"} & set(d)):
            raise JnasError(
                "an NB201 architecture record needs 'arch' (the benchmark string) or 'ops' "
                f"(6 op names), got {d!r}"
            )
        if "arch" in d:
            arch = from_string(d["arch"], self.primitives)
            if "ops" in d and tuple(d["ops"]) != arch:
                raise JnasError(
                    f"the record's 'ops' {list(d['ops'])} disagree with its 'arch' {d['arch']!r}"
                )
            return arch
        return check_arch(d["ops"], self.primitives)

    def benchmark_key(self, arch):
        return self.to_string(arch)

    def to_string(self, arch):
        return to_string(arch, self.primitives)

    def from_string(self, text):
        return from_string(text, self.primitives)

    def eval_network(self, arch, num_classes, *, train, auxiliary=False, drop_path=False):
        if auxiliary or drop_path:
            what = "auxiliary head" if auxiliary else "drop path"
            setting = "auxiliary_weight" if auxiliary else "drop_path_prob"
            raise JnasError(
                f"the NAS-Bench-201 network has no {what}, as the benchmark trained none: "
                f"set `{setting}` 0"
            )
        return NB201EvalNetwork(check_arch(arch, self.primitives), num_classes,
                                self.init_channels, self.cells_per_stage, train=train)

    def draw(self, arch, path, title=""):
        draw_cell(arch, path, title, self.primitives)

    def edge_labels(self):
        return [f"{s} → {n}" for s, n in EDGES]


def draw_cell(
    arch, path: str | os.PathLike, title: str = "", primitives: Sequence[str] = NB201_OPS
) -> None:
    """The cell as a 4-node DAG with each edge's op; 'none' edges dashed and unlabelled.
    Written atomically (a temporary file in the same folder, then renamed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Circle, FancyArrowPatch

    from jnas.plotting import _save_figure  # lazily: it pulls in the DARTS genotype module

    arch = check_arch(arch, primitives)
    # Nodes on a convex arc, so no straight edge passes through a third node.
    pos = {0: (0.0, 0.0), 1: (1.1, 1.6), 2: (3.5, 1.6), 3: (4.6, 0.0)}
    fig = Figure(figsize=(6.6, 3.4), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.set_xlim(-0.4, 5.0)
    ax.set_ylim(-0.4, 2.0)
    ax.set_aspect("equal")
    ax.set_axis_off()
    nodes = {}
    for k, xy in pos.items():
        color = "darkseagreen" if k == 0 else "palegoldenrod" if k == 3 else "lightblue"
        nodes[k] = Circle(xy, 0.28, facecolor=color, edgecolor="black", zorder=3)
        ax.add_patch(nodes[k])
        ax.text(*xy, str(k), ha="center", va="center", fontsize=12, zorder=4)
    for (s, n), op in zip(EDGES, arch, strict=True):
        none = op == "none"
        ax.add_patch(
            FancyArrowPatch(
                pos[s], pos[n], arrowstyle="-|>", mutation_scale=12, lw=1.2, zorder=2,
                color="silver" if none else "dimgray", linestyle="--" if none else "-",
                patchA=nodes[s], patchB=nodes[n],
            )
        )
        if none:
            continue
        p, q = np.asarray(pos[s]), np.asarray(pos[n])
        # The two crossing edges (0->2, 1->3) carry their labels off the crossing.
        t = {(0, 2): 0.33, (1, 3): 0.67}.get((s, n), 0.5)
        angle = float(np.degrees(np.arctan2(*(q - p)[::-1])))
        ax.text(
            *(p + t * (q - p)), op, ha="center", va="center", fontsize=8, zorder=5,
            rotation=angle, rotation_mode="anchor",
            bbox=dict(boxstyle="round,pad=0.15", facecolor="white", edgecolor="none", alpha=0.9),
        )
    if title:
        fig.suptitle(title)
    _save_figure(fig, path)
