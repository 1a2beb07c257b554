"""Bilevel architecture-search transforms over any `loss_fn(w, alpha, batch) -> scalar`.

They know nothing of networks: `w` and `alpha` are arbitrary pytrees, and a network plugs in
through a loss function that closes over its module.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import chex
import jax
import jax.flatten_util
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
    # A gradient or buffer of another model fails here, naming the leaf, not inside tree.map.
    chex.assert_trees_all_equal_shapes(w, grads, momentum_buf)
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

    - `hessian="exact"`: the total derivative `d/dalpha L_val(w'(alpha), alpha)`, exact:
      `grad_alpha L_val(w') - lr * D_w(grad_alpha L_train)(w)[v]`, `v = grad_w L_val(w')`, the
      mixed second derivative taken forward-over-reverse (`jax.jvp` of `jax.grad`).
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

    # d/dalpha L_val(w'(alpha), alpha) = grad_alpha L_val + (dw'/dalpha)^T v with
    # v = grad_w L_val at w', and (dw'/dalpha)^T v = -lr * D_w(grad_alpha L_train)[v]: a
    # mixed second derivative along one direction. "exact" takes it forward-over-reverse (a
    # JVP of the architecture gradient), which holds one network's residuals and their
    # tangents instead of reverse-over-reverse's whole unrolled graph; DARTS's estimate takes
    # it by central differences along v.
    w_prime = unrolled(alpha)
    val_loss, (v, dalpha) = jax.value_and_grad(loss_fn, argnums=(0, 1))(w_prime, alpha, val_batch)

    def grad_alpha_train(w):
        return jax.grad(loss_fn, argnums=1)(w, alpha, train_batch)

    if hessian == "exact":
        mixed = jax.jvp(grad_alpha_train, (w,), (v,))[1]
    else:
        eps = fd_radius / optax.tree.norm(v)
        g_plus = grad_alpha_train(jax.tree.map(lambda p, d: p + eps * d, w, v))
        g_minus = grad_alpha_train(jax.tree.map(lambda p, d: p - eps * d, w, v))
        mixed = jax.tree.map(lambda gp, gm: (gp - gm) / (2 * eps), g_plus, g_minus)
    dalpha = jax.tree.map(lambda d, m: d - lr * m, dalpha, mixed)
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


def hessian_eigenvalues(loss_fn: LossFn, w, alpha, batch, k: int = 1, *, num_iters: int = 20,
                        key=None):
    """The `k` largest eigenvalues (descending) of the Hessian of `loss_fn(w, alpha, batch)`
    with respect to `alpha`: RobustDARTS's dominant eigenvalue (Zela et al., ICLR 2020) for
    `k=1`.

    Lanczos with full reorthogonalisation over `num_iters` Hessian-vector products
    (forward-over-reverse; capped at alpha's size, where the result is exact), from a
    normal start vector drawn from `key` (default: key 0). The Hessian is never formed.

    Example:
      >>> lam_max = jnas.hessian_eigenvalues(loss_fn, w, alpha, val_batch)[0]
    """
    flat, unravel = jax.flatten_util.ravel_pytree(alpha)
    n = flat.size
    if not 1 <= k <= n:
        raise JnasError(f"`k` must lie in [1, {n}] (alpha's size), got {k}")
    if num_iters < 1:
        raise JnasError(f"`num_iters` must be positive, got {num_iters}")
    m = max(min(num_iters, n), k)
    grad = jax.grad(lambda a: loss_fn(w, unravel(a), batch))

    def hvp(v):
        return jax.jvp(grad, (flat,), (v,))[1]

    start = jax.random.normal(jax.random.key(0) if key is None else key, (n,), flat.dtype)
    basis = jnp.zeros((m + 1, n), flat.dtype).at[0].set(start / jnp.linalg.norm(start))

    def lanczos(j, carry):
        basis, diag, off = carry
        z = hvp(basis[j])
        diag = diag.at[j].set(jnp.vdot(basis[j], z))
        for _ in range(2):  # twice is enough (Kahan): orthogonal to every vector so far
            z = z - basis.T @ (basis @ z)
        norm = jnp.linalg.norm(z)
        # An invariant subspace was found: the later vectors stay zero.
        basis = basis.at[j + 1].set(jnp.where(norm > 1e-30, z / norm, 0.0))
        return basis, diag, off.at[j].set(norm)

    _, diag, off = jax.lax.fori_loop(
        0, m, lanczos, (basis, jnp.zeros(m, flat.dtype), jnp.zeros(m, flat.dtype))
    )
    tridiagonal = jnp.diag(diag) + jnp.diag(off[:-1], 1) + jnp.diag(off[:-1], -1)
    return jnp.linalg.eigvalsh(tridiagonal)[::-1][:k]


def _per_leaf_lr(inner_lr, params) -> list:
    """`inner_lr` (a scalar or a pytree prefix of `params`) as one rate per leaf of `params`."""
    try:
        return jax.tree.leaves(
            jax.tree.map(lambda lr, sub: jax.tree.map(lambda _: lr, sub), inner_lr, params)
        )
    except ValueError as e:
        raise JnasError(
            "inner_lr must be a scalar or a pytree prefix of params (e.g. {'w': 0.01, "
            "'alpha': 3e-3} for params {'w': ..., 'alpha': ...}): "
            f"{str(e).splitlines()[0]}"
        ) from None


def maml_adapt(
    loss_fn, params, support, *, inner_lr, inner_steps: int, first_order=False, has_aux=False
):
    """MAML's inner loop: `inner_steps` SGD steps on `loss_fn(params, support)`.

    `p <- p - inner_lr * grad_p loss_fn(p, support)`, as a `lax.scan`, so the traced program
    does not grow with `inner_steps`. `inner_lr` is a scalar or a pytree prefix of `params`
    with one rate per subtree: T-NAS adapts weights and architecture at different rates
    (`{"w": 0.01, "alpha": 3e-3}`). A subtree whose rate is a Python 0 is not adapted and no
    inner gradient is computed for it; gradients still reach it through the adapted rest
    (Auto-MAML's shared alpha). `first_order=True` stops gradients through the inner
    gradients (first-order MAML): d(adapted)/d(params) is then the identity.
    `has_aux`: `loss_fn` returns `(loss, aux)`; aux is ignored here.

    Example:
      >>> def loss_fn(w, batch):
      ...     x, y = batch
      ...     return jnp.mean((x @ w - y) ** 2)
      >>> w_task = jnas.maml_adapt(loss_fn, w, (xs, ys), inner_lr=0.01, inner_steps=5)
    """
    if not isinstance(inner_steps, int) or inner_steps < 0:
        raise JnasError(f"inner_steps must be an int >= 0, got {inner_steps!r}")
    leaves, treedef = jax.tree.flatten(params)
    lrs = _per_leaf_lr(inner_lr, params)
    moving = [i for i, lr in enumerate(lrs) if not _is_static_zero(lr)]

    def rebuild(moving_leaves):
        full = list(leaves)
        for i, x in zip(moving, moving_leaves, strict=True):
            full[i] = x
        return jax.tree.unflatten(treedef, full)

    def support_loss(moving_leaves):
        out = loss_fn(rebuild(moving_leaves), support)
        return out[0] if has_aux else out

    # Rematerialised: differentiated, the loop keeps each step's parameters, not its
    # activations, and recomputes one step at a time backward. T-NAS's default meta-iteration
    # needed 12.1 GB of buffers without it and 3.6 GB with it, and neither it nor MAML's ran
    # slower (bench/README.md).
    @jax.checkpoint
    def step(moving_leaves, _):
        grads = jax.grad(support_loss)(moving_leaves)
        if first_order:
            grads = jax.lax.stop_gradient(grads)
        new = [p - lrs[i] * g for i, p, g in zip(moving, moving_leaves, grads, strict=True)]
        return new, None

    adapted, _ = jax.lax.scan(step, [leaves[i] for i in moving], None, length=inner_steps)
    return rebuild(adapted)


def maml_meta_grad(
    loss_fn, params, support, query, *, inner_lr, inner_steps: int, first_order=False,
    has_aux=False,
):
    """MAML's meta-gradient for ONE task: `d/dparams loss_fn(maml_adapt(params, support), query)`.

    Exact (second order, through every inner step) by default; `first_order=True` is FOMAML.
    Returns `(query_loss, grads)`, or `((query_loss, aux), grads)` with `has_aux`. Batch tasks
    with `jax.vmap` and average the gradients.

    Example:
      >>> task_grad = lambda p, s, q: jnas.maml_meta_grad(loss_fn, p, s, q, inner_lr=0.01,
      ...                                                 inner_steps=5)
      >>> losses, grads = jax.vmap(task_grad, in_axes=(None, 0, 0))(params, supports, queries)
      >>> meta_grad = jax.tree.map(lambda g: g.mean(0), grads)
    """

    def query_loss(p):
        adapted = maml_adapt(
            loss_fn, p, support, inner_lr=inner_lr, inner_steps=inner_steps,
            first_order=first_order, has_aux=has_aux,
        )
        return loss_fn(adapted, query)

    return jax.value_and_grad(query_loss, has_aux=has_aux)(params)


def reinforce_grad(log_prob_fn, theta, actions, rewards, baseline, *, baseline_decay=0.99,
                   entropy_weight=0.0):
    """The score-function (REINFORCE) policy gradient of K sampled actions, with a moving-
    average baseline and an entropy bonus.

    `log_prob_fn(theta, a) -> (log p(a; theta), H(a; theta))` for ONE sample `a`: the
    log-probability summed over its decisions, and the policy's entropy summed over the
    decisions along `a` (for a factorised policy, the entropy of the whole policy).
    `actions` is a pytree whose leaves have a leading axis of K samples, `rewards` (K,).

        loss = -mean_k[(R_k - b) log p(a_k; theta) + entropy_weight * H(a_k; theta)]

    with `R_k - b` held constant, so `-grad loss` is the unbiased estimate
    `mean_k (R_k - b) grad log p(a_k)` of `grad E[R]` (Williams 1992), for any `b` that does
    not depend on the samples: the `baseline` passed in, the moving average of EARLIER
    rewards. Returns `(loss, grads of loss w.r.t. theta, new_baseline)`,
    `new_baseline = baseline_decay * b + (1 - baseline_decay) * mean_k R_k`; minimise the
    loss (e.g. `optax.adam`) to ascend the expected reward.

    The entropy term is differentiated along the sampled decisions: for a factorised policy
    its expectation is `entropy_weight * grad H(theta)`; for an autoregressive one (an LSTM
    controller) it is the gradient of the per-step entropies with the earlier decisions held.
    ENAS differs in two ways (melodyguan/enas 4bcfd73, src/cifar10/micro_controller.py
    L169-170, L237-248): it adds `entropy_weight * H` (stop-gradient) to the reward, and it
    updates the baseline with the current reward before subtracting it, which biases the
    estimate slightly; NAS-Bench-201's REINFORCE baseline does the latter too (D-X-Y/
    AutoDL-Projects f46486e, exps/NAS-Bench-201-algos/reinforce.py L195-197).

    Example:
      >>> def log_prob_fn(logits, a):      # a factorised categorical policy, logits (T, n)
      ...     logp = jax.nn.log_softmax(logits)
      ...     return logp[jnp.arange(len(a)), a].sum(), -(jnp.exp(logp) * logp).sum()
      >>> loss, grads, b = jnas.reinforce_grad(log_prob_fn, logits, actions, rewards, b,
      ...                                      entropy_weight=1e-4)
    """
    k = jnp.shape(rewards)
    leaves = jax.tree.leaves(actions)
    if len(k) != 1 or not leaves:
        raise JnasError(f"`rewards` must have shape (K,), one per sample, got {k}, and "
                        "`actions` at least one array")
    if any(jnp.shape(leaf)[:1] != k for leaf in leaves):
        raise JnasError(
            f"every leaf of `actions` must have a leading axis of the K={k[0]} samples of "
            f"`rewards`, got shapes {[jnp.shape(leaf) for leaf in leaves]}"
        )
    if isinstance(baseline_decay, int | float) and not 0 <= baseline_decay <= 1:
        raise JnasError(f"`baseline_decay` must lie in [0, 1], got {baseline_decay}")
    rewards = jnp.asarray(rewards)
    advantage = jax.lax.stop_gradient(rewards - baseline)

    def loss(theta):
        log_prob, entropy = jax.vmap(log_prob_fn, in_axes=(None, 0))(theta, actions)
        return -jnp.mean(advantage * log_prob + entropy_weight * entropy)

    value, grads = jax.value_and_grad(loss)(theta)
    new_baseline = baseline_decay * baseline + (1 - baseline_decay) * jnp.mean(rewards)
    return value, grads, new_baseline
