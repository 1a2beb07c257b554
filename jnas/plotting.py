"""PNG pictures of a genotype (both cells as DAGs) and of alpha (softmax heatmaps).

Figures are built with `matplotlib.figure.Figure` and never through pyplot, so nothing is
registered in pyplot's global figure list (no leak over many epochs), no GUI backend is touched
(works headless) and the caller's matplotlib backend is left alone. PNG output uses Agg.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping, Sequence
from itertools import product
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Ellipse, FancyArrowPatch

from jnas.errors import JnasError
from jnas.genotype import Genotype, is_fixed_reduction, validate_genotype
from jnas.io import atomic_write

_INPUT_LABELS = ("$c_{k-2}$", "$c_{k-1}$")
_CELL_TITLES = {"normal": "normal cell", "reduce": "reduction cell", "cell": "cell"}
_CLASS_COLORS = colormaps["tab20"]
_COLORS = {"input": "darkseagreen", "node": "lightblue", "output": "palegoldenrod"}


def _save_figure(fig: Figure, path: str | os.PathLike) -> Path:
    """Save as PNG next to `path` then rename, so readers never see half a file."""
    try:
        with atomic_write(path, "wb") as f:
            fig.savefig(f, format="png", bbox_inches="tight")
    finally:
        # Drop the figure's artists at once rather than waiting for the garbage collector.
        fig.clear()
    return Path(path)


def _state_label(state: int) -> str:
    return _INPUT_LABELS[state] if state < 2 else f"$n_{{{state - 2}}}$"


def darts_edge_labels(steps: int) -> list[str]:
    """The rows of a DARTS cell's alpha: node by node, inputs in order."""
    return [
        f"{_state_label(src)} → $n_{{{node}}}$" for node in range(steps) for src in range(node + 2)
    ]


def _layout(steps: int) -> dict[Any, tuple[float, float]]:
    """States on one convex arc: inputs left, nodes over the top left to right, output right.

    With every node on a convex curve no straight edge can pass through a third node, which
    keeps any genotype readable without a graph layout library.
    """
    keys: list[Any] = [1, 0, *range(2, steps + 2), "out"]
    # From lower left (215 deg) over the top to lower right (-35 deg) of an ellipse, spaced by
    # arc length so that the edges between neighbours are long enough for their labels.
    a, b = 1.1 * (steps + 2), 3.0
    t = np.radians(np.linspace(215.0, -35.0, 2001))
    x, y = a * np.cos(t), b * np.sin(t)
    arc = np.concatenate([[0.0], np.cumsum(np.hypot(np.diff(x), np.diff(y)))])
    idx = np.searchsorted(arc, np.linspace(0.0, arc[-1], len(keys)))
    idx = np.minimum(idx, len(t) - 1)
    return {k: (float(x[i]), float(y[i])) for k, i in zip(keys, idx, strict=True)}


def _upright(angle: float) -> float:
    """Fold a direction in degrees into -90..90 so text along an edge never reads upside down."""
    return angle - 180 if angle > 90 else angle + 180 if angle < -90 else angle


