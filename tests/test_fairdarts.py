"""FairDARTS: the sigmoid relaxation, the zero-one loss and its gradient, the threshold
derivation and the cells with fewer edges it gives, experiments/fairdarts.py end to end on
both spaces."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jnas.errors import JnasError
from jnas.genotype import GENOTYPES, NO_EDGE, PRIMITIVES, Genotype, validate_genotype
from jnas.relax import make_relaxation
from jnas.relax.fair import sigmoid
from jnas.search import Search, SearchConfig, SearchState
from jnas.spaces.darts import DartsSpace
from jnas.spaces.nb201 import NB201_OPS, NB201Space, from_string
from tests.common import (
    EPOCHS,
    STEPS_PER_EPOCH,
    TINY,
    TINY_CONFIG,
    assert_alpha_moved,
    load_script,
    read_metrics,
)

fairdarts = load_script("fairdarts")
FAIR_OPS = tuple(p for p in PRIMITIVES if p != "none")  # the official op set
NB201_TINY = [
    "--space", "nas-bench-201", "--dataset", "digits", "--init_channels", "4",
    "--cells_per_stage", "1", "--batch_size", "32", "--epochs", str(EPOCHS), "--no_progress",
    "--devices", "1",
]  # fmt: skip


def relaxation(space, **params):
    return make_relaxation("fair", 1, space.incoming(), **params)


# -- the relaxation ----------------------------------------------------------------------------


def test_zero_one_loss_and_its_gradient_are_the_closed_form():
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        alpha = {t: jnp.asarray(rng.normal(0, 2, (5, 7))) for t in ("normal", "reduce")}
        fair = relaxation(DartsSpace(FAIR_OPS, nodes=2), w01=3.0)
        loss, grad = jax.value_and_grad(fair.loss)(alpha)
        s = {t: 1 / (1 + np.exp(-np.asarray(a))) for t, a in alpha.items()}
        n = 2 * 5 * 7  # the mean runs over both cell types' entries, as the official one
        stacked = np.concatenate([s["normal"], s["reduce"]])
        np.testing.assert_allclose(loss, -3.0 * np.mean((stacked - 0.5) ** 2), rtol=1e-12)
        for t in alpha:
            closed = -3.0 * 2 * (s[t] - 0.5) * s[t] * (1 - s[t]) / n
            np.testing.assert_allclose(grad[t], closed, rtol=1e-12, atol=1e-15)


def test_sigmoid_weights_are_independent_per_op():
    fair = relaxation(NB201Space())
    alpha = fair.init_alpha(jax.random.key(0), {"cell": (6, 5)})
    np.testing.assert_array_equal(alpha["cell"], 0.0)  # the official zeros: every weight 0.5
    moved = {"cell": alpha["cell"].at[2, 3].set(1.5)}
    before, after = fair.op_weights(alpha)["cell"], fair.op_weights(moved)["cell"]
    changed = np.argwhere(np.asarray(before != after))
    np.testing.assert_array_equal(changed, [[2, 3]])  # no softmax: one weight moves alone
    assert float(after[2, 3]) == pytest.approx(1 / (1 + np.exp(-1.5)), rel=1e-6)
    weights, index = fair.train_weights(moved, jax.random.key(1), 0)
    assert index is None and fair.eval_weights(moved)[1] is None
    np.testing.assert_array_equal(weights["cell"], after)


@pytest.mark.parametrize("params, message", [
    ({"w01": -1.0}, "`w01`"),
    ({"op_threshold": 1.5}, r"`op_threshold` .* \[0, 1\]"),
])
def test_bad_parameters_are_refused(params, message):
    with pytest.raises(JnasError, match=message):
        relaxation(NB201Space(), **params)


# -- derivation --------------------------------------------------------------------------------


def handmade_weights():
    """Sigmoid weights (14 edges, 7 ops) for nodes that keep 2, 1, 0 and 1 edges."""
    op = {name: k for k, name in enumerate(FAIR_OPS)}
    w = np.full((14, 7), 0.3)
    w[0, op["sep_conv_3x3"]], w[1, op["sep_conv_5x5"]] = 0.9, 0.95  # node 0: both pass
    # Node 1 (rows 2-4): the top 2 are inputs 1 (0.95) and 2 (0.84 < 0.85): one edge.
    w[2, op["max_pool_3x3"]], w[3, op["skip_connect"]], w[4, op["dil_conv_5x5"]] = 0.6, 0.95, 0.84
    w[5:9] = 0.8  # node 2: nothing reaches the threshold, no edge
    # Node 3 (rows 9-13): the top 2 are the empty node 2 (0.99, left out: it has no value)
    # and node 0 (0.9); input 0 (0.88) passes the threshold but ranks third.
    w[9, op["avg_pool_3x3"]], w[11, op["dil_conv_3x3"]], w[13, op["skip_connect"]] = 0.88, 0.9, 0.99
    return w


def test_threshold_derivation_keeps_two_one_or_no_edges_per_node():
    space = DartsSpace(FAIR_OPS, layers=3, init_channels=4, nodes=4)
    rule = relaxation(space).derivation_rule(space.derivation)
    w = handmade_weights()
    ops, strength = rule(w, space.incoming(), FAIR_OPS)
    # The official threshold_sparse parse: top 2 inputs per node, then the threshold.
    kept = {r: FAIR_OPS[k] for r, k in enumerate(ops) if k >= 0}
    assert kept == {0: "sep_conv_3x3", 1: "sep_conv_5x5", 3: "skip_connect", 11: "dil_conv_3x3",
                    13: "skip_connect"}
    np.testing.assert_array_equal(strength, w.max(-1))
    # The same on traced arrays, as every rule.
    traced, _ = rule(jnp.asarray(w), space.incoming(), FAIR_OPS)
    np.testing.assert_array_equal(traced, ops)

    g = space.derive({"normal": w, "reduce": w}, rule)
    cell = (("sep_conv_5x5", 1), ("sep_conv_3x3", 0), ("skip_connect", 1), NO_EDGE,
            NO_EDGE, NO_EDGE, ("dil_conv_3x3", 2), NO_EDGE)
    assert g == Genotype(cell, (2, 3, 5), cell, (2, 3, 5))
    assert space.from_dict(json.loads(json.dumps(space.to_dict(g)))) == g

    # Its network runs, with no parameters for the missing edges (jitted: the compilation
    # cache keeps it, where running it op by op takes many seconds).
    net = space.eval_network(g, 10, train=False)
    variables = jax.jit(net.init)(jax.random.key(0), jnp.zeros((2, 8, 8, 1)))
    logits, aux = jax.jit(net.apply)(variables, jnp.ones((2, 8, 8, 1)))
    assert logits.shape == (2, 10) and aux is None and np.all(np.isfinite(logits))
    normal, reduce = variables["params"]["EvalCell_0"], variables["params"]["EvalCell_1"]
    # sep_conv_5x5, sep_conv_3x3, the parameter-free skip and dil_conv_3x3; nothing else.
    assert set(normal) == {"ReLUConvBN_0", "ReLUConvBN_1", "SepConv_0", "SepConv_1", "DilConv_0"}
    # The next cell reads the 3 nodes with edges, 3 x 4 channels (the official multiplier).
    (kernel,) = [x for x in jax.tree.leaves(reduce["ReLUConvBN_1"]) if x.ndim == 4]
    assert kernel.shape == (1, 1, 12, 8)

    # Below the threshold everywhere: empty cells, drawn and saved, but not trained.
    empty = space.derive({"normal": 0.8 * np.ones((14, 7)), "reduce": w}, rule)
    assert empty.normal == (NO_EDGE,) * 8 and empty.normal_concat == ()
    with pytest.raises(JnasError, match="normal cell has no edge"):
        space.eval_network(empty, 10, train=False).init(jax.random.key(0), jnp.zeros((2, 8, 8, 1)))


def test_fairdarts_a_has_the_official_parameter_count():
    # The official cell with an empty node and two 1-edge nodes; its genotypes.py L149 gives
    # "Params: 2.83" (M), counted with the auxiliary head (utils.py L97-98), C=36, 20 cells.
    g = GENOTYPES["FairDARTS_a"]
    assert validate_genotype(g, FAIR_OPS) is not None and g.normal_concat == (2, 4, 5)
    net = DartsSpace(FAIR_OPS, init_channels=36, layers=20).eval_network(
        g, 10, train=True, auxiliary=True)
    shapes = jax.eval_shape(
        lambda: net.init({"params": jax.random.key(0), "dropout": jax.random.key(1)},
                         jnp.zeros((1, 32, 32, 3)), 0.0))
    count = sum(np.prod(x.shape) for x in jax.tree.leaves(shapes["params"]))
    assert 2.83e6 <= count < 2.84e6


def test_threshold_derivation_on_nb201_keeps_each_edge_whose_argmax_reaches_it():
    space = NB201Space()
    rule = relaxation(space).derivation_rule(space.derivation)
    op = {name: k for k, name in enumerate(NB201_OPS)}
    w = np.full((6, 5), 0.2)
    w[0, op["nor_conv_3x3"]] = 0.9
    w[1, op["nor_conv_1x1"]] = 0.7  # below the threshold: dropped
    w[2, op["none"]], w[2, op["nor_conv_3x3"]] = 0.95, 0.9  # 'none' wins: dropped
    w[3, op["avg_pool_3x3"]] = 0.85  # at the threshold: kept
    w[4, op["skip_connect"]] = 0.849
    w[5, op["nor_conv_1x1"]] = 1.0
    arch = space.derive({"cell": w}, rule)
    assert arch == ("nor_conv_3x3", "none", "none", "avg_pool_3x3", "none", "nor_conv_1x1")
    lower = relaxation(space, op_threshold=0.5).derivation_rule(space.derivation)
    assert space.derive({"cell": w}, lower)[1] == "nor_conv_1x1"


# -- the search --------------------------------------------------------------------------------


def test_the_architecture_step_adds_the_weighted_zero_one_loss():
    """One architecture step on a stand-in network loss c * sum(alpha): its loss is that plus
    w01 times the zero-one loss, and alpha takes Adam's step on the sum's gradient."""
    search = Search(SearchConfig(**TINY_CONFIG, algorithm="fairdarts", w01=4.0), 10,
                    STEPS_PER_EPOCH)
    rng = np.random.default_rng(0)
    alpha = {t: jnp.asarray(rng.normal(0, 1, s), jnp.float32)
             for t, s in search.space.alpha_shapes().items()}
    state = SearchState(**dict.fromkeys(SearchState._fields, {}))._replace(
        step=jnp.zeros((), jnp.int32), params={"w": jnp.ones(3)}, alpha=alpha,
        alpha_opt_state=search.alpha_tx.init(alpha))
    c = 0.3

    def stand_in(params, batch_stats, alpha, batch, key, epoch, sample=None):
        del batch_stats, key, epoch, sample
        loss = batch["c"] * sum(jnp.sum(a) for a in alpha.values()) + 0 * params["w"].sum()
        return loss, None

    search._loss = stand_in
    keys = {"arch": jax.random.key(0), "weights": jax.random.key(1)}
    new, metrics = search._arch_step(state, {"c": 0.0}, {"c": c}, keys, 0.005, 0)

    zero_one = -float(jnp.mean(jnp.concatenate([(jax.nn.sigmoid(a) - 0.5).ravel() ** 2
                                                for a in alpha.values()])))
    stand_in_loss = c * sum(float(jnp.sum(a)) for a in alpha.values())
    assert float(metrics["arch_loss"]) == pytest.approx(stand_in_loss + 4.0 * zero_one, rel=1e-5)
    grads = jax.tree.map(lambda g: g + c, jax.grad(search.relaxation.loss)(alpha))
    updates, _ = search.alpha_tx.update(grads, state.alpha_opt_state, alpha)
    for t in alpha:
        np.testing.assert_allclose(new.alpha[t], alpha[t] + updates[t], rtol=1e-5, atol=1e-7)


@pytest.fixture(scope="module")
def nb201_run(tmp_path_factory):
    save = tmp_path_factory.mktemp("fairdarts_nb201")
    assert fairdarts.main([*NB201_TINY, "--save", str(save)]) == 0
    return save


def assert_derivation_follows_alphas(save, space, rows):
    """The run's genotype is the threshold derivation of its final sigmoid weights; a 'none'
    op's alpha never moves (its output is zero, and the zero-one loss's gradient vanishes at
    0.5), while the others did."""
    alphas = dict(np.load(save / "alphas.npz"))
    rule = relaxation(space).derivation_rule(space.derivation)
    arch = space.derive({t: sigmoid(a) for t, a in alphas.items()}, rule)
    assert rows[-1]["genotype"] == space.to_dict(arch)
    assert json.loads((save / "genotype.json").read_text()) == space.to_dict(arch)
    none = space.primitives.index("none")
    for a in alphas.values():
        np.testing.assert_array_equal(a[:, none], 0.0)
    assert_alpha_moved(save)
    return alphas, arch


def test_fairdarts_search_on_the_darts_space_and_resume(search_run, tmp_path):
    straight = search_run("fairdarts")
    rows = read_metrics(straight)
    assert [r["epoch"] for r in rows] == list(range(1, EPOCHS + 1))
    space = DartsSpace(TINY_CONFIG["primitives"], layers=3, init_channels=4, nodes=2)
    alphas, arch = assert_derivation_follows_alphas(straight, space, rows)
    # Two tiny epochs move no weight near 0.85: the derived cells are still empty.
    assert max(sigmoid(a).max() for a in alphas.values()) < 0.85
    assert arch.normal == arch.reduce == (NO_EDGE,) * 4 and arch.normal_concat == ()
    assert (straight / "genotype.png").is_file() and (straight / "alphas.png").is_file()
    config = json.loads((straight / "config.json").read_text())
    assert (config["algorithm"], config["relaxation"], config["w01"]) == ("fairdarts", None, None)
    # The official architecture optimiser: Adam 3e-3, betas (0.9, 0.999).
    assert (config["arch_learning_rate"], config["arch_beta1"]) == (3e-3, 0.9)
    assert rows[-1]["valid_acc"] > 0.15  # chance is 0.1

    # A crash after the last epoch's files, before its checkpoint: the rerun continues.
    crashed = tmp_path / "crashed"
    shutil.copytree(straight, crashed)
    shutil.rmtree(crashed / "checkpoints" / str(EPOCHS))
    assert fairdarts.main([*TINY, "--save", str(crashed)]) == 0
    resumed = np.load(crashed / "alphas.npz")
    for t, a in alphas.items():
        np.testing.assert_array_equal(a, resumed[t])


def test_fairdarts_search_on_nb201(nb201_run):
    rows = read_metrics(nb201_run)
    assert [r["epoch"] for r in rows] == list(range(1, EPOCHS + 1))
    _, arch = assert_derivation_follows_alphas(nb201_run, NB201Space(), rows)
    assert from_string(rows[-1]["genotype"]["arch"]) == arch
    config = json.loads((nb201_run / "config.json").read_text())
    # The benchmark's DARTS weight settings and ops; FairDARTS's method and alpha optimiser.
    assert config["primitives"] is None
    assert (config["arch_learning_rate"], config["arch_beta1"]) == (3e-3, 0.9)
    assert (config["weight_decay"], config["nesterov"]) == (5e-4, True)
    # Rerunning the finished folder does nothing.
    assert fairdarts.main([*NB201_TINY, "--save", str(nb201_run)]) == 0
    assert read_metrics(nb201_run) == rows


def test_fair_flags_belong_to_the_fair_relaxation(tmp_path, capsys):
    darts = load_script("darts")
    assert darts.main([*TINY, "--w01", "5", "--save", str(tmp_path / "a")]) == 2
    assert "--w01 is not a parameter of the darts relaxation (it is of: fair)" in (
        capsys.readouterr().err)
    assert fairdarts.main([*TINY, "--op_threshold", "2", "--save", str(tmp_path / "b")]) == 2
    assert "--op_threshold" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
