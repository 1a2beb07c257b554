"""Candidate operations of the DARTS search space, as Flax modules on NHWC inputs.

Semantics follow the official DARTS code: a separable convolution is two stacked
ReLU-depthwise-pointwise-BN blocks (the first carries the stride), a dilated convolution is one
such block with dilation 2, `skip_connect` is the identity (FactorizedReduce at stride 2), and
`none` is zeros at the output size. BatchNorm is affine-free inside the search network.

Pointwise (1x1) convolutions are written as `nn.Dense` on the channel axis: the same map, and
when edges are batched with `vmap` it becomes one batched matmul instead of a grouped
convolution.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax.numpy as jnp

from jnas.errors import JnasError


def batch_norm(train: bool, affine: bool) -> nn.BatchNorm:
    """PyTorch's BatchNorm2d defaults: running-average momentum 0.1, eps 1e-5."""
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=0.9,
        epsilon=1e-5,
        use_scale=affine,
        use_bias=affine,
    )


def _output_size(size: int, stride: int) -> int:
    return -(-size // stride)


class ReLUConvBN(nn.Module):
    """ReLU -> k x k convolution -> BN."""

    features: int
    kernel_size: int = 1
    stride: int = 1
    affine: bool = True
    train: bool = True

    @nn.compact
    def __call__(self, x):
        x = nn.relu(x)
        if self.kernel_size == 1 and self.stride == 1:
            x = nn.Dense(self.features, use_bias=False)(x)
        else:
            pad = (self.kernel_size - 1) // 2
            x = nn.Conv(
                self.features,
                (self.kernel_size, self.kernel_size),
                strides=self.stride,
                padding=((pad, pad), (pad, pad)),
                use_bias=False,
            )(x)
        return batch_norm(self.train, self.affine)(x)


class DilConv(nn.Module):
    """ReLU -> depthwise k x k (dilation d) -> pointwise -> BN."""

    features: int
    kernel_size: int
    stride: int
    dilation: int
    affine: bool = True
    train: bool = True

    @nn.compact
    def __call__(self, x):
        pad = self.dilation * (self.kernel_size - 1) // 2
        x = nn.relu(x)
        x = nn.Conv(
            x.shape[-1],
            (self.kernel_size, self.kernel_size),
            strides=self.stride,
            padding=((pad, pad), (pad, pad)),
            kernel_dilation=self.dilation,
            feature_group_count=x.shape[-1],
            use_bias=False,
        )(x)
        x = nn.Dense(self.features, use_bias=False)(x)
        return batch_norm(self.train, self.affine)(x)


class SepConv(nn.Module):
    """Two DilConv blocks with dilation 1; only the first has the stride."""

    features: int
    kernel_size: int
    stride: int
    affine: bool = True
    train: bool = True

    @nn.compact
    def __call__(self, x):
        x = DilConv(x.shape[-1], self.kernel_size, self.stride, 1, self.affine, self.train)(x)
        return DilConv(self.features, self.kernel_size, 1, 1, self.affine, self.train)(x)


class FactorizedReduce(nn.Module):
    """Halve the resolution with two 1x1 stride-2 convolutions offset by one pixel."""

    features: int
    affine: bool = True
    train: bool = True

    @nn.compact
    def __call__(self, x):
        if self.features % 2:
            raise JnasError(f"FactorizedReduce needs an even channel count, got {self.features}")
        x = nn.relu(x)
        # The offset path pads one zero row/column at the end so odd sizes give ceil(H/2)
        # on both paths; for even sizes the pad is never sampled (the official behaviour).
        shifted = jnp.pad(x[:, 1:, 1:], ((0, 0), (0, 1), (0, 1), (0, 0)))
        half = self.features // 2
        a = nn.Dense(half, use_bias=False)(x[:, ::2, ::2])
        b = nn.Dense(half, use_bias=False)(shifted[:, ::2, ::2])
        return batch_norm(self.train, self.affine)(jnp.concatenate([a, b], axis=-1))


class Pool(nn.Module):
    """3x3 max or average pooling (average excludes the padding), then affine-free BN."""

    kind: str
    stride: int
    train: bool = True

    @nn.compact
    def __call__(self, x):
        pad = ((1, 1), (1, 1))
        if self.kind == "max":
            x = nn.max_pool(x, (3, 3), strides=(self.stride,) * 2, padding=pad)
        else:
            x = nn.avg_pool(
                x, (3, 3), strides=(self.stride,) * 2, padding=pad, count_include_pad=False
            )
        return batch_norm(self.train, affine=False)(x)


class Identity(nn.Module):
    @nn.compact
    def __call__(self, x):
        return x


class Zero(nn.Module):
    stride: int

    @nn.compact
    def __call__(self, x):
        n, h, w, c = x.shape
        size = (_output_size(h, self.stride), _output_size(w, self.stride))
        return jnp.zeros((n, *size, c), x.dtype)


OpFactory = Callable[[int, int, bool, bool], nn.Module]

# name -> factory(channels, stride, affine, train); the output keeps the channel count.
OPS: dict[str, OpFactory] = {
    "none": lambda c, stride, affine, train: Zero(stride),
    "max_pool_3x3": lambda c, stride, affine, train: Pool("max", stride, train),
    "avg_pool_3x3": lambda c, stride, affine, train: Pool("avg", stride, train),
    "skip_connect": lambda c, stride, affine, train: (
        Identity() if stride == 1 else FactorizedReduce(c, affine, train)
    ),
    "sep_conv_3x3": lambda c, stride, affine, train: SepConv(c, 3, stride, affine, train),
    "sep_conv_5x5": lambda c, stride, affine, train: SepConv(c, 5, stride, affine, train),
    "dil_conv_3x3": lambda c, stride, affine, train: DilConv(c, 3, stride, 2, affine, train),
    "dil_conv_5x5": lambda c, stride, affine, train: DilConv(c, 5, stride, 2, affine, train),
}


def check_primitives(primitives) -> tuple[str, ...]:
    """Return `primitives` as a tuple, or raise naming the unknown op and the known ones."""
    primitives = tuple(primitives)
    unknown = [p for p in primitives if p not in OPS]
    if unknown:
        raise JnasError(f"unknown op(s) {unknown}; known ops: {sorted(OPS)}")
    if not primitives or set(primitives) == {"none"}:
        raise JnasError("the candidate ops must include at least one op besides 'none'")
    if len(set(primitives)) != len(primitives):
        raise JnasError(f"candidate ops must be distinct, got {list(primitives)}")
    return primitives


def make_op(name: str, channels: int, stride: int, affine: bool, train: bool) -> nn.Module:
    if name not in OPS:
        raise JnasError(f"unknown op {name!r}; known ops: {sorted(OPS)}")
    return OPS[name](channels, stride, affine, train)


class MixedOp(nn.Module):
    """A search edge over the candidate ops, in DARTS's or GDAS's form.

    `__call__(x, weights)` is DARTS's `sum_o weights[o] * op_o(x)`; `none` contributes exact
    zeros, so it is skipped (its weight still reaches alpha through the softmax).

    `sampled(x, hard, index)` is GDAS's single path: only op `index` runs, as
    `hard[index] * op_index(x) + sum_{j != index} hard[j]`. In value that is `op_index(x)`
    (`hard` is one-hot); in gradient every entry of `hard` is reached, as in the published code.
    """

    channels: int
    stride: int
    primitives: tuple[str, ...]
    train: bool = True

    def setup(self):
        self.ops = [
            make_op(name, self.channels, self.stride, affine=False, train=self.train)
            for name in self.primitives
        ]

    def __call__(self, x, weights):
        out = 0.0
        for k, (name, op) in enumerate(zip(self.primitives, self.ops, strict=True)):
            if name != "none":
                out = out + weights[k] * op(x)
        return out

    def sampled(self, x, hard, index):
        branches = [lambda mdl, x, k=k: mdl.ops[k](x) for k in range(len(self.ops))]
        if self.is_initializing():
            # Every branch must own its variables before the switch, which runs one branch.
            for branch in branches:
                branch(self, x)
        # An unbatched index: the switch compiles to a conditional that runs one op.
        y = nn.switch(index, branches, self, x)
        others = jnp.sum(jnp.where(jnp.arange(hard.shape[0]) == index, 0.0, hard))
        return hard[index] * y + others
