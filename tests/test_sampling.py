"""jnas.sampling: the decisions of each space, uniform samples, and what a sample runs."""

import collections
import itertools

import jax
import numpy as np
import pytest

from jnas import sampling
from jnas.errors import JnasError
from jnas.genotype import Genotype
from jnas.spaces import space_class
from tests.common import OPS

NB201 = space_class("nas-bench-201")()
DARTS = space_class("darts")(nodes=2, primitives=OPS)


def test_decisions_follow_each_space():
    nb = sampling.decisions(NB201)
    assert [(d.node, d.kind, d.options) for d in nb] == [
        (0, "op", 5), (1, "op", 5), (1, "op", 5), (2, "op", 5), (2, "op", 5), (2, "op", 5)
    ]  # fmt: skip
    darts = sampling.decisions(DARTS)
    # Per cell type and node: two (input, op) picks; node 0 reads 2 states, node 1 reads 3.
    assert [(d.cell_type, d.node, d.kind, d.options) for d in darts[:8]] == [
        ("normal", 0, "input", 2), ("normal", 0, "op", 3), ("normal", 0, "input", 2),
        ("normal", 0, "op", 3), ("normal", 1, "input", 3), ("normal", 1, "op", 3),
        ("normal", 1, "input", 3), ("normal", 1, "op", 3),
    ]  # fmt: skip
    assert len(darts) == 16 and darts[8].cell_type == "reduce"
    assert sampling.op_columns(DARTS) == (1, 2, 3)  # 'none' is no op of a sampled DARTS cell


def _valid_darts_actions():
    """Every action sequence of one DARTS cell type whose inputs differ within a node."""
    per_node = []
    for inputs in (2, 3):
        per_node.append([(i, o, j, p) for i, j in itertools.permutations(range(inputs), 2)
                         for o in range(3) for p in range(3)])
    return [sum(c, ()) for c in itertools.product(*per_node)]


def test_uniform_darts_samples_are_valid_and_uniform():
    draw = jax.jit(jax.vmap(lambda k: sampling.uniform_actions(DARTS, k)))
    actions = np.asarray(draw(jax.random.split(jax.random.key(0), 20_000)))
    normal = actions[:, :8]
    for node in (slice(0, 4), slice(4, 8)):
        assert np.all(normal[:, node][:, 0] != normal[:, node][:, 2])  # distinct inputs
    valid = _valid_darts_actions()
    assert len(valid) == 18 * 54
    counts = collections.Counter(map(tuple, normal[:, :4]))
    # Node 0: 2 ordered input pairs x 3 x 3 ops, each 1/18: within 5 standard errors.
    expected = len(normal) / 18
    assert len(counts) == 18
    assert max(abs(c - expected) for c in counts.values()) < 5 * np.sqrt(expected)


def test_ops_run_the_sampled_cell_and_name_its_architecture():
    actions = np.array([1, 2, 0, 0,  # node 0: input 1 with op column 3, input 0 with column 1
                        2, 1, 0, 0,  # node 1: input 2 (node 0) with column 2, input 0 col. 1
                        0, 0, 1, 1, 0, 2, 1, 2])  # fmt: skip
    ops = jax.device_get(sampling.to_ops(DARTS, actions))
    # Rows: node 0 reads rows 0, 1; node 1 rows 2, 3, 4 (inputs 0, 1 and node 0).
    np.testing.assert_array_equal(ops["normal"], [1, 3, 1, -1, 2])
    np.testing.assert_array_equal(ops["reduce"], [1, 2, 3, 3, -1])
    weights, index = sampling.supernet_inputs(ops, len(OPS))
    DARTS.check_index(index)
    np.testing.assert_array_equal(index["normal"][:, 0], ops["normal"])
    np.testing.assert_array_equal(weights["normal"][3], np.zeros(len(OPS)))
    arch = sampling.architecture(DARTS, ops)
    assert isinstance(arch, Genotype)
    assert sorted(arch.normal) == sorted([("sep_conv_3x3", 1), ("max_pool_3x3", 0),
                                          ("skip_connect", 2), ("max_pool_3x3", 0)])
    nb_ops = sampling.to_ops(NB201, np.array([0, 1, 2, 3, 4, 3]))
    assert sampling.architecture(NB201, jax.device_get(nb_ops)) == (
        "none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3", "nor_conv_3x3")


def test_bad_actions_are_named():
    with pytest.raises(JnasError, match=r"`actions` must have shape \(6,\)"):
        sampling.to_ops(NB201, np.zeros(5, int))
