"""The one resumable run loop: a job's steps -> logged rows -> files -> checkpoints.

A job (a search, a meta-learner; FedNAS's rounds next) says what its steps and its logged
units are (an epoch; a window of meta-iterations), how to score a unit and which files to
write. `run(job)` owns the rest: the settings file and the refusal of a folder written with
other settings, resuming from the newest checkpoint, the progress bar, the per-unit means of
the step metrics and their non-finite check, metrics.jsonl, the check that every step
compiled once, checkpoints, and the final result.

With several processes every process runs the loop and process 0 alone writes files and
prints; the checkpoint is written by all (Orbax lets one replica write replicated state).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Iterator
from typing import Any, Protocol

import jax
import numpy as np
from tqdm.auto import tqdm

from jnas.checkpoint import Checkpointer
from jnas.errors import JnasError
from jnas.io import write_json, write_text
from jnas.sharding import ShardedStep, assert_traced_once, is_main_process

# Settings that say where things are and what runs them, not what is computed: they may
# differ between a run and its resumption.
RUN_FIELDS = ("data_dir", "save", "devices")


class Job(Protocol):
    config: Any  # a frozen dataclass with `save`: written as config.json
    may_differ: tuple[str, ...]  # config fields a resumed run may change
    unit: str  # the key of a metrics row: "epoch", "iteration"
    total_steps: int  # for the progress bar
    steps: tuple[ShardedStep, ...]  # each must compile once per run
    hint: str  # what to change when the loss is non-finite (in the caller's terms)
    loss_key: str  # the step metric the progress bar shows

    def init(self) -> Any: ...

    def units(self, done: int) -> Iterator[int]:
        """The unit indices after `done` (a checkpoint's index): epoch numbers, the
        iteration counts at which a window ends."""

    def steps_before(self, unit: int) -> int:
        """How many steps the units up to `unit` took (where a resumed bar starts)."""

    def step_inputs(self, unit: int) -> Iterator[tuple]:
        """The inputs of each step of `unit` after the state."""

    def step(self, state, *inputs) -> tuple[Any, dict]: ...

    def row(self, state, unit: int, means: dict) -> dict:
        """The unit's metrics row (evaluation included) from the means of its steps."""

    def write(self, state, rows: list[dict]) -> None:
        """The job's files after a unit (process 0)."""

    def checkpoint_due(self, unit: int) -> bool: ...

    def summary(self, row: dict) -> str | None:
        """A line to print after a unit, or None."""

    def finish(self, state, rows: list[dict]) -> dict:
        """The run's result (and final files)."""


def config_dict(config) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(config)))


def check_resumable(config, path: str, may_differ: tuple[str, ...] = RUN_FIELDS) -> None:
    """Refuse to resume a run written with other settings (those not in `may_differ`): its
    checkpoint would not fit them, or it would compute something else."""
    new = config_dict(config)
    if not os.path.exists(path):
        if is_main_process():
            write_json(path, new)
        return
    with open(path) as f:
        old = json.load(f)
    diff = {k: (old.get(k), v) for k, v in new.items() if k not in may_differ and old.get(k) != v}
    if diff:
        changes = ", ".join(f"`{k}`: {a!r} -> {b!r}" for k, (a, b) in sorted(diff.items()))
        raise JnasError(
            f"{os.path.dirname(path)} holds a run with other settings ({changes}). "
            "Rerun with the same settings to resume it, or pass a new `save`."
        )


def read_metrics(path: str, up_to: int, key: str) -> list[dict]:
    """The rows a checkpoint covers (a crash may have left later lines)."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [r for r in rows if r[key] <= up_to]


def stack_metrics(metrics: list[dict]) -> dict:
    """Per-step metric dicts -> one dict of stacked arrays (one host transfer)."""
    return jax.tree.map(lambda *xs: np.stack(xs), *metrics)


def run(job: Job, *, progress: bool = True, desc: str = "") -> dict:
    """Run (or resume) `job` into `job.config.save`; returns `job.finish`'s result."""
    save = job.config.save
    main = is_main_process()
    if main:
        os.makedirs(save, exist_ok=True)
    check_resumable(job.config, os.path.join(save, "config.json"), job.may_differ)
    state = job.init()
    checkpointer = Checkpointer(os.path.join(save, "checkpoints"))
    metrics_path = os.path.join(save, "metrics.jsonl")
    start = checkpointer.latest_epoch() or 0
    rows = []
    if start:
        state = checkpointer.restore(start, like=state)
        rows = read_metrics(metrics_path, start, job.unit)
        if main:
            print(f"resuming {save} after {job.unit} {start}", flush=True)

    bar = tqdm(
        total=job.total_steps,
        initial=job.steps_before(start),
        desc=desc,
        disable=not (progress and main),
    )
    for unit in job.units(start):
        t0, window = time.time(), []
        for inputs in job.step_inputs(unit):
            state, m = job.step(state, *inputs)
            window.append(m)  # kept on device: no host round trip until the unit ends
            bar.update(1)
            if len(window) % 10 == 1:
                bar.set_postfix({job.unit: unit, "loss": f"{float(m[job.loss_key]):.3f}"})
        means = {k: float(np.mean(v)) for k, v in jax.device_get(stack_metrics(window)).items()}
        if not all(np.isfinite(v) for v in means.values()):
            raise JnasError(
                f"the loss became non-finite in {job.unit} {unit} ({means}). The files and "
                f"the last checkpoint in {save} are kept. {job.hint}"
            )
        row = {job.unit: unit, **job.row(state, unit, means)}
        row["seconds"] = time.time() - t0
        row["steps_per_second"] = len(window) / row["seconds"]
        assert_traced_once(*job.steps)
        rows.append(row)
        # Files first, then the checkpoint: a crash in between resumes from the previous
        # checkpoint and drops this unit's metrics line.
        if main:
            write_text(metrics_path, "".join(json.dumps(r) + "\n" for r in rows))
            job.write(state, rows)
        if job.checkpoint_due(unit):
            checkpointer.save(unit, state)
        line = job.summary(row)
        if main and line:
            tqdm.write(line)
    bar.close()
    return job.finish(state, rows)
