"""Bilevel architecture-search transforms over any `loss_fn(w, alpha, batch) -> scalar`.

They know nothing of networks: `w` and `alpha` are arbitrary pytrees, and a network plugs in
through a loss function that closes over its module.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp
import optax

from jnas.errors import JnasError

PyTree = Any
LossFn = Callable[[PyTree, PyTree, Any], jax.Array]


def unrolled_step(w, grads, lr, *, momentum=0.0, momentum_buf=None, weight_decay=0.0):
    """One virtual SGD step, as PyTorch's SGD would take it (coupled weight decay).

    `w - lr * (momentum * momentum_buf + grads + weight_decay * w)`; `momentum_buf=None`
    means a zero buffer (the first step of a run).

    Example:
      >>> w_prime = jnas.unrolled_step(w, jax.grad(loss)(w), 0.025, weight_decay=3e-4)
    """

    def step(w, g, buf):
        return w - lr * (momentum * buf + g + weight_decay * w)

    if momentum_buf is None:
        momentum_buf = jax.tree.map(jnp.zeros_like, w)
    return jax.tree.map(step, w, grads, momentum_buf)


def _is_static_zero(x) -> bool:
    return isinstance(x, int | float) and x == 0


def darts_hypergrad(
    loss_fn: LossFn,
    w,
    alpha,
    train_batch,
    val_batch,
    *,
    lr,
    momentum=0.0,
    momentum_buf=None,
    weight_decay=0.0,
    hessian: Literal["exact", "finite_difference"] = "exact",
    fd_radius: float = 0.01,
):
    """DARTS's architecture gradient through one unrolled weight step.

    With `w'(alpha) = unrolled_step(w, grad_w L_train(w, alpha), lr, ...)`:

    - `hessian="exact"`: the total derivative `d/dalpha L_val(w'(alpha), alpha)`, by
      differentiating through the virtual step (a Hessian-vector product, exact).
    - `hessian="finite_difference"`: the DARTS paper's estimate
      `grad_alpha L_val(w') - lr * (grad_alpha L_train(w+) - grad_alpha L_train(w-)) / (2 eps)`
      with `w+- = w +- eps v`, `v = grad_w L_val(w')`, `eps = fd_radius / ||v||`.

    `lr = 0` (a Python zero) is DARTS's first order: `grad_alpha L_val(w, alpha)`, and no
    second-order graph is built.

    Returns `(val_loss, dalpha)` with `val_loss = L_val(w', alpha)`.

    Example:
      >>> def loss_fn(w, alpha, batch):
      ...     x, y = batch
      ...     return jnp.mean((x @ (w * jax.nn.softmax(alpha)) - y) ** 2)
      >>> val_loss, dalpha = jnas.darts_hypergrad(loss_fn, w, alpha, (xt, yt), (xv, yv), lr=0.025)
    """
    if hessian not in ("exact", "finite_difference"):
        raise JnasError(f"hessian must be 'exact' or 'finite_difference', got {hessian!r}")

    if _is_static_zero(lr):
        return jax.value_and_grad(loss_fn, argnums=1)(w, alpha, val_batch)

    def unrolled(alpha):
        grads = jax.grad(loss_fn)(w, alpha, train_batch)
        return unrolled_step(
            w, grads, lr, momentum=momentum, momentum_buf=momentum_buf, weight_decay=weight_decay
        )

    if hessian == "exact":
        return jax.value_and_grad(lambda a: loss_fn(unrolled(a), a, val_batch))(alpha)

    w_prime = unrolled(alpha)
    val_loss, (v, dalpha) = jax.value_and_grad(loss_fn, argnums=(0, 1))(w_prime, alpha, val_batch)
    eps = fd_radius / optax.tree.norm(v)
    grad_alpha_train = jax.grad(loss_fn, argnums=1)

    def shifted(sign):
        return jax.tree.map(lambda p, d: p + sign * eps * d, w, v)

    g_plus = grad_alpha_train(shifted(1.0), alpha, train_batch)
    g_minus = grad_alpha_train(shifted(-1.0), alpha, train_batch)
    dalpha = jax.tree.map(
        lambda d, gp, gm: d - lr * (gp - gm) / (2 * eps), dalpha, g_plus, g_minus
    )
    return val_loss, dalpha


def milenas_hypergrad(loss_fn: LossFn, w, alpha, train_batch, val_batch, *, lam=1.0):
    """MiLeNAS's mixed-level architecture gradient (He et al., CVPR 2020).

    `dalpha = grad_alpha L_train(w, alpha) + lam * grad_alpha L_val(w, alpha)`, both at the
    current weights: no unrolled step, no second-order term. Returns
    `(L_train + lam * L_val, dalpha)`.

    Example:
      >>> loss, dalpha = jnas.milenas_hypergrad(loss_fn, w, alpha, train_batch, val_batch)
    """

    def mixed(alpha):
        return loss_fn(w, alpha, train_batch) + lam * loss_fn(w, alpha, val_batch)

    return jax.value_and_grad(mixed)(alpha)


def gumbel_softmax(key, logits, tau, *, hard=False, axis=-1):
    """A Gumbel-softmax sample `softmax((log_softmax(logits) + g) / tau)`, `g ~ Gumbel(0, 1)`.

    `hard=True` returns the one-hot of the sample's argmax in value, with the gradient of the
    soft sample (straight-through, as in GDAS): `one_hot - stop_gradient(soft) + soft`. The
    one-hot is exact in value, because `soft - stop_gradient(soft)` is exactly zero.

    Example:
      >>> h = jnas.gumbel_softmax(key, alpha, tau=10.0, hard=True)   # (edges, ops) one-hot rows
      >>> index = jnp.argmax(h, axis=-1)                               # the sampled op per edge
    """
    g = jax.random.gumbel(key, jnp.shape(logits), jnp.result_type(logits))
    soft = jax.nn.softmax((jax.nn.log_softmax(logits, axis=axis) + g) / tau, axis=axis)
    if not hard:
        return soft
    index = jnp.argmax(soft, axis=axis)
    one_hot = jax.nn.one_hot(index, soft.shape[axis], axis=axis, dtype=soft.dtype)
    return one_hot + (soft - jax.lax.stop_gradient(soft))
