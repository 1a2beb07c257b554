"""Tests for jnas.genotype (derivation, validation, JSON) and jnas.plotting (PNG output)."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.patches import FancyArrowPatch
from PIL import Image

from jnas import plotting
from jnas.errors import JnasError
from jnas.genotype import (
    DARTS_V1,
    DARTS_V2,
    GENOTYPES,
    NO_EDGE,
    PRIMITIVES,
    Genotype,
    alpha_weights,
    derive_genotype,
    genotype_from_dict,
    genotype_to_dict,
    load_genotype,
    num_edges,
    save_genotype,
    validate_genotype,
)
from jnas.plotting import (
    _alpha_figure,
    _decimals,
    _genotype_figure,
    _overlaps,
    darts_edge_labels,
    plot_alpha,
    plot_genotype,
)

OP = {name: k for k, name in enumerate(PRIMITIVES)}
TIED_CELL = (("max_pool_3x3", 0), ("max_pool_3x3", 1)) * 4


def zeros_alpha(steps=4, num_ops=8):
    return {cell: np.zeros((num_edges(steps), num_ops)) for cell in ("normal", "reduce")}


def reference_parse(alpha_cell, primitives, steps):
    """The DARTS rule written out plainly with Python sorting, to cross-check the module."""
    e = np.exp(alpha_cell - alpha_cell.max(axis=1, keepdims=True))
    w = e / e.sum(axis=1, keepdims=True)
    real = [k for k, p in enumerate(primitives) if p != "none"]
    gene, start = [], 0
    for node in range(steps):
        rows = w[start : start + node + 2]
        ranked = sorted(range(node + 2), key=lambda j: -max(rows[j][k] for k in real))
        for j in ranked[:2]:
            best = max(real, key=lambda k: rows[j][k])  # max keeps the first of equals
            gene.append((primitives[best], j))
        start += node + 2
    return tuple(gene)


# ----------------------------------------------------------------------------- derivation


def test_num_edges():
    assert [num_edges(s) for s in (1, 2, 3, 4)] == [2, 5, 9, 14]
    with pytest.raises(JnasError, match="steps must be a positive int"):
        num_edges(0)


def test_derive_hand_made_alpha():
    alpha = zeros_alpha()
    a = alpha["normal"]
    # node 0 (rows 0-1): 'none' dominates edge c_{k-2}; it is ignored for the op, and its
    # real ops' weights are tiny, so the weaker-looking edge from c_{k-1} ranks first.
    a[0, OP["none"]], a[0, OP["sep_conv_3x3"]] = 10.0, 2.0
    a[1, OP["sep_conv_5x5"]] = 1.0
    # node 1 (rows 2-4): all tied -> lower inputs first, first real op.
    # node 2 (rows 5-8): inputs 3 > 1 > 0 by strength; input 2 has only a large 'none'.
    a[5, OP["avg_pool_3x3"]] = 1.0
    a[6, OP["skip_connect"]] = 2.0
    a[7, OP["none"]] = 5.0
    a[8, OP["dil_conv_3x3"]] = 3.0
    # node 3 (rows 9-13): input 1 > input 4 > input 0, listed strongest first.
    a[9, OP["max_pool_3x3"]] = 1.5
    a[10, OP["dil_conv_5x5"]] = 2.5
    a[13, OP["sep_conv_3x3"]] = 2.0
    g = derive_genotype(alpha)
    assert g.normal == (
        ("sep_conv_5x5", 1),
        ("sep_conv_3x3", 0),
        ("max_pool_3x3", 0),
        ("max_pool_3x3", 1),
        ("dil_conv_3x3", 3),
        ("skip_connect", 1),
        ("dil_conv_5x5", 1),
        ("sep_conv_3x3", 4),
    )
    assert g.reduce == TIED_CELL
    assert g.normal_concat == g.reduce_concat == (2, 3, 4, 5)
    assert all(type(src) is int for _, src in g.normal)
    assert derive_genotype(alpha, multiplier=2).normal_concat == (4, 5)


def test_derive_accepts_jax_arrays():
    alpha = {k: jnp.asarray(v) for k, v in zeros_alpha().items()}
    alpha["reduce"] = alpha["reduce"].at[9, OP["none"]].set(50.0).at[9, OP["sep_conv_5x5"]].set(1)
    g = derive_genotype(alpha)
    assert g.normal == TIED_CELL
    # Edge 9 (c_{k-2} -> node 3) loses its rank to c_{k-1}, since 'none' swamps its weights.
    assert g.reduce[6:] == (("max_pool_3x3", 1), ("max_pool_3x3", 2))


def test_derive_steps2_three_ops():
    prims = ("none", "conv", "pool")
    a = np.zeros((5, 3))
    a[0, 1] = 1.0  # c_{k-2} -> n0: conv
    a[1, 2] = 2.0  # c_{k-1} -> n0: pool, stronger
    a[2, 0], a[2, 2] = 3.0, 0.5  # c_{k-2} -> n1: mostly 'none', weak
    a[3, 1] = 0.2  # c_{k-1} -> n1: conv
    a[4, 2] = 1.0  # n0 -> n1: pool, strongest
    g = derive_genotype({"normal": a, "reduce": a[:, ::-1]}, prims, steps=2, multiplier=2)
    assert g.normal == (("pool", 1), ("conv", 0), ("pool", 2), ("conv", 1))
    assert g.normal_concat == (2, 3)
    assert g.reduce == reference_parse(a[:, ::-1], prims, 2)
    assert validate_genotype(g, prims) == g


def test_derive_without_none_counts_all_ops():
    a = np.zeros((2, 2))
    a[0, 0] = 3.0
    a[1, 1] = 1.0
    g = derive_genotype({"normal": a, "reduce": a}, ("conv", "pool"), steps=1, multiplier=1)
    assert g.normal == (("conv", 0), ("pool", 1))
    assert g.normal_concat == (2,)


def test_derive_matches_reference_on_random_alpha():
    rng = np.random.default_rng(0)
    for _ in range(20):
        alpha = {c: rng.normal(scale=2.0, size=(14, 8)) for c in ("normal", "reduce")}
        g = derive_genotype(alpha)
        assert g.normal == reference_parse(alpha["normal"], PRIMITIVES, 4)
        assert g.reduce == reference_parse(alpha["reduce"], PRIMITIVES, 4)


def test_alpha_weights_is_softmax():
    rng = np.random.default_rng(1)
    alpha = {c: rng.normal(size=(14, 8)).astype(np.float32) for c in ("normal", "reduce")}
    w = alpha_weights(alpha)
    assert w["normal"].dtype == np.float64
    np.testing.assert_allclose(w["normal"].sum(axis=1), 1.0)
    e = np.exp(alpha["reduce"].astype(np.float64))
    np.testing.assert_allclose(w["reduce"], e / e.sum(axis=1, keepdims=True), rtol=1e-6)


@pytest.mark.parametrize(
    "alpha, kwargs, match",
    [
        ({"normal": np.zeros((14, 8))}, {}, "alpha has no 'reduce' entry"),
        (
            {"normal": np.zeros((14, 7)), "reduce": np.zeros((14, 8))},
            {},
            r"alpha\['normal'\] has shape \(14, 7\), expected \(14, 8\)",
        ),
        (
            {"normal": np.zeros((14, 8)), "reduce": np.zeros((9, 8))},
            {},
            r"alpha\['reduce'\] has shape \(9, 8\), expected \(14, 8\)",
        ),
        (
            {"normal": np.zeros(8), "reduce": np.zeros((14, 8))},
            {},
            r"alpha\['normal'\] has shape \(8,\)",
        ),
        (
            {"normal": np.full((14, 8), np.nan), "reduce": np.zeros((14, 8))},
            {},
            "contains NaN or inf",
        ),
        (np.zeros((14, 8)), {}, "alpha must be a mapping"),
        (None, {"multiplier": 5}, "multiplier must be an int in 1..steps=4"),
        (None, {"steps": 0}, "steps must be a positive int"),
        (None, {"primitives": ("none",) * 8}, "no op other than 'none'"),
    ],
)
def test_derive_rejects_bad_input(alpha, kwargs, match):
    with pytest.raises(JnasError, match=match):
        derive_genotype(zeros_alpha() if alpha is None else alpha, **kwargs)


def test_alpha_weights_infers_steps_and_rejects_odd_rows():
    assert alpha_weights(zeros_alpha(steps=3))["normal"].shape == (9, 8)
    with pytest.raises(JnasError, match="10 rows, which is no cell's edge count"):
        alpha_weights({"normal": np.zeros((10, 8)), "reduce": np.zeros((10, 8))})
    with pytest.raises(JnasError, match="both cells must have the same number of nodes"):
        alpha_weights({"normal": np.zeros((14, 8)), "reduce": np.zeros((9, 8))})


# ----------------------------------------------------------------------------- published


def test_published_genotypes_validate():
    for g in (DARTS_V1, DARTS_V2):
        assert validate_genotype(g) == g
        assert len(g.normal) == len(g.reduce) == 8
    assert GENOTYPES["DARTS"] is DARTS_V2
    assert GENOTYPES["DARTS_V1"] is DARTS_V1
    assert DARTS_V2.normal[-1] == ("dil_conv_3x3", 2)
    assert DARTS_V1.reduce[-1] == ("avg_pool_3x3", 0)


def test_validate_normalises_lists_and_numpy_ints():
    g = Genotype(
        normal=[["sep_conv_3x3", np.int64(0)], ["skip_connect", 1]],
        normal_concat=[np.int32(2)],
        reduce=[("max_pool_3x3", 0), ("max_pool_3x3", 1)],
        reduce_concat=(2,),
    )
    out = validate_genotype(g)
    assert out.normal == (("sep_conv_3x3", 0), ("skip_connect", 1))
    assert type(out.normal[0][1]) is int and type(out.normal_concat[0]) is int
    assert isinstance(out.normal, tuple) and isinstance(out.normal_concat, tuple)


# ----------------------------------------------------------------------------- validation


def with_(field, value, base=DARTS_V2):
    return base._replace(**{field: value})


def with_edge(k, entry, field="normal"):
    edges = list(getattr(DARTS_V2, field))
    edges[k] = entry
    return with_(field, tuple(edges))


@pytest.mark.parametrize(
    "genotype, match",
    [
        (
            with_edge(0, ("conv_9x9", 0)),
            r"normal edge 0 uses unknown op 'conv_9x9'; known ops: max_pool_3x3, .*dil_conv_5x5",
        ),
        # 'none' marks a missing edge (FairDARTS): a node without edges has no value.
        (
            with_("normal", (*DARTS_V2.normal[:2], NO_EDGE, NO_EDGE, *DARTS_V2.normal[4:])),
            "normal_concat lists state 3, node 1, which has no edge",
        ),
        (
            with_("reduce", (*DARTS_V2.reduce[:2], NO_EDGE, NO_EDGE, *DARTS_V2.reduce[4:7],
                             ("skip_connect", 3))),
            r"reduce node 3 \(edge 7\) takes input 3, node 1, which has no edge",
        ),
        (with_("normal", DARTS_V2.normal[:3]), "normal has 3 edges; .*2 edges per node"),
        (with_("reduce", ()), "reduce has 0 edges"),
        (
            with_("reduce", DARTS_V2.reduce[:6]),
            r"normal has 8 edges \(4 nodes\) but reduce has 6 \(3 nodes\)",
        ),
        (
            with_edge(2, ("sep_conv_3x3", 3)),
            r"normal node 1 \(edge 2\) takes input 3, but node 1 can only take inputs 0\.\.2",
        ),
        (with_edge(7, ("sep_conv_3x3", 6), "reduce"), r"reduce node 3 \(edge 7\) takes input 6"),
        (with_edge(0, ("sep_conv_3x3", -1)), r"node 0 \(edge 0\) takes input -1"),
        (
            with_("normal_concat", (2, 3, 4, 6)),
            r"normal_concat has index 6; .*states 2\.\.5 for a cell with 4 nodes",
        ),
        (with_("reduce_concat", (1, 2)), "reduce_concat has index 1"),
        (with_("reduce_concat", ()), "reduce_concat is empty"),
        (with_("normal_concat", (2, 2)), "normal_concat repeats a state"),
        (with_("normal_concat", ("2",)), "normal_concat must be a list of ints"),
        (with_("normal_concat", 2), "normal_concat must be a list of ints"),
        (with_("normal", "sep_conv_3x3"), "normal must be a list of"),
        ({"normal": []}, "expected a Genotype with fields"),
    ]
    + [
        (with_edge(1, bad), r"normal edge 1 is .*must be an \[op_name, input_index\] pair")
        for bad in (
            ("sep_conv_3x3",),
            ("sep_conv_3x3", 0, 1),
            ("sep_conv_3x3", "0"),
            ("sep_conv_3x3", 1.0),
            ("sep_conv_3x3", True),
            (3, 0),
            "sep_conv_3x3",
            None,
        )
    ],
)
def test_validate_rejects(genotype, match):
    with pytest.raises(JnasError, match=match):
        validate_genotype(genotype)


def test_validate_checks_ops_against_given_primitives():
    with pytest.raises(JnasError, match="unknown op 'sep_conv_3x3'; known ops: conv, pool"):
        validate_genotype(DARTS_V2, ("none", "conv", "pool"))


# ----------------------------------------------------------------------------- JSON


def test_dict_layout_and_round_trip():
    d = genotype_to_dict(DARTS_V1)
    assert list(d) == ["normal", "normal_concat", "reduce", "reduce_concat"]
    assert d["normal"][0] == ["sep_conv_3x3", 1] and d["normal_concat"] == [2, 3, 4, 5]
    assert genotype_from_dict(json.loads(json.dumps(d))) == DARTS_V1


def test_save_load_round_trip(tmp_path):
    path = tmp_path / "new" / "dir" / "genotype.json"
    assert save_genotype(DARTS_V2, path) == path
    with open(path) as f:
        data = json.load(f)
    assert set(data) == {"normal", "normal_concat", "reduce", "reduce_concat"}
    assert data["reduce"][3] == ["max_pool_3x3", 1]
    assert load_genotype(path) == DARTS_V2
    assert load_genotype(str(path)) == DARTS_V2
    assert path.read_text().startswith('{\n  "normal": [\n')  # indent 2
    assert sorted(p.name for p in path.parent.iterdir()) == ["genotype.json"]  # no temp left


def test_save_load_custom_primitives(tmp_path):
    g = Genotype((("conv", 0), ("pool", 1)), (2,), (("pool", 0), ("pool", 1)), (2,))
    path = save_genotype(g, tmp_path / "g.json")
    assert load_genotype(path, primitives=("none", "conv", "pool")) == g
    with pytest.raises(JnasError, match="g.json.*unknown op 'conv'"):
        load_genotype(path)


def test_load_by_name():
    assert load_genotype("DARTS") is DARTS_V2
    assert load_genotype("DARTS_V1") is DARTS_V1


def test_from_dict_errors():
    d = genotype_to_dict(DARTS_V2)
    del d["reduce_concat"]
    with pytest.raises(JnasError, match=r"missing key\(s\) reduce_concat"):
        genotype_from_dict(d)
    with pytest.raises(JnasError, match="must be a JSON object"):
        genotype_from_dict([1, 2])


def test_load_missing_file(tmp_path):
    path = tmp_path / "missing.json"
    with pytest.raises(JnasError, match=r"cannot read genotype file .*missing\.json.*DARTS_V2"):
        load_genotype(path)


def test_load_broken_json(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"normal": [["sep_conv_3x3", 0],')
    with pytest.raises(JnasError, match=r"genotype file .*broken\.json.* is not valid JSON"):
        load_genotype(path)


def test_load_invalid_genotype_names_file(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"normal": [], "normal_concat": [2]}))
    with pytest.raises(JnasError, match=r"bad\.json.*missing key\(s\) reduce, reduce_concat"):
        load_genotype(path)


# ----------------------------------------------------------------------------- plotting


def assert_png(path, min_width, min_height):
    assert path.is_file() and path.stat().st_size > 1000
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.width > min_width and im.height > min_height
    assert not [p for p in path.parent.iterdir() if p.name != path.name]  # no temp left


def test_plot_genotype_writes_png(tmp_path):
    path = tmp_path / "plots" / "genotype.png"
    assert plot_genotype(DARTS_V2, path, title="DARTS_V2") == path
    assert_png(path, 800, 200)
    # Custom op names and another step count draw too; the file is replaced in place.
    g = Genotype((("conv", 0), ("pool", 1)), (2,), (("pool", 0), ("pool", 1)), (2,))
    plot_genotype(g, path)
    assert_png(path, 300, 100)


def test_plot_genotype_rejects_invalid(tmp_path):
    with pytest.raises(JnasError, match="normal has 3 edges"):
        plot_genotype(with_("normal", DARTS_V2.normal[:3]), tmp_path / "g.png")
    assert not (tmp_path / "g.png").exists()


PARALLEL_CELL = (("sep_conv_5x5", 0), ("dil_conv_5x5", 0)) * 4
# Genotypes whose labels have crowded: the published cells, cells with two edges between the
# same pair of nodes (drawn as two curves), and smaller and larger cells.
CROWDED_GENOTYPES = {
    "DARTS_V1": DARTS_V1,
    "DARTS_V2": DARTS_V2,
    "parallel_into_node_0": with_(
        "normal", (("sep_conv_3x3", 1), ("dil_conv_5x5", 1)) + DARTS_V2.normal[2:]
    ),
    "parallel_in_every_node": Genotype(
        PARALLEL_CELL,
        (2, 3, 4, 5),
        tuple(e for k in range(4) for e in (("sep_conv_5x5", k + 1), ("dil_conv_5x5", k + 1))),
        (2, 3, 4, 5),
    ),
    "two_nodes": Genotype(
        (("sep_conv_5x5", 0), ("dil_conv_5x5", 0), ("sep_conv_3x3", 1), ("dil_conv_3x3", 2)),
        (2, 3),
        (("max_pool_3x3", 1), ("avg_pool_3x3", 1), ("skip_connect", 2), ("sep_conv_5x5", 2)),
        (2, 3),
    ),
    "five_nodes": Genotype(
        (
            ("sep_conv_3x3", 0), ("sep_conv_5x5", 1), ("dil_conv_5x5", 0), ("sep_conv_3x3", 2),
            ("skip_connect", 1), ("dil_conv_3x3", 3), ("sep_conv_5x5", 0), ("sep_conv_5x5", 4),
            ("dil_conv_5x5", 5), ("avg_pool_3x3", 1),
        ),
        (2, 3, 4, 5, 6),
        PARALLEL_CELL + (("sep_conv_5x5", 2), ("dil_conv_5x5", 2)),
        (4, 5, 6),
    ),
}


def label_texts(ax):
    """The edge labels of a drawn cell, in edge order (node names have no box)."""
    return [t for t in ax.texts if t.get_bbox_patch() is not None]


def assert_labels_clear(fig, cells, genotype):
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax, (labels, nodes), edges in zip(
        fig.axes, cells, (genotype.normal, genotype.reduce), strict=True
    ):
        assert len(labels) == len(edges) and len(nodes) == len(edges) // 2 + 3
        clashes = [
            (edges[i][0], f"label {j}" if j < len(labels) else f"node {j - len(labels)}")
            for i, a in enumerate(labels)
            for j, b in enumerate(labels + nodes)
            if j > i and _overlaps(a, b)
        ]
        assert not clashes, f"label boxes overlap (op, other label or node): {clashes}"
        # The boxes are what is drawn: each bounds its label's white box as rendered, whose
        # rounded corners fall a little inside.
        for text, box, (op, _) in zip(label_texts(ax), labels, edges, strict=True):
            assert text.get_text() == op
            drawn = text.get_bbox_patch().get_window_extent(renderer)
            (ux, uy), length, height = abs(box.direction), box.half_length, box.half_height
            for lo, hi, center, reach in (
                (drawn.x0, drawn.x1, box.center[0], ux * length + uy * height),
                (drawn.y0, drawn.y1, box.center[1], uy * length + ux * height),
            ):
                assert center - reach - 0.5 <= lo <= center - reach + 3
                assert center + reach - 3 <= hi <= center + reach + 0.5


@pytest.mark.parametrize("name", sorted(CROWDED_GENOTYPES))
def test_plot_genotype_labels_clear_each_other_and_nodes(name):
    genotype = CROWDED_GENOTYPES[name]
    fig, cells = _genotype_figure(genotype, title=name)
    assert len(cells) == 2
    assert_labels_clear(fig, cells, genotype)


def test_plot_genotype_bends_parallel_edges_apart():
    genotype = CROWDED_GENOTYPES["parallel_into_node_0"]
    fig, _ = _genotype_figure(genotype)
    arrows = [p for p in fig.axes[0].patches if isinstance(p, FancyArrowPatch)]
    rads = [a.get_connectionstyle().rad for a in arrows[: len(genotype.normal)]]
    # Node 0 takes c_{k-1} twice: two arcs bent to either side, far enough to tell apart;
    # every other edge is straight.
    assert rads[0] > 0.05 and rads[1] < -0.05 and rads[0] - rads[1] >= 0.2
    assert rads[2:] == [0.0] * (len(rads) - 2)
    assert [t.get_text() for t in label_texts(fig.axes[0])][:2] == [
        "sep_conv_3x3",
        "dil_conv_5x5",
    ]


def test_plot_genotype_draws_larger_when_labels_do_not_fit(monkeypatch):
    # Labels far too large for the first canvas: the figure is drawn again on a larger one
    # rather than saved with a clash.
    monkeypatch.setattr(plotting, "_TRIES", ((1.0, 24), (2.5, 24)))
    fig, cells = _genotype_figure(DARTS_V2)
    assert fig.get_size_inches()[1] == pytest.approx(2.5 * 4.0)
    assert_labels_clear(fig, cells, DARTS_V2)
    monkeypatch.setattr(plotting, "_TRIES", ((1.0, 24),))
    _, cells = _genotype_figure(DARTS_V2)
    assert any(plotting._clashes(*cell) for cell in cells)  # so the retry above mattered


def test_plot_alpha_writes_png(tmp_path):
    rng = np.random.default_rng(0)
    weights = alpha_weights({c: rng.normal(size=(14, 8)) for c in ("normal", "reduce")})
    path = tmp_path / "a" / "alpha.png"
    assert plot_alpha(weights, path, PRIMITIVES, darts_edge_labels(4), title="epoch 3") == path
    assert_png(path, 800, 300)


def spread_weights(low, high, seed=0):
    """8 ops x 14 edges x 2 cells of weights in [low, high], both ends reached."""
    rng = np.random.default_rng(seed)
    w = {c: rng.uniform(low, high, size=(14, 8)) for c in ("normal", "reduce")}
    w["normal"][3, 2], w["reduce"][9, 5] = low, high
    return w


def annotations(fig):
    """The printed value of each heatmap cell, per cell type, as an (edges, ops) array."""
    heatmaps = [ax for ax in fig.axes if ax.images]
    return [np.array([t.get_text() for t in ax.texts]).reshape(14, 8) for ax in heatmaps]


@pytest.mark.parametrize(
    "low, high, digits", [(0.1235, 0.1265, 4), (0.0, 1.0, 2), (0.1, 0.15, 3), (0.125, 0.12502, 5)]
)
def test_plot_alpha_prints_enough_decimals_to_tell_colors_apart(low, high, digits, tmp_path):
    weights = spread_weights(low, high)
    fig = _alpha_figure(weights, PRIMITIVES, darts_edge_labels(4), title="epoch 3")
    normal, reduce = annotations(fig)
    assert normal[3, 2] == f"{low:.{digits}f}" and reduce[9, 5] == f"{high:.{digits}f}"
    assert normal[3, 2] != reduce[9, 5]  # the darkest and brightest cells read differently
    assert normal[0, 0] == f"{weights['normal'][0, 0]:.{digits}f}"
    # Every value fits inside its cell.
    FigureCanvasAgg(fig).draw()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes[:2]:
        (x0, y0), (x1, y1) = ax.transData.transform([(-0.5, -0.5), (0.5, 0.5)])
        for text in ax.texts:
            extent = text.get_window_extent(renderer)
            assert extent.width < 0.9 * abs(x1 - x0) and extent.height < 0.9 * abs(y1 - y0)
    path = plot_alpha(weights, tmp_path / "alphas.png", PRIMITIVES, darts_edge_labels(4))
    assert_png(path, 800, 300)


def test_decimals_follow_the_color_range():
    assert [_decimals(s) for s in (1.0, 0.1, 0.0999, 0.01, 0.003, 0.001, 1e-4, 0.0)] == [
        2, 2, 3, 3, 4, 4, 5, 5
    ]


def test_plot_alpha_rejects_wrong_shape(tmp_path):
    weights = {"normal": np.zeros((14, 8)), "reduce": np.zeros((14, 8))}
    with pytest.raises(JnasError, match=r"expected \(14, 3\)"):
        plot_alpha(weights, tmp_path / "a.png", ("none", "conv", "pool"), darts_edge_labels(4))


def test_fixed_reduction_genotype_has_an_empty_reduce_cell_and_round_trips(tmp_path):
    rng = np.random.default_rng(11)
    alpha = {"normal": rng.normal(size=(14, 8))}
    g = derive_genotype(alpha, fixed_reduction=True)
    assert g.normal == reference_parse(alpha["normal"], PRIMITIVES, 4)
    assert g.reduce == () and g.reduce_concat == ()
    save_genotype(g, tmp_path / "frc.json")
    assert load_genotype(tmp_path / "frc.json") == g
    # Without fixed_reduction the missing cell is an error, not a silent FRC.
    with pytest.raises(JnasError, match="alpha has no 'reduce' entry"):
        derive_genotype(alpha)
    # Only both fields empty mean the fixed cell.
    with pytest.raises(JnasError, match="reduce has 0 edges"):
        validate_genotype(g._replace(reduce_concat=(2, 3, 4, 5)))
