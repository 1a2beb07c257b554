"""Multi-fidelity architecture search on Optuna: random search, HyperBand and a BOHB-like
search over NAS-Bench-201 cells, each candidate trained by the evaluation trainer.

A study is a sequence of trials. A trial draws a cell (6 categorical parameters, one per edge,
named as the benchmark's `edge2index` keys "1<-0" ... "3<-2", values `NB201_OPS`), trains it
with `jnas.feature_history.train_candidate` on a seeded subset of the training split, and after
every epoch e reports the estimate (the feature-history estimate of Cao 2021, or the last
epoch's validation accuracy) to Optuna at step e. The engine (`ENGINES`, chosen by `algo`):

- random: `RandomSampler`, every trial trained to `max_budget` (`NopPruner`): random search.
- hyperband: `RandomSampler` + `HyperbandPruner(min_resource=min_budget,
  max_resource=max_budget, reduction_factor=eta)`: floor(log_eta(max/min)) + 1 brackets of
  asynchronous successive halving; in bracket s a trial at a rung budget b = min * eta^(s+k)
  continues only if its estimate is in the top 1/eta of the estimates at b (optuna
  pruners/_hyperband.py:207 and _successive_halving.py, commit 1d8ce7b).
- bohb: the same pruner with a multivariate TPE sampler (`TPESampler(multivariate=True)`),
  fitted on the trials of the trial's bracket: Optuna's counterpart of BOHB (Falkner et al.
  2018), with BOHB's `min_points_in_model` = d + 1 = 7 random trials before the model
  (HpBandSter hpbandster/optimizers/config_generators/bohb.py:55-56, commit 0ec0ce2).
  HpBandSter itself is unmaintained.

The budget unit is the epoch. A trial's schedule has the horizon `max_budget` whatever epoch it
is stopped at (Cao 2021: SGD lr 0.1 decayed linearly to 0 over the maximum budget), so an
estimate at budget b is the one a longer run would have had at epoch b.

The study lives in an Optuna storage (`storage`: SQLite in `save` by default, or any database
URL, which processes on several machines can share). A worker asks for a trial only while the
study has fewer than `n_trials` finished (complete or pruned) plus running trials, and a trial
that finds `n_trials` such trials numbered before it ends at once as FAIL with the user
attribute `surplus` (two workers asked at the same moment): the study ends at exactly
`n_trials` finished trials. Every worker keeps a heartbeat in the storage; a trial whose
heartbeat stops (its process was killed) is failed after twice `heartbeat_interval` and
requeued with its parameters (`RetryHeartbeatStaleTrialCallback`). Rerunning a command
therefore continues its study.

The sampler is made afresh for every trial with the seed (`seed`, trial number), so that
workers draw different cells and a study's draws do not depend on how many workers ran it.

`run_hpo(config)` writes into `config.save` after every trial: `trials.csv`, `best.json`,
`progress.png` (the best estimate so far, and with `benchmark` its benchmark accuracy, against
the epochs spent by all trials), and `config.json`.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import math
import os
import time
import warnings
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from jnas import data as jdata
from jnas.benchmark import PREFIX, Benchmark
from jnas.config import check_common, option
from jnas.errors import JnasError
from jnas.evaluation import TrainConfig
from jnas.feature_history import EstimatorConfig, train_candidate
from jnas.io import write_json, write_text
from jnas.loop import config_dict, make_run_folder
from jnas.plotting import plot_curves
from jnas.spaces import SPACES, nb201

ESTIMATORS = ("feature_history", "last")
# One categorical parameter per edge, named as the benchmark's edge2index keys, in alpha's
# row order (`nb201.EDGES`).
EDGE_PARAMS = tuple(f"{node}<-{source}" for source, node in nb201.EDGES)
# Fields that say where things are or how long to go on, not what a trial computes: a study
# may be continued with other values.
RUN_FIELDS = ("data_dir", "save", "devices", "storage", "study_name", "n_trials",
              "heartbeat_interval", "benchmark", "metric")
FINISHED = ("COMPLETE", "PRUNED")
_SQLITE_TIMEOUT_S = 60  # a worker waits this long for another's write lock
_OPEN_ATTEMPTS = 5
_POLL_S = 1.0  # how often a waiting worker looks at the study
# A cell whose trial is killed this many times more (e.g. out of memory) is given up; Optuna's
# documented example value (RetryHeartbeatStaleTrialCallback's docstring).
_MAX_RETRY = 3


@dataclasses.dataclass(frozen=True)
class Engine:
    """An `algo`: the sampler made for each trial from a seed, and whether trials are pruned
    by HyperBand (else every trial trains to `max_budget`)."""

    sampler: Callable[[Any, int], Any]  # (optuna, seed) -> a sampler
    hyperband: bool
    help: str


def _random_sampler(optuna, seed):
    return optuna.samplers.RandomSampler(seed=seed)


def _tpe_sampler(optuna, seed):
    # constant_liar: running trials count as bad ones, so that parallel workers spread out.
    return optuna.samplers.TPESampler(multivariate=True, constant_liar=True,
                                      n_startup_trials=len(EDGE_PARAMS) + 1, seed=seed)


ENGINES = {
    "random": Engine(_random_sampler, False, "random search, every trial to max_budget"),
    "hyperband": Engine(_random_sampler, True, "random cells, HyperBand's early stopping"),
    "bohb": Engine(_tpe_sampler, True, "multivariate TPE per bracket + HyperBand (BOHB-like)"),
}


@dataclasses.dataclass(frozen=True)
class HPOConfig:
    """One multi-fidelity study. Defaults are Cao (CMU-RI-TR-21-09, 2021)'s NAS-Bench-201
    setting (budgets 1-128 epochs, eta 2, a CIFAR-10 subset of 8,000 training and 2,000
    validation images, SGD lr 0.1 linear over the maximum budget, momentum 0.9, weight decay
    5e-4); what it leaves open is NAS-Bench-201's protocol (batch 256, Nesterov, C=16, N=5)."""

    space: str = option("nas-bench-201", "the search space; the multi-fidelity search covers "
                        "NAS-Bench-201's cells", choices=tuple(SPACES))
    algo: str = option("hyperband", "the engine: " + "; ".join(
        f"{name}: {e.help}" for name, e in ENGINES.items()), choices=tuple(ENGINES))
    estimator: str = option("feature_history", "what a trial reports at each budget: the "
                            "feature-history estimate (Cao 2021) or the last epoch's "
                            "validation accuracy", choices=ESTIMATORS)
    min_budget: int = option(1, "the smallest budget in epochs (HyperBand's first rung)")
    max_budget: int = option(128, "the largest budget in epochs, and the horizon of every "
                             "trial's learning-rate schedule")
    eta: int = option(2, "HyperBand's reduction factor: 1/eta of a rung goes on")
    n_trials: int = option(100, "finished (complete or pruned) trials at which the study ends; "
                           "rerun with more to extend it")
    history: int = option(10, "K: the last K epochs' classifiers that the feature-history "
                          "estimator averages")
    dataset: str = option("cifar10", "the dataset whose training split is searched on",
                          choices=jdata.DATASETS)
    data_dir: str | None = option(None, "TFDS data_dir")
    train_size: int = option(8000, "training images, drawn from the training split")
    val_size: int = option(2000, "validation images, drawn from the rest of the training split")
    batch_size: int = option(256, "images per step")
    learning_rate: float = option(0.1, "SGD learning rate at the first epoch, decayed linearly "
                                  "to 0 at `max_budget`")
    momentum: float = option(0.9, "SGD momentum")
    nesterov: bool = option(True, "Nesterov momentum")
    weight_decay: float = option(5e-4, "L2 weight decay")
    init_channels: int = option(16, "channels of the first stage, C")
    cells_per_stage: int = option(5, "cells per stage, N")
    seed: int = option(0, "random seed: the data subset, the cells drawn, each trial's training")
    save: str = option("runs/hpo", "output folder (and the default storage's)")
    storage: str | None = option(None, "an Optuna storage URL that several processes or "
                                 "machines share, e.g. postgresql://user:pass@host/db "
                                 "(default: sqlite:///<save>/study.db)")
    study_name: str | None = option(None, "the study's name in the storage (default: "
                                    "<space>-<algo>-<estimator>)")
    heartbeat_interval: int = option(60, "seconds between a running trial's heartbeats; a "
                                     "trial silent for twice this is failed and requeued")
    benchmark: str | None = option(None, "a benchmark table (CSV with an arch column) or "
                                   "NATS-Bench file: report the chosen cell's accuracy and "
                                   "regret")
    metric: str = option("cifar10_test", "the benchmark column of the accuracy and regret")
    devices: int | None = option(None, "devices per process to split each batch over "
                                 "(default: all local devices)")

    def __post_init__(self):
        check_common(self)
        if self.space != nb201.NB201Space.name:
            raise JnasError(
                f"`space` {self.space} is not searched by the multi-fidelity search: its "
                "candidates' evaluation training (20 cells, 600 epochs for DARTS) is far beyond "
                f"a multi-fidelity budget; use `space` {nb201.NB201Space.name}"
            )
        for name, choices in (("algo", ENGINES), ("estimator", ESTIMATORS)):
            if getattr(self, name) not in choices:
                raise JnasError(f"`{name}` must be one of {', '.join(choices)}, got "
                                f"{getattr(self, name)!r}")
        for name in ("min_budget", "n_trials", "history", "train_size", "val_size",
                     "heartbeat_interval"):
            if getattr(self, name) < 1:
                raise JnasError(f"`{name}` must be at least 1, got {getattr(self, name)}")
        if self.max_budget < self.min_budget:
            raise JnasError(f"`max_budget` {self.max_budget} is below `min_budget` "
                            f"{self.min_budget}: give `min_budget` <= `max_budget`")
        if self.eta < 2:
            raise JnasError(f"`eta` must be at least 2 (HyperBand keeps 1/eta of each rung), "
                            f"got {self.eta}")
        self.train_config(nb201.BEST_CIFAR10)  # the training settings, checked once

    def train_config(self, arch: str) -> TrainConfig:
        """The evaluation training of the cell `arch` (a benchmark string): NAS-Bench-201's
        protocol with this study's settings, the schedule linear over `max_budget`."""
        fields = ("dataset", "data_dir", "batch_size", "learning_rate", "momentum", "nesterov",
                  "weight_decay", "init_channels", "cells_per_stage", "seed", "save", "devices")
        return TrainConfig.published(
            self.space, arch=arch, epochs=self.max_budget, lr_schedule="linear",
            learning_rate_min=0.0, **{name: getattr(self, name) for name in fields},
        )

    def name(self) -> str:
        return self.study_name or f"{self.space}-{self.algo}-{self.estimator}"

    def storage_url(self) -> str:
        return self.storage or "sqlite:///" + os.path.abspath(os.path.join(self.save,
                                                                          "study.db"))

    def budgets(self) -> list[int]:
        """HyperBand's rung budgets min * eta^k up to max, and max: trials.csv's columns."""
        levels = math.floor(math.log(self.max_budget / self.min_budget, self.eta) + 1e-9)
        return sorted({*(self.min_budget * self.eta**k for k in range(levels + 1)),
                       self.max_budget})


