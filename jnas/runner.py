"""A search as a job of the run loop (`jnas.loop`): data -> step -> metrics -> files.

`run_search(config)` writes into `config.save`:

- `genotype.json`: the architecture derived from the current alpha (the space's JSON: the
  official DARTS layout, or NAS-Bench-201's string)
- `alphas.npz`: raw alpha, one array per cell type, plus the relaxation's own entries (PC-DARTS's
  betas, ASAP's unpruned ops)
- `metrics.jsonl`: one JSON object per epoch
- `genotype.png`, `alphas.png`: the derived cells and the op weights per edge
- with `track_hessian`, `hessian.png`: the dominant eigenvalue of the Hessian in alpha per
  epoch; with `early_stop` (DARTS-ES) the run ends when it fires, and `genotype.json` is then
  the architecture of the epoch it keeps (the row's `early_stop`)
- a search that trains no alpha (RSPS: `jnas.search.trains_alpha`) has no alphas.npz,
  alphas.png or whole-split evaluation: after every epoch it scores `candidates` drawn
  architectures with the shared weights (`jnas.selection`); the best is the epoch's
  `genotype` (rows: `select_acc`, `select_loss`, and `candidates_acc`, the candidates' mean
  accuracy), and `selection.json` lists the last epoch's candidates with their scores
- `checkpoints/<epoch>/`: the full search state after each epoch (the newest two are kept)
- `config.json`: the settings, written with each checkpoint; rerunning with the same `save`
  resumes from the newest checkpoint and gives the same result as an uninterrupted run.

The step runs data-parallel over `config.devices` devices of every process (jnas.sharding);
with several processes each loads only its rows of every batch and process 0 alone writes
files and prints. `save` must then be a folder that every process sees.
"""

from __future__ import annotations

import os

import jax
import numpy as np

from jnas import data as jdata
from jnas import loop
from jnas.benchmark import PREFIX, Benchmark
from jnas.io import atomic_write, write_json
from jnas.plotting import plot_alpha, plot_curves
from jnas.robust import EIGENVALUE, darts_es
from jnas.search import Search, SearchConfig, trains_alpha
from jnas.selection import check_batch_size, uniform_selection
from jnas.sharding import data_mesh, is_main_process, local_rows, put_batch

RESULT_FILES = ("genotype.json, genotype.png, alphas.npz, alphas.png, metrics.jsonl, "
                "config.json, checkpoints/ (the newest two)")
# A search that trains no alpha (RSPS) selects its architecture instead.
SELECTION_FILES = ("genotype.json, genotype.png, selection.json, metrics.jsonl, config.json, "
                   "checkpoints/ (the newest two)")


def write_architecture(save: str, space, relaxation, alpha, arch, title: str) -> None:
    """genotype.json and genotype.png of `arch`; alphas.npz and alphas.png of the `alpha` it
    was derived from, unless `alpha` is None (a selected architecture)."""
    write_json(os.path.join(save, "genotype.json"), space.to_dict(arch))
    space.draw(arch, os.path.join(save, "genotype.png"), title=title)
    if alpha is None:
        return
    alpha = {k: np.asarray(v) for k, v in jax.device_get(alpha).items()}
    with atomic_write(os.path.join(save, "alphas.npz"), "wb") as f:
        np.savez(f, **alpha)
    plot_alpha(
        relaxation.op_weights(alpha),
        os.path.join(save, "alphas.png"),
        space.primitives,
        space.edge_labels(),
        title=f"op weights, {title}",
    )


class Derived:
    """Where a search that trains alpha gets its architecture: derived from alpha after each
    epoch and evaluated on the architecture's half."""

    files = RESULT_FILES
    scores = ("valid_loss", "valid_acc")

    def __init__(self, job):
        self.job = job
        self.step = job.search.eval_step

    def choose(self, state, epoch):
        """(the architecture, its row entries)."""
        job, s = self.job, self.job.search
        valid_loss, valid_acc = loop.evaluate(s.eval_step, s.mesh, state, job.alpha_split,
                                              job.config.batch_size)
        return s.derive(jax.device_get(s.relaxed(state))), {"valid_loss": valid_loss,
                                                             "valid_acc": valid_acc}

    def write(self, state, rows, arch, title):
        s = self.job.search
        write_architecture(self.job.config.save, s.space, s.relaxation, s.relaxed(state), arch,
                           title)


