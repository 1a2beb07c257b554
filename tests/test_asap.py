"""ASAP: the annealed, pruned softmax; the pruned supernet against the unpruned one at the
surviving ops; experiments/asap.py end to end on both spaces."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jnas
from jnas.relax import make_relaxation
from jnas.spaces import SearchNetwork
from tests.common import TINY, load_script, read_metrics
from tests.test_nb201_snas_experiments import NB201_TINY

OPS = ("none", "max_pool_3x3", "skip_connect", "sep_conv_3x3")


def pruned_alpha(asap, key):
    """Alpha of the tiny DARTS network (5 edges) with some ops pruned, the strongest kept."""
    k1, k2 = jax.random.split(key)
    alpha = {t: jax.random.normal(k, (5, len(OPS))) for t, k in (("normal", k1), ("reduce", k2))}
    state = asap.init_state(alpha)
    alive = {t: np.asarray(state["alive_" + t]).copy() for t in alpha}
    alive["normal"][[0, 2, 4], 3] = False  # the depthwise convolution off on 3 edges
    alive["reduce"][1, [0, 1]] = False
    for t in alive:
        alive[t][np.arange(5), np.argmax(np.where(alive[t], alpha[t], -np.inf), -1)] = True
    return {**alpha, **{"alive_" + t: jnp.asarray(a) for t, a in alive.items()}}


def test_weights_anneal_and_pruned_ops_weigh_zero():
    asap = make_relaxation("asap", 5, tau_max=2.0, tau_min=0.5)
    np.testing.assert_allclose([asap.tau(e) for e in range(5)], 2.0 * 0.25 ** (np.arange(5) / 4),
                               rtol=1e-6)
    alpha = pruned_alpha(asap, jax.random.key(0))
    weights, paths = asap.train_weights(alpha, None, 2)
    for t in ("normal", "reduce"):
        alive = np.asarray(alpha["alive_" + t])
        z = np.where(alive, np.asarray(alpha[t]) / 1.0, -np.inf)  # tau(2) = 2 * 0.25^0.5 = 1
        want = np.exp(z - z.max(-1, keepdims=True))
        np.testing.assert_allclose(weights[t], want / want.sum(-1, keepdims=True), rtol=1e-5)
        np.testing.assert_array_equal(paths[t], alive)  # the ops each edge runs


def test_pruning_drops_weak_ops_for_good_and_keeps_each_edges_strongest():
    asap = make_relaxation("asap", 10, prune_threshold=0.5)
    alpha = {"cell": jnp.array([[0.0, 0.0, 0.0, -3.0], [-9.0, -9.0, -9.0, -9.0]])}
    state = asap.update_state({**alpha, **asap.init_state(alpha)}, 0)
    # Under 0.5 / 4 of the weight: the last op of the first edge; the second edge is uniform.
    np.testing.assert_array_equal(state["alive_cell"], [[1, 1, 1, 0], [1, 1, 1, 1]])
    # A pruned op stays pruned when its alpha recovers; an edge keeps its strongest op.
    later = {"cell": jnp.array([[0.0, -8.0, -8.0, 5.0], [0.0, 1.0, 2.0, 3.0]])}
    state = asap.update_state({**later, **state}, 9)
    np.testing.assert_array_equal(state["alive_cell"], [[1, 0, 0, 0], [0, 0, 0, 1]])


def test_pruned_supernet_equals_the_unpruned_one_with_the_surviving_ops(key):
    """The paths form (pruned ops not computed) against DARTS's form that computes every op
    and weighs the pruned ones 0: the same logits and the same gradient in alpha."""
    asap = make_relaxation("asap", 3)
    net = SearchNetwork(num_classes=3, init_channels=4, layers=3, steps=2, multiplier=2,
                        primitives=OPS)
    alpha = pruned_alpha(asap, key)
    x = jax.random.normal(jax.random.key(2), (4, 8, 8, 1))
    weights, paths = asap.train_weights(alpha, None, 1)
    variables = jax.jit(lambda k: net.init(k, x, weights, paths))(jax.random.key(4))

    def logits(a, pruned):
        w, p = asap.train_weights({**alpha, **a}, None, 1)
        return net.apply(variables, x, w, p if pruned else None, mutable=["batch_stats"])[0]

    cells = {t: alpha[t] for t in ("normal", "reduce")}
    for f in (logits, lambda a, pruned: jax.grad(lambda a: jnp.sum(logits(a, pruned) ** 2))(a)):
        got, want = jax.jit(lambda a, f=f: (f(a, True), f(a, False)))(cells)
        # Train-mode BN on 4 images amplifies float32 rounding; a wrong op differs by O(0.1).
        jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-3, atol=1e-4),
                     got, want)


@pytest.mark.parametrize("space", ["darts", "nas-bench-201"])
def test_asap_search_prunes_and_resumes(tmp_path, space):
    # A fast architecture step and a high threshold, so that ops are pruned within 2 epochs.
    flags = [*(TINY if space == "darts" else NB201_TINY), "--arch_learning_rate", "0.1",
             "--prune_threshold", "0.9", "--warmup_epochs", "0", "--save", str(tmp_path)]
    assert load_script("asap").main(flags) == 0
    rows = read_metrics(tmp_path)
    assert rows[0]["tau"] == pytest.approx(1.6) and rows[-1]["tau"] < rows[0]["tau"]
    saved = np.load(tmp_path / "alphas.npz")
    alive = [saved[k] for k in saved.files if k.startswith("alive_")]
    assert alive and all(a.any(-1).all() for a in alive)  # every edge keeps an op
    assert sum(int((~a).sum()) for a in alive) > 0  # and some are pruned
    # Rerun: finished, nothing changes.
    assert load_script("asap").main(flags) == 0
    assert read_metrics(tmp_path) == rows


def test_bad_asap_settings_fail_when_the_config_is_made():
    with pytest.raises(jnas.JnasError, match="`prune_threshold` must lie in"):
        jnas.search.SearchConfig(algorithm="asap", prune_threshold=1.5)
    with pytest.raises(jnas.JnasError, match="not a parameter of the darts relaxation"):
        jnas.search.SearchConfig(prune_threshold=0.5)
