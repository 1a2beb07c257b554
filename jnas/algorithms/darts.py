"""DARTS (Liu, Simonyan & Yang, ICLR 2019): the architecture step on the validation loss,
first order or through one unrolled weight step (cnn/architect.py), then the weight step."""

from __future__ import annotations

import optax

from jnas.algorithms.base import Algorithm, register
from jnas.transforms import darts_hypergrad


def first_order(loss_fn, ctx):
    """grad_alpha L_val at the current weights."""
    s = ctx.state
    return darts_hypergrad(loss_fn, s.params, s.alpha, ctx.train_batch, ctx.val_batch, lr=0.0)


def darts_gradient(loss_fn, ctx):
    cfg = ctx.config
    if not cfg.second_order:
        return first_order(loss_fn, ctx)
    s = ctx.state
    # xi = the current weight lr, with the weight optimizer's momentum buffer and weight
    # decay in the virtual step, as the official Architect's _compute_unrolled_model.
    return darts_hypergrad(
        loss_fn,
        s.params,
        s.alpha,
        ctx.train_batch,
        ctx.val_batch,
        lr=ctx.lr,
        momentum=cfg.momentum,
        momentum_buf=optax.tree_utils.tree_get(s.w_opt_state, "trace"),
        weight_decay=cfg.weight_decay,
        hessian=cfg.hessian,
    )


DARTS = register(
    Algorithm(
        name="darts",
        order=("arch", "weights"),
        relaxation="darts",
        arch_gradient=darts_gradient,
        options=("second_order", "hessian"),
        doc=__doc__,
    )
)