class Selected:
    """Where a search that trains no alpha (RSPS) gets its architecture: after each epoch the
    best of `candidates` uniformly drawn ones scored with the shared weights
    (`jnas.selection`)."""

    files = SELECTION_FILES
    scores = ("select_acc", "candidates_acc")

    def __init__(self, job):
        cfg = job.config
        self.job = job
        self.selection = uniform_selection(job.search)
        check_batch_size(job.alpha_split, cfg.candidate_batch_size, "candidate_batch_size")
        self.rows = local_rows(job.mesh, cfg.candidate_batch_size, "candidate_batch_size")
        self.step = self.selection.step
        self.table = []

    def choose(self, state, epoch):
        """(the best candidate, its scores and the candidates' mean accuracy)."""
        job, cfg = self.job, self.job.config
        key = jax.random.fold_in(jax.random.fold_in(job.init_key, epoch), 1)
        scores = self.selection(state.params, state.batch_stats, None, key, job.alpha_split,
                                candidates=cfg.candidates, seed=cfg.seed, draw=(epoch,),
                                rows=self.rows)
        best = scores.best()
        self.table = scores.table(job.search.space)
        return scores.architecture(job.search.space, best), {
            "select_loss": float(scores.losses[best]),
            "select_acc": float(scores.accuracies[best]),
            "candidates_acc": float(np.mean(scores.accuracies)),
        }

    def write(self, state, rows, arch, title):
        job = self.job
        write_json(os.path.join(job.config.save, "selection.json"),
                   {"epoch": rows[-1]["epoch"], "candidates": self.table})
        write_architecture(job.config.save, job.search.space, job.search.relaxation, None, arch,
                           f"best of {job.config.candidates} drawn, {title}")


