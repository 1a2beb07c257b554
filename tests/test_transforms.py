"""darts_hypergrad and unrolled_step against closed forms and finite differences (float64)."""

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

import jnas


@pytest.fixture(autouse=True)
def float64():
    with jax.enable_x64(True):
        yield


def test_unrolled_step_is_pytorch_sgd_with_momentum_and_weight_decay():
    w = {"a": jnp.array([1.0, -2.0]), "b": jnp.array(3.0)}
    g = {"a": jnp.array([0.5, 0.25]), "b": jnp.array(-1.0)}
    buf = {"a": jnp.array([0.1, 0.2]), "b": jnp.array(0.3)}
    out = jnas.unrolled_step(w, g, 0.1, momentum=0.9, momentum_buf=buf, weight_decay=0.01)
    for k in w:
        want = w[k] - 0.1 * (0.9 * buf[k] + g[k] + 0.01 * w[k])
        np.testing.assert_allclose(out[k], want, rtol=1e-15)
    plain = jnas.unrolled_step(w, g, 0.1, momentum=0.9)  # no buffer: the first step
    np.testing.assert_allclose(plain["a"], w["a"] - 0.1 * g["a"], rtol=1e-15)


def quadratic_loss(w, alpha, batch):
    """0.5 w'Aw + w'Ba + c'w + d'a + 0.5 a'Ea: every term of the hypergradient is closed form."""
    A, B, c, d, E = batch
    return 0.5 * w @ A @ w + w @ B @ alpha + c @ w + d @ alpha + 0.5 * alpha @ E @ alpha


def random_quadratic(rng, n, m):
    M = rng.normal(size=(n, n))
    return (M @ M.T + n * np.eye(n), rng.normal(size=(n, m)), rng.normal(size=n),
            rng.normal(size=m), np.eye(m) * rng.uniform(0.5, 1.0))


