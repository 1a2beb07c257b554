"""Search algorithms as pieces: an architecture gradient, an order of the two steps, a
default relaxation, the algorithm's own options and its paper's defaults.

`jnas.search.Search` assembles any registered algorithm with any space and relaxation into
one jitted step; no step branches on an algorithm's name. A new algorithm is a file with a
`register(Algorithm(...))` call.

An architecture gradient is `arch_gradient(loss_fn, ctx) -> (arch_loss, dalpha)`, where
`loss_fn(w, alpha, batch)` is the network's loss under the relaxation and `ctx` carries the
state, the batches, the current weight learning rate and the config (`ArchContext`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

from jnas.errors import JnasError

# The phases of a step, in order: "arch" (an architecture step on arch_gradient), "weights"
# (a weight step on the train batch), "joint" (one loss on the train batch updates both).
PHASES = ("arch", "weights", "joint")


class ArchContext(NamedTuple):
    state: Any  # jnas.search.SearchState
    train_batch: Any
    val_batch: Any
    lr: Any  # the weight learning rate of this step
    config: Any  # jnas.search.SearchConfig


@dataclasses.dataclass(frozen=True)
class Algorithm:
    name: str
    order: tuple[str, ...]
    relaxation: str
    arch_gradient: Callable | None = None  # None: the order has no "arch" phase
    options: tuple[str, ...] = ()  # SearchConfig fields that only this algorithm reads
    defaults: dict = dataclasses.field(default_factory=dict)  # its paper's, over DARTS's
    doc: str = ""
    # An optax transform applied to alpha's Adam updates (None: none).
    arch_transform: Callable | None = None

    def __post_init__(self):
        unknown = [p for p in self.order if p not in PHASES]
        if unknown or ("arch" in self.order) != (self.arch_gradient is not None):
            raise JnasError(
                f"algorithm {self.name!r}: order {self.order} must be phases from {PHASES}, "
                "with an arch_gradient exactly when it has an 'arch' phase"
            )


ALGORITHMS: dict[str, Algorithm] = {}


def register(algorithm: Algorithm) -> Algorithm:
    ALGORITHMS[algorithm.name] = algorithm
    return algorithm


def algorithm(name: str) -> Algorithm:
    if name not in ALGORITHMS:
        raise JnasError(f"`algorithm` must be one of {', '.join(ALGORITHMS)}, got {name!r}")
    return ALGORITHMS[name]
