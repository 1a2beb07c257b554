"""ProxylessNAS's binary gates: the two-path gradient against the official formula (float64),
the two-stage sampling law, the rescaling after Adam, the paths the compiled steps run, and
experiments/proxyless.py end to end on both spaces."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jnas
from jnas.ops import MixedOp
from jnas.relax import make_relaxation
from jnas.search import SearchConfig, arch_optimizer
from jnas.spaces.nb201 import from_string
from tests.common import EPOCHS, OPS, TINY, assert_alpha_moved, load_script, read_metrics
from tests.test_gdas import conditionals
from tests.test_nb201_snas_experiments import NB201_TINY

# No `none`: every op of a pair has a non-zero output, hence a non-zero gate gradient.
GATE_OPS = ("max_pool_3x3", "skip_connect", "sep_conv_3x3", "avg_pool_3x3")
proxyless = make_relaxation("proxyless", 1)


def test_binary_gate_gradient_is_the_official_two_path_formula():
    with jax.enable_x64(True):
        op = MixedOp(4, 1, GATE_OPS)
        n = len(GATE_OPS)
        x = jax.random.normal(jax.random.key(0), (2, 6, 6, 4), jnp.float64)
        c = jax.random.normal(jax.random.key(1), (2, 6, 6, 4), jnp.float64)
        alpha = {"normal": jax.random.normal(jax.random.key(2), (3, n), jnp.float64)}
        w, i = proxyless.arch_weights(alpha, jax.random.key(3), 0)
        variables = op.init(jax.random.key(4), x, w["normal"][0], i["normal"][0],
                            method=MixedOp.sampled)
        variables = jax.tree.map(lambda v: v.astype(jnp.float64), variables)

        def apply(method, *args):
            return op.apply(variables, x, *args, method=method, mutable=["batch_stats"])[0]

        @jax.jit
        def edge(alpha, key):
            w, i = proxyless.arch_weights(alpha, key, 0)
            return apply(MixedOp.sampled, w["normal"][0], i["normal"][0]), (w, i)

        outputs = [apply(lambda m, x, k=k: m._op(k, x)) for k in range(n)]
        gate_grads = np.array([float(jnp.sum(c * y)) for y in outputs])  # dL/dg_j = <op_j, c>
        grad = jax.jit(jax.grad(lambda a, key: jnp.sum(c * edge(a, key)[0])))
        pairs = set()
        for seed in range(4):
            key = jax.random.key(10 + seed)
            out, (w, i) = edge(alpha, key)
            pair = [int(k) for k in i["normal"][0]]
            active = int(jnp.argmax(w["normal"][0]))
            pairs.add(tuple(sorted(pair)))
            assert pair[0] != pair[1] and active in pair
            np.testing.assert_allclose(out, outputs[active], rtol=1e-12, atol=1e-12)

            p = jax.nn.softmax(alpha["normal"][0, np.array(pair)])
            want = np.zeros((3, n))
            for a, ia in enumerate(pair):
                want[0, ia] = sum(gate_grads[jb] * p[b] * ((a == b) - p[a])
                                  for b, jb in enumerate(pair))
            got = np.asarray(grad(alpha, key)["normal"])
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
            assert np.count_nonzero(got) == 2  # the pair alone, of edge 0 alone
        assert len(pairs) > 1


def pair_law(pi):
    """P(pair = {i, j}) for two draws without replacement from pi, and the two-stage law of
    the active op: a pair, then one of it with probabilities renormalised over it."""
    n = len(pi)
    pair = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if i != j:
                pair[i, j] = pi[i] * pi[j] / (1 - pi[i])
    pair = pair + pair.T
    active = np.array([sum(pair[i, j] * pi[i] / (pi[i] + pi[j]) for j in range(n) if j != i)
                       for i in range(n)])
    return pair, active


def test_sampled_paths_follow_the_two_stage_law():
    # Each edge samples independently: 40,000 edges of one alpha row are 40,000 draws.
    row = jnp.array([1.5, 0.5, 0.0, -1.0])
    draws = 40_000
    alpha = {"normal": jnp.tile(row, (draws, 1))}
    pi = np.asarray(jax.nn.softmax(row), np.float64)
    pair_p, active_p = pair_law(pi)
    w, i = proxyless.arch_weights(alpha, jax.random.key(0), 0)
    index, active = np.asarray(i["normal"]), np.asarray(jnp.argmax(w["normal"], -1))
    assert index.shape == (draws, 2) and np.all(index[:, 0] != index[:, 1])
    assert np.all((index == active[:, None]).any(-1))

    def close(freq, p):
        return np.abs(freq - p) < 4.5 * np.sqrt(p * (1 - p) / draws)

    counts = np.zeros((4, 4))
    np.add.at(counts, (index.min(1), index.max(1)), 1)
    upper = np.triu_indices(4, 1)
    assert close(counts[upper] / draws, pair_p[upper]).all()
    freq = np.bincount(active, minlength=4) / draws
    assert close(freq, active_p).all()
    assert not close(freq, pi).all()  # softmax(alpha) is a different law, told apart here

    w1, i1 = proxyless.train_weights(alpha, jax.random.key(1), 0)  # the weight step's one op
    assert i1["normal"].shape == (draws, 1)
    np.testing.assert_array_equal(np.argmax(w1["normal"], -1), i1["normal"][:, 0])
    assert close(np.bincount(i1["normal"][:, 0], minlength=4) / draws, pi).all()


@pytest.mark.parametrize("beta1", [None, 0.5])
def test_rescaling_keeps_the_probabilities_of_the_ops_that_adam_did_not_move(beta1):
    with jax.enable_x64(True):
        given = {} if beta1 is None else {"arch_beta1": beta1}
        tx = arch_optimizer(SearchConfig.published("proxyless", **given))
        alpha = {"normal": jax.random.normal(jax.random.key(0), (2, 5), jnp.float64)}
        state = tx.init(alpha)
        # Per step and edge, a gradient on a sampled pair alone, of opposite signs (as the
        # binary-gate gradient of two ops is).
        for pairs in ([(1, 3), (0, 4)], [(2, 3), (0, 1)], [(1, 3), (4, 2)]):
            g = np.zeros((2, 5))
            for e, (a, b) in enumerate(pairs):
                g[e, a], g[e, b] = -0.3 * (e + 1), 0.3 * (e + 1)
            updates, state = tx.update({"normal": jnp.asarray(g)}, state, alpha)
            new = jax.tree.map(jnp.add, alpha, updates)
            before, after = (np.asarray(jax.nn.softmax(a["normal"])) for a in (alpha, new))
            moved = np.asarray(updates["normal"]) != 0
            if beta1 is None:  # the official beta1 = 0: exactly the pair moves
                np.testing.assert_array_equal(moved, g != 0)
            np.testing.assert_allclose(after[~moved], before[~moved], rtol=1e-12)
            np.testing.assert_allclose((after * moved).sum(-1), (before * moved).sum(-1),
                                       rtol=1e-12)
            for e, (a, b) in enumerate(pairs):  # the op with the negative gradient gains
                assert after[e, a] > before[e, a] and after[e, b] < before[e, b]
            alpha = new
        if beta1 is not None:  # momentum moves ops outside the last pair; the never-sampled
            assert moved.sum() > 4 and not moved[0, 4]  # op 4 of edge 0 keeps still


def compiled_phase(search, state, phase):
    batch = {"x": np.zeros((32, 8, 8, 1), np.float32), "y": np.zeros(32, np.int32)}
    keys = {"arch": jax.random.key(1), "weights": jax.random.key(2)}
    fn = jax.jit(search._phases[phase])
    return fn.lower(state, batch, batch, keys, jnp.float32(0.1), jnp.int32(1)).compile().as_text()


def test_compiled_steps_run_one_path_per_edge_for_weights_and_two_for_alpha(tiny_search):
    # Without convolutions: the count is the same, the compilation several times faster.
    no_conv = ("none", "max_pool_3x3", "skip_connect")
    search, state = tiny_search(algorithm="proxyless", warmup_epochs=1, primitives=no_conv)
    weights = conditionals(compiled_phase(search, state, "weights"))
    arch = conditionals(compiled_phase(search, state, "arch"))
    # Every conditional runs one op or zeros (none became a select over every op). Per path
    # and edge group of each of the 3 cells (6 sites), a weight step runs a conditional
    # forward, one rematerialised and one transposed backward; an architecture step the same
    # for two paths, except at the first cell's input edges, where the gates' gradient needs
    # the ops' outputs alone (nothing before them is differentiated).
    assert set(weights) == set(arch) == {len(no_conv) + 1}
    sites = 3 * 2
    assert len(weights) == 3 * sites, weights
    assert len(arch) == 2 * (3 * sites - 2), arch


def test_proxyless_search_warms_up_searches_and_resumes_exactly(search_run, tmp_path):
    straight = search_run("proxyless", "--warmup_epochs", 1)
    rows = read_metrics(straight)
    assert rows[0]["arch_loss"] == 0.0 and rows[1]["arch_loss"] > 0.5  # warm-up, then alpha
    assert rows[1]["train_loss"] < rows[0]["train_loss"]
    assert_alpha_moved(straight)
    alphas = np.load(straight / "alphas.npz")
    genotype = jnas.load_genotype(straight / "genotype.json", OPS)
    assert genotype == jnas.derive_genotype(dict(alphas), OPS, steps=2, multiplier=2)
    for name in ("genotype.json", "genotype.png", "alphas.png"):
        assert (straight / name).is_file()
    config = json.loads((straight / "config.json").read_text())
    assert (config["algorithm"], config["arch_learning_rate"], config["arch_beta1"],
            config["arch_weight_decay"]) == ("proxyless", 1e-3, 0.0, 0.0)

    # The samples come from (seed, step): a resumed run draws the same ones.
    crashed = tmp_path / "crashed"
    shutil.copytree(straight, crashed)
    shutil.rmtree(crashed / "checkpoints" / str(EPOCHS))
    script = load_script("proxyless")
    assert script.main([*TINY, "--warmup_epochs", "1", "--save", str(crashed)]) == 0
    resumed = np.load(crashed / "alphas.npz")
    for k in ("normal", "reduce"):
        np.testing.assert_array_equal(alphas[k], resumed[k])


def test_proxyless_search_on_nb201(tmp_path):
    save = tmp_path / "nb201"
    args = [*NB201_TINY, "--warmup_epochs", "1", "--save", str(save)]
    assert load_script("proxyless").main(args) == 0
    rows = read_metrics(save)
    assert len(rows) == EPOCHS and rows[-1]["arch_loss"] > 0.5
    assert from_string(rows[-1]["genotype"]["arch"])
    assert np.load(save / "alphas.npz")["cell"].shape == (6, 5)
    assert_alpha_moved(save)


def test_the_default_warm_up_needs_a_longer_run(tmp_path, capsys):
    assert load_script("proxyless").main([*TINY, "--save", str(tmp_path / "r")]) == 2
    assert "--warmup_epochs" in capsys.readouterr().err
