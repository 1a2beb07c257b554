"""Selection with shared weights (RSPS, ENAS): candidate architectures scored with a
supernet's trained weights on validation batches, the best kept.

`score_architectures` runs the candidates one after another inside one compiled program
(`lax.map`), each edge's op index traced: the program compiles once whatever the candidates
are, and each candidate runs only its own ops. (Under `vmap` the op switch of a batched
index would become a select that runs every op: design.md, GDAS.)

BatchNorm normalises with each batch's statistics and leaves the running averages as they
are. The usage lines of AutoDL-Projects' scripts-search/NAS-Bench-201-algos/RANDOM-NAS.sh and
ENAS.sh pass `track_running_stats` 0 (`... cifar10 0 -1`), under which their scoring in
`eval()` normalises with batch statistics too, as ENAS's reward does (micro_child.py L804);
and a supernet's running averages mix the statistics of every path that was trained, so they
fit no single candidate. (Li & Talwalkar's code scores in eval mode with the running averages,
randomNAS_release benchmarks/cnn/darts/darts_wrapper_discrete.py L190.) The validation images
are not augmented.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jnas import data as jdata
from jnas.errors import JnasError
from jnas.sampling import architecture, supernet_inputs, to_ops, uniform_actions
from jnas.sharding import ShardedStep, put_batch
from jnas.steps import accuracy, cross_entropy

# Candidates scored per call: their batches are on the device together.
MAX_CHUNK = 16


def score_architectures(score_fn, ops, batches):
    """`score_fn(ops_k, batch_k)` of every candidate k, in one program: `ops` and `batches`
    are pytrees whose leaves have a leading axis of K candidates; the outputs gain it too."""
    return jax.lax.map(lambda pair: score_fn(*pair), (ops, batches))


def supernet_scores(model, variables, ops, batches):
    """(losses, accuracies), each (K,): the cross-entropy and accuracy of K candidates `ops`
    ({cell type: (K, edges)} op columns, -1 for an edge not taken) on their batches
    ({"x": (K, B, ...), "y": (K, B)}), run on the supernet `model` with `variables` (its
    params and batch_stats). Build `model` with `train=True`: batch statistics normalise,
    and the updated running averages are dropped."""
    num_ops = len(model.primitives)

    def one(ops_k, batch):
        weights, index = supernet_inputs(ops_k, num_ops)
        logits, _ = model.apply(variables, batch["x"], weights, index, mutable=["batch_stats"])
        return cross_entropy(logits, batch["y"]), accuracy(logits, batch["y"])

    return score_architectures(one, ops, batches)


def check_batch_size(split: jdata.ImageDataset, batch_size: int, name: str) -> None:
    """A candidate's batch is drawn without replacement: it fits in the validation split."""
    if batch_size > len(split):
        raise JnasError(
            f"`{name}` {batch_size} is larger than the {len(split)} validation examples that "
            f"score a candidate; lower it to at most {len(split)}"
        )


def validation_batches(split: jdata.ImageDataset, batch_size: int, count: int, *, seed: int,
                       unit: tuple[int, ...], part: int = 0, rows: slice = slice(None),
                       name: str = "candidate_batch_size") -> dict:
    """`count` batches of `batch_size` images of `split`, each drawn without replacement and
    without augmentation, stacked on axis 1 so that axis 0 is the one split over devices:
    {"x": (rows, count, H, W, C), "y": (rows, count)}. The draw depends on (seed, unit, part)
    alone (`unit`: ints, e.g. the epoch), so a resumed run draws the same; `rows` as in
    `jnas.data.train_batches`; `name` is the setting that gave `batch_size`, for the error."""
    check_batch_size(split, batch_size, name)
    # The marker 1 keeps these streams apart from the data order's [seed, epoch].
    rng = np.random.default_rng([seed, 1, *unit, part])
    index = np.stack([rng.choice(len(split), batch_size, replace=False) for _ in range(count)],
                     axis=1)[rows]
    return {"x": jdata.preprocess(split, split.x[index]), "y": split.y[index]}


