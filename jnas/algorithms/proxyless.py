"""ProxylessNAS (Cai, Zhu & Han, ICLR 2019), the gradient search with binary gates, without
the latency loss: first-order grad_alpha L_val through the two-path binary gates of the
`proxyless` relaxation (the official 'two' mode, the paper's §3.2.1), then the rescaling of
the two updated alphas.

Official code: mit-han-lab/proxylessnas @ bf58b5c, search/ (imagenet_arch_search.py AS,
nas_manager.py NM, modules/mix_op.py MO). Defaults from it: alpha's Adam lr 1e-3, betas
(0, 0.999), weight decay 0 (AS:80-84), alpha ~ N(0, 1e-3) (AS:77-78, jnas's default), plain
cross-entropy in the architecture step (NM:560). Its weight training (SGD 0.025 Nesterov,
weight decay 4e-5, label smoothing 0.1, batch 256, 40 warm-up + 120 epochs) is ImageNet's
MobileNet search; jnas keeps DARTS's CIFAR weight settings and 50 epochs, with the official
share of weight-only warm-up, 40 of 160 epochs, as 12 of 50.

Order: the official code runs 5 weight steps, then 1 architecture step on a new sample
(grad_update_arch_param_every=5, AS:87; NM:71-76, 390-393), and skips the architecture in the
40 warm-up epochs and the first search epoch (NM:390). jnas alternates one weight step and
one architecture step per step, in that order, after `warmup_epochs` of weight steps alone:
alpha gets 5 times the official number of updates per epoch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jnas.algorithms.base import Algorithm, register
from jnas.algorithms.darts import first_order


def rescale_two_paths() -> optax.GradientTransformation:
    """ProxylessNAS's rescaling after each architecture update (MO:239-252), on the updates
    of alpha's optimizer: per edge (last axis), the entries that the update moves are shifted
    by `offset = logsumexp(new) - logsumexp(old)` over those entries, so that their total
    softmax mass, hence the probability of every op that did not move, is unchanged.

    The official code shifts the two sampled ops. They are the entries that move when the
    optimizer is the official Adam with beta1 = 0 and no weight decay: an op outside the pair
    gets a zero gradient, so a zero first moment and a zero update, whatever its second moment.
    With `arch_beta1` > 0 or `arch_weight_decay` > 0 the ops sampled earlier (momentum) or all
    ops (decay) move too; the rule then keeps the mass of the ops that did not move, which
    after a few steps is none, and the shift leaves softmax(alpha) as Adam made it.

    Example:
      >>> tx = optax.chain(optax.adam(1e-3, b1=0.0), rescale_two_paths())
      >>> updates, state = tx.update(dalpha, state, alpha)   # needs the params
    """

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("rescale_two_paths needs the params (alpha before the update)")

        def rescale(u, a):
            moved = u != 0
            masked = lambda v: jnp.where(moved, v, -jnp.inf)  # noqa: E731
            offset = (jax.nn.logsumexp(masked(a + u), axis=-1, keepdims=True)
                      - jax.nn.logsumexp(masked(a), axis=-1, keepdims=True))
            return jnp.where(moved, u - offset, u)  # no entry moved: offset is nan, unused

        return jax.tree.map(rescale, updates, params), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


PROXYLESS = register(
    Algorithm(
        name="proxyless",
        order=("weights", "arch"),
        relaxation="proxyless",
        arch_gradient=first_order,
        arch_transform=rescale_two_paths,
        defaults={"arch_learning_rate": 1e-3, "arch_beta1": 0.0, "arch_weight_decay": 0.0,
                  "warmup_epochs": 12},
        doc=__doc__,
    )
)