def _optuna():
    try:
        import optuna
    except ImportError:
        raise JnasError('the multi-fidelity search runs on Optuna: pip install "jnas[hpo]"'
                        ) from None
    return optuna


@contextlib.contextmanager
def _quiet(optuna):
    """No warning per trial for what Optuna marks experimental (the heartbeat, the retry,
    multivariate TPE), and no log line per trial (`run_hpo` prints its own; a failed trial's
    error is raised)."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        optuna.logging.set_verbosity(verbosity)


def shown_url(url: str) -> str:
    """A storage URL as printed: its password masked."""
    import sqlalchemy

    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:  # not a URL: nothing to hide
        return url


def search_data(config: HPOConfig) -> tuple[jdata.ImageDataset, jdata.ImageDataset]:
    """(training, validation) subsets of the training split of `config.dataset`: a permutation
    seeded by `seed`, its first `train_size` images and the next `val_size`. The test split is
    never read."""
    full = jdata.load_dataset(config.dataset, config.data_dir, split="train")
    if config.train_size + config.val_size > len(full):
        raise JnasError(
            f"`train_size` {config.train_size} + `val_size` {config.val_size} exceed the "
            f"{len(full)} images of {config.dataset}'s training split; lower them"
        )
    order = np.random.default_rng(config.seed).permutation(len(full))
    train = full.subset(np.sort(order[:config.train_size]))
    jdata.num_train_batches(train, config.batch_size)  # at least one step per epoch
    return train, full.subset(np.sort(order[config.train_size:][:config.val_size]))


def trial_seed(seed: int, number: int) -> int:
    """The seed of trial `number`'s sampler: a hash of (seed, number) in [0, 2**32)."""
    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])


