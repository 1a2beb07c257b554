"""The CPU formulations of the depthwise convolution, the max pools (3x3, and MAML's 2x2) and
the patch convolution against XLA's and Flax's own ops: values, first and second derivatives
in both modes, and under vmap (float64)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.test_util import check_grads

from jnas.errors import JnasError
from jnas.ops import PatchConv, depthwise_conv, max_pool, pool_3x3


@pytest.fixture(autouse=True)
def float64():
    with jax.enable_x64(True):
        yield


def xla_depthwise(x, kernel, stride, dilation):
    pad = dilation * (kernel.shape[0] - 1) // 2
    return lax.conv_general_dilated(
        x, kernel, (stride, stride), ((pad, pad), (pad, pad)), rhs_dilation=(dilation,) * 2,
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=x.shape[-1],
    )


def ours(x, kernel, stride, dilation):
    pad = dilation * (kernel.shape[0] - 1) // 2
    return depthwise_conv(
        x, kernel, (stride, stride), ((pad, pad), (pad, pad)), rhs_dilation=(dilation,) * 2,
        feature_group_count=x.shape[-1],
    )


def inputs(kernel_size, size=9, channels=3, batch=2):
    rng = np.random.default_rng(kernel_size * size)
    x = jnp.asarray(rng.normal(size=(batch, size, size, channels)))
    kernel = jnp.asarray(rng.normal(size=(kernel_size, kernel_size, 1, channels)))
    return x, kernel


# Every depthwise convolution of the DARTS space: sep 3x3/5x5 and dil 3x3/5x5, stride 1 and 2,
# on even and odd sizes.
CASES = [(k, s, d, n) for k in (3, 5) for s in (1, 2) for d in (1, 2) for n in (8, 9)]


@pytest.mark.parametrize("k,stride,dilation,size", CASES)
def test_depthwise_conv_equals_xla_with_first_and_second_derivatives(k, stride, dilation, size):
    x, kernel = inputs(k, size)

    def loss(conv):
        return lambda x, w: jnp.sum(jnp.sin(conv(x, w, stride, dilation)))

    def grad_norm(conv):  # its gradient is a second derivative (DARTS's and MAML's kind)
        return lambda x, w: sum(jnp.sum(g**2) for g in jax.grad(loss(conv), (0, 1))(x, w))

    np.testing.assert_allclose(
        ours(x, kernel, stride, dilation), xla_depthwise(x, kernel, stride, dilation), atol=1e-12
    )
    for f in (loss, grad_norm):
        got = jax.grad(f(ours), (0, 1))(x, kernel)
        want = jax.grad(f(xla_depthwise), (0, 1))(x, kernel)
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-10)
    tangents = inputs(k, size)
    _, got = jax.jvp(lambda x, w: ours(x, w, stride, dilation), (x, kernel), tangents)
    _, want = jax.jvp(lambda x, w: xla_depthwise(x, w, stride, dilation), (x, kernel), tangents)
    np.testing.assert_allclose(got, want, atol=1e-12)


def test_depthwise_conv_gradients_match_finite_differences_in_both_modes():
    x, kernel = inputs(3, size=6, channels=2, batch=1)
    check_grads(lambda x, w: ours(x, w, 2, 1), (x, kernel), order=2, modes=("fwd", "rev"))


@pytest.mark.parametrize("stride", [1, 2])
def test_depthwise_conv_under_vmap_is_per_edge(stride):
    # The input edges of a cell run under vmap, where the taps' slices become gathers.
    x, kernel = inputs(5)
    xs, kernels = jnp.stack([x, 2 * x]), jnp.stack([kernel, -kernel])

    def grads(conv):
        return jax.vmap(jax.grad(lambda x, w: jnp.sum(jnp.tanh(conv(x, w, stride, 2))), (0, 1)))

    for g, w in zip(grads(ours)(xs, kernels), grads(xla_depthwise)(xs, kernels), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("stride", [1, 2])
def test_max_pool_gradient_under_vmap_is_per_edge(stride):
    x, _ = inputs(3, 9)
    xs = jnp.stack([x, -2 * x])

    def grad(pool):
        return jax.vmap(jax.grad(lambda x: jnp.sum(jnp.sin(pool(x)))))

    pad = ((1, 1), (1, 1))
    np.testing.assert_allclose(
        grad(lambda x: pool_3x3(x, "max", stride))(xs),
        grad(lambda x: nn.max_pool(x, (3, 3), (stride, stride), pad))(xs),
        atol=1e-12,
    )


def test_depthwise_conv_refuses_a_dense_kernel():
    x, _ = inputs(3)
    with pytest.raises(JnasError, match=r"\(k, k, 1, C\) kernel"):
        depthwise_conv(x, jnp.ones((3, 3, 3, 3)), (1, 1), ((1, 1), (1, 1)), feature_group_count=1)


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("stride,size", [(1, 8), (2, 8), (2, 9)])
def test_pools_equal_flax_pooling_with_gradients(kind, stride, size):
    x, _ = inputs(3, size)  # continuous values: no tied maxima

    def flax_pool(x):
        pad = ((1, 1), (1, 1))
        if kind == "max":
            return nn.max_pool(x, (3, 3), (stride, stride), pad)
        return nn.avg_pool(x, (3, 3), (stride, stride), pad, count_include_pad=False)

    def loss(pool):
        return lambda x: jnp.sum(jnp.sin(pool(x)) * jnp.arange(pool(x).size).reshape(pool(x).shape))

    np.testing.assert_allclose(pool_3x3(x, kind, stride), flax_pool(x), atol=1e-12)
    np.testing.assert_allclose(
        jax.grad(loss(lambda x: pool_3x3(x, kind, stride)))(x), jax.grad(loss(flax_pool))(x),
        atol=1e-12,
    )
    tangent = inputs(5, size)[0]
    np.testing.assert_allclose(
        jax.jvp(lambda x: pool_3x3(x, kind, stride), (x,), (tangent,))[1],
        jax.jvp(flax_pool, (x,), (tangent,))[1],
        atol=1e-12,
    )
    if kind == "avg":  # max pooling has kinks, where finite differences are no reference
        check_grads(lambda x: pool_3x3(x, kind, stride), (x,), order=2, modes=("fwd", "rev"))


@pytest.mark.parametrize("size", [8, 9])
def test_maml_2x2_max_pool_equals_flax_and_commutes_with_relu(size):
    x, _ = inputs(2, size)  # continuous values: no tied maxima

    def jnas_2x2(x):
        return max_pool(x, 2, 2, 0)

    def flax_2x2(x):
        return nn.max_pool(x, (2, 2), (2, 2))

    assert jnas_2x2(x).shape == (2, size // 2, size // 2, 3)  # an odd last row and column dropped
    np.testing.assert_allclose(jnas_2x2(x), flax_2x2(x), atol=1e-12)
    weights = jnp.arange(jnas_2x2(x).size).reshape(jnas_2x2(x).shape)
    pools = (jnas_2x2, flax_2x2)
    for pool in pools:  # ReLU after the pooling, as in the learner, equals ReLU before
        np.testing.assert_allclose(jax.nn.relu(pool(x)), pool(jax.nn.relu(x)), atol=1e-12)
    grads = [jax.grad(lambda x, p=p: jnp.sum(jnp.sin(p(x)) * weights))(x) for p in pools]
    np.testing.assert_allclose(*grads, atol=1e-12)
    tangent = inputs(5, size)[0]
    np.testing.assert_allclose(
        jax.jvp(jnas_2x2, (x,), (tangent,))[1], jax.jvp(flax_2x2, (x,), (tangent,))[1], atol=1e-12
    )


def test_max_pool_gives_a_tied_maximum_gradient_to_the_first_input_in_the_window():
    x = jnp.ones((1, 4, 4, 1))
    grad = jax.grad(lambda x: jnp.sum(pool_3x3(x, "max", 1)))(x)[0, :, :, 0]
    # Output (i, j)'s window starts at input (max(i-1, 0), max(j-1, 0)): each input counts the
    # outputs whose first window element it is.
    want = np.zeros((4, 4))
    for i in range(4):
        for j in range(4):
            want[max(i - 1, 0), max(j - 1, 0)] += 1
    np.testing.assert_array_equal(grad, want)
    assert float(jnp.sum(grad)) == 16.0  # the gradient is conserved, not split or duplicated


@pytest.mark.parametrize("k,bias", [(1, True), (3, False), (5, False)])
def test_patch_conv_equals_nn_conv_with_second_derivatives(k, bias):
    x, _ = inputs(k, size=7, channels=3)
    pad = ((k - 1) // 2, k - 1 - (k - 1) // 2)
    xla = nn.Conv(4, (k, k), padding=(pad, pad), use_bias=bias)
    ours = PatchConv(4, k, use_bias=bias)
    params = ours.init(jax.random.key(0), x)
    if bias:  # a nonzero bias, so that a wrong one shows
        params = jax.tree.map(lambda p: p + 0.1, params)
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, xla.init(
        jax.random.key(0), x))

    def loss(module):
        # A nonlinear scalar, so that the second derivatives are not zero.
        return lambda v, x: jnp.sum(jnp.tanh(module.apply(v, x)) ** 2)

    np.testing.assert_allclose(ours.apply(params, x), xla.apply(params, x), atol=1e-12)
    for order in (1, 2):
        g_ours, g_xla = loss(ours), loss(xla)
        for _ in range(order):  # the gradient in the kernel and the input, then its gradient
            g_ours = _grad_norm(g_ours)
            g_xla = _grad_norm(g_xla)
        np.testing.assert_allclose(g_ours(params, x), g_xla(params, x), rtol=1e-10)
    check_grads(lambda v, x: ours.apply(v, x), (params, x), order=2, modes=("fwd", "rev"))


def _grad_norm(f):
    """The squared norm of f's gradient in both arguments, as a new f(v, x)."""

    def g(v, x):
        gv, gx = jax.grad(f, argnums=(0, 1))(v, x)
        return sum(jnp.sum(t**2) for t in jax.tree.leaves((gv, gx)))

    return g
