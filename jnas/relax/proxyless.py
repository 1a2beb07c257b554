"""ProxylessNAS's binary gates (Cai, Zhu & Han, ICLR 2019), the two-path gradient scheme.

Official code: mit-han-lab/proxylessnas @ bf58b5c, search/modules/mix_op.py (MO) `binarize`
(L172-208) and `set_arch_param_grad` (L210-237). Per cell type and edge, one sample per step,
shared by the batch and by every cell of the type (as GDAS's relaxation; the official
MobileNet space has one alpha per block, a cell space shares a row over its cells):

- weight step (`train_weights`, the official mode None, MO:196-204 and L145-146): one op drawn
  from softmax(alpha) over all ops runs alone; its weight is a constant one, so no gradient
  reaches alpha (the official weight optimizer holds no alpha either).
- architecture step (`arch_weights`, the official mode 'two', MO:179-195, the paper's
  §3.2.1): two distinct ops drawn from softmax(alpha) without replacement
  (`torch.multinomial(probs, 2, replacement=False)`, MO:181; Gumbel top-2 has that law
  exactly), their probabilities renormalised over the pair, p = softmax(alpha[pair])
  (MO:182-184), and the active op drawn from p (MO:188-191). The binary gates g are the
  one-hot of the active op on the pair; both ops run (index (edges, 2)) and the edge
  computes `g_a op_a(x) + g_b op_b(x)`, in value the active op alone. The weights are
  `g + p - stop_gradient(p)` on the pair and 0 elsewhere, so the gradient of the loss in
  alpha is the official BinaryConnect estimate
  `d L / d alpha_i = sum_{j in pair} dL/dg_j p_j (delta_ij - p_i)` with
  `dL/dg_j = <op_j(x), dL/dy>` (MO:217-227), zero for the ops outside the pair.

jnas differs in one case: when the active op is `none`, the official code skips the edge's
update (MO:212-214), because there a zero block is bypassed altogether and its gate gets no
gradient (proxyless_nets.py L31-33); in a cell the edge's output still enters its node, so
the gradient is defined and jnas applies it.

Evaluation runs each edge's most likely op alone (the official `chosen_op`, MO:76-79), and
derivation reads softmax(alpha) with the space's rule.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from jnas.errors import JnasError
from jnas.relax.base import Relaxation, per_cell_type, register


def _unzip(pairs):
    return {t: w for t, (w, _) in pairs.items()}, {t: i for t, (_, i) in pairs.items()}


def one_path(key, a):
    """One op per edge from softmax(a): constant one-hot weights, index (edges, 1)."""
    index = jax.random.categorical(key, jax.lax.stop_gradient(a), axis=-1)
    return jax.nn.one_hot(index, a.shape[-1], dtype=a.dtype), index[:, None]


def two_paths(key, a):
    """Two distinct ops per edge from softmax(a) (Gumbel top-2: sampling without
    replacement), the active one from their renormalised probabilities p; weights
    `g + p - stop_gradient(p)` on the pair (g: the active op's one-hot), index (edges, 2)."""
    if a.shape[-1] < 2:
        raise JnasError(f"the proxyless relaxation samples two ops per edge; `primitives` has "
                        f"{a.shape[-1]}")
    k_pair, k_active = jax.random.split(key)
    logits = jax.lax.stop_gradient(a)
    _, pair = jax.lax.top_k(logits + jax.random.gumbel(k_pair, a.shape, a.dtype), 2)
    pair_alpha = jnp.take_along_axis(a, pair, axis=-1)
    p = jax.nn.softmax(pair_alpha, axis=-1)
    active = jax.random.categorical(k_active, jax.lax.stop_gradient(pair_alpha), axis=-1)
    # One-hot plus an exact zero in value (as jnas.gumbel_softmax's hard sample).
    gates = jax.nn.one_hot(active, 2, dtype=a.dtype) + (p - jax.lax.stop_gradient(p))
    slots = jax.nn.one_hot(pair, a.shape[-1], dtype=a.dtype)  # (edges, 2, ops)
    return jnp.einsum("ep,epo->eo", gates, slots), pair


@register
@dataclasses.dataclass(frozen=True)
class BinaryGates(Relaxation):
    name: ClassVar[str] = "proxyless"

    def train_weights(self, alpha, key, epoch):
        del epoch
        return _unzip(per_cell_type(one_path, key, alpha))

    def arch_weights(self, alpha, key, epoch):
        del epoch
        return _unzip(per_cell_type(two_paths, key, alpha))

    def eval_weights(self, alpha):
        return _unzip({
            t: (jax.nn.one_hot(jnp.argmax(a, -1), a.shape[-1], dtype=a.dtype),
                jnp.argmax(a, -1)[:, None])
            for t, a in alpha.items()
        })
