"""Relaxations: how alpha becomes what a supernet computes.

A relaxation maps alpha `{cell type: (edges, ops)}`, plus a key and the epoch where it
samples or anneals, to `(weights, index)`: per cell type the (edges, ops) op weights, and for
path-sampling relaxations the (edges, paths) ops that each edge runs, -1 for none (None: every
op runs, weighted; `jnas.ops.MixedOp.sampled`).
It gives the deterministic weights that evaluation, drawings and derivation read, may add a
loss on alpha, and may change the space's derivation rule. A new relaxation is a file
with a `register`ed subclass.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from jnas.errors import JnasError

Alpha = dict[str, jax.Array]
EdgeWeights = tuple[dict[str, jax.Array], dict[str, jax.Array] | None]

RELAXATIONS: dict[str, type[Relaxation]] = {}


def register(cls: type[Relaxation]) -> type[Relaxation]:
    RELAXATIONS[cls.name] = cls
    return cls


def make_relaxation(name: str, epochs: int, incoming=(), **params) -> Relaxation:
    """The relaxation `name` for a run of `epochs` epochs over cells whose nodes have the
    `incoming` edges (`Space.incoming`); `params` are its fields (a value of None keeps the
    field's default)."""
    if name not in RELAXATIONS:
        raise JnasError(f"unknown relaxation {name!r}; known: {', '.join(RELAXATIONS)}")
    cls = RELAXATIONS[name]
    fields = {f.name for f in dataclasses.fields(cls)}
    given = {k: v for k, v in params.items() if v is not None}
    foreign = sorted(set(given) - fields)
    if foreign:
        takers = [n for n, c in RELAXATIONS.items() if set(foreign) <= {f.name for f in
                                                                       dataclasses.fields(c)}]
        raise JnasError(
            f"{', '.join(f'`{k}`' for k in foreign)} is not a parameter of the {name} "
            f"relaxation (it is of: {', '.join(takers) or 'none'})"
        )
    return cls(epochs=epochs, incoming=tuple(map(tuple, incoming)), **given)


def softmax(a):
    """Softmax over ops: traced inside the steps; in float64 numpy for the files and drawings
    of a run (alpha fetched from the devices), so that float32 rounding does not decide a
    near-tie between two ops there."""
    if isinstance(a, jax.Array):
        return jax.nn.softmax(a, axis=-1)
    a = np.asarray(a, np.float64)
    e = np.exp(a - a.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def per_cell_type(fn, key, alpha: Alpha) -> dict[str, jax.Array]:
    """`fn(key_t, alpha[t])` per cell type t, with the t-th key (sorted types) of a split into
    at least two: the keys of DARTS's two cell types whatever a network searches."""
    keys = jax.random.split(key, max(2, len(alpha)))
    return {t: fn(k, alpha[t]) for t, k in zip(sorted(alpha), keys[: len(alpha)], strict=True)}


@dataclasses.dataclass(frozen=True)
class Relaxation:
    epochs: int = 1
    incoming: tuple[tuple[int, ...], ...] = ()  # per node, its incoming edges' alpha rows
    name: ClassVar[str]

    def init_alpha(self, key, shapes: dict[str, tuple[int, int]]) -> Alpha:
        """DARTS's initialisation, 1e-3 * N(0, 1)."""
        return per_cell_type(lambda k, s: 1e-3 * jax.random.normal(k, s), key, shapes)

    def init_state(self, alpha: Alpha) -> dict[str, jax.Array]:
        """Arrays of the relaxation's own, kept beside alpha but not optimised (none by
        default; ASAP: its unpruned ops). Its methods read them merged into `alpha`."""
        del alpha
        return {}

    def update_state(self, alpha: Alpha, epoch) -> dict[str, jax.Array]:
        """The state after a step, from alpha merged with the state (unchanged by default)."""
        del epoch
        return {k: alpha[k] for k in self.init_state(alpha)}

    def train_weights(self, alpha: Alpha, key, epoch) -> EdgeWeights:
        raise NotImplementedError

    def arch_weights(self, alpha: Alpha, key, epoch) -> EdgeWeights:
        """What the architecture step's losses run (by default the weight step's sample)."""
        return self.train_weights(alpha, key, epoch)

    def eval_weights(self, alpha: Alpha) -> EdgeWeights:
        """What evaluation runs: by default the training weights' expectation, softmax."""
        return self.op_weights(alpha), None

    def derivation_rule(self, space_rule: str):
        """The rule that derives the architecture from `op_weights` (a name in
        `jnas.derive.RULES` or a rule), given the space's `space_rule` (by default that)."""
        return space_rule

    def op_weights(self, alpha: Alpha) -> dict[str, jax.Array]:
        """The deterministic op weights that derivation and the drawings read."""
        return {t: softmax(a) for t, a in alpha.items()}

    def loss(self, alpha: Alpha) -> jax.Array:
        """A term on alpha added to the architecture's loss (none by default)."""
        del alpha
        return jnp.zeros(())

    def metrics(self, alpha: Alpha, epoch) -> dict[str, Any]:
        """Per-step values worth logging (a temperature), from alpha merged with the state."""
        del alpha, epoch
        return {}


@dataclasses.dataclass(frozen=True)
class Annealed(Relaxation):
    """A relaxation with a temperature annealed from `tau_max` to `tau_min` over the run;
    subclasses give the defaults and the schedule (`tau(epoch)`)."""

    tau_max: float = 1.0
    tau_min: float = 1.0

    def __post_init__(self):
        if not 0 < self.tau_min <= self.tau_max:
            raise JnasError(
                f"the temperature needs 0 < `tau_min` <= `tau_max`, got `tau_min` "
                f"{self.tau_min} and `tau_max` {self.tau_max}"
            )

    def tau(self, epoch):
        raise NotImplementedError

    def metrics(self, alpha, epoch):
        del alpha
        return {"tau": self.tau(epoch)}