def _trial_seeded(optuna, make, seed: int):
    """A sampler that delegates to `make(optuna, trial_seed(seed, n))`, made afresh when trial
    n starts (Optuna calls `before_trial` before sampling)."""

    class TrialSeeded(optuna.samplers.BaseSampler):
        def __init__(self):
            self.inner = make(optuna, seed)

        def before_trial(self, study, trial):
            self.inner = make(optuna, trial_seed(seed, trial.number))
            self.inner.before_trial(study, trial)

        def infer_relative_search_space(self, study, trial):
            return self.inner.infer_relative_search_space(study, trial)

        def sample_relative(self, study, trial, search_space):
            return self.inner.sample_relative(study, trial, search_space)

        def sample_independent(self, study, trial, param_name, param_distribution):
            return self.inner.sample_independent(study, trial, param_name, param_distribution)

        def after_trial(self, study, trial, state, values):
            self.inner.after_trial(study, trial, state, values)

    return TrialSeeded()


def open_study(config: HPOConfig):
    """Create the study in `config`'s storage, or load it and check that it was made with the
    same settings (those outside `RUN_FIELDS`); the settings are kept as the study's user
    attribute "config". Call it inside `_quiet`."""
    optuna = _optuna()
    import sqlalchemy  # Optuna's dependency

    engine = ENGINES[config.algo]
    url = config.storage_url()
    pruner = (optuna.pruners.HyperbandPruner(min_resource=config.min_budget,
                                             max_resource=config.max_budget,
                                             reduction_factor=config.eta)
              if engine.hyperband else optuna.pruners.NopPruner())
    for attempt in range(_OPEN_ATTEMPTS):
        try:
            storage = optuna.storages.RDBStorage(
                url,
                engine_kwargs=({"connect_args": {"timeout": _SQLITE_TIMEOUT_S}}
                               if url.startswith("sqlite") else None),
                heartbeat_interval=config.heartbeat_interval,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                    max_retry=_MAX_RETRY),
            )
            study = optuna.create_study(
                storage=storage, study_name=config.name(), direction="maximize",
                load_if_exists=True, pruner=pruner,
                sampler=_trial_seeded(optuna, engine.sampler, config.seed),
            )
            break
        except Exception as e:  # SQLAlchemy's errors: a bad URL, a missing driver, a race
            # Processes that create one database at once race in Optuna's schema set-up
            # (optuna/optuna#4621); a retry finds the schema made.
            if attempt + 1 < _OPEN_ATTEMPTS and isinstance(e, sqlalchemy.exc.DBAPIError):
                time.sleep(1.0)
                continue
            raise JnasError(f"cannot open the Optuna storage `storage` {shown_url(url)!r}: "
                            f"{type(e).__name__}: {e}") from None
    settings = {k: v for k, v in config_dict(config).items() if k not in RUN_FIELDS}
    old = study.user_attrs.get("config")
    if old is None:
        study.set_user_attr("config", settings)
    elif old != settings:
        changes = ", ".join(f"`{k}`: {old.get(k)!r} -> {v!r}" for k, v in sorted(settings.items())
                            if old.get(k) != v)
        raise JnasError(
            f"the study {config.name()!r} in {shown_url(url)} was made with other settings "
            f"({changes}). "
            "Rerun with its settings to continue it, or pass another `study_name` or `save`."
        )
    return study


