"""Candidate ops and the DARTS search cell/network: shapes, semantics, and that the
edge-grouped cell computes what a plain per-edge cell computes."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jnas
from jnas.genotype import edge_index
from jnas.ops import OPS, MixedOp, ReLUConvBN, make_op
from jnas.spaces import SearchCell
from jnas.spaces.dag import edge_groups as dag_edge_groups


def edge_groups(steps):
    return dag_edge_groups(steps, 2)

SMALL_OPS = ("none", "max_pool_3x3", "skip_connect", "sep_conv_3x3", "dil_conv_3x3")


def apply_fresh(module, *args):
    variables = module.init(jax.random.key(0), *args)
    out, _ = module.apply(variables, *args, mutable=["batch_stats"])
    return out


@pytest.mark.parametrize("name", sorted(OPS))
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [8, 9])
def test_op_output_shape(name, stride, size):
    x = jax.random.normal(jax.random.key(1), (2, size, size, 4))
    out = apply_fresh(make_op(name, 4, stride, affine=False, train=True), x)
    want = -(-size // stride)
    assert out.shape == (2, want, want, 4)


def test_none_is_zero_and_skip_is_identity():
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 4))
    assert not np.any(apply_fresh(make_op("none", 4, 2, False, True), x))
    np.testing.assert_array_equal(apply_fresh(make_op("skip_connect", 4, 1, False, True), x), x)


def test_avg_pool_excludes_padding():
    # Every window of ones averages to one, at the borders too (the registry's pool has no
    # BatchNorm: DARTS's mixed op adds one).
    op = make_op("avg_pool_3x3", 1, 1, False, train=False)
    x = jnp.ones((1, 8, 8, 1))
    out = op.apply(op.init(jax.random.key(0), x), x)
    np.testing.assert_allclose(out, np.ones(out.shape), rtol=1e-6)


@pytest.mark.parametrize("pool_bn", [True, False])
def test_darts_mixed_op_follows_pooling_with_batchnorm(pool_bn):
    # DARTS's search MixedOp: pool then affine-free BN (inference mode, fresh statistics:
    # a division by sqrt(1 + eps)); NAS-Bench-201's: the pool alone.
    op = MixedOp(1, 1, ("none", "avg_pool_3x3"), train=False, pool_bn=pool_bn)
    x = jnp.ones((1, 8, 8, 1))
    w = jnp.array([0.0, 1.0])
    out = op.apply(op.init(jax.random.key(0), x, w), x, w)
    want = 1 / np.sqrt(1 + 1e-5) if pool_bn else 1.0
    np.testing.assert_allclose(out, np.full(out.shape, want), rtol=1e-6)


def test_sep_conv_is_two_depthwise_pointwise_blocks_with_the_stride_first():
    op = make_op("sep_conv_5x5", 4, 2, False, True)
    x = jnp.ones((1, 8, 8, 4))
    params = op.init(jax.random.key(0), x)["params"]
    shapes = jax.tree.map(lambda p: p.shape, params)
    assert shapes == {
        "DilConv_0": {"Conv_0": {"kernel": (5, 5, 1, 4)}, "PatchConv_0": {"kernel": (1, 1, 4, 4)}},
        "DilConv_1": {"Conv_0": {"kernel": (5, 5, 1, 4)}, "PatchConv_0": {"kernel": (1, 1, 4, 4)}},
    }
    assert op.apply(op.init(jax.random.key(0), x), x, mutable=["batch_stats"])[0].shape[1] == 4


def test_unknown_op_is_a_clear_error():
    with pytest.raises(jnas.JnasError, match="unknown op.*conv_7x7.*known ops"):
        make_op("conv_7x7", 4, 1, False, True)


def test_edges_are_indexed_like_darts_and_each_grouped_once():
    rows = [edge_index(n, s) for n in range(4) for s in range(n + 2)]
    assert rows == list(range(14))
    grouped = [edge_index(n, s) for g in edge_groups(4) for s, n in g]
    assert sorted(grouped) == list(range(14))
    # The first group holds the 8 edges that read only the cell inputs.
    assert sorted(s for s, _ in edge_groups(4)[0]) == [0] * 4 + [1] * 4


class ReferenceCell(nn.Module):
    """The DARTS cell written edge by edge, to check the vmapped grouping against."""

    reduction: bool

    @nn.compact
    def __call__(self, s0, s1, weights, group_params):
        states = [s0, s1]
        where = {(s, n): (g, k) for g, grp in enumerate(edge_groups(2)) for k, (s, n) in
                 enumerate(grp)}
        for n in range(2):
            total = 0.0
            for s in range(n + 2):
                g, k = where[(s, n)]
                params = jax.tree.map(lambda p, k=k: p[k], group_params[f"edges_{g}"])
                stride = 2 if self.reduction and s < 2 else 1
                op = MixedOp(4, stride, SMALL_OPS, train=True)
                out, _ = op.apply(
                    {"params": params}, states[s], weights[edge_index(n, s)],
                    mutable=["batch_stats"],
                )
                total = total + out
            states.append(total)
        return jnp.concatenate(states[-2:], axis=-1)


@pytest.mark.parametrize("reduction", [False, True])
def test_grouped_cell_equals_per_edge_cell(reduction):
    cell = SearchCell(4, reduction, False, SMALL_OPS, steps=2, multiplier=2)
    k = jax.random.split(jax.random.key(3), 3)
    s0 = jax.random.normal(k[0], (2, 8, 8, 4))
    s1 = jax.random.normal(k[1], (2, 8, 8, 4))
    weights = jax.nn.softmax(jax.random.normal(k[2], (5, len(SMALL_OPS))), -1)
    variables = cell.init(jax.random.key(4), s0, s1, weights)
    out, _ = cell.apply(variables, s0, s1, weights, mutable=["batch_stats"])

    # Preprocess the inputs as the cell does, then run the reference on the group params.
    pre = variables["params"]
    r0, _ = ReLUConvBN(4, affine=False).apply({"params": pre["ReLUConvBN_0"]}, s0,
                                              mutable=["batch_stats"])
    r1, _ = ReLUConvBN(4, affine=False).apply({"params": pre["ReLUConvBN_1"]}, s1,
                                              mutable=["batch_stats"])
    want = ReferenceCell(reduction).apply({}, r0, r1, weights, pre)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