@pytest.mark.parametrize("hessian", ["exact", "finite_difference"])
def test_darts_hypergrad_matches_closed_form_on_a_quadratic(hessian):
    rng = np.random.default_rng(0)
    n, m = 5, 3
    train, val = random_quadratic(rng, n, m), random_quadratic(rng, n, m)
    w, alpha, buf = rng.normal(size=n), rng.normal(size=m), rng.normal(size=n)
    lr, mom, wd = 0.05, 0.9, 3e-4
    val_loss, dalpha = jnas.darts_hypergrad(
        quadratic_loss, w, alpha, train, val, lr=lr, momentum=mom, momentum_buf=buf,
        weight_decay=wd, hessian=hessian,
    )
    A1, B1, c1, _, _ = train
    A2, B2, c2, d2, E2 = val
    w1 = w - lr * (mom * buf + A1 @ w + B1 @ alpha + c1 + wd * w)
    # d/dalpha L_val(w'(alpha), alpha) with dw'/dalpha = -lr B1.
    want = B2.T @ w1 + d2 + E2 @ alpha - lr * B1.T @ (A2 @ w1 + B2 @ alpha + c2)
    np.testing.assert_allclose(dalpha, want, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(val_loss, quadratic_loss(w1, alpha, val), rtol=1e-12)


def mlp_loss(w, alpha, batch):
    """A small nonlinear model where alpha mixes hidden units and also enters a penalty."""
    x, y = batch
    h = jnp.tanh(x @ w["W"] + w["b"])
    out = h @ (jax.nn.softmax(alpha["mix"]) * w["v"])
    return jnp.mean((out - y) ** 2) + 0.1 * jnp.sum(alpha["gate"] ** 2 * w["v"][:2] ** 2)


def mlp_problem(seed=0):
    rng = np.random.default_rng(seed)
    w = {"W": rng.normal(size=(3, 4)), "b": rng.normal(size=4), "v": rng.normal(size=4)}
    alpha = {"mix": rng.normal(size=4), "gate": rng.normal(size=2)}
    def batch():
        return rng.normal(size=(16, 3)), rng.normal(size=16)
    buf = jax.tree.map(lambda p: rng.normal(size=p.shape), w)
    return w, alpha, batch(), batch(), buf


def unrolled_objective(alpha, w, train, val, lr, mom, buf, wd):
    g = jax.grad(mlp_loss)(w, alpha, train)
    w1 = jnas.unrolled_step(w, g, lr, momentum=mom, momentum_buf=buf, weight_decay=wd)
    return mlp_loss(w1, alpha, val)


def test_exact_hypergrad_matches_central_differences_of_the_unrolled_objective():
    w, alpha, train, val, buf = mlp_problem()
    args = (w, train, val, 0.3, 0.9, buf, 1e-2)
    _, dalpha = jnas.darts_hypergrad(
        mlp_loss, w, alpha, train, val, lr=0.3, momentum=0.9, momentum_buf=buf,
        weight_decay=1e-2,
    )
    flat, unravel = jax.flatten_util.ravel_pytree(alpha)
    f = lambda a: unrolled_objective(unravel(a), *args)  # noqa: E731
    eps = 1e-6
    fd = np.array([(f(flat + eps * e) - f(flat - eps * e)) / (2 * eps) for e in np.eye(flat.size)])
    got = jax.flatten_util.ravel_pytree(dalpha)[0]
    np.testing.assert_allclose(got, fd, rtol=1e-6, atol=1e-9)
    # The second-order term matters here: first order alone is far off.
    first = jax.flatten_util.ravel_pytree(jax.grad(mlp_loss, argnums=1)(w, alpha, val))[0]
    assert np.max(np.abs(first - fd)) > 1e-3


def test_finite_difference_variant_approximates_the_exact_hypergradient():
    w, alpha, train, val, buf = mlp_problem(1)
    kw = dict(lr=0.3, momentum=0.9, momentum_buf=buf, weight_decay=1e-2)
    exact_loss, exact = jnas.darts_hypergrad(mlp_loss, w, alpha, train, val, **kw)
    fd_loss, fd = jnas.darts_hypergrad(
        mlp_loss, w, alpha, train, val, hessian="finite_difference", fd_radius=1e-4, **kw
    )
    assert float(exact_loss) == pytest.approx(float(fd_loss), rel=1e-12)
    for k in alpha:
        np.testing.assert_allclose(fd[k], exact[k], rtol=1e-5, atol=1e-7)
    # DARTS's default radius 0.01 is a coarser estimate but still close.
    _, coarse = jnas.darts_hypergrad(
        mlp_loss, w, alpha, train, val, hessian="finite_difference", **kw
    )
    for k in alpha:
        np.testing.assert_allclose(coarse[k], exact[k], rtol=1e-2, atol=1e-4)


def test_zero_lr_is_first_order_darts():
    w, alpha, train, val, _ = mlp_problem(2)
    loss, dalpha = jnas.darts_hypergrad(mlp_loss, w, alpha, train, val, lr=0.0)
    want_loss, want = jax.value_and_grad(mlp_loss, argnums=1)(w, alpha, val)
    assert loss == pytest.approx(float(want_loss), rel=1e-14)
    # A traced zero takes the unrolled path and must agree with the shortcut.
    traced = jax.jit(
        lambda lr: jnas.darts_hypergrad(mlp_loss, w, alpha, train, val, lr=lr)[1]
    )(jnp.zeros(()))
    for k in alpha:
        np.testing.assert_allclose(dalpha[k], want[k], rtol=1e-14)
        np.testing.assert_allclose(traced[k], want[k], rtol=1e-12)


def test_bad_hessian_name_is_a_clear_error():
    w, alpha, train, val, _ = mlp_problem()
    with pytest.raises(jnas.JnasError, match="hessian must be"):
        jnas.darts_hypergrad(mlp_loss, w, alpha, train, val, lr=0.1, hessian="gauss_newton")
