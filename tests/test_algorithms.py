"""The assembled steps against their parts: each algorithm's step equals its transform called
directly, with the state's momentum buffer, the current learning rate and the step order,
in float64 on a convolution-free network (so that a wrong piece differs by far more than
rounding). Every check also shows that the wrong variant would fail it."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jnas
from jnas.search import Search, SearchConfig
from jnas.steps import cross_entropy
from tests.common import TINY_CONFIG, random_batch

NO_CONV = ("none", "max_pool_3x3", "skip_connect")
# One step per epoch over 3 epochs: the learning rate changes at every step.
STEPS_PER_EPOCH, EPOCHS = 1, 3


def as_float64(tree):
    return jax.tree.map(lambda x: x.astype(np.float64) if x.dtype == np.float32 else x, tree)


def after_one_step(**config):
    """A float64 search and its state after one step (a non-zero momentum buffer, a
    moved alpha, the second epoch's learning rate), plus the next step's inputs."""
    cfg = {**TINY_CONFIG, "primitives": NO_CONV, "epochs": EPOCHS, **config}
    search = Search(SearchConfig(**cfg), 10, STEPS_PER_EPOCH)
    state = as_float64(search.init(jax.random.key(0), random_batch(0)["x"][:2]))
    state, _ = search.step(state, as_float64(random_batch(1)), as_float64(random_batch(2)),
                           jax.random.key(7))
    train, val = as_float64(random_batch(3)), as_float64(random_batch(4))
    return search, state, train, val, jax.random.key(8)


def loss_fn_of(search, state, key, epoch):
    """The train-mode loss of the network under the relaxation's sample from `key`."""

    def loss_fn(params, alpha, batch):
        weights, index = search.relaxation.train_weights(alpha, key, epoch)
        logits, _ = search.model.apply({"params": params, "batch_stats": state.batch_stats},
                                       batch["x"], weights, index, mutable=["batch_stats"])
        return cross_entropy(logits, batch["y"])

    return loss_fn


def adam_on(search, state, dalpha):
    updates, _ = search.alpha_tx.update(dalpha, state.alpha_opt_state, state.alpha)
    return optax.apply_updates(state.alpha, updates)


def sgd_on(search, state, grads):
    updates, _ = search.w_tx.update(grads, state.w_opt_state, state.params)
    return optax.apply_updates(state.params, updates)


def far(a, b, atol=1e-6):
    return any(np.abs(np.asarray(a[k]) - np.asarray(b[k])).max() > atol for k in a)


def test_darts_second_order_step_is_darts_hypergrad_with_the_optimizer_state():
    hessian = "exact"
    with jax.enable_x64(True):
        search, state, train, val, key = after_one_step(second_order=True, hessian=hessian)
        new, _ = search.step(state, train, val, key)
        k_arch, _ = jax.random.split(key)
        loss_fn = loss_fn_of(search, state, k_arch, 1)
        buf = optax.tree_utils.tree_get(state.w_opt_state, "trace")
        lr = search.lr_schedule(state.step)
        cfg = search.config

        @jax.jit  # one compilation for the three calls, faster than running them eagerly
        def alpha_after(lr, buf):
            _, dalpha = jnas.darts_hypergrad(
                loss_fn, state.params, state.alpha, train, val, lr=lr, momentum=cfg.momentum,
                momentum_buf=buf, weight_decay=cfg.weight_decay, hessian=hessian)
            return adam_on(search, state, dalpha)

        want = alpha_after(lr, buf)
        chex.assert_trees_all_close(new.alpha, want, rtol=1e-6, atol=1e-10)
        # The xi of the step's first epoch, or a zero momentum buffer, would fail it.
        assert lr != search.lr_schedule(0)
        assert far(alpha_after(search.lr_schedule(0), buf), want, 1e-8)
        assert far(alpha_after(lr, jax.tree.map(jnp.zeros_like, buf)), want, 1e-8)


def test_gdas_takes_the_weight_step_first():
    with jax.enable_x64(True):
        search, state, train, val, key = after_one_step(algorithm="gdas")
        new, _ = search.step(state, train, val, key)
        k_arch, k_w = jax.random.split(key)
        grads = jax.grad(loss_fn_of(search, state, k_w, 1))(state.params, state.alpha, train)
        params = sgd_on(search, state, grads)
        chex.assert_trees_all_close(new.params, params, rtol=1e-6, atol=1e-10)
        arch_loss = loss_fn_of(search, state, k_arch, 1)

        @jax.jit
        def alpha_at(params):
            return adam_on(search, state, jax.grad(arch_loss, argnums=1)(params, state.alpha,
                                                                        val))

        chex.assert_trees_all_close(new.alpha, alpha_at(params), rtol=1e-6, atol=1e-10)
        # The architecture gradient at the weights before the step would fail it.
        assert far(alpha_at(state.params), alpha_at(params), 1e-8)


def test_milenas_step_is_adam_on_the_mixed_level_gradient():
    with jax.enable_x64(True):
        search, state, train, val, key = after_one_step(algorithm="milenas", lam=0.5)
        new, _ = search.step(state, train, val, key)
        loss_fn = loss_fn_of(search, state, jax.random.split(key)[0], 1)

        @jax.jit
        def alpha_after(lam):
            _, dalpha = jnas.milenas_hypergrad(loss_fn, state.params, state.alpha, train, val,
                                               lam=lam)
            return adam_on(search, state, dalpha)

        chex.assert_trees_all_close(new.alpha, alpha_after(0.5), rtol=1e-6, atol=1e-10)
        assert far(alpha_after(1.0), alpha_after(0.5), 1e-8)  # lam matters


def test_snas_updates_weights_and_alpha_from_one_loss_on_the_train_batch():
    with jax.enable_x64(True):
        search, state, train, val, key = after_one_step(algorithm="snas")
        new, metrics = search.step(state, train, val, key)
        _, k_w = jax.random.split(key)
        loss_fn = loss_fn_of(search, state, k_w, 1)
        loss, (grads, dalpha) = jax.value_and_grad(loss_fn, argnums=(0, 1))(
            state.params, state.alpha, train)
        chex.assert_trees_all_close(new.params, sgd_on(search, state, grads), rtol=1e-6,
                                    atol=1e-10)
        chex.assert_trees_all_close(new.alpha, adam_on(search, state, dalpha), rtol=1e-6,
                                    atol=1e-10)
        np.testing.assert_allclose(metrics["train_loss"], loss, rtol=1e-7)
        # Not the validation batch: its gradient moves alpha elsewhere.
        d_val = jax.grad(loss_fn, argnums=1)(state.params, state.alpha, val)
        assert far(adam_on(search, state, d_val), new.alpha, 1e-8)
        # The SNAS temperature of epoch 1 of 3: (1 - 2/3) * (1 - 0.03) + 0.03.
        np.testing.assert_allclose(metrics["tau"], (1 - 2 / 3) * 0.97 + 0.03, rtol=1e-6)