class SearchJob:
    """One search: epochs of (train batch, validation batch) steps, evaluated on the
    architecture's half after each epoch."""

    unit = "epoch"
    step_name = "search step"
    loss_key = "train_loss"
    may_differ = loop.RUN_FIELDS
    hint = "Lower `learning_rate` or `arch_learning_rate`, or check the data for NaNs."

    def __init__(self, config: SearchConfig):
        self.config = config
        dataset = jdata.load_dataset(config.dataset, config.data_dir, split="train")
        self.dataset = dataset
        self.w_split, self.alpha_split = jdata.search_split(dataset, config.train_portion)
        self.steps_per_epoch = min(
            jdata.num_train_batches(self.w_split, config.batch_size),
            jdata.num_train_batches(self.alpha_split, config.batch_size),
        )
        self.mesh = data_mesh(config.devices)
        self.mine = local_rows(self.mesh, config.batch_size)  # checks the split over devices
        self.search = Search(config, dataset.num_classes, self.steps_per_epoch, self.mesh)
        self.source = (Derived if trains_alpha(self.search.algorithm) else Selected)(self)
        self.steps = (self.search.step, self.source.step)
        if config.track_hessian:
            self.steps += (self.search.hessian_step,)
        self.total_steps = config.epochs * self.steps_per_epoch
        self.init_key, self.step_key = jax.random.split(jax.random.key(config.seed))
        self.benchmark = Benchmark.load(config.benchmark) if config.benchmark else None
        if self.benchmark is not None:  # an unsupported space fails now, not after an epoch
            # A zero alpha with the relaxation's entries (PC-DARTS's betas beside the cells').
            s = self.search
            shapes = jax.eval_shape(
                lambda: s.relaxation.init_alpha(jax.random.key(0), s.space.alpha_shapes()))
            zeros = {k: np.zeros(v.shape) for k, v in shapes.items()}
            s.space.benchmark_key(s.derive({**zeros, **s.relaxation.init_state(zeros)}))

    def init(self):
        return self.search.init(self.init_key, jdata.preprocess(self.dataset, self.dataset.x[:2]))

    def units(self, done):
        return range(done + 1, self.config.epochs + 1)

    def steps_before(self, unit):
        return unit * self.steps_per_epoch

    def step_inputs(self, epoch):
        cfg = self.config
        # Independent orders for the two halves: epochs 2e and 2e+1 of the data stream. The
        # halves may differ by a batch; the epoch ends with the shorter one.
        halves = [
            jdata.train_batches(split, cfg.batch_size, seed=cfg.seed, epoch=2 * epoch + h,
                                rows=self.mine)
            for h, split in enumerate((self.w_split, self.alpha_split))
        ]
        for train_batch, val_batch in zip(*halves, strict=False):
            yield put_batch(train_batch, self.mesh), put_batch(val_batch, self.mesh)

    def step(self, state, train_batch, val_batch):
        return self.search.step(
            state, train_batch, val_batch, jax.random.fold_in(self.step_key, state.step)
        )

    def row(self, state, epoch, means):
        space = self.search.space
        self.arch, scored = self.source.choose(state, epoch)
        looked_up = {}
        if self.benchmark is not None:
            looked_up = self.benchmark.lookup(space.benchmark_key(self.arch))
        if self.config.track_hessian:
            looked_up[EIGENVALUE] = self.hessian(state, epoch)
        return {**means, **scored, "genotype": space.to_dict(self.arch), **looked_up}

    def hessian(self, state, epoch) -> float:
        """The eigenvalue on the epoch's first batch of the architecture's half (the official
        code takes the epoch's last one, train_search.py L393)."""
        cfg = self.config
        batch = next(jdata.train_batches(self.alpha_split, cfg.batch_size, seed=cfg.seed,
                                         epoch=2 * epoch + 1, rows=self.mine))
        key = jax.random.fold_in(self.init_key, epoch)  # apart from the steps' keys
        return float(self.search.hessian_step(state, put_batch(batch, self.mesh), key))

    def stop(self, rows) -> bool:
        """DARTS-ES: when it fires, the row records the epoch it keeps (`early_stop`), whose
        architecture the files then show."""
        cfg, last = self.config, rows[-1]
        if "early_stop" not in last and cfg.early_stop:
            kept = darts_es([r[EIGENVALUE] for r in rows], cfg.es_window, cfg.es_lag,
                            cfg.es_ratio, cfg.es_start_epoch)
            if kept is not None:
                last["early_stop"] = kept
        if "early_stop" not in last:
            return False
        self.arch = self.search.space.from_dict(rows[last["early_stop"] - 1]["genotype"])
        return True

    def write(self, state, rows):
        title = f"epoch {rows[-1].get('early_stop', rows[-1]['epoch'])}"
        self.source.write(state, rows, self.arch, title)
        if self.config.track_hessian:
            plot_curves(rows, os.path.join(self.config.save, "hessian.png"), "epoch",
                        [EIGENVALUE], title="dominant eigenvalue of the Hessian in alpha")

    def checkpoint_due(self, epoch):
        return True

    def summary(self, row):
        return loop.summary_line(row, "epoch", ("train_loss", "train_acc", *self.source.scores))

    def finish(self, state, rows):
        if rows and is_main_process():
            space, last = self.search.space, rows[-1]
            kept = rows[last["early_stop"] - 1] if "early_stop" in last else last
            print(f"result: {self.summary(last)}", flush=True)
            if kept is not last:
                print(f"DARTS-ES stopped after epoch {last['epoch']}: the architecture of "
                      f"epoch {kept['epoch']} is kept")
            if self.benchmark is not None:
                found = {k: v for k, v in kept.items() if k.startswith(PREFIX)}
                print(f"benchmark ({self.benchmark.source}) of the derived cell: "
                      + ", ".join(f"{k[len(PREFIX):]} {v:.2f}" for k, v in found.items()))
            arch = space.from_dict(kept["genotype"])
            print(f"derived architecture: {space.to_string(arch)}")
            print(f"files in {self.config.save}: {self.source.files}", flush=True)
        return {"rows": rows, "state": state}


def run_search(config: SearchConfig, *, progress: bool = True) -> list[dict]:
    """Run (or resume) a search; returns the metrics of every epoch."""
    desc = f"{config.algorithm} on {config.space}, {config.dataset}"
    return loop.run(SearchJob(config), progress=progress, desc=desc)["rows"]
