"""gumbel_softmax and milenas_hypergrad against their definitions (float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jnas
from tests.test_transforms import quadratic_loss, random_quadratic


@pytest.fixture(autouse=True)
def float64():
    with jax.enable_x64(True):
        yield


def test_milenas_hypergrad_is_train_plus_lambda_val_gradient_on_a_quadratic():
    rng = np.random.default_rng(1)
    n, m = 5, 3
    train, val = random_quadratic(rng, n, m), random_quadratic(rng, n, m)
    w, alpha = rng.normal(size=n), rng.normal(size=m)
    lam = 0.7
    loss, dalpha = jnas.milenas_hypergrad(quadratic_loss, w, alpha, train, val, lam=lam)

    def grad_alpha(batch):  # d/dalpha of 0.5 w'Aw + w'Ba + c'w + d'a + 0.5 a'Ea
        _, B, _, d, E = batch
        return B.T @ w + d + E @ alpha

    np.testing.assert_allclose(dalpha, grad_alpha(train) + lam * grad_alpha(val), rtol=1e-12)
    want_loss = quadratic_loss(w, alpha, train) + lam * quadratic_loss(w, alpha, val)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-12)


def test_milenas_hypergrad_on_pytrees_matches_finite_differences():
    rng = np.random.default_rng(2)
    w = {"W": jnp.asarray(rng.normal(size=(4, 3)))}
    alpha = {"a": jnp.asarray(rng.normal(size=3)), "b": jnp.asarray(rng.normal(size=()))}
    train = (jnp.asarray(rng.normal(size=(8, 4))), jnp.asarray(rng.normal(size=8)))
    val = (jnp.asarray(rng.normal(size=(8, 4))), jnp.asarray(rng.normal(size=8)))

    def loss_fn(w, alpha, batch):
        x, y = batch
        pred = x @ (w["W"] * jax.nn.softmax(alpha["a"])) @ jnp.ones(3) * jnp.exp(alpha["b"])
        return jnp.mean((pred - y) ** 2)

    _, dalpha = jnas.milenas_hypergrad(loss_fn, w, alpha, train, val, lam=2.0)
    flat, unravel = jax.flatten_util.ravel_pytree(alpha)

    def objective(v):
        a = unravel(v)
        return loss_fn(w, a, train) + 2.0 * loss_fn(w, a, val)

    h = 1e-6
    fd = np.array([(objective(flat + h * e) - objective(flat - h * e)) / (2 * h)
                   for e in np.eye(flat.size)])
    np.testing.assert_allclose(jax.flatten_util.ravel_pytree(dalpha)[0], fd, rtol=1e-7)


def test_hard_gumbel_softmax_is_one_hot_with_the_soft_samples_gradient(key):
    logits = jnp.asarray(np.random.default_rng(3).normal(size=(14, 8)))
    tau = 0.7
    hard = jnas.gumbel_softmax(key, logits, tau, hard=True)
    soft = jnas.gumbel_softmax(key, logits, tau)
    # Exactly one-hot, at the soft sample's argmax.
    assert set(np.unique(np.asarray(hard))) == {0.0, 1.0}
    np.testing.assert_array_equal(np.asarray(hard).sum(-1), 1.0)
    np.testing.assert_array_equal(np.argmax(hard, -1), np.argmax(soft, -1))
    # The soft sample by its definition, with g drawn from the same key.
    g = jax.random.gumbel(key, logits.shape, logits.dtype)
    want = jax.nn.softmax((jax.nn.log_softmax(logits) + g) / tau)
    np.testing.assert_allclose(soft, want, rtol=1e-12)
    # Straight-through: any downstream function sees the soft sample's Jacobian.
    c = jnp.asarray(np.random.default_rng(4).normal(size=(14, 8)))

    def through(relaxed):
        return lambda z: jnp.sum(jnp.sin(c * relaxed(z)))

    g_hard = jax.grad(through(lambda z: jnas.gumbel_softmax(key, z, tau, hard=True)))(logits)
    # Evaluated at the hard value, the chain rule through the soft sample's Jacobian.
    _, vjp = jax.vjp(lambda z: jnas.gumbel_softmax(key, z, tau), logits)
    (want_grad,) = vjp(c * jnp.cos(c * hard))
    np.testing.assert_allclose(g_hard, want_grad, rtol=1e-12)
    assert np.abs(np.asarray(g_hard)).min() > 0  # every logit of every row gets a gradient


def test_gumbel_softmax_axis(key):
    logits = jnp.asarray(np.random.default_rng(5).normal(size=(8, 6)))
    rows = jnas.gumbel_softmax(key, logits.T, 1.0, hard=True, axis=0)
    np.testing.assert_array_equal(np.asarray(rows).sum(0), 1.0)


def test_gumbel_samples_follow_softmax_of_the_logits():
    """Gumbel-max: argmax of the sample ~ Categorical(softmax(logits)), any tau (chi-square)."""
    logits = jnp.array([1.0, 0.0, -1.0, 0.5, -2.0, 0.2, 0.0, -0.5])
    draws = 20000
    keys = jax.random.split(jax.random.key(7), draws)
    for tau in (10.0, 0.1):
        hard = jax.vmap(lambda k, t=tau: jnas.gumbel_softmax(k, logits, t, hard=True))(keys)
        counts = np.asarray(hard.sum(0))
        expected = draws * np.asarray(jax.nn.softmax(logits))
        chi2 = float(np.sum((counts - expected) ** 2 / expected))
        # 7 degrees of freedom: P(chi2 > 24.32) = 0.001.
        assert chi2 < 24.32, (tau, counts, expected)
    # The test has power: the same draws are far from a uniform categorical.
    uniform = np.full(8, draws / 8)
    assert float(np.sum((counts - uniform) ** 2 / uniform)) > 1000
