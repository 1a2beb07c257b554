"""Discrete architectures drawn decision by decision: what RSPS's uniform sampler and ENAS's
controller sample, and how a sample runs on a space's supernet.

A space says how a sampled cell is built (`Space.sample_inputs`): per node, either every
incoming edge with one op each ('none' among the ops drops an edge: NAS-Bench-201), or
`sample_inputs` distinct incoming edges, each with one op other than 'none' (the DARTS space,
as ENAS's micro controller and RSPS's sampler build DARTS-space cells: two inputs and two ops
per node). The decisions are listed per cell type (the space's order), node and pick: for a
chosen input, the input (its position among the node's incoming edges), then its op.

`actions` are one int per decision. A sample becomes `ops`, {cell type: (edges,) op column,
-1 for an edge not taken}, the format of `jnas.derive`'s rules, which the supernet runs as
one path per edge (`supernet_inputs`) and the space turns into its architecture.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jnas.errors import JnasError


class Decision(NamedTuple):
    cell_type: str
    node: int
    pick: int  # which of the node's picks
    kind: str  # "input" (one of the node's incoming edges) or "op"
    options: int


def op_columns(space) -> tuple[int, ...]:
    """The primitives' columns an op decision chooses from: every op where every edge is
    kept, all but 'none' where inputs are chosen."""
    if space.sample_inputs is None:
        return tuple(range(len(space.primitives)))
    # Spaces refuse candidates without a real op, so this is never empty.
    return tuple(i for i, p in enumerate(space.primitives) if p != "none")


def decisions(space) -> tuple[Decision, ...]:
    """The space's decisions in sampling order."""
    picks, n_ops = space.sample_inputs, len(op_columns(space))
    out = []
    for t in space.cell_types():
        for node, rows in enumerate(space.incoming()):
            if picks is not None and picks > len(rows):
                raise JnasError(f"node {node} has {len(rows)} incoming edges; a sampled cell "
                                f"takes {picks} of each node's")
            for p in range(len(rows) if picks is None else picks):
                if picks is not None:
                    out.append(Decision(t, node, p, "input", len(rows)))
                out.append(Decision(t, node, p, "op", n_ops))
    return tuple(out)


def allowed(decs: tuple[Decision, ...], actions, t: int):
    """(options,) bool: the options of decision `t` given the earlier `actions[:t]` (an
    input already picked for the node is not picked again)."""
    d = decs[t]
    mask = jnp.ones(d.options, bool)
    if d.kind == "input":
        for s, e in enumerate(decs[:t]):
            if e.kind == "input" and (e.cell_type, e.node) == (d.cell_type, d.node):
                mask = mask & (jnp.arange(d.options) != actions[s])
    return mask


def uniform_actions(space, key) -> jax.Array:
    """A uniformly drawn architecture's actions: each decision uniform over its allowed
    options, so every valid cell (with its inputs in pick order) is equally likely."""
    decs = decisions(space)
    actions = jnp.zeros(len(decs), jnp.int32)
    for t, k in enumerate(jax.random.split(key, len(decs))):
        logits = jnp.where(allowed(decs, actions, t), 0.0, -jnp.inf)
        actions = actions.at[t].set(jax.random.categorical(k, logits))
    return actions


def to_ops(space, actions) -> dict[str, jax.Array]:
    """{cell type: (edges,) op column, -1 for an edge not taken} of `actions` (traceable)."""
    decs, incoming = decisions(space), space.incoming()
    if np.shape(actions) != (len(decs),):
        raise JnasError(f"`actions` must have shape ({len(decs)},), one per decision, got "
                        f"{np.shape(actions)}")
    columns = jnp.asarray(op_columns(space), jnp.int32)
    ops = {t: jnp.full(space.num_edges(), -1, jnp.int32) for t in space.cell_types()}
    row = None
    for t, d in enumerate(decs):
        rows = jnp.asarray(incoming[d.node])
        if d.kind == "input":
            row = rows[actions[t]]
            continue
        if space.sample_inputs is None:
            row = rows[d.pick]
        ops[d.cell_type] = ops[d.cell_type].at[row].set(columns[actions[t]])
    return ops


def supernet_inputs(ops, num_ops: int, dtype=jnp.float32):
    """(weights, index) that make a supernet run the sampled cells: one path per edge, -1
    (zeros) for an edge not taken, each weighted 1."""
    weights = {t: jax.nn.one_hot(o, num_ops, dtype=dtype) for t, o in ops.items()}
    return weights, {t: o[:, None] for t, o in ops.items()}


def architecture(space, ops):
    """The space's architecture of sampled `ops` (numpy or fetched arrays)."""
    derived = {t: (np.asarray(o), np.zeros(np.shape(o))) for t, o in ops.items()}
    return space.architecture(derived)
