"""The search network: shapes, input checks, and an exact second-order hypergradient through
the real network checked against finite differences in float64."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jnas
from jnas.relax import make_relaxation
from jnas.spaces import DartsSpace, SearchNetwork

SMALL_OPS = ("none", "avg_pool_3x3", "skip_connect", "sep_conv_3x3")
SOFTMAX = make_relaxation("darts", 1)


def tiny(**kw):
    return SearchNetwork(**{"num_classes": 3, "init_channels": 4, "layers": 3, "steps": 2,
                            "multiplier": 2, "primitives": SMALL_OPS, **kw})


def init_alpha(key, layers=3, primitives=SMALL_OPS):
    space = DartsSpace(primitives, 4, layers, 2)
    return SOFTMAX.init_alpha(key, space.alpha_shapes())


@pytest.mark.parametrize("shape", [(2, 8, 8, 1), (2, 12, 10, 3)])
def test_network_logits_and_alpha_shapes(shape):
    net = tiny()
    alpha = init_alpha(jax.random.key(0))
    assert {k: v.shape for k, v in alpha.items()} == {"normal": (5, 4), "reduce": (5, 4)}
    assert float(jnp.std(alpha["normal"])) < 1e-2  # 1e-3 * N(0, 1)
    weights = SOFTMAX.op_weights(alpha)
    x = jnp.ones(shape)
    # Shapes only: tracing checks them without compiling the network.
    variables = jax.eval_shape(net.init, jax.random.key(1), x, weights)
    logits, _ = jax.eval_shape(
        lambda v: net.apply(v, x, weights, mutable=["batch_stats"]), variables
    )
    assert logits.shape == (2, 3)
    assert net.reduction_layers() == (1, 2)
    assert "params" in variables and "alpha" not in str(jax.tree_util.tree_structure(variables))


def test_default_network_is_the_darts_search_network():
    net = SearchNetwork(num_classes=10)
    assert (net.init_channels, net.layers, net.steps, net.primitives) == (
        16, 8, 4, jnas.PRIMITIVES)
    assert net.reduction_layers() == (2, 5)
    assert DartsSpace().alpha_shapes() == {"normal": (14, 8), "reduce": (14, 8)}


def test_bad_alpha_and_inputs_are_clear_errors():
    net = tiny()
    x = jnp.ones((2, 8, 8, 1))
    bad = {"normal": jnp.zeros((14, 8)), "reduce": jnp.zeros((5, 4))}
    with pytest.raises(jnas.JnasError,
                       match=r"`weights\['normal'\]` has shape \(14, 8\).*\(5, 4\)"):
        net.init(jax.random.key(0), x, bad)
    with pytest.raises(jnas.JnasError, match="at least 8x8"):
        net.init(jax.random.key(0), jnp.ones((2, 4, 4, 1)),
                 SOFTMAX.op_weights(init_alpha(jax.random.key(0))))
    with pytest.raises(jnas.JnasError, match="unknown op"):
        tiny(primitives=("none", "conv_7x7")).init(jax.random.key(0), x, bad)


def test_exact_hypergradient_through_the_network_matches_finite_differences():
    with jax.enable_x64(True):
        net = tiny()  # normal, reduce, reduce
        k = jax.random.split(jax.random.key(0), 6)
        x_t, x_v = (jax.random.normal(kk, (4, 8, 8, 1), jnp.float64) for kk in k[:2])
        y_t, y_v = (jax.random.randint(kk, (4,), 0, 3) for kk in k[2:4])
        alpha = jax.tree.map(lambda a: 0.5 * a / 1e-3, init_alpha(k[4]))
        alpha = jax.tree.map(lambda a: a.astype(jnp.float64), alpha)
        variables = jax.tree.map(lambda a: a.astype(jnp.float64),
                                 net.init(k[5], x_t, SOFTMAX.op_weights(alpha)))
        params, stats = variables["params"], variables["batch_stats"]
        buf = jax.tree.map(lambda p: 0.1 * jnp.ones_like(p), params)

        def loss_fn(w, a, batch):
            logits, _ = net.apply({"params": w, "batch_stats": stats}, batch[0],
                                  SOFTMAX.op_weights(a), mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, batch[1]).mean()

        kw = dict(lr=0.5, momentum=0.9, momentum_buf=buf, weight_decay=3e-4)
        _, dalpha = jax.jit(lambda a: jnas.darts_hypergrad(
            loss_fn, params, a, (x_t, y_t), (x_v, y_v), **kw))(alpha)

        @jax.jit
        def objective(a):
            g = jax.grad(loss_fn)(params, a, (x_t, y_t))
            return loss_fn(jnas.unrolled_step(params, g, **kw), a, (x_v, y_v))

        # A small step: this instance is strongly curved in alpha. At 1e-5 the central
        # difference is off by 2e-4 (relative), at 1e-6 and 1e-7 it agrees with the
        # hypergradient, forward-over-reverse or reverse-over-reverse, to 1e-9.
        eps = 1e-6
        for seed in range(2):
            keys = dict(zip(alpha, jax.random.split(jax.random.key(seed)), strict=True))
            u = {t: jax.random.normal(keys[t], alpha[t].shape, jnp.float64) for t in alpha}
            plus = objective({t: alpha[t] + eps * u[t] for t in alpha})
            minus = objective({t: alpha[t] - eps * u[t] for t in alpha})
            fd = (plus - minus) / (2 * eps)
            got = sum(jnp.vdot(dalpha[t], u[t]) for t in alpha)
            np.testing.assert_allclose(got, fd, rtol=1e-6)
        # Every non-'none' op on every edge of both cells receives gradient.
        for t in alpha:
            assert np.all(np.abs(np.asarray(dalpha[t])[:, 1:]) > 0)
