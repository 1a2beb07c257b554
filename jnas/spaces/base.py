"""Search spaces: what alpha is, the supernet that consumes it, and the discrete cells.

A space is a frozen dataclass registered by name (`SPACES`). It gives the shape of alpha per
cell type, its supernet as a Flax module applied as `model.apply(variables, x, weights,
index)` (`weights` {cell type: (edges, ops)} op weights from a relaxation, `index` {cell
type: (edges, paths)} sampled ops or None), the nodes' incoming edges that derivation rules
read (`jnas.derive`), and the discrete architecture: derived, validated, written as JSON and
as the benchmark's string, and drawn. A new space is a file with a `register`ed subclass.
"""

from __future__ import annotations

import dataclasses
import json
import os
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


def space_from_config(config, name: str, defaults: dict[str, Any]) -> Space:
    """The space `name` built from the fields of `config` that it has (None: the space's
    default). A field of another space whose value differs from `defaults` is refused: the
    space would silently ignore it."""
    cls = space_class(name)
    reads = {f.name for f in dataclasses.fields(cls)}
    for other in SPACES.values():
        for f in dataclasses.fields(other):
            if f.name in reads or not hasattr(config, f.name):
                continue
            if getattr(config, f.name) != defaults[f.name]:
                raise JnasError(
                    f"`{f.name}` is a setting of the {other.name} space; the {name} space "
                    f"does not read it (its settings: {', '.join(sorted(reads))})"
                )
    values = {k: getattr(config, k, None) for k in reads}
    return cls(**{k: v for k, v in values.items() if v is not None})


def check_partial_channels(k: int, init_channels: int) -> None:
    """Every cell's channels (a power-of-two multiple of `init_channels`) split into K
    groups."""
    if init_channels % k:
        raise JnasError(
            f"`partial_channels` {k} must divide `init_channels` {init_channels}: the ops see "
            f"1/{k} of each edge's channels"
        )


@dataclasses.dataclass(frozen=True)
class Space:
    name: ClassVar[str]
    derivation: ClassVar[str]  # the rule of the space's published code
    # SearchConfig fields: the space's search settings for every algorithm, then {algorithm:
    # fields}: an algorithm's published settings on this space (`search_settings`).
    search_base: ClassVar[dict[str, Any]] = {}
    search_defaults: ClassVar[dict[str, dict]] = {}
    # TrainConfig fields: the published protocol that trains this space's architectures from
    # scratch (`jnas.evaluation`); TrainConfig's own defaults are DARTS's.
    eval_defaults: ClassVar[dict[str, Any]] = {}
    # {name: architecture}: published architectures that `load_arch` knows by name.
    known_archs: ClassVar[dict[str, Any]] = {}
    # How a sampler builds a discrete cell (`jnas.sampling`): per node, this many distinct
    # incoming edges with an op other than 'none' each, or None: every incoming edge, 'none'
    # among its ops.
    sample_inputs: ClassVar[int | None] = None
    primitives: tuple[str, ...]

    @classmethod
    def search_settings(cls, algorithm: str) -> dict[str, Any]:
        return {**cls.search_base, **cls.search_defaults.get(algorithm, {})}

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

    def check_index(self, index, name: str = "index") -> None:
        """Raise unless `index` is {cell type: (edges, paths) ints}, the sampled ops per edge
        (-1: none) of a path-sampling relaxation, or (edges, ops) booleans, the ops to run."""
        want = self.cell_types()
        if not hasattr(index, "keys") or sorted(index) != sorted(want):
            keys = sorted(index) if hasattr(index, "keys") else type(index).__name__
            raise JnasError(f"`{name}` needs the keys {sorted(want)}, got {keys}")
        for t in want:
            shape, dtype = tuple(np.shape(index[t])), getattr(index[t], "dtype", None)
            mask = dtype == np.bool_ and shape == (self.num_edges(), len(self.primitives))
            if not mask and (len(shape) != 2 or shape[0] != self.num_edges() or dtype is None
                             or not np.issubdtype(dtype, np.integer)):
                raise JnasError(
                    f"`{name}[{t!r}]` must be a ({self.num_edges()}, paths) int array, the "
                    f"sampled ops of each edge, or a ({self.num_edges()}, "
                    f"{len(self.primitives)}) bool mask of the ops to run, got shape {shape} "
                    f"and dtype {dtype}"
                )

    # -- the supernet ------------------------------------------------------------------------
    def network(self, num_classes: int, *, train: bool) -> nn.Module:
        raise NotImplementedError

    # -- the discrete network ----------------------------------------------------------------
    def eval_network(self, arch, num_classes: int, *, train: bool, auxiliary: bool = False,
                     drop_path: bool = False) -> nn.Module:
        """The discrete network of `arch` at this space's sizes, trained from scratch to
        evaluate it; called as `model.apply(variables, x, drop_prob, rngs={"dropout": key},
        mutable=["batch_stats"])` -> `(logits, auxiliary logits or None)`. `auxiliary` and
        `drop_path` say whether training uses an auxiliary head and drop path; a space whose
        network has none refuses them."""
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

    def from_string(self, text: str):
        """The architecture of a `to_string` line, or raise saying what is wrong."""
        raise NotImplementedError

    def load_arch(self, text: str):
        """The architecture that `text` names: a known one (`known_archs`), a JSON file as a
        search writes it (genotype.json), or the space's string (`to_string`)."""
        if text in self.known_archs:
            return self.known_archs[text]
        if not (text.endswith(".json") or os.path.isfile(text)):
            return self.from_string(text)
        try:
            with open(text, encoding="utf-8") as f:
                record = json.load(f)
        except OSError as e:
            raise JnasError(f"cannot read the architecture file {text!r} ({e.strerror or e})"
                            ) from None
        except json.JSONDecodeError as e:
            raise JnasError(f"the architecture file {text!r} is not valid JSON ({e})") from None
        try:
            return self.from_dict(record)
        except JnasError as e:
            raise JnasError(f"the architecture file {text!r}: {e}") from None

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
