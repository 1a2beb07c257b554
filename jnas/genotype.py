"""Discrete architectures (genotypes): derivation from alpha, validation, JSON files.

Conventions follow DARTS (Liu et al., 2019). A cell has 2 input states (0 and 1: the outputs of
the previous two cells) and `steps` intermediate nodes; node i is state i + 2 and has an edge
from every earlier state j in 0..i+1. Edges are numbered node by node, inputs in order, so the
edge from state j into node i is row `sum_{k<i}(k + 2) + j` of an alpha matrix.

A genotype keeps 2 incoming edges per node, as `(op_name, input_state)` pairs listed node by
node, plus the intermediate states whose concatenation is the cell output. FairDARTS's
threshold derivation keeps 0, 1 or 2 edges per node: `NO_EDGE`, `("none", 0)`, fills each
missing place ('none' is DARTS's "no edge"). A node with no edge computes nothing: it is left
out of the concatenation and no edge may read it, as FairDARTS's evaluation cell skips such
isolated nodes (xiaomi-automl/FairDARTS 270cfc9, fairdarts/model.py L92-117).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from jnas import derive
from jnas.errors import JnasError
from jnas.io import write_json
from jnas.relax.base import softmax

PRIMITIVES = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)

CELL_TYPES = ("normal", "reduce")
NO_EDGE = ("none", 0)  # a node's missing edge
_DICT_KEYS = ("normal", "normal_concat", "reduce", "reduce_concat")


class Genotype(NamedTuple):
    """A discrete architecture: 2 chosen `(op_name, input_state)` edges per node, per cell
    (`NO_EDGE` where a node has fewer)."""

    normal: tuple[tuple[str, int], ...]
    normal_concat: tuple[int, ...]
    reduce: tuple[tuple[str, int], ...]
    reduce_concat: tuple[int, ...]


def edge_index(node: int, source: int) -> int:
    """Row of alpha for the edge from state `source` into intermediate node `node`.

    Node i has i + 2 inputs, so its rows start at sum_{k<i}(k + 2) = i(i + 3)/2.
    """
    return node * (node + 3) // 2 + source


def num_edges(steps: int) -> int:
    """Number of edges (alpha rows) in a cell with `steps` intermediate nodes: 14 for 4."""
    if not _is_int(steps) or steps < 1:
        raise JnasError(f"steps must be a positive int, got {steps!r}")
    return edge_index(steps, 0)


def _steps_for_edges(edges: int) -> int | None:
    """Inverse of num_edges, or None when no cell has exactly that many edges."""
    steps = 1
    while num_edges(steps) < edges:
        steps += 1
    return steps if num_edges(steps) == edges else None


def _is_int(value: Any) -> bool:
    # bool is an int subclass, but True as an input index is surely a mistake.
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def alpha_weights(
    alpha: Mapping[str, Any],
    primitives: Sequence[str] = PRIMITIVES,
    steps: int | None = None,
    cells: Sequence[str] = CELL_TYPES,
) -> dict[str, np.ndarray]:
    """Softmax over ops of each edge, per cell, as float64 numpy arrays (edges, ops).

    Checks the shapes first so a wrong alpha fails with a message instead of a broadcast error.
    With `steps=None` the number of nodes is inferred from the number of rows. `cells` are the
    searched cell types (("normal",) under GDAS's fixed reduction cell).
    """
    if not isinstance(alpha, Mapping):
        raise JnasError(
            f"alpha must be a mapping {{'normal': array, 'reduce': array}}, got "
            f"{type(alpha).__name__}"
        )
    num_ops = len(primitives)
    weights = {}
    for cell in cells:
        if cell not in alpha:
            raise JnasError(
                f"alpha has no {cell!r} entry (keys: {sorted(alpha)}); it needs "
                f"{' and '.join(repr(c) for c in cells)} arrays of shape (edges, ops)"
            )
        a = np.asarray(alpha[cell], dtype=np.float64)
        rows = num_edges(steps) if steps is not None else None
        if rows is None and a.ndim == 2:
            if _steps_for_edges(a.shape[0]) is None:
                raise JnasError(
                    f"alpha[{cell!r}] has {a.shape[0]} rows, which is no cell's edge count "
                    "(2, 5, 9, 14, ... for 1, 2, 3, 4, ... nodes)"
                )
            rows = a.shape[0]
        expected = (rows if rows is not None else "edges", num_ops)
        if a.ndim != 2 or a.shape != expected:
            raise JnasError(
                f"alpha[{cell!r}] has shape {a.shape}, expected {expected} "
                f"(num_edges(steps), len(primitives)); check steps and primitives"
            )
        if not np.all(np.isfinite(a)):
            raise JnasError(
                f"alpha[{cell!r}] contains NaN or inf; the search diverged (lower the "
                "architecture learning rate or check the loss)"
            )
        weights[cell] = softmax(a)
    steps_by_cell = {cell: _steps_for_edges(w.shape[0]) for cell, w in weights.items()}
    if len(set(steps_by_cell.values())) > 1:
        raise JnasError(
            f"alpha['normal'] has {weights['normal'].shape[0]} rows but alpha['reduce'] has "
            f"{weights['reduce'].shape[0]}; both cells must have the same number of nodes"
        )
    return weights


def genotype_from_derived(derived, primitives, incoming, steps: int) -> Genotype:
    """The Genotype of derived cells `{cell type: (ops, strength)}` (`jnas.derive`): per
    node its kept edges (op != -1), strongest first, ties to the lower input, then `NO_EDGE`
    up to 2; the output concatenates the nodes that kept an edge. An edge from a node that
    kept none is left out (that node computes nothing). A cell type absent from `derived` is
    GDAS's fixed reduction cell."""
    cells, concats = {}, {}
    for cell, (ops, strength) in derived.items():
        ops, strength = np.asarray(ops), np.asarray(strength)
        gene, present = [], [True, True]  # per state: the two inputs, then the nodes
        for node, rows in enumerate(incoming):
            rows = np.asarray(rows)
            kept = rows[(ops[rows] >= 0) & np.array(present)[rows - rows[0]]]
            kept = kept[np.argsort(-strength[kept], kind="stable")]
            if len(kept) > 2:
                raise JnasError(
                    f"the derivation kept {len(kept)} edges into node {node} of the {cell} "
                    "cell; a genotype has at most 2 per node"
                )
            gene += [(primitives[int(ops[r])], int(r - rows[0])) for r in kept]
            gene += [NO_EDGE] * (2 - len(kept))
            present.append(len(kept) > 0)
        cells[cell] = tuple(gene)
        concats[cell] = tuple(s for s in range(2, steps + 2) if present[s])
    fixed = "reduce" not in cells
    return validate_genotype(
        Genotype(
            normal=cells["normal"],
            normal_concat=concats["normal"],
            reduce=() if fixed else cells["reduce"],
            reduce_concat=() if fixed else concats["reduce"],
        ),
        None,
    )


def derive_genotype(
    alpha: Mapping[str, Any],
    primitives: Sequence[str] = PRIMITIVES,
    steps: int = 4,
    multiplier: int = 4,
    *,
    fixed_reduction: bool = False,
) -> Genotype:
    """Discretise alpha with DARTS's rule: per node, the 2 strongest edges and their best op.

    An edge's strength is its largest softmax weight over ops other than 'none'. The two kept
    edges of a node are listed strongest first. The cell output concatenates the last
    `multiplier` nodes. With `fixed_reduction` (GDAS's FRC) alpha has a "normal" entry only,
    and the genotype's `reduce` and `reduce_concat` are empty: the fixed cell.
    """
    cells = ("normal",) if fixed_reduction else CELL_TYPES
    weights = alpha_weights(alpha, primitives, steps, cells)  # also checks steps
    if not _is_int(multiplier) or not 1 <= multiplier <= steps:
        raise JnasError(f"multiplier must be an int in 1..steps={steps}, got {multiplier!r}")
    primitives = tuple(primitives)
    incoming = [list(range(edge_index(n, 0), edge_index(n + 1, 0))) for n in range(steps)]
    derived = {c: derive.rule("darts")(w, incoming, primitives) for c, w in weights.items()}
    g = genotype_from_derived(derived, primitives, incoming, steps)
    concat = tuple(range(2 + steps - multiplier, steps + 2))
    return g._replace(normal_concat=concat, reduce_concat=() if fixed_reduction else concat)


def _check_cell(name: str, edges: Any, primitives: Sequence[str] | None) -> tuple:
    """Normalise one cell's edge list; `primitives=None` skips the known-op check."""
    if isinstance(edges, str | bytes) or not isinstance(edges, Sequence):
        raise JnasError(
            f"{name} must be a list of [op_name, input_index] pairs, got {type(edges).__name__}"
        )
    if len(edges) < 2 or len(edges) % 2:
        raise JnasError(
            f"{name} has {len(edges)} edges; a genotype needs exactly 2 edges per node "
            "(an even count >= 2; ('none', 0) fills a missing one)"
        )
    out = []
    for k, entry in enumerate(edges):
        node = k // 2
        if (
            isinstance(entry, str | bytes)
            or not isinstance(entry, Sequence)
            or len(entry) != 2
            or not isinstance(entry[0], str)
            or not _is_int(entry[1])
        ):
            raise JnasError(
                f"{name} edge {k} is {entry!r}; each edge must be an [op_name, input_index] "
                "pair such as ['sep_conv_3x3', 0]"
            )
        op, src = entry[0], int(entry[1])
        if op != "none" and primitives is not None and op not in primitives:
            known = ", ".join(p for p in primitives if p != "none")
            raise JnasError(f"{name} edge {k} uses unknown op {op!r}; known ops: {known}")
        if not 0 <= src <= node + 1:
            raise JnasError(
                f"{name} node {node} (edge {k}) takes input {src}, but node {node} can only "
                f"take inputs 0..{node + 1} (the 2 cell inputs and earlier nodes)"
            )
        out.append((op, src))
    return tuple(out)


def _empty_nodes(name: str, edges: tuple) -> set[int]:
    """The states of the nodes with no edge (`NO_EDGE` twice); raise where an edge reads
    one (it has no value)."""
    empty = {k // 2 + 2 for k in range(0, len(edges), 2)
             if edges[k][0] == edges[k + 1][0] == "none"}
    for k, (op, src) in enumerate(edges):
        if op != "none" and src in empty:
            raise JnasError(
                f"{name} node {k // 2} (edge {k}) takes input {src}, node {src - 2}, which has "
                "no edge and so no value; drop the edge (write it as ('none', 0))"
            )
    return empty


def _check_concat(name: str, concat: Any, steps: int, empty: set[int] = frozenset()
                  ) -> tuple[int, ...]:
    """Normalise a concat list: distinct intermediate states 2..steps+1, none of them in
    `empty` (nodes with no edge); a cell whose every node is empty has an empty one."""
    if (
        isinstance(concat, str | bytes)
        or not isinstance(concat, Sequence)
        or not all(_is_int(c) for c in concat)
    ):
        raise JnasError(f"{name} must be a list of ints such as [2, 3, 4, 5], got {concat!r}")
    concat = tuple(int(c) for c in concat)
    if not concat and len(empty) < steps:
        raise JnasError(f"{name} is empty; list the node states that form the cell output")
    for c in concat:
        if not 2 <= c <= steps + 1:
            raise JnasError(
                f"{name} has index {c}; concat indices must be intermediate states "
                f"2..{steps + 1} for a cell with {steps} nodes"
            )
    if len(set(concat)) != len(concat):
        raise JnasError(f"{name} repeats a state: {list(concat)}; list each state once")
    for c in concat:
        if c in empty:
            raise JnasError(
                f"{name} lists state {c}, node {c - 2}, which has no edge; leave it out"
            )
    return concat


def _normalise(genotype: Any, primitives: Sequence[str] | None) -> Genotype:
    fields = {}
    for key in _DICT_KEYS:
        if not hasattr(genotype, key):
            raise JnasError(
                f"expected a Genotype with fields {', '.join(_DICT_KEYS)}, got "
                f"{type(genotype).__name__}; use genotype_from_dict for a dict"
            )
        fields[key] = getattr(genotype, key)
    normal = _check_cell("normal", fields["normal"], primitives)
    steps = len(normal) // 2
    normal_concat = _check_concat("normal_concat", fields["normal_concat"], steps,
                                  _empty_nodes("normal", normal))
    if is_fixed_reduction(genotype):
        return Genotype(normal, normal_concat, (), ())
    reduce = _check_cell("reduce", fields["reduce"], primitives)
    if len(normal) != len(reduce):
        raise JnasError(
            f"normal has {len(normal)} edges ({len(normal) // 2} nodes) but reduce has "
            f"{len(reduce)} ({len(reduce) // 2} nodes); both cells must have the same steps"
        )
    return Genotype(
        normal=normal,
        normal_concat=normal_concat,
        reduce=reduce,
        reduce_concat=_check_concat("reduce_concat", fields["reduce_concat"], steps,
                                    _empty_nodes("reduce", reduce)),
    )


def is_fixed_reduction(genotype: Any) -> bool:
    """Empty `reduce` and `reduce_concat` mark GDAS's fixed reduction cell (FRC)."""

    def empty(v):
        return isinstance(v, Sequence) and not isinstance(v, str | bytes) and len(v) == 0

    return empty(genotype.reduce) and empty(genotype.reduce_concat)


def validate_genotype(
    genotype: Any, primitives: Sequence[str] | None = PRIMITIVES
) -> Genotype:
    """Return `genotype` as a normalised Genotype (tuples, ints), or raise JnasError.

    `primitives=None` checks the structure only and accepts any op name, for callers
    (saving, plotting) that do not know which search space a genotype came from. 'none' is
    always accepted: it marks a node's missing edge (`NO_EDGE`).
    """
    return _normalise(genotype, None if primitives is None else tuple(primitives))


def genotype_to_dict(genotype: Genotype) -> dict[str, list]:
    """The official DARTS field layout with JSON types (lists, no tuples)."""
    # Structure is checked, op names are not: a genotype may use custom primitives.
    g = validate_genotype(genotype, None)
    return {
        "normal": [[op, src] for op, src in g.normal],
        "normal_concat": list(g.normal_concat),
        "reduce": [[op, src] for op, src in g.reduce],
        "reduce_concat": list(g.reduce_concat),
    }


def genotype_from_dict(d: Mapping[str, Any], primitives: Sequence[str] = PRIMITIVES) -> Genotype:
    """Build a validated Genotype from the official field layout; extra keys are ignored."""
    if not isinstance(d, Mapping):
        raise JnasError(
            f"a genotype dict must be a JSON object with keys {', '.join(_DICT_KEYS)}, got "
            f"{type(d).__name__}"
        )
    missing = [k for k in _DICT_KEYS if k not in d]
    if missing:
        raise JnasError(
            f"genotype dict is missing key(s) {', '.join(missing)}; it needs "
            f"{', '.join(_DICT_KEYS)}"
        )
    return validate_genotype(Genotype(*(d[k] for k in _DICT_KEYS)), primitives)


def save_genotype(genotype: Genotype, path: str | os.PathLike) -> Path:
    """Write `genotype` as JSON (indent 2), atomically so a crash never leaves half a file."""
    return write_json(path, genotype_to_dict(genotype))


def load_genotype(path: str | os.PathLike, primitives: Sequence[str] = PRIMITIVES) -> Genotype:
    """Read a genotype JSON file, or return a named one from GENOTYPES (e.g. "DARTS_V2")."""
    p = Path(path)
    if not p.is_file() and isinstance(path, str) and path in GENOTYPES:
        return GENOTYPES[path]
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise JnasError(
            f"cannot read genotype file {str(p)!r} ({e.strerror or e}); pass an existing JSON "
            f"file or one of the names {', '.join(GENOTYPES)}"
        ) from e
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise JnasError(
            f"genotype file {str(p)!r} is not valid JSON ({e}); rewrite it with save_genotype"
        ) from e
    try:
        return genotype_from_dict(data, primitives)
    except JnasError as e:
        raise JnasError(f"genotype file {str(p)!r}: {e}") from e


# Published DARTS cells (Liu et al., 2019): first-order (V1) and second-order (V2) search.
DARTS_V1 = Genotype(
    normal=(
        ("sep_conv_3x3", 1),
        ("sep_conv_3x3", 0),
        ("skip_connect", 0),
        ("sep_conv_3x3", 1),
        ("skip_connect", 0),
        ("sep_conv_3x3", 1),
        ("sep_conv_3x3", 0),
        ("skip_connect", 2),
    ),
    normal_concat=(2, 3, 4, 5),
    reduce=(
        ("max_pool_3x3", 0),
        ("max_pool_3x3", 1),
        ("skip_connect", 2),
        ("max_pool_3x3", 0),
        ("max_pool_3x3", 0),
        ("skip_connect", 2),
        ("skip_connect", 2),
        ("avg_pool_3x3", 0),
    ),
    reduce_concat=(2, 3, 4, 5),
)

DARTS_V2 = Genotype(
    normal=(
        ("sep_conv_3x3", 0),
        ("sep_conv_3x3", 1),
        ("sep_conv_3x3", 0),
        ("sep_conv_3x3", 1),
        ("sep_conv_3x3", 1),
        ("skip_connect", 0),
        ("skip_connect", 0),
        ("dil_conv_3x3", 2),
    ),
    normal_concat=(2, 3, 4, 5),
    reduce=(
        ("max_pool_3x3", 0),
        ("max_pool_3x3", 1),
        ("skip_connect", 2),
        ("max_pool_3x3", 1),
        ("max_pool_3x3", 0),
        ("skip_connect", 2),
        ("skip_connect", 2),
        ("max_pool_3x3", 1),
    ),
    reduce_concat=(2, 3, 4, 5),
)

# GDAS's published cells (Dong & Yang, 2019; AutoDL-Projects at f7a38d9,
# others/GDAS/lib/nas/genotypes.py L182-195): V1 searched both cells; F1 searched the normal
# cell with the fixed reduction cell (FRC: an empty reduction cell here), the paper's 2.82 %.
GDAS_V1 = Genotype(
    normal=(
        ("skip_connect", 0),
        ("skip_connect", 1),
        ("skip_connect", 0),
        ("sep_conv_5x5", 2),
        ("sep_conv_3x3", 3),
        ("skip_connect", 0),
        ("sep_conv_5x5", 4),
        ("sep_conv_3x3", 3),
    ),
    normal_concat=(2, 3, 4, 5),
    reduce=(
        ("sep_conv_5x5", 0),
        ("sep_conv_3x3", 1),
        ("sep_conv_5x5", 2),
        ("sep_conv_5x5", 1),
        ("dil_conv_5x5", 2),
        ("sep_conv_3x3", 1),
        ("sep_conv_5x5", 0),
        ("sep_conv_5x5", 1),
    ),
    reduce_concat=(2, 3, 4, 5),
)

GDAS_F1 = Genotype(
    normal=(
        ("skip_connect", 0),
        ("skip_connect", 1),
        ("skip_connect", 0),
        ("sep_conv_3x3", 2),
        ("skip_connect", 0),
        ("sep_conv_3x3", 2),
        ("skip_connect", 0),
        ("sep_conv_3x3", 2),
    ),
    normal_concat=(2, 3, 4, 5),
    reduce=(),
    reduce_concat=(),
)

# FairDARTS's cell a (xiaomi-automl/FairDARTS 270cfc9, fairdarts/genotypes.py L150-152, the
# repository's default `DARTS = FairDARTS_a`; "Params: 2.83" M): its (op, node, input)
# triples with `NO_EDGE` where a normal node kept fewer than 2 edges, and the nodes that kept
# one as the output, as its evaluation cell (DCOCell) concatenates them.
FAIRDARTS_A = Genotype(
    normal=(
        ("sep_conv_3x3", 0),
        ("sep_conv_5x5", 1),
        NO_EDGE,
        NO_EDGE,
        ("max_pool_3x3", 0),
        NO_EDGE,
        ("sep_conv_3x3", 0),
        NO_EDGE,
    ),
    normal_concat=(2, 4, 5),
    reduce=(
        ("max_pool_3x3", 0),
        ("avg_pool_3x3", 1),
        ("avg_pool_3x3", 0),
        ("dil_conv_5x5", 1),
        ("avg_pool_3x3", 0),
        ("sep_conv_5x5", 1),
        ("skip_connect", 0),
        ("skip_connect", 1),
    ),
    reduce_concat=(2, 3, 4, 5),
)

GENOTYPES = {
    "DARTS_V1": DARTS_V1,
    "DARTS_V2": DARTS_V2,
    "DARTS": DARTS_V2,
    "GDAS_V1": GDAS_V1,
    "GDAS_F1": GDAS_F1,
    "GDAS": GDAS_F1,
    "FairDARTS_a": FAIRDARTS_A,
}
