"""GDAS's single-path network and step: the sampled op is the only op computed, in value the
network with that op alone per edge, in gradient GDAS's straight-through weights."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jnas
from jnas.ops import MixedOp
from jnas.relax import make_relaxation
from jnas.search import SearchConfig
from jnas.spaces import SearchNetwork
from tests.common import OPS, random_batch

SMALL_OPS = ("none", "max_pool_3x3", "skip_connect", "sep_conv_3x3", "dil_conv_3x3")


def tiny(**kw):
    return SearchNetwork(**{"num_classes": 3, "init_channels": 4, "layers": 3, "steps": 2,
                            "multiplier": 2, "primitives": SMALL_OPS, **kw})


def test_sampled_edge_has_gdas_straight_through_weights(key):
    op = MixedOp(4, 1, SMALL_OPS)
    x = jax.random.normal(key, (2, 8, 8, 4))
    hard = jax.nn.one_hot(3, len(SMALL_OPS))
    index = jnp.array([3])
    variables = op.init(key, x, hard, index, method=MixedOp.sampled)
    c = jax.random.normal(jax.random.key(1), (2, 8, 8, 4))

    def loss(h, index):
        out, _ = op.apply(variables, x, h, index, method=MixedOp.sampled,
                          mutable=["batch_stats"])
        return jnp.sum(c * out)

    single, _ = op.apply(variables, x, method=lambda m, x: m.ops[3](x), mutable=["batch_stats"])
    out, _ = op.apply(variables, x, hard, index, method=MixedOp.sampled,
                      mutable=["batch_stats"])
    np.testing.assert_allclose(out, single, rtol=1e-5, atol=1e-6)
    grad = jax.grad(loss)(hard, index)
    # d/dh_k = <c, op_k(x)> for the sampled k; d/dh_j = sum(c) for the others.
    # float32 sums of 512 terms: tolerances relative to the terms' magnitude.
    scale = float(jnp.sum(jnp.abs(c * single)) + jnp.sum(jnp.abs(c)))
    np.testing.assert_allclose(grad[3], jnp.sum(c * single), atol=1e-6 * scale)
    others = np.delete(np.asarray(grad), 3)
    np.testing.assert_allclose(others, np.full(4, float(jnp.sum(c))), atol=1e-6 * scale)


@pytest.mark.parametrize("train", [True, False])
def test_gdas_network_equals_the_network_with_the_sampled_op_alone_per_edge(key, train):
    net = tiny(train=train)
    gdas = make_relaxation("gdas", 1, tau_max=0.5, tau_min=0.5)
    alpha = {t: jax.random.normal(k, (5, len(SMALL_OPS)))
             for t, k in zip(("normal", "reduce"), jax.random.split(key), strict=True)}
    x = jax.random.normal(jax.random.key(2), (4, 8, 8, 1))
    path_key = jax.random.key(3)

    def paths(a):
        return gdas.train_weights(a, path_key, 0) if train else gdas.eval_weights(a)

    weights, index = paths(alpha)
    variables = jax.jit(lambda k: net.init(k, x, weights, index))(jax.random.key(4))
    # Both forms share one parameter layout, so the same weights serve both.
    assert jax.tree.structure(variables) == jax.tree.structure(
        jax.eval_shape(lambda: net.init(jax.random.key(4), x, weights)))

    if train:  # a fresh sample is not the argmax of alpha everywhere
        assert any(np.any(np.asarray(index[t][:, 0]) != np.argmax(alpha[t], -1)) for t in index)
    else:
        for t in index:
            np.testing.assert_array_equal(index[t][:, 0], np.argmax(alpha[t], -1))
    # DARTS's mixture with one-hot weights: every op computed, one weighted.
    single = {t: jax.nn.one_hot(i[:, 0], len(SMALL_OPS)) for t, i in index.items()}

    # Jitted: eager op-by-op dispatch of the whole network is slower than compiling it.
    @jax.jit
    def gdas_logits(a):
        return net.apply(variables, x, *paths(a), mutable=["batch_stats"])[0]

    @jax.jit
    def darts_logits(w):
        return net.apply(variables, x, w, mutable=["batch_stats"])[0]

    # Train-mode BN on 4 images amplifies float32 rounding; a wrong op would differ by O(1).
    np.testing.assert_allclose(gdas_logits(alpha), darts_logits(single), rtol=1e-4, atol=1e-4)

    if train:  # straight-through: every entry of alpha gets a gradient
        grads = jax.jit(jax.grad(lambda a: jnp.sum(gdas_logits(a) ** 2)))(alpha)
        for g in grads.values():
            assert np.all(np.isfinite(g)) and np.all(np.asarray(g) != 0)


def test_one_sample_per_cell_type_shared_by_the_batch(key):
    gdas = make_relaxation("gdas", 1)
    alpha = gdas.init_alpha(key, {"normal": (5, len(SMALL_OPS)), "reduce": (5, 3)})
    weights, index = gdas.train_weights(alpha, jax.random.key(5), 0)
    assert weights["normal"].shape == (5, len(SMALL_OPS)) and index["normal"].shape == (5, 1)
    assert weights["reduce"].shape == (5, 3) and index["reduce"].shape == (5, 1)


def compiled_step_text(search, state):
    batch = random_batch(0)
    return search.step.lower(state, batch, batch, jax.random.key(1)).compile().as_text()


def conditionals(hlo):
    """The branch count of every conditional instruction in an HLO module's text."""
    return [len(m.split(",")) for m in
            re.findall(r"conditional\(.*branch_computations=\{([^}]*)\}", hlo)]


def test_compiled_gdas_step_runs_one_op_per_edge_through_conditionals(tiny_search):
    gdas = conditionals(compiled_step_text(*tiny_search(algorithm="gdas")))
    # One per edge group and cell type in each forward pass, and more in the backward ones;
    # each branches over the ops and zeros (a path of -1).
    assert len(gdas) >= 4 and set(gdas) == {len(OPS) + 1}, gdas
    assert conditionals(compiled_step_text(*tiny_search(algorithm="darts"))) == []


def test_tau_falls_linearly_from_tau_max_to_tau_min_per_epoch():
    gdas = make_relaxation("gdas", 5)
    got = [float(gdas.tau(epoch)) for epoch in range(5)]
    np.testing.assert_allclose(got, np.linspace(10.0, 0.1, 5), rtol=1e-6)
    assert got[0] == 10.0 and got[-1] == np.float32(0.1)  # exact at both ends


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"tau_min": 0.0}, "0 < `tau_min` <= `tau_max`"),
        ({"tau_max": 0.05}, "0 < `tau_min` <= `tau_max`"),
        ({"fix_reduction": True, "nodes": 2}, "`nodes` 4 and the 8 DARTS ops"),
        ({"fix_reduction": True, "primitives": SMALL_OPS}, "`nodes` 4 and the 8 DARTS ops"),
        ({"fix_reduction": True, "init_channels": 6}, "multiple of 4"),
        ({"second_order": True}, "second_order"),
    ],
)
def test_bad_gdas_settings_fail_when_the_config_is_made(kw, message):
    with pytest.raises(jnas.JnasError, match=re.escape(message)):
        SearchConfig(algorithm="gdas", **kw)