class _Surplus(Exception):
    """A trial asked for when the study already had `n_trials` finished or running trials."""


def _objective(config: HPOConfig, train_set, val_set, bar):
    """Optuna's objective: draw a cell, train it, report the estimate after every epoch and
    stop when the pruner says so (never at `max_budget`, which completes the trial)."""
    optuna = _optuna()
    estimator = EstimatorConfig(history=config.history)
    key = "feature_history" if config.estimator == "feature_history" else "val_acc"

    def objective(trial):
        earlier = [t for t in trial.study.get_trials(deepcopy=False)
                   if t.number < trial.number and t.state.name in (*FINISHED, "RUNNING")]
        if len(earlier) >= config.n_trials:
            trial.set_user_attr("surplus", True)
            raise _Surplus(trial.number)
        ops = tuple(trial.suggest_categorical(name, nb201.NB201_OPS) for name in EDGE_PARAMS)
        arch = nb201.to_string(ops)
        rows = train_candidate(
            config.train_config(arch), train_set, val_set,
            estimator=estimator if config.estimator == "feature_history" else None,
            seed_key=jax.random.fold_in(jax.random.key(config.seed), trial.number),
        )
        for row in rows:
            epoch, value = row["epoch"], float(row[key])
            trial.report(value, epoch)
            bar.set_postfix(trial=trial.number, epoch=epoch, estimate=f"{value:.4f}")
            if epoch < config.max_budget and trial.should_prune():
                raise optuna.TrialPruned()
        return value  # the estimate at max_budget, the last epoch of the schedule

    return objective