def chunk_size(*counts: int) -> int:
    """The largest common divisor of `counts` up to MAX_CHUNK: candidates scored per call."""
    n = math.gcd(*counts)
    return max(k for k in range(1, min(n, MAX_CHUNK) + 1) if n % k == 0)


class Scores(NamedTuple):
    ops: dict[str, np.ndarray]  # {cell type: (N, edges)}
    losses: np.ndarray  # (N,)
    accuracies: np.ndarray  # (N,)

    def best(self) -> int:
        """The index of the highest accuracy (the first of a tie), as NAS-Bench-201's
        `np.argmax(valid_accs)` picks it."""
        return int(np.argmax(self.accuracies))

    def architecture(self, space, k: int):
        return architecture(space, {t: o[k] for t, o in self.ops.items()})

    def table(self, space) -> list[dict]:
        """Every candidate as {"arch", "valid_acc", "valid_loss"}, best first."""
        order = np.argsort(-self.accuracies, kind="stable")
        return [{"arch": space.to_string(self.architecture(space, k)),
                 "valid_acc": float(self.accuracies[k]), "valid_loss": float(self.losses[k])}
                for k in order]


@dataclasses.dataclass
class Selection:
    """Candidate architectures of `space` drawn by `draw(policy, key) -> actions`
    (`jnas.sampling`'s decisions: uniformly for RSPS, by ENAS's controller), each scored
    with the shared weights of the supernet `model` on its own batch of `batch_size`
    validation images. One compiled program scores `chunk` candidates; a call scores a
    multiple of them, chunk after chunk, so every count compiles the same program."""

    space: Any
    model: Any
    mesh: Any
    draw: Callable
    chunk: int
    batch_size: int

    def __post_init__(self):
        self.step = ShardedStep(self._score, self.mesh, batch_argnums=(4,))

    def _score(self, params, batch_stats, policy, key, batches):
        actions = jax.vmap(lambda k: self.draw(policy, k))(jax.random.split(key, self.chunk))
        ops = jax.vmap(lambda a: to_ops(self.space, a))(actions)
        batches = jax.tree.map(lambda x: jnp.moveaxis(x, 1, 0), batches)
        variables = {"params": params, "batch_stats": batch_stats}
        return actions, ops, *supernet_scores(self.model, variables, ops, batches)

    def score(self, params, batch_stats, policy, key, split, *, candidates: int, seed: int,
              draw: tuple[int, ...], rows: slice = slice(None)):
        """`candidates` (a multiple of `chunk`) drawn from `key` and scored on `split` (the
        validation images), on the devices: (actions (N, D), ops {cell type: (N, edges)},
        losses (N,), accuracies (N,)). `seed` and `draw` (ints: the epoch, a step) choose
        the batches, as `validation_batches`' `unit`."""
        if candidates % self.chunk:
            raise JnasError(f"{candidates} candidates are not chunks of {self.chunk}")
        parts = []
        for part in range(candidates // self.chunk):
            batches = validation_batches(split, self.batch_size, self.chunk, seed=seed,
                                         unit=draw, part=part, rows=rows)
            parts.append(self.step(params, batch_stats, policy, jax.random.fold_in(key, part),
                                   put_batch(batches, self.mesh)))
        return jax.tree.map(lambda *x: jnp.concatenate(x), *parts)

    def __call__(self, *args, **kwargs) -> Scores:
        """`score`'s candidates fetched to the host, as `Scores`."""
        _, ops, losses, accs = jax.device_get(self.score(*args, **kwargs))
        return Scores({t: np.asarray(o) for t, o in ops.items()}, np.asarray(losses),
                      np.asarray(accs))


def uniform_selection(search) -> Selection:
    """RSPS's selection for a `jnas.search.Search`: its config's `candidates` drawn uniformly,
    each scored on `candidate_batch_size` validation images with the supernet's weights."""
    cfg, space = search.config, search.space
    return Selection(space, search.model, search.mesh,
                     lambda policy, key: uniform_actions(space, key),
                     chunk_size(cfg.candidates), cfg.candidate_batch_size)
