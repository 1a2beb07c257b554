"""The one resumable run loop: a job's steps -> logged rows -> files -> checkpoints.

A job (a search, a meta-learner, an evaluation training; FedNAS's rounds next) says what
its steps and its logged units are (an epoch; a window of meta-iterations), how to score a
unit and which files to write. `run(job)` owns the rest: the run folder's checks, the
settings file (written with each checkpoint, so that a folder without one holds no run) and
the refusal of a folder written with other settings, resuming from the newest checkpoint,
the notice and timing of the first step's compilation, the progress bar, the per-unit means
of the step metrics and their non-finite check, metrics.jsonl, the check that every step
compiled once, checkpoints, and the final result. A unit's files and checkpoint are written
under `jnas.io.WRITING`, which the command line's Ctrl-C waits for.

With several processes every process runs the loop and process 0 alone writes files and
prints; the checkpoint is written by all (Orbax lets one replica write replicated state).
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from collections.abc import Iterator
from typing import Any, Protocol

import jax
import numpy as np
from tqdm.auto import tqdm

from jnas import data as jdata
from jnas.checkpoint import Checkpointer
from jnas.errors import JnasError
from jnas.io import WRITING, write_json, write_text
from jnas.sharding import ShardedStep, assert_traced_once, is_main_process, local_rows, put_batch

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
    step_name: str  # what the step is called in messages: "search step"
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

    # Optional: `stop(rows) -> bool`, asked after each unit's row (which it may annotate) and
    # of a resumed run's rows: True ends the run there (an early stop).


def config_dict(config) -> dict:
    """The settings as JSON values; a nested config's fields count as the run's own (a
    federated run's local search)."""
    flat = {}
    for key, value in json.loads(json.dumps(dataclasses.asdict(config))).items():
        flat.update(value if isinstance(value, dict) else {key: value})
    return flat


def check_resumable(config, path: str, may_differ: tuple[str, ...] = RUN_FIELDS) -> None:
    """Refuse to resume a run written with other settings (those not in `may_differ`): its
    checkpoint would not fit them, or it would compute something else."""
    if not os.path.exists(path):
        return
    new = config_dict(config)
    with open(path) as f:
        saved = json.load(f)
    # A setting added since the run was saved had its default then.
    defaults = {f.name: f.default for f in dataclasses.fields(config)}
    old = {k: saved.get(k, defaults.get(k)) for k in new}
    diff = {k: (old[k], v) for k, v in new.items() if k not in may_differ and old[k] != v}
    if diff:
        changes = ", ".join(f"`{k}`: {a!r} -> {b!r}" for k, (a, b) in sorted(diff.items()))
        raise JnasError(
            f"{os.path.dirname(path)} holds a run with other settings ({changes}). "
            "Rerun with the same settings to resume it, or pass a new `save`."
        )


def make_run_folder(save: str) -> None:
    """Create `save` (if needed) and check that files can be written into it."""
    try:
        os.makedirs(save, exist_ok=True)
        with tempfile.TemporaryFile(dir=save):
            pass
    except OSError as e:
        raise JnasError(
            f"cannot write into the run folder {save!r} ({e.strerror or e}); pass as `save` a "
            "folder you can write to"
        ) from None


def compile_note(step_name: str) -> str:
    """What the first step is about to do, and where its compiled program will be kept."""
    cache = jax.config.jax_compilation_cache_dir
    if cache:
        return (f"compiling the {step_name} (once: up to minutes on a CPU for the papers' "
                f"networks; later runs with these settings load it from the cache at {cache})")
    return f"compiling the {step_name} (the compilation cache is off, so every run compiles it)"


class _CacheHits:
    """Counts JAX's persistent-cache hits while in the `with` block."""

    def __enter__(self):
        self.hits = 0
        jax.monitoring.register_event_listener(self._record)
        return self

    def _record(self, event, **kwargs):
        self.hits += event == "/jax/compilation_cache/cache_hits"

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_listener(self._record)


def read_metrics(path: str, up_to: int, key: str) -> list[dict]:
    """The rows a checkpoint covers (a crash may have left later lines)."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [r for r in rows if r[key] <= up_to]


def evaluate(eval_step, mesh, state, dataset, batch_size: int) -> tuple[float, float]:
    """Mean loss and accuracy over a whole split from `eval_step(state, batch)`'s sums
    (loss, correct, count) over the real rows of padded batches; BatchNorm in inference mode."""
    totals = np.zeros(3)
    mine = local_rows(mesh, batch_size)
    for batch in jdata.eval_batches(dataset, batch_size, mine):
        sums = eval_step(state, put_batch(batch, mesh))
        totals += np.asarray(jax.device_get(sums), dtype=np.float64)
    return totals[0] / totals[2], totals[1] / totals[2]


def summary_line(row: dict, unit: str, keys) -> str:
    """`epoch 3: train_loss 0.1234 ... (12.3 s)`: a unit's metrics `keys` and its seconds."""
    values = " ".join(f"{k} {row[k]:.4f}" for k in keys)
    return f"{unit} {row[unit]}: {values} ({row['seconds']:.1f} s)"


def stack_metrics(metrics: list[dict]) -> dict:
    """Per-step metric dicts -> one dict of stacked arrays (one host transfer)."""
    return jax.tree.map(lambda *xs: np.stack(xs), *metrics)


def run(job: Job, *, progress: bool = True, desc: str = "") -> dict:
    """Run (or resume) `job` into `job.config.save`; returns `job.finish`'s result."""
    save = job.config.save
    main = is_main_process()
    if main:
        make_run_folder(save)
    config_path = os.path.join(save, "config.json")
    checkpointer = Checkpointer(os.path.join(save, "checkpoints"))
    metrics_path = os.path.join(save, "metrics.jsonl")
    # A folder without a checkpoint holds no run (it failed or was stopped before its first
    # checkpoint): it is started afresh, whatever settings file it has.
    start = checkpointer.latest_epoch() or 0
    if start:
        check_resumable(job.config, config_path, job.may_differ)
    state = job.init()
    rows = []
    if start:
        state = checkpointer.restore(start, like=state)
        rows = read_metrics(metrics_path, start, job.unit)
    stop = getattr(job, "stop", lambda rows: False)
    units = [] if rows and stop(rows) else list(job.units(start))
    if main and start:
        what = "resuming" if units else "already finished:"
        print(f"{what} {save} after {job.unit} {start}", flush=True)

    bar = None
    for unit in units:
        t0, window = time.time(), []
        for inputs in job.step_inputs(unit):
            if bar is None:  # the first step compiles: say so, and keep it out of the rate
                state, m = _first_step(job, state, inputs, main)
                bar = tqdm(total=job.total_steps, initial=job.steps_before(start) + 1,
                           desc=desc, disable=not (progress and main))
            else:
                state, m = job.step(state, *inputs)
                bar.update(1)
            window.append(m)  # kept on device: no host round trip until the unit ends
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
        stopping = stop(rows)
        # Files first, then the settings and the checkpoint: a crash in between resumes from
        # the previous checkpoint and drops this unit's metrics line. Ctrl-C waits for all.
        with WRITING:
            if main:
                write_text(metrics_path, "".join(json.dumps(r) + "\n" for r in rows))
                job.write(state, rows)
            if job.checkpoint_due(unit):
                if main:
                    write_json(config_path, config_dict(job.config))
                checkpointer.save(unit, state)
        line = job.summary(row)
        if main and line:
            tqdm.write(line)
        if stopping:
            break
    if bar is not None:
        bar.close()
    return job.finish(state, rows)


def _first_step(job: Job, state, inputs, main: bool):
    """The run's first step, which compiles: announced, timed, and its time printed."""
    if main:
        print(compile_note(job.step_name), flush=True)
    t0 = time.time()
    with _CacheHits() as cache:
        state, m = jax.block_until_ready(job.step(state, *inputs))
    if main:
        how = "loaded from the compilation cache" if cache.hits else "compiled"
        print(f"{job.step_name} {how} and run once in {time.time() - t0:.1f} s", flush=True)
    return state, m