def epochs_trained(trial) -> int:
    """The epochs a trial trained: its last reported step (0 before the first report)."""
    return max(trial.intermediate_values, default=0)


def trials_table(config: HPOConfig, trials) -> str:
    """trials.csv: per trial its number, state, cell, epochs trained, value (the estimate at
    its last epoch), the estimate at each of `config.budgets()`, the trial it retries and
    its start and end times."""
    budgets = config.budgets()
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["number", "state", "arch", "epochs", "value",
                     *(f"value@{b}" for b in budgets), "retry_of", "surplus", "start", "end"])
    for t in trials:
        values = t.intermediate_values
        writer.writerow([
            t.number, t.state.name, _arch(t), epochs_trained(t),
            "" if t.value is None else t.value, *(values.get(b, "") for b in budgets),
            _retry_of(t), int(t.user_attrs.get("surplus", False)),
            t.datetime_start or "", t.datetime_complete or "",
        ])
    return out.getvalue()


def _retry_of(trial):
    """The number of the killed trial that `trial` reruns, or ""."""
    number = _optuna().storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(trial)
    return "" if number is None else number


def _arch(trial) -> str:
    """The trial's cell as the benchmark's string ("" for a surplus trial, which drew none)."""
    return nb201.to_string([trial.params[n] for n in EDGE_PARAMS]) if trial.params else ""


def best_trial(trials):
    """The complete trial (trained to `max_budget`) of the highest value, the first on a tie;
    None before any."""
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    return max(complete, key=lambda t: (t.value, -t.number), default=None)


def progress_rows(trials, benchmark: Benchmark | None = None, metric: str = "") -> list[dict]:
    """In the order the trials started: the epochs spent by them all so far, the best
    complete trial's value so far (and its benchmark `metric`); from the first complete one."""
    rows, spent, best = [], 0, None
    for t in sorted((t for t in trials if t.datetime_start), key=lambda t: t.datetime_start):
        spent += epochs_trained(t)
        if t.state.name == "COMPLETE" and (best is None or t.value > best.value):
            best = t
        if best is not None:
            row = {"epochs spent": spent, "best estimate": best.value}
            if benchmark is not None:
                row[f"its {metric}"] = benchmark.lookup(_arch(best))[PREFIX + metric]
            rows.append(row)
    return rows


def write_outputs(config: HPOConfig, study, benchmark: Benchmark | None = None) -> dict:
    """trials.csv, best.json and progress.png from the storage alone; returns best.json's
    content ({} before any complete trial)."""
    trials = study.get_trials(deepcopy=False)
    write_text(os.path.join(config.save, "trials.csv"), trials_table(config, trials))
    best = best_trial(trials)
    result = {} if best is None else {
        "arch": _arch(best), "trial": best.number, "value": best.value,
        "estimator": config.estimator, "epochs": config.max_budget,
        "finished_trials": sum(t.state.name in FINISHED for t in trials),
        "epochs_spent": sum(epochs_trained(t) for t in trials),
    }
    if result and benchmark is not None:
        chosen = benchmark.lookup(result["arch"])[PREFIX + config.metric]
        best_arch, best_value = benchmark.best(config.metric)
        result.update({"benchmark": benchmark.source, "metric": config.metric,
                       PREFIX + config.metric: chosen, "benchmark_best": best_value,
                       "benchmark_best_arch": best_arch, "regret": best_value - chosen})
    write_json(os.path.join(config.save, "best.json"), result)
    rows = progress_rows(trials, benchmark, config.metric)
    if rows:
        panels = list(rows[0])[1:]
        plot_curves(rows, os.path.join(config.save, "progress.png"), "epochs spent", panels,
                    title=f"{config.algo}, {config.estimator} estimator, {config.dataset}")
    return result


