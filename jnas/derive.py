"""Derivation rules: a cell's per-edge op weights -> its discrete edges, each rule once.

A rule maps `weights` (edges, ops), the deterministic op weights of a relaxation (softmax of
alpha for DARTS, GDAS and SNAS), to `(ops, strength)`: per edge the chosen op's column, or -1
where the edge is dropped, and the edge's strength (spaces list a node's kept edges strongest
first). `incoming` lists, per node, the alpha rows of its incoming edges; `primitives` names
the columns. The rules run on numpy arrays (the files and drawings of a run, in float64) and
on jax arrays inside jit (T-NAS's test-time architecture), with the same code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jnas.errors import JnasError

Rule = Callable[[object, Sequence[Sequence[int]], Sequence[str]], tuple[object, object]]
RULES: dict[str, Rule] = {}


def register(name: str):
    def add(rule: Rule) -> Rule:
        RULES[name] = rule
        return rule

    return add


def _xp(weights):
    return jnp if isinstance(weights, jax.Array) else np


@register("darts")
def top2_real_ops(weights, incoming, primitives):
    """DARTS's rule (Liu et al., 2019; cnn/model_search.py, `genotype`): per node, keep the 2
    incoming edges whose best op other than 'none' weighs most, each with that op. 'none' is
    the relaxation's "no edge", so it never decides an edge. Ties go to the lower input."""
    xp = _xp(weights)
    usable = np.array([op != "none" for op in primitives])
    if not usable.any():
        raise JnasError("the candidate ops have no op other than 'none'; a cell needs a real op")
    masked = xp.where(usable, weights, -np.inf)
    best = xp.argmax(masked, -1)
    strength = xp.max(masked, -1)
    columns = np.arange(weights.shape[0])[:, None]
    keep = np.zeros(weights.shape[0], bool)
    for rows in incoming:
        # A stable sort keeps the lower input first on ties, as the official code does.
        kept = xp.asarray(rows)[xp.argsort(-strength[np.asarray(rows)], stable=True)[:2]]
        keep = keep | (columns == kept[None, :]).any(-1)
    return xp.where(keep, best, -1), strength


@register("argmax")
def argmax_op(weights, incoming, primitives):
    """NAS-Bench-201's rule (Dong & Yang, 2020; the search models' `genotype`): every edge is
    kept with its argmax op, 'none' included, so an edge whose 'none' wins is dropped."""
    del incoming
    xp = _xp(weights)
    best = xp.argmax(weights, -1)
    none = primitives.index("none") if "none" in primitives else -2
    return xp.where(best == none, -1, best), xp.max(weights, -1)


def rule(name: str | Rule) -> Rule:
    """The rule registered as `name`; a rule itself (a relaxation's, built from a space's
    rule and its own parameters: `Relaxation.derivation_rule`) is returned as it is."""
    if callable(name):
        return name
    if name not in RULES:
        raise JnasError(f"unknown derivation rule {name!r}; known: {', '.join(RULES)}")
    return RULES[name]


def one_hot(ops, num_ops: int, dtype=jnp.float32):
    """(edges,) chosen ops, -1 dropped -> (edges, ops) 0/1 weights that make a supernet
    compute the derived cell (a dropped edge adds zeros)."""
    return jax.nn.one_hot(ops, num_ops, dtype=dtype)  # -1 is out of range: a zero row
