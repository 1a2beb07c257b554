"""maml_adapt and maml_meta_grad against closed forms on linear regression (float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jnas


@pytest.fixture(autouse=True)
def float64():
    with jax.enable_x64(True):
        yield


def regression_task(seed, n=12, d1=3, d2=2):
    """Support and query sets of one linear regression task with features split in 2 groups."""
    rng = np.random.default_rng(seed)
    true = rng.normal(size=d1 + d2)

    def draw():
        x = rng.normal(size=(n, d1 + d2))
        return x, x @ true + 0.1 * rng.normal(size=n)

    return draw(), draw()


def loss_fn(params, batch):
    """0.5 * mean squared error of a linear model whose weights are two pytree leaves."""
    x, y = batch
    w = jnp.concatenate([params["a"], params["b"]])
    return 0.5 * jnp.mean((x @ w - y) ** 2)


def closed_form(params, support, query, lrs, steps, first_order):
    """With A = X^T X / n, b = X^T y / n and D = diag(per-coordinate lr), each inner step is
    w <- M w + D b_s with M = I - D A_s, so w_K = M^K w + ..., dw_K/dw = M^K and the
    meta-gradient is (M^K)^T (A_q w_K - b_q); first order drops (M^K)^T."""
    w = np.concatenate([params["a"], params["b"]])
    (xs, ys), (xq, yq) = support, query
    a_s, b_s = xs.T @ xs / len(ys), xs.T @ ys / len(ys)
    a_q, b_q = xq.T @ xq / len(yq), xq.T @ yq / len(yq)
    d = np.diag(lrs)
    m = np.eye(len(w)) - d @ a_s
    for _ in range(steps):
        w = m @ w + d @ b_s
    g_q = a_q @ w - b_q
    grad = g_q if first_order else np.linalg.matrix_power(m, steps).T @ g_q
    loss = 0.5 * np.mean((xq @ w - yq) ** 2)
    return loss, grad, w


PARAMS = {"a": np.array([0.3, -0.2, 0.5]), "b": np.array([1.0, -1.0])}


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("steps", [1, 5])
def test_meta_grad_matches_closed_form(first_order, steps):
    support, query = regression_task(0)
    params = jax.tree.map(jnp.asarray, PARAMS)
    loss, grads = jnas.maml_meta_grad(
        loss_fn, params, support, query, inner_lr=0.1, inner_steps=steps, first_order=first_order
    )
    want_loss, want_grad, _ = closed_form(PARAMS, support, query, [0.1] * 5, steps, first_order)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-12)
    got = np.concatenate([grads["a"], grads["b"]])
    np.testing.assert_allclose(got, want_grad, rtol=1e-10, atol=1e-14)
    # The second-order term is not negligible here, so the two cases are told apart.
    _, other, _ = closed_form(PARAMS, support, query, [0.1] * 5, steps, not first_order)
    assert np.max(np.abs(got - other)) > 1e-3


def test_pytree_inner_lr_adapts_each_group_at_its_rate():
    support, query = regression_task(1)
    params = jax.tree.map(jnp.asarray, PARAMS)
    lrs = [0.2] * 3 + [0.05] * 2
    adapted = jnas.maml_adapt(
        loss_fn, params, support, inner_lr={"a": 0.2, "b": 0.05}, inner_steps=3
    )
    _, _, want_w = closed_form(PARAMS, support, query, lrs, 3, False)
    np.testing.assert_allclose(np.concatenate([adapted["a"], adapted["b"]]), want_w, rtol=1e-12)
    _, grads = jnas.maml_meta_grad(
        loss_fn, params, support, query, inner_lr={"a": 0.2, "b": 0.05}, inner_steps=3
    )
    _, want_grad, _ = closed_form(PARAMS, support, query, lrs, 3, False)
    np.testing.assert_allclose(np.concatenate([grads["a"], grads["b"]]), want_grad, rtol=1e-10)


def test_zero_rate_group_is_not_adapted_yet_gets_the_meta_gradient_through_the_rest():
    """Auto-MAML: the shared alpha has inner rate 0; a static 0 skips its inner gradients and
    must give exactly what a traced zero rate gives."""
    support, query = regression_task(2)
    params = jax.tree.map(jnp.asarray, PARAMS)
    adapted = jnas.maml_adapt(
        loss_fn, params, support, inner_lr={"a": 0.1, "b": 0.0}, inner_steps=4
    )
    np.testing.assert_array_equal(adapted["b"], PARAMS["b"])
    _, grads = jnas.maml_meta_grad(
        loss_fn, params, support, query, inner_lr={"a": 0.1, "b": 0.0}, inner_steps=4
    )
    _, traced = jax.jit(
        lambda p, z: jnas.maml_meta_grad(
            loss_fn, p, support, query, inner_lr={"a": 0.1, "b": z}, inner_steps=4
        )
    )(params, jnp.asarray(0.0))
    _, want_grad, _ = closed_form(PARAMS, support, query, [0.1] * 3 + [0.0] * 2, 4, False)
    for g in (grads, traced):
        np.testing.assert_allclose(np.concatenate([g["a"], g["b"]]), want_grad, rtol=1e-10)
    assert np.all(np.abs(grads["b"]) > 1e-6)


def test_zero_steps_is_the_plain_query_gradient():
    support, query = regression_task(3)
    params = jax.tree.map(jnp.asarray, PARAMS)
    loss, grads = jnas.maml_meta_grad(loss_fn, params, support, query, inner_lr=0.1, inner_steps=0)
    want_loss, want = jax.value_and_grad(loss_fn)(params, query)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-14)
    for k in params:
        np.testing.assert_allclose(grads[k], want[k], rtol=1e-14)


def test_meta_grad_matches_finite_differences_on_a_nonlinear_model():
    def mlp_loss(p, batch):
        x, y = batch
        h = jnp.tanh(x @ p["w1"])
        return jnp.mean((h @ p["w2"] - y) ** 2)

    rng = np.random.default_rng(4)
    params = {"w1": jnp.asarray(rng.normal(size=(3, 4))), "w2": jnp.asarray(rng.normal(size=4))}
    support = (jnp.asarray(rng.normal(size=(6, 3))), jnp.asarray(rng.normal(size=6)))
    query = (jnp.asarray(rng.normal(size=(6, 3))), jnp.asarray(rng.normal(size=6)))

    def meta_loss(p):
        adapted = jnas.maml_adapt(mlp_loss, p, support, inner_lr=0.05, inner_steps=3)
        return mlp_loss(adapted, query)

    _, grads = jnas.maml_meta_grad(mlp_loss, params, support, query, inner_lr=0.05, inner_steps=3)
    direction = {k: jnp.asarray(rng.normal(size=v.shape)) for k, v in params.items()}
    eps = 1e-6
    shifted = [jax.tree.map(lambda p, d, s=s: p + s * eps * d, params, direction) for s in (1, -1)]
    fd = (meta_loss(shifted[0]) - meta_loss(shifted[1])) / (2 * eps)
    analytic = sum(jnp.vdot(grads[k], direction[k]) for k in params)
    np.testing.assert_allclose(analytic, fd, rtol=1e-7)


def test_vmapped_meta_batch_is_the_mean_of_single_tasks():
    tasks = [regression_task(10 + i) for i in range(4)]
    supports = jax.tree.map(lambda *xs: jnp.stack(xs), *[t[0] for t in tasks])
    queries = jax.tree.map(lambda *xs: jnp.stack(xs), *[t[1] for t in tasks])
    params = jax.tree.map(jnp.asarray, PARAMS)

    def task_grad(p, s, q):
        return jnas.maml_meta_grad(loss_fn, p, s, q, inner_lr=0.1, inner_steps=2)

    losses, grads = jax.vmap(task_grad, in_axes=(None, 0, 0))(params, supports, queries)
    singles = [task_grad(params, s, q) for s, q in tasks]
    np.testing.assert_allclose(losses.mean(), np.mean([s[0] for s in singles]), rtol=1e-13)
    for k in params:
        np.testing.assert_allclose(
            grads[k].mean(0), np.mean([s[1][k] for s in singles], axis=0), rtol=1e-12
        )


def test_has_aux_returns_the_query_aux():
    support, query = regression_task(5)
    params = jax.tree.map(jnp.asarray, PARAMS)

    def with_aux(p, batch):
        loss = loss_fn(p, batch)
        return loss, {"twice": 2 * loss}

    (loss, aux), grads = jnas.maml_meta_grad(
        with_aux, params, support, query, inner_lr=0.1, inner_steps=2, has_aux=True
    )
    plain_loss, plain = jnas.maml_meta_grad(
        loss_fn, params, support, query, inner_lr=0.1, inner_steps=2
    )
    np.testing.assert_allclose(aux["twice"], 2 * plain_loss, rtol=1e-14)
    np.testing.assert_allclose(grads["a"], plain["a"], rtol=1e-14)


def test_bad_inner_lr_and_steps_are_refused():
    support, _ = regression_task(6)
    params = jax.tree.map(jnp.asarray, PARAMS)
    with pytest.raises(jnas.JnasError, match="pytree prefix"):
        jnas.maml_adapt(loss_fn, params, support, inner_lr={"c": 0.1}, inner_steps=1)
    with pytest.raises(jnas.JnasError, match="inner_steps"):
        jnas.maml_adapt(loss_fn, params, support, inner_lr=0.1, inner_steps=-1)
