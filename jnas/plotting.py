"""PNG pictures of a genotype (both cells as DAGs) and of alpha (softmax heatmaps).

Figures are built with `matplotlib.figure.Figure` and never through pyplot, so nothing is
registered in pyplot's global figure list (no leak over many epochs), no GUI backend is touched
(works headless) and the caller's matplotlib backend is left alone. PNG output uses Agg.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Ellipse, FancyArrowPatch

from jnas.errors import JnasError
from jnas.genotype import Genotype, is_fixed_reduction, validate_genotype
from jnas.io import atomic_write

_INPUT_LABELS = ("$c_{k-2}$", "$c_{k-1}$")
_CELL_TITLES = {"normal": "normal cell", "reduce": "reduction cell", "cell": "cell"}
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


def _draw_cell(ax, edges, concat, title: str) -> None:
    steps = len(edges) // 2
    pos = _layout(steps)
    xs = [x for x, _ in pos.values()]
    ys = [y for _, y in pos.values()]
    ax.set_xlim(min(xs) - 0.7, max(xs) + 0.7)
    ax.set_ylim(min(ys) - 0.6, max(ys) + 0.6)
    ax.set_aspect("equal")
    ax.set_axis_off()
    ax.set_title(title)
    # Fix the final data-to-pixel transform now: label placement below measures text in pixels.
    ax.apply_aspect()
    renderer = ax.figure.canvas.get_renderer()

    patches = {}
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
    # Boxes already on the canvas, in pixels; nodes count as level boxes.
    taken = []
    for patch in patches.values():
        e = patch.get_window_extent(renderer)
        center = np.array([(e.x0 + e.x1) / 2, (e.y0 + e.y1) / 2])
        taken.append(_Box(center, np.array([1.0, 0.0]), e.width / 2, e.height / 2))

    def arrow(src, dst):
        ax.add_patch(
            FancyArrowPatch(
                pos[src], pos[dst], arrowstyle="-|>", mutation_scale=12, color="dimgray",
                lw=1.2, patchA=patches[src], patchB=patches[dst], zorder=2,
            )
        )

    for c in concat:
        arrow(c, "out")
    for k, (op, src) in enumerate(edges):
        dst = k // 2 + 2
        arrow(src, dst)
        p, q = np.asarray(pos[src]), np.asarray(pos[dst])
        text = ax.text(
            0, 0, op, ha="center", va="center", fontsize=8, zorder=5,
            bbox=dict(boxstyle="round,pad=0.15", facecolor="white", edgecolor="none", alpha=0.9),
        )
        size = text.get_window_extent(renderer)  # measured level, before rotating
        pp, pq = ax.transData.transform(p), ax.transData.transform(q)
        direction = (pq - pp) / np.linalg.norm(pq - pp)
        text.set_rotation(_upright(float(np.degrees(np.arctan2(direction[1], direction[0])))))
        text.set_rotation_mode("anchor")
        # Slide the label along its edge to the first spot clear of nodes and earlier labels
        # (crossing edges would otherwise stack labels at their midpoints); else the spot
        # with the fewest clashes, a clash with a node counting most.
        best = None
        for t in (0.5, 0.4, 0.6, 0.3, 0.7, 0.22, 0.78):
            box = _Box(pp + t * (pq - pp), direction, size.width / 2, size.height / 2)
            clashes = sum(
                (10 if i < len(patches) else 1) * _overlaps(box, other)
                for i, other in enumerate(taken)
            )
            if best is None or clashes < best[0]:
                best = (clashes, t, box)
            if clashes == 0:
                break
        text.set_position(p + best[1] * (q - p))
        taken.append(best[2])


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


def _half_sides(box: _Box) -> tuple:
    u = box.direction
    return ((box.half_length, u), (box.half_height, np.array([-u[1], u[0]])))


def plot_genotype(
    genotype: Genotype, path: str | os.PathLike, title: str | None = None
) -> Path:
    """Draw the normal (left) and reduction (right) cells of `genotype` as DAGs into a PNG."""
    # Op names are not checked against PRIMITIVES so custom search spaces can be drawn too.
    g = validate_genotype(genotype, primitives=None)
    steps = len(g.normal) // 2
    # Size the figure to the layout's extent (about 0.6 inch per data unit) so the equal
    # aspect leaves no large blank bands.
    fig = Figure(figsize=(2 * 0.6 * (2.2 * (steps + 2) + 1.4), 4.0), dpi=110)
    FigureCanvasAgg(fig)  # a real renderer, needed to measure labels while placing them
    axes = fig.subplots(1, 2, gridspec_kw=dict(left=0.01, right=0.99, wspace=0.05, top=0.85))
    _draw_cell(axes[0], g.normal, g.normal_concat, "normal cell")
    if is_fixed_reduction(g):
        axes[1].text(0.5, 0.5, "fixed reduction cell\n(GDAS's FRC)", ha="center", va="center",
                     fontsize=12)
        axes[1].set_axis_off()
    else:
        _draw_cell(axes[1], g.reduce, g.reduce_concat, "reduction cell")
    if title:
        fig.suptitle(title)
    return _save_figure(fig, path)


def plot_alpha(
    weights: Mapping[str, Any],
    path: str | os.PathLike,
    primitives: Sequence[str],
    edge_labels: Sequence[str],
    title: str | None = None,
) -> Path:
    """Heatmaps of the op weights per edge (softmax(alpha) for DARTS), one per cell type,
    values annotated, into a PNG. `edge_labels` names the rows (`Space.edge_labels()`)."""
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
    # Near-uniform weights (early in a search) need a third decimal to differ.
    digits = 3 if vmax - vmin < 0.05 else 2
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
                ax.text(
                    c, r, f"{w[r, c]:.{digits}f}", ha="center", va="center", fontsize=7,
                    color="white" if dark else "black",
                )
    fig.colorbar(image, ax=list(axes), fraction=0.03, label="op weight")
    if title:
        fig.suptitle(title)
    return _save_figure(fig, path)


def plot_curves(
    rows: Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
    x: str,
    ys: Sequence[str],
    title: str | None = None,
) -> Path:
    """Line plots of the metrics `ys` against `x` over logged rows, one panel each, into a PNG."""
    fig = Figure(figsize=(4.2 * len(ys), 3.2), dpi=110, layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(ys)))
    xs = [r[x] for r in rows]
    for ax, y in zip(axes, ys, strict=True):
        ax.plot(xs, [r[y] for r in rows], marker="." if len(rows) < 50 else None)
        ax.set_xlabel(x)
        ax.set_title(y)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return _save_figure(fig, path)
