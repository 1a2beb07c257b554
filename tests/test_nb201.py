"""NAS-Bench-201's space: its ops, the cell against a per-edge reference, the network's
shapes and parameter count, derivation, the benchmark's architecture strings, the space's
methods, and the benchmark look-up."""

import itertools
import json
import re

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jnas.benchmark import Benchmark
from jnas.errors import JnasError
from jnas.ops import MixedOp, ReLUConvBN, batch_norm, make_op
from jnas.spaces import base, dag, nb201
from jnas.spaces.nb201 import (
    BEST_CIFAR10,
    NB201_OPS,
    NB201Cell,
    NB201Network,
    NB201Space,
    ResNetBlock,
    from_string,
    to_string,
)

C = 4
ALL_NONE = "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"
MIXED = "|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|nor_conv_1x1~0|none~1|avg_pool_3x3~2|"
# alpha row -> (parameter group, position in the group): edges_0 holds the edges from node 0
# (1<-0, 2<-0, 3<-0), edges_1 the others (2<-1, 3<-1, 3<-2).
PLACE = {0: (0, 0), 1: (0, 1), 3: (0, 2), 2: (1, 0), 4: (1, 1), 5: (1, 2)}


def images(seed, n=2, size=8, channels=C):
    return jax.random.normal(jax.random.key(seed), (n, size, size, channels))


def random_variables(module, *args, seed=0):
    """Variables of `module`'s shapes filled from numpy. A real `init` compiles the random
    initialisers, which takes tens of seconds on XLA:CPU for the nested scans here."""
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        if name in ("mean", "var"):
            return jnp.full(leaf.shape, float(name == "var"), leaf.dtype)
        center = 1.0 if name == "scale" else 0.0
        return jnp.asarray(center + 0.3 * rng.normal(size=leaf.shape), leaf.dtype)

    shapes = jax.eval_shape(module.init, jax.random.key(0), *args)
    return jax.tree_util.tree_map_with_path(fill, shapes)


def edge_variables(variables, row):
    """The variables of one edge's mixed op, sliced out of the cell's stacked groups."""
    g, pos = PLACE[row]
    return {
        col: jax.tree.map(lambda a: a[pos], tree[f"edges_{g}"])
        for col, tree in variables.items()
    }


# -- ops -------------------------------------------------------------------------------------


