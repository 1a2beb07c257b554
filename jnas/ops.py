"""Candidate operations of the DARTS search space (and NAS-Bench-201's `nor_conv_1x1`,
`nor_conv_3x3`), as Flax modules on NHWC inputs.

Semantics follow the official DARTS code: a separable convolution is two stacked
ReLU-depthwise-pointwise-BN blocks (the first carries the stride), a dilated convolution is one
such block with dilation 2, `skip_connect` is the identity (FactorizedReduce at stride 2), and
`none` is zeros at the output size. BatchNorm is affine-free inside the search network.

Stride-1 convolutions are matmuls of each pixel's neighbourhood with the kernel (`PatchConv`;
1x1: of the pixel): when edges or tasks are batched with `vmap` they become batched matmuls
instead of grouped convolutions.

The depthwise convolutions (on CPU, and on GPU when dilated) and max pooling run as shifted
views of the padded input with their own derivative rules (`depthwise_conv`, `pool_3x3`):
XLA's grouped convolution and select-and-scatter were most of a search step on CPU
(bench/README.md has the measurements).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

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


class PatchConv(nn.Module):
    """Stride-1 k x k convolution, zero padding (k - 1) // 2 (k // 2 for odd k), as one
    matmul of every pixel's k x k neighbourhood (`_patches`; 1x1: the pixel) with the
    flattened kernel. Same parameters (`kernel`, HWIO; `bias`) and initialisers as `nn.Conv`.

    XLA:CPU differentiates its own convolution slowly where it matters here: inside a `scan`
    (NAS-Bench-201's cells), and under `vmap` with a kernel per task (MAML's adapted weights),
    where it becomes a grouped convolution; this form is batched matmuls there (bench/README.md).
    """

    features: int
    kernel_size: int = 1
    use_bias: bool = False

    @nn.compact
    def __call__(self, x):
        k = self.kernel_size
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (k, k, x.shape[-1], self.features)
        )
        y = _patches(x, k) @ kernel.reshape(-1, self.features)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros_init(), (self.features,))
        return y


class ReLUConvBN(nn.Module):
    """ReLU -> k x k convolution (padding (k - 1) // 2: k // 2 for odd k) -> BN.

    `use_bias` gives the convolution a bias: NAS-Bench-201's `nor_conv_*` ops have one
    exactly when their BN is affine-free (`bias=not affine`, xautodl cell_operations.py).
    """

    features: int
    kernel_size: int = 1
    stride: int = 1
    affine: bool = True
    train: bool = True
    use_bias: bool = False

    @nn.compact
    def __call__(self, x):
        x = nn.relu(x)
        if self.stride == 1:
            x = PatchConv(self.features, self.kernel_size, self.use_bias)(x)
        else:
            pad = (self.kernel_size - 1) // 2
            x = nn.Conv(
                self.features,
                (self.kernel_size, self.kernel_size),
                strides=self.stride,
                padding=((pad, pad), (pad, pad)),
                use_bias=self.use_bias,
            )(x)
        return batch_norm(self.train, self.affine)(x)


def _patches(x, k: int):
    """The k x k neighbourhoods of every pixel (zero padding (k - 1) // 2) as channels, in
    the (row, column, channel) order of a flattened HWIO kernel."""
    if k == 1:
        return x
    p = (k - 1) // 2
    xp = jnp.pad(x, ((0, 0), (p, k - 1 - p), (p, k - 1 - p), (0, 0)))
    h, w = x.shape[1:3]
    return jnp.concatenate([xp[:, i : i + h, j : j + w] for i in range(k) for j in range(k)], -1)


def depthwise_conv(
    lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
    dimension_numbers=None, feature_group_count=1, precision=None,
):
    """`lax.conv_general_dilated` for a depthwise NHWC x HWIO convolution, chosen per backend.

    XLA's grouped convolution (one channel per group) is the fast path only on GPU and only
    without dilation. XLA:CPU runs it, and both its gradients, 5-50x slower than the same sum
    written out as shifted views (`_depthwise`); on an H100 cuDNN's dilated depthwise
    convolution was 8-15x slower than that sum (bench/README.md). Elsewhere the sum runs; it
    is the same function, to float rounding.
    """
    if jax.default_backend() != "cpu" and tuple(rhs_dilation or (1, 1)) == (1, 1):
        return lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
            rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
            feature_group_count=feature_group_count, precision=precision,
        )
    if rhs.shape[2] != 1 or not feature_group_count == lhs.shape[-1] == rhs.shape[-1]:
        raise JnasError(f"depthwise_conv needs a (k, k, 1, C) kernel, got {rhs.shape}")
    if lhs_dilation not in (None, (1, 1)):
        raise JnasError("depthwise_conv does not dilate its input")
    return _depthwise(
        lhs, rhs, tuple(window_strides), tuple(map(tuple, padding)), tuple(rhs_dilation or (1, 1))
    )


def _tap(x, i, j, out_shape, strides, dilation):
    """The window of padded input `x` that tap (i, j) of the kernel multiplies.

    A dynamic slice even for static taps: written as static slices, the same network's step
    measured 4x slower on XLA:CPU (its fusion choices differ), for 10 % less compile time.
    """
    (n, oh, ow, c), (sh, sw), (dh, dw) = out_shape, strides, dilation
    size = (n, (oh - 1) * sh + 1, (ow - 1) * sw + 1, c)
    return lax.dynamic_slice(x, (0, i * dh, j * dw, 0), size)[:, ::sh, ::sw]


def _padded(x, padding, fill=0.0):
    """`x` padded, and materialised: otherwise XLA fuses the pad, and the ops that produce
    `x` (ReLU, BatchNorm), into each of the k*k shifted reads, computing them k*k times."""
    return lax.optimization_barrier(jnp.pad(x, ((0, 0), *padding, (0, 0)), constant_values=fill))


def _out_shape(x, kernel, strides, dilation):
    (n, h, w, c), (kh, kw) = x.shape, kernel.shape[:2]
    (sh, sw), (dh, dw) = strides, dilation
    return n, (h - dh * (kh - 1) - 1) // sh + 1, (w - dw * (kw - 1) - 1) // sw + 1, c


def _unrolled(x, kernel, strides, dilation):
    """sum_ij tap(i, j) * kernel[i, j]: one fused loop forward, one for the input gradient."""
    shape = _out_shape(x, kernel, strides, dilation)
    kh, kw = kernel.shape[:2]
    return sum(
        _tap(x, i, j, shape, strides, dilation) * kernel[i, j, 0]
        for i in range(kh)
        for j in range(kw)
    )


def _scanned(x, kernel, strides, dilation):
    """The same sum as a loop over taps: transposed, it computes the kernel gradient as one
    reduction per tap inside a loop, where unrolled taps make XLA write every window out.
    The body is rematerialised so that the windows are recomputed, not stacked, backward."""
    shape = _out_shape(x, kernel, strides, dilation)
    kh, kw = kernel.shape[:2]

    @jax.checkpoint
    def body(acc, tap):
        t, k = tap
        return acc + _tap(x, t // kw, t % kw, shape, strides, dilation) * k, None

    taps = (jnp.arange(kh * kw), kernel.reshape(kh * kw, -1))
    return lax.scan(body, jnp.zeros(shape, x.dtype), taps)[0]


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4))
def _depthwise(x, kernel, strides, padding, dilation):
    """Depthwise convolution as shifted, strided windows times per-channel weights.

    Its tangent in x is the unrolled sum (whose transpose, the input gradient, is one fused
    loop of pads) and in the kernel the scanned sum (whose transpose is one reduction per tap);
    both are ordinary JAX, so every order of derivative, forward or reverse, is exact.
    """
    return _unrolled(_padded(x, padding), kernel, strides, dilation)


@functools.partial(_depthwise.defjvp, symbolic_zeros=True)
def _depthwise_jvp(strides, padding, dilation, primals, tangents):
    x, kernel = primals
    dx, dkernel = tangents
    xp = _padded(x, padding)
    out = _unrolled(xp, kernel, strides, dilation)
    tangent = jnp.zeros_like(out)
    if not isinstance(dx, SymbolicZero):
        tangent = tangent + _unrolled(_padded(dx, padding), kernel, strides, dilation)
    if not isinstance(dkernel, SymbolicZero):
        tangent = tangent + _scanned(xp, dkernel, strides, dilation)
    return out, tangent


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
            conv_general_dilated=depthwise_conv,
        )(x)
        x = PatchConv(self.features)(x)
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
        a = PatchConv(half)(x[:, ::2, ::2])
        b = PatchConv(half)(shifted[:, ::2, ::2])
        return batch_norm(self.train, self.affine)(jnp.concatenate([a, b], axis=-1))


def _windows(x, size, stride, pad, fill):
    """The size x size shifted, strided views of `x` padded by `pad` `fill` pixels that
    pooling reads; edges that no whole window covers are dropped."""
    n, h, w, c = x.shape
    xp = _padded(x, ((pad, pad), (pad, pad)), fill) if pad else x
    shape = (n, (h + 2 * pad - size) // stride + 1, (w + 2 * pad - size) // stride + 1, c)
    return [
        _tap(xp, i, j, shape, (stride, stride), (1, 1)) for i in range(size) for j in range(size)
    ]


def pool_3x3(x, kind: str, stride: int):
    """3x3 max or average pooling with padding 1 (the average excludes the padding).

    Max pooling is `max_pool`. For the average, `nn.avg_pool` measured faster than the same
    rewrite.
    """
    if kind == "max":
        return max_pool(x, 3, stride, 1)
    pad = ((1, 1), (1, 1))
    return nn.avg_pool(x, (3, 3), (stride, stride), pad, count_include_pad=False)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2, 3))
def max_pool(x, size: int, stride: int, pad: int):
    """size x size max pooling of NHWC `x`, padded by `pad` pixels of -inf.

    Elementwise maxima of shifted views, with its own gradient rule: `nn.max_pool`'s gradient
    is XLA's select-and-scatter, which XLA:CPU runs 3x slower; a max over a reshaped window
    axis makes XLA:CPU count every window's ties for the gradient (bench/README.md)."""
    return functools.reduce(jnp.maximum, _windows(x, size, stride, pad, -jnp.inf))


@max_pool.defjvp
def _max_pool_jvp(size, stride, pad, primals, tangents):
    """Each output's tangent is its first maximal input's, in window order, as in PyTorch's
    max pooling gradient. The winning tap is found once, as a small integer array, so that
    the gradient (its transpose) reads one index per window instead of redoing the search."""
    (x,), (dx,) = primals, tangents
    windows = _windows(x, size, stride, pad, -jnp.inf)
    out = functools.reduce(jnp.maximum, windows)
    first = jnp.full(out.shape, len(windows) - 1, jnp.int8)
    for t in reversed(range(len(windows) - 1)):
        first = jnp.where(windows[t] == out, jnp.int8(t), first)
    tangent = sum(
        jnp.where(first == t, window, 0.0)
        for t, window in enumerate(_windows(dx, size, stride, pad, 0.0))
    )
    return out, tangent


def drop_path(x, prob, key):
    """Zero each example of `x` with probability `prob` (a traced scalar in [0, 1)) and scale
    the others by 1 / (1 - prob), so that E[drop_path(x)] = x: DARTS's drop path (cnn/utils.py),
    one Bernoulli draw per example."""
    keep = 1.0 - prob
    mask = jax.random.bernoulli(key, keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    # Cast, so that a float32 `prob` does not promote bfloat16 activations.
    return x * (mask / keep).astype(x.dtype)


class Pool(nn.Module):
    """3x3 max or average pooling (the average excludes the padding)."""

    kind: str
    stride: int

    @nn.compact
    def __call__(self, x):
        return pool_3x3(x, self.kind, self.stride)


class Identity(nn.Module):
    @nn.compact
    def __call__(self, x):
        return x


def zeros_out(x, stride: int):
    """Zeros of the shape an op of `stride` gives on `x`."""
    n, h, w, c = x.shape
    return jnp.zeros((n, _output_size(h, stride), _output_size(w, stride), c), x.dtype)


class Zero(nn.Module):
    stride: int

    @nn.compact
    def __call__(self, x):
        return zeros_out(x, self.stride)


OpFactory = Callable[[int, int, bool, bool], nn.Module]

# name -> factory(channels, stride, affine, train); the output keeps the channel count.
OPS: dict[str, OpFactory] = {
    "none": lambda c, stride, affine, train: Zero(stride),
    "max_pool_3x3": lambda c, stride, affine, train: Pool("max", stride),
    "avg_pool_3x3": lambda c, stride, affine, train: Pool("avg", stride),
    "skip_connect": lambda c, stride, affine, train: (
        Identity() if stride == 1 else FactorizedReduce(c, affine, train)
    ),
    "sep_conv_3x3": lambda c, stride, affine, train: SepConv(c, 3, stride, affine, train),
    "sep_conv_5x5": lambda c, stride, affine, train: SepConv(c, 5, stride, affine, train),
    "dil_conv_3x3": lambda c, stride, affine, train: DilConv(c, 3, stride, 2, affine, train),
    "dil_conv_5x5": lambda c, stride, affine, train: DilConv(c, 5, stride, 2, affine, train),
    # NAS-Bench-201's plain convolutions: ReLU -> conv (bias when BN is affine-free) -> BN.
    "nor_conv_1x1": lambda c, stride, affine, train: ReLUConvBN(
        c, 1, stride, affine, train, use_bias=not affine
    ),
    "nor_conv_3x3": lambda c, stride, affine, train: ReLUConvBN(
        c, 3, stride, affine, train, use_bias=not affine
    ),
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
    """A search edge over the candidate ops: every op weighted, or a few sampled paths.

    `__call__(x, weights)` is DARTS's `sum_o weights[o] * op_o(x)`; `none` contributes exact
    zeros, so it is skipped (its weight still reaches alpha through the softmax).

    `sampled(x, weights, index)` runs the paths `index` (paths,) alone: op `index[j]` for each
    j, or nothing where `index[j]` is -1, as `sum_j weights[index[j]] * op_index[j](x) +
    sum_{o not in index} weights[o]`. With GDAS's one-hot `weights` and one path that is
    `op_index(x)` in value, while every entry of `weights` gets a gradient, as in GDAS's code;
    ProxylessNAS runs two paths. A boolean `index` (ops,) is a mask of the ops to run, the
    same sum (ASAP: the ops it has not pruned).

    `partial` K is PC-DARTS's partial channels: the ops see the first 1/K of the channels, the
    rest bypass the edge (max-pooled 2x2 on a stride-2 edge), and the channels are shuffled in
    K groups (PC-DARTS's `channel_shuffle`; model_search.py L39-53). The bypass is scaled by
    the edge's total weight `sum_o weights[o]`: 1 under a softmax (so DARTS, SNAS and GDAS
    are unchanged), and beta_e under PC-DARTS's edge normalisation, whose weights are
    softmax(alpha_e) * beta_e, because its code multiplies the whole mixed-op output, bypass
    included, by beta_e (model_search.py L85; jnas.relax.pcdarts).

    `pool_bn` follows each pooling op with an affine-free BatchNorm, as DARTS's search
    `MixedOp` does (cnn/model_search.py); NAS-Bench-201's search cells pool without one.
    """

    channels: int
    stride: int
    primitives: tuple[str, ...]
    train: bool = True
    pool_bn: bool = True
    partial: int = 1

    def setup(self):
        self.ops = [
            make_op(name, self.channels // self.partial, self.stride, affine=False,
                    train=self.train)
            for name in self.primitives
        ]
        self.pool_norms = {
            str(k): batch_norm(self.train, affine=False)
            for k, op in enumerate(self.ops)
            if self.pool_bn and isinstance(op, Pool)
        }

    def _op(self, k, x):
        y = self.ops[k](x)
        return self.pool_norms[str(k)](y) if str(k) in self.pool_norms else y

    def __call__(self, x, weights):
        def mix(x):
            out = 0.0
            for k, name in enumerate(self.primitives):
                if name != "none":
                    out = out + weights[k] * self._op(k, x)
            return out

        return self._partial(mix, x, weights)

    def sampled(self, x, weights, index):
        n = len(self.ops)
        branches = [lambda mdl, x, k=k: mdl._op(k, x) for k in range(n)]
        branches.append(lambda mdl, x: zeros_out(x, self.stride))  # a path of -1
        # An unbatched index: the switch compiles to a conditional that runs one op. It is
        # rematerialised: a differentiated conditional saves the residuals of EVERY branch
        # (zeros for those not taken). Writing those made a GDAS step 2.03 s, against 0.73 s
        # with the taken op recomputed backward (bench/README.md).
        switch = nn.checkpoint(lambda mdl, x, k: nn.switch(k, branches, mdl, x))

        def mix(x):
            if self.is_initializing():
                # Every op must own its variables before the switch, which runs one branch.
                for branch in branches[:n]:
                    branch(self, x)
            if index.dtype == jnp.bool_:
                return masked(x)
            out = 0.0
            for j in range(index.shape[0]):
                k = index[j]
                path = switch(self, x, jnp.where(k < 0, n, k))
                out = out + jnp.where(k < 0, 0.0, weights[k]) * path
            taken = (jnp.arange(n)[:, None] == index[None, :]).any(-1)
            return out + jnp.sum(jnp.where(taken, 0.0, weights))

        def masked(x):
            # A (ops,) mask: op o runs where index[o], each in a two-branch conditional, where
            # paths over every op would compile ops x (ops + 1) branches (ASAP).
            out = 0.0
            for k, name in enumerate(self.primitives):
                if name != "none":  # exact zeros, as in __call__
                    cond = nn.checkpoint(lambda mdl, x, on, k=k: nn.cond(
                        on, branches[k], branches[n], mdl, x))
                    out = out + weights[k] * cond(self, x, index[k])
            return out + jnp.sum(jnp.where(index, 0.0, weights))

        return self._partial(mix, x, weights)

    def _partial(self, mix, x, weights):
        if self.partial == 1:
            return mix(x)
        c = x.shape[-1] // self.partial
        rest = x[..., c:]
        if self.stride == 2:
            if x.shape[1] % 2 or x.shape[2] % 2:
                raise JnasError(
                    f"`partial_channels` {self.partial} needs even feature maps at the "
                    f"reduction cells (the bypass is max-pooled 2x2), got {x.shape[1:3]}"
                )
            rest = max_pool(rest, 2, 2, 0)
        rest = rest * jnp.sum(weights).astype(x.dtype)
        y = jnp.concatenate([mix(x[..., :c]), rest], axis=-1)
        return einops.rearrange(y, "... (g c) -> ... (c g)", g=self.partial)