def _draw_cell(ax, edges, concat, title: str, fontsize: float = 8) -> tuple[list, list]:
    """Draw one cell; return the boxes of its edge labels and of its nodes (`_Box`, pixels).

    Each label goes to the best spot along its edge: clear of nodes and earlier labels first,
    then hiding the least of other arrows. Where no spot is clear `_genotype_figure` draws
    again on a larger canvas rather than saving a clash.
    """
    steps = len(edges) // 2
    # (op, source, node state) of the real edges: a node's missing ones (`NO_EDGE`) are not drawn.
    edges = [(op, src, k // 2 + 2) for k, (op, src) in enumerate(edges) if op != "none"]
    pos = _layout(steps)
    xs = [x for x, _ in pos.values()]
    ys = [y for _, y in pos.values()]
    ax.set_xlim(min(xs) - 0.7, max(xs) + 0.7)
    ax.set_ylim(min(ys) - 0.6, max(ys) + 0.6)
    ax.set_aspect("equal")
    ax.set_axis_off()
    ax.set_title(title if concat else f"{title}: no edge")
    # Fix the final data-to-pixel transform now: label placement below measures text in pixels.
    ax.apply_aspect()
    renderer = ax.figure.canvas.get_renderer()
    pixels = {key: ax.transData.transform(p) for key, p in pos.items()}

    patches, nodes = {}, {}
    for key, (x, y) in pos.items():
        if key == "out":
            kind, label = "output", "$c_{k}$"
        elif key < 2:
            kind, label = "input", _INPUT_LABELS[key]
        else:
            kind, label = "node", str(key - 2)
        patches[key] = Ellipse((x, y), 1.0, 0.7, facecolor=_COLORS[kind], edgecolor="black")
        ax.add_patch(patches[key])
        ax.text(x, y, label, ha="center", va="center", fontsize=12, zorder=4)
        e = patches[key].get_window_extent(renderer)  # nodes count as level boxes
        nodes[key] = _Box(pixels[key], np.array([1.0, 0.0]), e.width / 2, e.height / 2)
    # Labels keep a few pixels from each other, and a few more from nodes so that the
    # arrowheads next to the nodes stay visible.
    near_nodes = {key: _grow(box, 4.0) for key, box in nodes.items()}

    texts, sizes = [], []
    for op, _, _ in edges:
        text = ax.text(
            0, 0, op, ha="center", va="center", fontsize=fontsize, zorder=5,
            rotation_mode="anchor",
            bbox=dict(boxstyle="round,pad=0.15", facecolor="white", edgecolor="none", alpha=0.9),
        )
        # The visible label is the text measured level plus the white box's padding.
        e = text.get_window_extent(renderer)
        pad = 0.15 * fontsize * ax.figure.dpi / 72
        texts.append(text)
        sizes.append((e.width / 2 + pad, e.height / 2 + pad))

    # A node may take the same input twice (two ops); a straight line would draw both edges
    # on top of each other, so such a pair is bent to either side.
    pairs = Counter((src, dst) for _, src, dst in edges)
    bends = {}
    curves = []  # (source, target, rad) of every arrow, the edges first and in order
    for _, src, dst in edges:
        if pairs[src, dst] == 1:
            rad = 0.0
        elif (src, dst) in bends:
            rad = bends[src, dst][1]  # the pair's second edge
        else:
            others = [box for key, box in near_nodes.items() if key not in (src, dst)]
            height = 2 * max(h for _, h in sizes)
            bends[src, dst] = _bends(pixels[src], pixels[dst], height, others)
            rad = bends[src, dst][0]
        curves.append((src, dst, rad))
    curves += [(c, "out", 0.0) for c in concat]
    beziers, traces = [], []
    for src, dst, rad in curves:
        ax.add_patch(
            FancyArrowPatch(
                pos[src], pos[dst], arrowstyle="-|>", mutation_scale=12, color="dimgray",
                lw=1.2, patchA=patches[src], patchB=patches[dst], zorder=2,
                connectionstyle=f"arc3,rad={rad}",
            )
        )
        a, b = pixels[src], pixels[dst]
        beziers.append((a, _arc3(a, b, rad), b))
        traces.append(_bezier(*beziers[-1], np.linspace(0, 1, 200)))

    labels = []
    for k, (text, (half_length, half_height)) in enumerate(zip(texts, sizes, strict=True)):
        a, c, b = beziers[k]
        others = np.concatenate(traces[:k] + traces[k + 1 :])
        # Try spots along the edge from its middle outwards, on the line and beside it
        # (crossing edges would otherwise stack labels at their midpoints). Take the spot with
        # the fewest clashes with nodes and earlier labels, then the one that hides the least
        # of other arrows, where a spot beside the line counts as hiding a steep crossing.
        best = None
        for offset, t in product((0.0, 1.0, -1.0, 2.0, -2.0), _SPOTS):  # in half heights
            u = (1 - t) * (c - a) + t * (b - c)  # the tangent
            u = u / np.linalg.norm(u)
            center = _bezier(a, c, b, t) + offset * half_height * np.array([-u[1], u[0]])
            box = _Box(center, u, half_length, half_height)
            clashes = sum(_overlaps(_grow(box, 2.0), other) for other in labels) + sum(
                10 * _overlaps(box, other) for other in near_nodes.values()
            )
            cost = (clashes, np.sum(_inside(others, box)) + 8 * abs(offset))
            if best is None or cost < best[0]:
                best = (cost, box)
            if cost == (0, 0):
                break
        box = best[1]
        text.set_position(ax.transData.inverted().transform(box.center))
        angle = float(np.degrees(np.arctan2(box.direction[1], box.direction[0])))
        text.set_rotation(_upright(angle))
        labels.append(box)
    return labels, list(nodes.values())


# Where along an edge (0 at its source, 1 at its target) a label may go, middle first.
_SPOTS = sorted(np.round(np.arange(0.15, 0.86, 0.05), 2), key=lambda t: abs(t - 0.5))


def _arc3(a: np.ndarray, b: np.ndarray, rad: float) -> np.ndarray:
    """Control point of matplotlib's "arc3,rad=..." curve from a to b: a quadratic Bezier."""
    return (a + b) / 2 + rad * np.array([b[1] - a[1], a[0] - b[0]])


def _bezier(a, c, b, t):
    """Point(s) at `t` of the quadratic Bezier curve from a to b with control point c."""
    t = np.asarray(t)[..., None]
    return (1 - t) ** 2 * a + 2 * t * (1 - t) * c + t**2 * b


def _bends(a: np.ndarray, b: np.ndarray, label_height: float, nodes: Sequence) -> tuple:
    """The rads (arc3) of two edges from a to b, bent to either side: (r, -r) where there is
    room; where a node is close on one side the other side bends further instead."""
    # A curve's middle lies rad * length / 2 off the straight line; 2r apart, the two
    # labels fit side by side there.
    r = max(0.12, 2.5 * label_height / np.linalg.norm(b - a))
    up, down = _room(a, b, r, nodes), _room(a, b, -r, nodes)
    return _room(a, b, 2 * r + down, nodes), _room(a, b, -(2 * r - up), nodes)


def _room(a: np.ndarray, b: np.ndarray, rad: float, nodes: Sequence) -> float:
    """`rad`, made smaller until that curve from a to b passes clear of the `nodes`."""
    t = np.linspace(0, 1, 200)
    while abs(rad) > 0.01 and any(
        _inside(_bezier(a, _arc3(a, b, rad), b, t), node).any() for node in nodes
    ):
        rad *= 0.8
    return rad


def _inside(points: np.ndarray, box: _Box) -> np.ndarray:
    """Which of the points (n, 2) lie inside `box`."""
    d = points - box.center
    u = box.direction
    return (abs(d @ u) < box.half_length) & (abs(d @ np.array([-u[1], u[0]])) < box.half_height)


class _Box(NamedTuple):
    """A rotated rectangle in pixels."""

    center: np.ndarray
    direction: np.ndarray  # unit vector along the long side
    half_length: float
    half_height: float


def _overlaps(a: _Box, b: _Box) -> bool:
    """Separating-axis test: two rectangles overlap unless a side's normal separates them."""
    for box in (a, b):
        u = box.direction
        for axis in (u, np.array([-u[1], u[0]])):
            reach = sum(h * abs(np.dot(axis, v)) for r in (a, b) for h, v in _half_sides(r))
            if abs(np.dot(axis, b.center - a.center)) >= reach:
                return False
    return True


def _grow(box: _Box, pixels: float) -> _Box:
    return box._replace(
        half_length=box.half_length + pixels, half_height=box.half_height + pixels
    )


def _half_sides(box: _Box) -> tuple:
    u = box.direction
    return ((box.half_length, u), (box.half_height, np.array([-u[1], u[0]])))


def plot_genotype(
    genotype: Genotype, path: str | os.PathLike, title: str | None = None
) -> Path:
    """Draw the normal (left) and reduction (right) cells of `genotype` as DAGs into a PNG."""
    # Op names are not checked against PRIMITIVES so custom search spaces can be drawn too.
    fig, _ = _genotype_figure(validate_genotype(genotype, primitives=None), title)
    return _save_figure(fig, path)


# (figure scale, label font size) to draw with, in turn, until no label clashes.
_TRIES = ((1.0, 8), (1.25, 8), (1.5, 7), (2.0, 7), (3.0, 6))


def _genotype_figure(g: Genotype, title: str | None = None) -> tuple[Figure, list]:
    """The figure of `g` and, per drawn cell, its label boxes and node boxes (pixels).

    Where a label finds no free spot the cells are drawn again on a larger canvas, which
    spaces the nodes more widely in pixels while the labels keep their size, and then with a
    smaller font. The last try is kept as it is; random cells of 1 to 6 nodes all fit the
    first, and one with 24-point labels fits 2.5 times larger.
    """
    steps = len(g.normal) // 2
    for attempt, (scale, fontsize) in enumerate(_TRIES, 1):
        # Size the figure to the layout's extent (about 0.6 inch per data unit) so the equal
        # aspect leaves no large blank bands.
        fig = Figure(
            figsize=(scale * 2 * 0.6 * (2.2 * (steps + 2) + 1.4), scale * 4.0), dpi=110
        )
        FigureCanvasAgg(fig)  # a real renderer, needed to measure labels while placing them
        axes = fig.subplots(1, 2, gridspec_kw=dict(left=0.01, right=0.99, wspace=0.05, top=0.85))
        cells = [_draw_cell(axes[0], g.normal, g.normal_concat, "normal cell", fontsize)]
        if is_fixed_reduction(g):
            axes[1].text(0.5, 0.5, "fixed reduction cell\n(GDAS's FRC)", ha="center",
                         va="center", fontsize=12)
            axes[1].set_axis_off()
        else:
            cells.append(_draw_cell(axes[1], g.reduce, g.reduce_concat, "reduction cell",
                                    fontsize))
        if attempt == len(_TRIES) or not any(_clashes(*cell) for cell in cells):
            break
        fig.clear()  # drop this try's artists at once
    if title:
        fig.suptitle(title)
    return fig, cells


def _clashes(labels: Sequence[_Box], nodes: Sequence[_Box]) -> bool:
    """Whether a label box overlaps another label box or a node box."""
    return any(
        _overlaps(a, b) for i, a in enumerate(labels) for b in [*labels[i + 1 :], *nodes]
    )


def plot_alpha(
    weights: Mapping[str, Any],
    path: str | os.PathLike,
    primitives: Sequence[str],
    edge_labels: Sequence[str],
    title: str | None = None,
) -> Path:
    """Heatmaps of the op weights per edge (softmax(alpha) for DARTS), one per cell type,
    values annotated, into a PNG. `edge_labels` names the rows (`Space.edge_labels()`)."""
    return _save_figure(_alpha_figure(weights, primitives, edge_labels, title), path)


def _alpha_figure(weights, primitives, edge_labels, title=None) -> Figure:
    """The figure of `plot_alpha`, unsaved."""
    weights = {cell: np.asarray(w, np.float64) for cell, w in weights.items()}
    rows = len(edge_labels)
    for cell, w in weights.items():
        if w.shape != (rows, len(primitives)):
            raise JnasError(
                f"weights[{cell!r}] has shape {w.shape}, expected ({rows}, {len(primitives)}) "
                "(one row per edge label, one column per op)"
            )
    # One color scale for both cells so their colors compare; it spans the data, not [0, 1],
    # because early in a search every weight is near 1/ops and the differences are small.
    vmin = min(float(w.min()) for w in weights.values())
    vmax = max(float(w.max()) for w in weights.values())
    num_ops = len(primitives)
    digits = _decimals(vmax - vmin)
    # Constrained layout keeps the right map's row labels clear of the left map at any size.
    fig = Figure(
        figsize=(len(weights) * (0.75 * num_ops + 1.8) + 1.2, 0.38 * rows + 2.2), dpi=110,
        layout="constrained",
    )
    axes = np.atleast_1d(fig.subplots(1, len(weights)))
    image = None
    for ax, cell in zip(axes, weights, strict=True):
        w = weights[cell]
        image = ax.imshow(w, cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
        ax.set_xticks(range(num_ops), primitives, rotation=45, ha="right", fontsize=9)
        ax.set_yticks(range(rows), edge_labels, fontsize=9)
        ax.set_title(_CELL_TITLES.get(cell, f"{cell} cell"))
        for r in range(rows):
            for c in range(num_ops):
                dark = w[r, c] < vmin + 0.6 * (vmax - vmin)
                # Even 5 decimals fill about half a cell's width at this size.
                ax.text(
                    c, r, f"{w[r, c]:.{digits}f}", ha="center", va="center", fontsize=7,
                    color="white" if dark else "black",
                )
    bar = fig.colorbar(image, ax=list(axes), fraction=0.03, label="op weight")
    bar.formatter.set_useOffset(False)  # whole weights on the ticks, not "1e-5 + 0.125"
    if title:
        fig.suptitle(title)
    return fig


def _decimals(span: float) -> int:
    """Decimals to print weights with: the fewest, 2 to 5, at which the color range `span`
    is 10 printed steps or more, so that cells of clearly different colors print different
    values (near-uniform weights early in a search differ in the third or fourth decimal)."""
    digits = 2
    # The tolerance keeps a span of exactly 0.1 at 2 decimals despite rounding.
    while digits < 5 and span < 10.0 ** (1 - digits) * (1 - 1e-9):
        digits += 1
    return digits


def plot_curves(
    rows: Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
    x: str,
    ys: Sequence[str | Sequence[str]],
    title: str | None = None,
) -> Path:
    """Line plots of logged metrics against `x`, one panel per entry of `ys`: a metric, or a
    tuple of metrics drawn together with a legend (train and test), into a PNG."""
    fig = Figure(figsize=(4.2 * len(ys), 3.2), dpi=110, layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(ys)))
    xs = [r[x] for r in rows]
    for ax, panel in zip(axes, ys, strict=True):
        keys = (panel,) if isinstance(panel, str) else tuple(panel)
        for key in keys:
            ax.plot(xs, [r[key] for r in rows], marker="." if len(rows) < 50 else None,
                    label=key)
        if len(keys) > 1:
            ax.legend()
        ax.set_xlabel(x)
        ax.set_title(" / ".join(keys))
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return _save_figure(fig, path)


def plot_partition(counts: np.ndarray, path: str | os.PathLike, title: str | None = None) -> Path:
    """Stacked bars of each client's examples per class ((clients, classes) counts)."""
    clients, classes = counts.shape
    fig = Figure(figsize=(max(4.0, 0.35 * clients + 2.0), 3.4), dpi=110, layout="constrained")
    ax = fig.subplots()
    colors = [_CLASS_COLORS(c % 20) for c in range(classes)]
    bottom = np.zeros(clients)
    for c in range(classes):
        ax.bar(np.arange(clients), counts[:, c], bottom=bottom, color=colors[c], width=0.8,
               label=str(c) if classes <= 20 else None)
        bottom += counts[:, c]
    ax.set_xlabel("client")
    ax.set_ylabel("examples")
    ax.set_xticks(np.arange(clients))
    if classes <= 20:
        ax.legend(title="class", fontsize=7, ncols=2, loc="upper left", bbox_to_anchor=(1, 1))
    ax.set_title(title or f"{clients} clients, examples per class")
    return _save_figure(fig, path)


def plot_client_accuracy(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike,
                         x: str = "round", title: str | None = None) -> Path:
    """The global model's validation accuracy on each client (`client_valid_acc`, thin) and on
    their union (`valid_acc`, thick) against `x`, into a PNG."""
    xs = [r[x] for r in rows]
    per_client = np.array([r["client_valid_acc"] for r in rows])
    clients = per_client.shape[1]
    fig = Figure(figsize=(6.4, 3.6), dpi=110, layout="constrained")
    ax = fig.subplots()
    for k in range(clients):
        ax.plot(xs, per_client[:, k], color=_CLASS_COLORS(k % 20), lw=1,
                label=f"client {k}" if clients <= 20 else None)
    ax.plot(xs, [r["valid_acc"] for r in rows], color="black", lw=2.5, label="all clients")
    ax.set_xlabel(x)
    ax.set_ylabel("validation accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncols=2 if clients > 10 else 1, loc="upper left",
              bbox_to_anchor=(1, 1))
    ax.set_title(title or "the global model on each client's validation half")
    return _save_figure(fig, path)