def _counts(study) -> tuple[int, int]:
    """(finished, running) trials of the study."""
    states = [t.state.name for t in study.get_trials(deepcopy=False)]
    return sum(s in FINISHED for s in states), states.count("RUNNING")


def _summary(config: HPOConfig, study, trial, seconds: float) -> str:
    """The line printed after this worker's `trial`."""
    trials = study.get_trials(deepcopy=False)
    value = "" if trial.value is None else f", {config.estimator} {trial.value:.4f}"
    best = best_trial(trials)
    best_text = "" if best is None else f"; best {best.value:.4f} (trial {best.number})"
    return (f"trial {trial.number} {_arch(trial)}: {trial.state.name.lower()} after "
            f"{epochs_trained(trial)} epochs{value} ({seconds:.1f} s){best_text}; "
            f"{sum(epochs_trained(t) for t in trials)} epochs spent")


def _work(config: HPOConfig, study, objective, bar) -> None:
    """Run trials while the study has fewer than `n_trials` finished and running ones; wait
    while other workers' running trials would end it; return at `n_trials` finished."""
    optuna = _optuna()
    waiting, ran = False, []
    record = [lambda _study, trial: ran.append(trial)]
    while True:
        optuna.storages.fail_stale_trials(study)
        finished, running = _counts(study)
        bar.n = min(finished, config.n_trials)
        bar.refresh()
        if finished >= config.n_trials:
            return
        if finished + running >= config.n_trials:
            if not waiting:
                tqdm.write(f"waiting for {running} running trial(s) of other workers (a "
                           f"killed one is rerun {2 * config.heartbeat_interval} s after its "
                           "last heartbeat)")
            waiting = True
            time.sleep(_POLL_S)
            continue
        waiting, start = False, time.time()
        try:
            study.optimize(objective, n_trials=1, catch=(), callbacks=record)
        except _Surplus as e:
            tqdm.write(f"trial {e.args[0]}: not run, the study had its {config.n_trials} "
                       "trials when it started (another worker asked at the same time)")
            continue
        except optuna.exceptions.UpdateFinishedTrialError as e:
            tqdm.write(f"{e} Another worker found no heartbeat of it for "
                       f"{2 * config.heartbeat_interval} s and requeued it.")
            continue
        tqdm.write(_summary(config, study, ran[-1], time.time() - start))
        write_outputs(config, study)


def run_hpo(config: HPOConfig, *, progress: bool = True) -> dict:
    """Run (or continue) the study of `config` until it has `n_trials` finished trials, with
    the trials of any other worker on the same storage; returns best.json's content."""
    optuna = _optuna()
    make_run_folder(config.save)
    benchmark = Benchmark.load(config.benchmark) if config.benchmark else None
    if benchmark is not None and config.metric not in benchmark.columns:
        raise JnasError(f"`metric` {config.metric!r} is not a column of the benchmark "
                        f"{benchmark.source!r}; its columns: {', '.join(benchmark.columns)}")
    train_set, val_set = search_data(config)
    with _quiet(optuna):
        study = open_study(config)
        write_json(os.path.join(config.save, "config.json"), config_dict(config))
        finished, _ = _counts(study)
        print(f"study {config.name()!r} in {shown_url(config.storage_url())}: {finished} of "
              f"{config.n_trials} trials finished", flush=True)
        with tqdm(total=config.n_trials, initial=min(finished, config.n_trials), unit="trial",
                  desc=f"{config.algo} ({config.estimator})", disable=not progress) as bar:
            _work(config, study, _objective(config, train_set, val_set, bar), bar)
        result = write_outputs(config, study, benchmark)
    print(f"files in {config.save}: trials.csv, best.json, progress.png, config.json", flush=True)
    if not result:
        return result
    print(f"best cell {result['arch']} (trial {result['trial']}): {config.estimator} "
          f"{result['value']:.4f} after {config.max_budget} epochs; "
          f"{result['epochs_spent']} epochs spent", flush=True)
    if benchmark is not None:
        print(f"benchmark {config.metric} of the chosen cell: {result[PREFIX + config.metric]:.2f}"
              f", the table's best {result['benchmark_best']:.2f}, regret "
              f"{result['regret']:.2f}", flush=True)
    return result
