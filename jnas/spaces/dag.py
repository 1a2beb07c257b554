"""The edges of a search cell, run for compile time: the DAG that both spaces' cells share.

A cell has `inputs` states and `steps` nodes; node n sums one mixed op on every earlier
state (the inputs, then nodes 0..n-1). Alpha's rows list the edges node by node, sources in
order, so the edge from state s into node n is row `n * inputs + n (n - 1) / 2 + s`.

Compile time is the cost that binds (a Python loop over 8 cells x 14 edges x 8 ops takes
minutes to compile), so a cell traces its mixed op twice: once for the edges from the cell
inputs, which depend on the inputs alone (run at once with `nn.vmap`), and once for the
edges between nodes, one per iteration of an `nn.scan` in an order where every node is
complete before it is read. Path-sampling relaxations (GDAS, ProxylessNAS, ASAP) run both
groups with `nn.scan`: each iteration switches on one edge's sampled ops, unbatched indices,
so only those ops are computed (under `vmap` the switch would become a select that computes
every op). Both forms
store a group's parameters stacked on axis 0 under the same names (`edges_0`, `edges_1`), so
one set of weights serves both.
"""

from __future__ import annotations

import functools
import operator

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

STACKED = {"params": 0, "batch_stats": 0}


def edge_row(node: int, source: int, inputs: int) -> int:
    """Alpha's row of the edge from state `source` into node `node`."""
    return node * inputs + node * (node - 1) // 2 + source


def num_edges(steps: int, inputs: int) -> int:
    return edge_row(steps, 0, inputs)


def incoming(steps: int, inputs: int) -> tuple[tuple[int, ...], ...]:
    """Per node, the alpha rows of its incoming edges (what derivation rules read)."""
    return tuple(
        tuple(edge_row(n, s, inputs) for s in range(n + inputs)) for n in range(steps)
    )


def edge_groups(steps: int, inputs: int) -> list[list[tuple[int, int]]]:
    """Edges `(source, node)` in the two groups a cell runs: those that read the cell
    inputs, then those between nodes, ordered by node and then source."""
    first = [(s, n) for s in range(inputs) for n in range(steps)]
    inner = [(s, n) for n in range(steps) for s in range(inputs, n + inputs)]
    return [first, inner] if inner else [first]


def cell_nodes(make_op, inputs: list, steps: int, weights, index=None, *,
               vmap_inputs: bool = True) -> list:
    """The `steps` node states of a cell whose edges are mixed ops `make_op(group, name)`
    (group 0: the edges from the inputs, 1: the inner ones), called inside a compact method.
    `weights` (edges, ops); with `index` (edges, paths) ints, or an (edges, ops) mask, each edge
    runs those ops only (`MixedOp.sampled`).
    `vmap_inputs=False` runs the input edges one per `scan` iteration even when every op is
    weighted: a vmapped full convolution becomes a grouped one, which XLA:CPU runs many times
    slower (NAS-Bench-201's ReLU-conv-BN ops; bench/README.md)."""
    k = len(inputs)
    groups = edge_groups(steps, k)
    rows = [np.array([edge_row(n, s, k) for s, n in group]) for group in groups]

    def pick(g):
        return weights[rows[g]], None if index is None else index[rows[g]]

    ys = _input_edges(make_op(0, "edges_0"), jnp.stack([x for x in inputs for _ in range(steps)]),
                      *pick(0), vmap_inputs)
    # Each node sums its inputs in the official order: input 0, input 1, ..., then the nodes.
    nodes = functools.reduce(operator.add, [ys[i * steps : (i + 1) * steps] for i in range(k)])
    if len(groups) > 1:
        nodes = _inner_edges(make_op(1, "edges_1"), nodes, groups[1], k, *pick(1))
    return list(nodes)


def _input_edges(op, x, weights, index, vmap_inputs):
    if index is None and vmap_inputs:
        return nn.vmap(
            lambda mdl, x, w: mdl(x, w), variable_axes=STACKED, split_rngs={"params": True}
        )(op, x, weights)

    def body(mdl, carry, edge):
        x, w, i = edge
        return carry, mdl(x, w) if i is None else mdl.sampled(x, w, i)

    _, ys = nn.scan(
        body,
        variable_axes=STACKED,
        split_rngs={"params": True},
    )(op, None, (x, weights, index))
    return ys


def _inner_edges(op, nodes, edges, inputs, weights, index):
    """Edge (s, n) adds its op's output on node s - inputs into node n of the carried
    buffer, one edge per iteration: one traced mixed op serves them all."""

    def body(mdl, nodes, edge):
        (source, node), w, i = edge
        x = nodes[source - inputs]
        y = mdl(x, w) if i is None else mdl.sampled(x, w, i)
        return nodes.at[node].add(y), None

    edges = tuple(jnp.array(e) for e in zip(*edges, strict=True))
    return nn.scan(body, variable_axes=STACKED, split_rngs={"params": True})(
        op, nodes, (edges, weights, index)
    )[0]
