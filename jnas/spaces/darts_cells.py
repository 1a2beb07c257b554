"""What DARTS's search network and its discrete network share: the cells' input
preprocessing, GDAS's fixed reduction cell, and where the reduction cells sit."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from jnas.errors import JnasError
from jnas.ops import FactorizedReduce, PatchConv, ReLUConvBN, batch_norm, drop_path, pool_3x3


def preprocess(c, reduction_prev, affine, train, s0, s1):
    """Bring both cell inputs to `c` channels at the resolution of `s1`."""
    if reduction_prev:
        s0 = FactorizedReduce(c, affine=affine, train=train)(s0)
    else:
        s0 = ReLUConvBN(c, affine=affine, train=train)(s0)
    return s0, ReLUConvBN(c, affine=affine, train=train)(s1)


class FixedReductionCell(nn.Module):
    """GDAS's fixed reduction cell (FRC, Dong & Yang 2019), affine-free in search (`affine`
    in the evaluation network).

    Each input (after the usual preprocessing) feeds two branches that halve the resolution:
    ReLU -> 1x3 conv stride (1, 2) -> 3x1 conv stride (2, 1) (both in 8 groups) -> BN -> ReLU
    -> 1x1 conv -> BN, and 3x3 max pool stride 2 -> BN. The output concatenates the four
    branches: 4 * channels, like a 4-node DARTS cell. With `drop_prob` (the evaluation network in
    training) every branch goes through drop path, as in GDAS's evaluation code (`Transition`,
    others/GDAS/lib/nas/construct_utils.py in AutoDL-Projects before commit 34ff796).
    """

    channels: int
    reduction_prev: bool
    train: bool = True
    affine: bool = False

    @nn.compact
    def __call__(self, s0, s1, drop_prob=None):
        c, affine = self.channels, self.affine
        if c % 8:
            raise JnasError(
                f"the fixed reduction cell groups its convolutions by 8, so it needs a multiple "
                f"of 8 channels, got {c}; use an `init_channels` divisible by 4"
            )
        s0, s1 = preprocess(c, self.reduction_prev, affine, self.train, s0, s1)

        def factorized(x):
            x = nn.relu(x)
            x = nn.Conv(c, (1, 3), (1, 2), ((0, 0), (1, 1)), feature_group_count=8,
                        use_bias=False)(x)
            x = nn.Conv(c, (3, 1), (2, 1), ((1, 1), (0, 0)), feature_group_count=8,
                        use_bias=False)(x)
            x = nn.relu(batch_norm(self.train, affine)(x))
            return batch_norm(self.train, affine)(PatchConv(c)(x))

        def pool(x):
            return batch_norm(self.train, affine)(pool_3x3(x, "max", 2))

        branches = [factorized(s0), factorized(s1), pool(s0), pool(s1)]
        if drop_prob is not None and self.train:
            branches = [drop_path(b, drop_prob, self.make_rng("dropout")) for b in branches]
        return jnp.concatenate(branches, axis=-1)


def reduction_layers(layers: int, reductions: tuple[int, ...] | None) -> tuple[int, ...]:
    """The indices of the reduction cells: `reductions`, or DARTS's 1/3 and 2/3 of depth."""
    if reductions is not None:
        return tuple(reductions)
    return (layers // 3, 2 * layers // 3)