@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("k", [1, 3])
def test_nor_conv_is_relu_conv_bn_with_bias_exactly_when_bn_is_affine_free(k, affine):
    x = images(0)
    op = make_op(f"nor_conv_{k}x{k}", C, 1, affine=affine, train=True)
    variables = random_variables(op, x)
    conv = variables["params"]["PatchConv_0"]
    assert ("bias" in conv) == (not affine)
    assert ("BatchNorm_0" in variables["params"]) == affine
    # ReLU -> conv (padding k // 2) -> BN, computed by hand in train mode.
    kernel = conv["kernel"]
    y = jax.lax.conv_general_dilated(
        jax.nn.relu(x), kernel, (1, 1), [(k // 2, k // 2)] * 2,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    ) + conv.get("bias", 0.0)
    mean, var = y.mean((0, 1, 2)), y.var((0, 1, 2))
    want = (y - mean) / jnp.sqrt(var + 1e-5)
    if affine:
        bn = variables["params"]["BatchNorm_0"]
        want = want * bn["scale"] + bn["bias"]
    out, _ = op.apply(variables, x, mutable=["batch_stats"])
    chex.assert_trees_all_close(out, want, atol=1e-5, rtol=1e-5)
    assert op.apply(variables, images(0, size=9), mutable=["batch_stats"])[0].shape[1] == 9


# -- the cell --------------------------------------------------------------------------------


def test_edges_follow_the_benchmarks_edge2index():
    # xautodl's search cells index edges by the sorted keys "i<-j".
    keys = sorted(f"{n}<-{s}" for n in range(1, 4) for s in range(n))
    assert [f"{n}<-{s}" for s, n in nb201.EDGES] == keys
    assert [dag.edge_row(n - 1, s, 1) for s, n in nb201.EDGES] == list(range(6))
    groups = dag.edge_groups(3, 1)
    assert {dag.edge_row(n, s, 1): (g, i) for g, grp in enumerate(groups)
            for i, (s, n) in enumerate(grp)} == PLACE


@pytest.fixture(scope="module")
def cell_and_variables():
    cell = NB201Cell(C, NB201_OPS, train=True)
    w = jax.random.normal(jax.random.key(2), (6, len(NB201_OPS)))
    return cell, random_variables(cell, images(0), w)


def test_cell_is_the_sum_over_its_six_edges(cell_and_variables):
    cell, variables = cell_and_variables
    x = images(4)
    w = jax.random.normal(jax.random.key(5), (6, len(NB201_OPS)))
    out, _ = cell.apply(variables, x, w, mutable=["batch_stats"])
    mixed = MixedOp(C, 1, NB201_OPS, True, pool_bn=False)
    nodes = [x]
    for node in range(1, 4):
        total = 0.0
        for row, (s, n) in enumerate(nb201.EDGES):
            if n == node:
                y, _ = mixed.apply(edge_variables(variables, row), nodes[s], w[row],
                                   mutable=["batch_stats"])
                total = total + y
        nodes.append(total)
    chex.assert_trees_all_close(out, nodes[3], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("index", [(3, 2, 4, 1, 0, 3), (1, 3, 3, 2, 4, 0)])
def test_single_path_cell_runs_each_edges_indexed_op_alone(cell_and_variables, index):
    cell, variables = cell_and_variables
    x = images(6)
    index = jnp.array(index, jnp.int32)
    w = jax.nn.one_hot(index, len(NB201_OPS))
    out, _ = cell.apply(variables, x, w, index[:, None], mutable=["batch_stats"])
    nodes = [x]
    for node in range(1, 4):
        total = 0.0
        for row, (s, n) in enumerate(nb201.EDGES):
            if n == node:
                k = int(index[row])
                op = make_op(NB201_OPS[k], C, 1, affine=False, train=True)
                edge = edge_variables(variables, row)
                # The op's own variables only: no BatchNorm after the pooling.
                own = {col: tree[f"ops_{k}"] for col, tree in edge.items() if f"ops_{k}" in tree}
                assert set(edge["params"]) == {"ops_2", "ops_3"}
                total = total + op.apply(own, nodes[s], mutable=["batch_stats"])[0]
        nodes.append(total)
    chex.assert_trees_all_close(out, nodes[3], atol=1e-5, rtol=1e-5)


# -- the network -----------------------------------------------------------------------------


def param_count(tree):
    return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


def test_parameter_count_at_the_benchmark_size():
    net = NB201Space().network(10, train=True)
    x, w = jnp.zeros((2, 32, 32, 3)), {"cell": jnp.zeros((6, 5))}
    params = jax.eval_shape(net.init, jax.random.key(0), x, w)["params"]
    count = param_count(params)
    print(f"NB201 search network, C=16, N=5, 10 classes: {count:,} parameters")
    # xautodl's TinyNetworkDarts(C=16, N=5, max_nodes=4, 10 classes, NB201 ops, affine=False)
    # counted from its code: per cell 6 edges x (1x1 conv + 3x3 conv, both with bias, as BN
    # is affine-free) = 6 (10 C^2 + 2 C); 5 cells at 16, 32 and 64 channels: 1,619,520. Stem
    # 432 + BN 32; ResNet blocks 14,464 and 57,600; last BN 128; classifier 650. Its
    # `parameters()` add alpha's 30.
    cells = sum(5 * 6 * (10 * c * c + 2 * c) for c in (16, 32, 64))
    assert cells == 1_619_520
    assert count == cells + 464 + 14_464 + 57_600 + 128 + 650 == 1_692_826
    for stage in range(3):
        for leaf in jax.tree.leaves(params[f"cells_{stage}"]):
            assert leaf.shape[:2] == (5, 3)  # N cells, then 3 edges per group
    assert param_count(params["block_1"]) == 14_464


@pytest.mark.parametrize("single_path", [False, True])
def test_network_output_shape(single_path):
    net = NB201Network(10, channels=C, cells_per_stage=2)
    x, w = jnp.zeros((3, 16, 16, 3)), {"cell": jnp.zeros((6, 5))}
    index = {"cell": jnp.zeros((6, 1), jnp.int32)} if single_path else None
    variables = jax.eval_shape(net.init, jax.random.key(0), x, w, index)
    out, state = jax.eval_shape(
        lambda v: net.apply(v, x, w, index, mutable=["batch_stats"]), variables
    )
    assert out.shape == (3, 10)
    assert jax.tree.map(lambda a: a.shape, state) == jax.tree.map(
        lambda a: a.shape, {"batch_stats": variables["batch_stats"]}
    )


def test_network_is_stem_stages_of_scanned_cells_and_resnet_blocks():
    """The network (N=2) against its parts applied one by one, each cell with its slice of
    the stacked parameters."""
    net = NB201Network(7, channels=C, cells_per_stage=2)
    x = images(7, channels=3)
    w = {"cell": jax.random.normal(jax.random.key(8), (6, 5))}
    variables = random_variables(net, x, w)
    out, _ = jax.jit(lambda v: net.apply(v, x, w, mutable=["batch_stats"]))(variables)

    def run(module, params, *args):
        return module.apply({"params": params}, *args, mutable=["batch_stats"])[0]

    @jax.jit
    def reference(p):
        h = run(nn.Conv(C, (3, 3), padding=1, use_bias=False), p["stem"], x)
        h = run(batch_norm(True, True), p["BatchNorm_0"], h)
        c = C
        for stage in range(3):
            if stage:
                c *= 2
                h = run(ResNetBlock(c, 2), p[f"block_{stage}"], h)
            for i in range(2):
                cell_params = jax.tree.map(lambda a, i=i: a[i], p[f"cells_{stage}"])
                h = run(NB201Cell(c), cell_params, h, w["cell"])
            assert h.shape == (2, 8 >> stage, 8 >> stage, c)
        h = jax.nn.relu(run(batch_norm(True, True), p["BatchNorm_1"], h))
        return run(nn.Dense(7), p["classifier"], h.mean((1, 2)))

    chex.assert_trees_all_close(out, reference(variables["params"]), atol=1e-4, rtol=1e-4)


def test_resnet_block_shortcut_is_avg_pool_then_1x1_conv():
    block = ResNetBlock(8, 2)
    x = images(10)
    variables = random_variables(block, x)
    assert jax.tree.map(lambda a: a.shape, variables["params"]["downsample"]) == {
        "kernel": (1, 1, C, 8)
    }
    out, _ = block.apply(variables, x, mutable=["batch_stats"])
    p = variables["params"]
    y = ReLUConvBN(8, 3, 2, True).apply({"params": p["conv_a"]}, x, mutable=["batch_stats"])[0]
    y = ReLUConvBN(8, 3, 1, True).apply({"params": p["conv_b"]}, y, mutable=["batch_stats"])[0]
    pooled = x.reshape(2, 4, 2, 4, 2, C).mean((2, 4))
    want = pooled @ p["downsample"]["kernel"][0, 0] + y
    chex.assert_trees_all_close(out, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "x_shape, weights, index, match",
    [
        ((2, 10, 10, 3), {"cell": np.zeros((6, 5))}, None, "multiples of 4"),
        ((2, 8, 8), {"cell": np.zeros((6, 5))}, None, "NHWC"),
        ((2, 8, 8, 3), {"normal": np.zeros((6, 5))}, None, r"keys \['cell'\]"),
        ((2, 8, 8, 3), {"cell": np.zeros((14, 5))}, None, r"needs \(6, 5\)"),
        ((2, 8, 8, 3), {"cell": np.zeros((6, 5))}, {"cell": np.zeros((6, 1))}, "int array"),
        ((2, 8, 8, 3), {"cell": np.zeros((6, 5))}, {"cell": np.zeros(6, int)}, r"\(6, paths\)"),
        ((2, 8, 8, 3), {"cell": np.zeros((6, 5))}, np.zeros(6, int), r"keys \['cell'\]"),
    ],
)
def test_network_checks_its_inputs(x_shape, weights, index, match):
    net = NB201Network(10, channels=C, cells_per_stage=1)
    with pytest.raises(JnasError, match=match):
        jax.eval_shape(net.init, jax.random.key(0), jnp.zeros(x_shape), weights, index)


# -- derivation and the architecture ---------------------------------------------------------


def test_argmax_derivation_keeps_none_where_it_wins():
    space = NB201Space()
    w = np.full((6, 5), 0.1)
    best = [3, 2, 0, 1, 4, 3]  # 'none' wins on edge 2 (1 -> 2)
    w[np.arange(6), best] = 0.6
    ops, _ = space.derive_ops({"cell": w})["cell"]
    assert ops[2] == -1
    arch = space.derive({"cell": w})
    assert arch == ("nor_conv_3x3", "nor_conv_1x1", "none", "skip_connect", "avg_pool_3x3",
                    "nor_conv_3x3")
    assert space.to_string(arch) == (
        "|nor_conv_3x3~0|+|nor_conv_1x1~0|none~1|+|skip_connect~0|avg_pool_3x3~1|nor_conv_3x3~2|"
    )
    # Jittable, as the derivation rules are.
    traced = jax.jit(lambda w: space.derive_ops({"cell": w})["cell"][0])(jnp.asarray(w))
    np.testing.assert_array_equal(traced, ops)


@pytest.mark.parametrize("text", [BEST_CIFAR10, ALL_NONE, MIXED])
def test_strings_round_trip(text):
    ops = from_string(text)
    assert len(ops) == 6 and to_string(ops) == text
    assert from_string(f"  {text}\n") == ops


def test_every_architecture_round_trips_to_a_distinct_string():
    strings = {to_string(ops) for ops in itertools.product(NB201_OPS, repeat=6)}
    assert len(strings) == 5**6 == 15_625
    assert all(to_string(from_string(s)) == s for s in strings)
    assert from_string(BEST_CIFAR10) == ("nor_conv_3x3",) * 3 + ("skip_connect",) + (
        "nor_conv_3x3",) * 2


@pytest.mark.parametrize(
    "text, match",
    [
        ("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|", "2 '\\+'-separated node"),
        (BEST_CIFAR10 + "+|none~0|", "4 '\\+'-separated node"),
        ("", "1 '\\+'-separated node"),
        ("nor_conv_3x3~0+|none~0|none~1|+|none~0|none~1|none~2|", "node 1 .* between '\\|'"),
        ("|none~0|+|none~0|none~1+|none~0|none~1|none~2|", "node 2 .* between '\\|'"),
        ("|none~0|+|none~0|+|none~0|none~1|none~2|", "node 2 .* has 1 input.*needs 2"),
        ("|none~0|+|none~0|none~1|+|none~0|none~1|", "node 3 .* has 2 input.*needs 3"),
        ("|none~0|none~1|+|none~0|none~1|+|none~0|none~1|none~2|", "node 1 .* has 2 input"),
        ("|none~1|+|none~0|none~1|+|none~0|none~1|none~2|", "must read node 0.*'~1'"),
        ("|none~0|+|none~1|none~0|+|none~0|none~1|none~2|", "input 0 of node 2.*'~1'"),
        ("|none~0|+|none~0|none~x|+|none~0|none~1|none~2|", "must read node 1.*'~x'"),
        ("|none~0|+|none~0|none~1|+|none~0|none~1|none~2~3|", "must read node 2"),
        ("|none|+|none~0|none~1|+|none~0|none~1|none~2|", "'none'.*not of the form"),
        ("|none~0|+|none~0||+|none~0|none~1|none~2|", "''.*not of the form"),
        ("|conv_5x5~0|+|none~0|none~1|+|none~0|none~1|none~2|", "unknown op 'conv_5x5'"),
        ("|none~0|+|none~0|none~1|+|none~0|sep_conv_3x3~1|none~2|", "unknown op 'sep_conv"),
        (None, "must be a str"),
        (("none",) * 6, "must be a str"),
    ],
)
def test_malformed_strings_are_clear_errors(text, match):
    with pytest.raises(JnasError, match=match) as e:
        from_string(text)
    assert BEST_CIFAR10 in str(e.value)  # every message shows a valid string


@pytest.mark.parametrize(
    "ops, match",
    [
        (("none",) * 5, "has 6 ops.*got 5"),
        ("none", "sequence of 6 op names"),
        (("none",) * 5 + ("conv",), "edge 2->3 .* unknown op 'conv'"),
    ],
)
def test_to_string_checks_the_architecture(ops, match):
    with pytest.raises(JnasError, match=match):
        to_string(ops)


# -- the space -------------------------------------------------------------------------------


def test_space_methods():
    space = base.space_class("nas-bench-201")()
    assert isinstance(space, NB201Space) and space.derivation == "argmax"
    assert space.cell_types() == ("cell",) and space.num_edges() == 6
    assert space.alpha_shapes() == {"cell": (6, 5)}
    assert space.incoming() == ((0,), (1, 2), (3, 4, 5))
    assert space.edge_labels() == ["0 → 1", "0 → 2", "1 → 2", "0 → 3", "1 → 3", "2 → 3"]
    net = space.network(100, train=False)
    assert (net.num_classes, net.channels, net.cells_per_stage, net.train) == (100, 16, 5, False)
    arch = from_string(MIXED)
    d = space.to_dict(arch)
    assert d == {"arch": MIXED, "ops": list(arch)}
    assert space.from_dict(json.loads(json.dumps(d))) == arch
    assert space.from_dict({"arch": MIXED}) == space.from_dict({"ops": list(arch)}) == arch
    with pytest.raises(JnasError, match="disagree"):
        space.from_dict({"arch": MIXED, "ops": ["none"] * 6})
    with pytest.raises(JnasError, match="needs 'arch'"):
        space.from_dict({"genotype": MIXED})
    assert space.to_string(arch) == MIXED


def test_space_with_fewer_ops_writes_dropped_edges_as_none():
    space = NB201Space(("skip_connect", "nor_conv_3x3"))
    arch = space.architecture({"cell": (np.array([0, 1, -1, 1, 0, -1]), np.zeros(6))})
    assert space.to_string(arch) == (
        "|skip_connect~0|+|nor_conv_3x3~0|none~1|+|nor_conv_3x3~0|skip_connect~1|none~2|"
    )
    with pytest.raises(JnasError, match="unknown op 'avg_pool_3x3'"):
        space.to_string(("avg_pool_3x3",) * 6)


@pytest.mark.parametrize(
    "fields, match",
    [
        (dict(cells_per_stage=0), "`cells_per_stage` must be a positive int, got 0"),
        (dict(cells_per_stage=True), "`cells_per_stage` must be a positive int"),
        (dict(init_channels="16"), "`init_channels` must be a positive int, got '16'"),
        (dict(primitives=("none", "conv_9x9")), "`primitives`.*unknown op"),
        (dict(primitives="none"), "`primitives` must be a sequence"),
        (dict(primitives=("none",)), "`primitives`.*besides 'none'"),
    ],
)
def test_space_checks_its_fields(fields, match):
    with pytest.raises(JnasError, match=match):
        NB201Space(**fields)


def test_draw_writes_a_png_atomically(tmp_path):
    space = NB201Space()
    path = tmp_path / "cell" / "arch.png"
    space.draw(from_string(MIXED), str(path), title="epoch 3")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["arch.png"]
    space.draw(from_string(ALL_NONE), str(path))  # an all-'none' cell draws too


# -- the benchmark look-up -------------------------------------------------------------------


def write_table(path, rows, header="arch,cifar10_test,cifar100_test,imagenet16_test"):
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


TABLE = [
    f"{BEST_CIFAR10},94.37,73.51,47.31",
    f"{ALL_NONE},10.0,1.0,0.83",
    f"{MIXED},85.5,60.25,30",
]


def test_benchmark_lookup(tmp_path):
    bench = Benchmark.load(write_table(tmp_path / "nb201.csv", TABLE))
    assert len(bench) == 3 and bench.columns == ("cifar10_test", "cifar100_test",
                                                  "imagenet16_test")
    assert bench.lookup(BEST_CIFAR10) == {
        "benchmark_cifar10_test": 94.37,
        "benchmark_cifar100_test": 73.51,
        "benchmark_imagenet16_test": 47.31,
    }
    assert bench.lookup(from_string(MIXED))["benchmark_imagenet16_test"] == 30.0
    assert MIXED in bench and to_string(("skip_connect",) * 6) not in bench
    other = to_string(("skip_connect",) * 6)
    with pytest.raises(JnasError, match=r"architecture '\|skip_connect~0\|.*not in the "
                                        r"benchmark table '.*nb201.csv' of 3"):
        bench.lookup(other)
    with pytest.raises(JnasError, match="unknown op"):
        bench.lookup(MIXED.replace("avg_pool", "max_pool"))


@pytest.mark.parametrize(
    "header, rows, match",
    [
        ("cifar10_test,cifar100_test", ["1,2"], "no 'arch' column.*cifar10_test, cifar100_test"),
        (None, [TABLE[0], f"{MIXED},85.5,n/a,30"],
         "line 3 .*column 'cifar100_test' has the non-numeric value 'n/a'"),
        (None, [TABLE[0], f"{MIXED},85.5,,30"], "line 3 .*non-numeric value ''"),
        (None, [*TABLE, TABLE[0]], "line 5 .*repeats the architecture .* of line 2"),
        (None, ["|none~0|+|none~0|+|none~0|none~1|none~2|,1,2,3"], "line 2 .*node 2"),
        (None, [f"{MIXED},1,2"], "line 2 .*has 3 fields, the header has 4"),
        ("arch", [MIXED], "no metric column"),
        (None, [], "no architectures"),
    ],
)
def test_benchmark_table_errors(tmp_path, header, rows, match):
    path = write_table(tmp_path / "t.csv", rows, *([header] if header else []))
    with pytest.raises(JnasError, match=match):
        Benchmark.load(path)


def test_benchmark_missing_file_and_nats_bench(tmp_path):
    with pytest.raises(JnasError, match="does not exist"):
        Benchmark.load(tmp_path / "missing.csv")
    try:
        import nats_bench  # noqa: F401
    except ImportError:
        with pytest.raises(JnasError, match=re.escape("pip install \"jnas[nats]\"")):
            Benchmark.load(tmp_path)


@pytest.mark.slow
def test_exact_hypergradient_through_the_nb201_network_matches_finite_differences():
    """DARTS's second-order hypergradient through a tiny NB201 network (one cell per stage,
    shared alpha) against central differences of the unrolled objective, in float64. Slow
    (100 s): the default suite checks the transform through the DARTS network
    (test_network.py)."""
    from jnas import darts_hypergrad, unrolled_step
    from jnas.relax import make_relaxation

    softmax = make_relaxation("darts", 1)
    with jax.enable_x64(True):
        space = NB201Space(init_channels=4, cells_per_stage=1)
        net = space.network(3, train=True)
        k = jax.random.split(jax.random.key(0), 6)
        x_t, x_v = (jax.random.normal(kk, (4, 8, 8, 3), jnp.float64) for kk in k[:2])
        y_t, y_v = (jax.random.randint(kk, (4,), 0, 3) for kk in k[2:4])
        alpha = {"cell": jax.random.normal(k[4], (6, 5), jnp.float64)}
        variables = net.init(k[5], x_t, softmax.op_weights(alpha))
        variables = jax.tree.map(lambda a: a.astype(jnp.float64), variables)
        params, stats = variables["params"], variables["batch_stats"]
        buf = jax.tree.map(lambda p: 0.1 * jnp.ones_like(p), params)

        def loss_fn(w, a, batch):
            logits, _ = net.apply({"params": w, "batch_stats": stats}, batch[0],
                                  softmax.op_weights(a), mutable=["batch_stats"])
            return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(4), batch[1]])

        kw = dict(lr=0.5, momentum=0.9, momentum_buf=buf, weight_decay=5e-4)
        _, dalpha = jax.jit(lambda a: darts_hypergrad(
            loss_fn, params, a, (x_t, y_t), (x_v, y_v), **kw))(alpha)

        @jax.jit
        def objective(a):
            g = jax.grad(loss_fn)(params, a, (x_t, y_t))
            return loss_fn(unrolled_step(params, g, **kw), a, (x_v, y_v))

        eps = 1e-6
        for seed in range(2):
            u = {"cell": jax.random.normal(jax.random.key(seed), (6, 5), jnp.float64)}
            fd = (objective({"cell": alpha["cell"] + eps * u["cell"]})
                  - objective({"cell": alpha["cell"] - eps * u["cell"]})) / (2 * eps)
            np.testing.assert_allclose(jnp.vdot(dalpha["cell"], u["cell"]), fd, rtol=1e-6)
        # Every op but 'none' (its edge output is exact zeros) moves the loss.
        assert np.all(np.abs(np.asarray(dalpha["cell"])[:, 1:]) > 0)
