"""MiLeNAS (He et al., CVPR 2020): alpha follows grad_alpha (L_train + lam * L_val) at the
current weights; architecture step first, as MiLeNAS's code (DARTS's) orders them."""

from __future__ import annotations

from jnas.algorithms.base import Algorithm, register
from jnas.transforms import milenas_hypergrad


def milenas_gradient(loss_fn, ctx):
    s = ctx.state
    return milenas_hypergrad(
        loss_fn, s.params, s.alpha, ctx.train_batch, ctx.val_batch, lam=ctx.config.lam
    )


MILENAS = register(
    Algorithm(
        name="milenas",
        order=("arch", "weights"),
        relaxation="darts",
        arch_gradient=milenas_gradient,
        options=("lam",),
        doc=__doc__,
    )
)
