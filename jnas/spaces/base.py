"""Search spaces: what alpha is, the supernet that consumes it, and the discrete cells.

A space is a frozen dataclass registered by name (`SPACES`). It gives the shape of alpha per
cell type, its supernet as a Flax module applied as `model.apply(variables, x, weights,
index)` (`weights` {cell type: (edges, ops)} op weights from a relaxation, `index` {cell
type: (edges,)} single-path ops or None), the nodes' incoming edges that derivation rules
read (`jnas.derive`), and the discrete architecture: derived, validated, written as JSON and
as the benchmark's string, and drawn. A new space is a file with a `register`ed subclass.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import flax.linen as nn
import numpy as np

from jnas import derive
from jnas.errors import JnasError

SPACES: dict[str, type[Space]] = {}


def register(cls: type[Space]) -> type[Space]:
    SPACES[cls.name] = cls
    return cls


def space_class(name: str) -> type[Space]:
    if name not in SPACES:
        raise JnasError(f"unknown search space {name!r}; known: {', '.join(SPACES)}")
    return SPACES[name]


@dataclasses.dataclass(frozen=True)
class Space:
    name: ClassVar[str]
    derivation: ClassVar[str]  # the rule of the space's published code
    # {algorithm: SearchConfig fields}: the published search settings on this space.
    search_defaults: ClassVar[dict[str, dict]] = {}
    primitives: tuple[str, ...]

    # -- alpha -------------------------------------------------------------------------------
    def cell_types(self) -> tuple[str, ...]:
        raise NotImplementedError

    def num_edges(self) -> int:
        raise NotImplementedError

    def alpha_shapes(self) -> dict[str, tuple[int, int]]:
        return {t: (self.num_edges(), len(self.primitives)) for t in self.cell_types()}

    def check_alpha(self, alpha, name: str = "alpha") -> None:
        """Raise naming the cell type and the shapes the space needs."""
        want = self.alpha_shapes()
        if not hasattr(alpha, "keys") or sorted(alpha) != sorted(want):
            keys = sorted(alpha) if hasattr(alpha, "keys") else type(alpha).__name__
            raise JnasError(f"`{name}` needs the keys {sorted(want)}, got {keys}")
        for t, shape in want.items():
            if tuple(np.shape(alpha[t])) != shape:
                raise JnasError(
                    f"`{name}[{t!r}]` has shape {tuple(np.shape(alpha[t]))}, the {self.name} "
                    f"space needs {shape} ({shape[0]} edges, {shape[1]} candidate ops)"
                )

    # -- the supernet ------------------------------------------------------------------------
    def network(self, num_classes: int, *, train: bool) -> nn.Module:
        raise NotImplementedError

    # -- derivation --------------------------------------------------------------------------
    def incoming(self) -> tuple[tuple[int, ...], ...]:
        """Per node, the alpha rows of its incoming edges."""
        raise NotImplementedError

    def derive_ops(self, op_weights, rule: str | None = None) -> dict[str, Any]:
        """{cell type: ((edges,) op column or -1, (edges,) strength)} by `rule` (None: the
        space's), on numpy or traced arrays."""
        fn = derive.rule(rule or self.derivation)
        return {t: fn(w, self.incoming(), self.primitives) for t, w in op_weights.items()}

    def derived_weights(self, op_weights, rule: str | None = None) -> dict[str, Any]:
        """The derived cells as (edges, ops) 0/1 weights: the supernet then computes them."""
        return {
            t: derive.one_hot(ops, len(self.primitives), op_weights[t].dtype)
            for t, (ops, _) in self.derive_ops(op_weights, rule).items()
        }

    def derive(self, op_weights, rule: str | None = None):
        """The discrete architecture from per-cell-type op weights (numpy, float64)."""
        op_weights = {t: np.asarray(w, np.float64) for t, w in op_weights.items()}
        return self.architecture(self.derive_ops(op_weights, rule))

    def architecture(self, derived: dict[str, Any]):
        """Build the space's architecture object from `derive_ops`' output."""
        raise NotImplementedError

    # -- the architecture --------------------------------------------------------------------
    def to_dict(self, arch) -> dict:
        raise NotImplementedError

    def from_dict(self, d) -> Any:
        raise NotImplementedError

    def to_string(self, arch) -> str:
        """One line for logs and benchmark look-ups."""
        raise NotImplementedError

    def benchmark_key(self, arch) -> str:
        """The architecture's key in a benchmark's table (`jnas.benchmark`)."""
        raise JnasError(
            f"the {self.name} space has no benchmark to look its architectures up in; "
            "`benchmark` needs the nas-bench-201 space"
        )

    def draw(self, arch, path: str, title: str = "") -> None:
        raise NotImplementedError

    def edge_labels(self) -> list[str]:
        """One label per alpha row, for the heatmaps of the op weights."""
        raise NotImplementedError
