"""Meta-training as a job of the run loop (`jnas.loop`): episodes -> step -> metrics -> files.

`run_meta(config)` writes into `config.save`:

- `metrics.jsonl`: one line per `log_every` meta-iterations (mean query loss and accuracy
  after adaptation, over the window's tasks; seconds; `steps_per_second`, meta-iterations
  per second), and `curves.png`, the two against the meta-iteration
- `test.json`: the final test accuracy, mean and 95% confidence interval over the fixed
  `test_episodes` episodes of the test classes
- `genotype.json`, `alphas.npz`, `genotype.png`, `alphas.png` (Auto-MAML, T-NAS): the
  architecture derived from the meta-alpha
- `checkpoints/<iteration>/`, `config.json`: rerunning with the same `save` resumes from
  the newest checkpoint; episodes depend only on (seed, iteration), so the result is that of
  an uninterrupted run.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np

from jnas import loop
from jnas.episodes import EpisodeSampler, load_fewshot
from jnas.io import write_json
from jnas.meta import MetaConfig, MetaLearner
from jnas.plotting import plot_curves
from jnas.runner import write_architecture
from jnas.sharding import assert_traced_once, data_mesh, is_main_process, local_rows, put_batch

# Meta-training has no schedule, so a run may be continued to more iterations, and the final
# test may use another number of episodes.
_MAY_DIFFER = (*loop.RUN_FIELDS, "iterations", "test_episodes")

# One test set for every run and seed, so that models are compared on the same episodes.
TEST_SEED = 0


def test_accuracy(learner: MetaLearner, state, sampler: EpisodeSampler, count: int, seed: int):
    """Accuracy on each of the `count` fixed test episodes -> (mean, 95% CI half-width, n).

    The interval is the normal approximation 1.96 * std / sqrt(n), as few-shot papers report.
    """
    batch = learner.config.meta_batch
    mine = local_rows(learner.mesh, batch, "meta_batch")
    accs = []
    for tasks in sampler.fixed(count, batch, seed=seed):
        mask = tasks.pop("mask")
        _, acc = learner.eval_step(
            state, put_batch({k: v[mine] for k, v in tasks.items()}, learner.mesh)
        )
        accs.append(np.asarray(jax.device_get(acc))[mask > 0])
    assert_traced_once(learner.eval_step)
    accs = np.concatenate(accs)
    return float(accs.mean()), float(1.96 * accs.std(ddof=1) / np.sqrt(len(accs))), len(accs)


class MetaJob:
    """Meta-training in windows of `log_every` meta-iterations, then the test."""

    unit = "iteration"
    step_name = "meta-training step"
    loss_key = "loss"
    may_differ = _MAY_DIFFER
    hint = "Lower `meta_lr_w`, `inner_lr_w` or `inner_lr_alpha`."

    def __init__(self, config: MetaConfig):
        self.config = config
        train = load_fewshot(config.dataset, config.data_dir, "train")
        test = load_fewshot(config.dataset, config.data_dir, "test")
        shape = dict(way=config.way, shot=config.shot, query=config.query)
        self.train_sampler = EpisodeSampler(train, **shape)
        self.test_sampler = EpisodeSampler(test, **shape)
        self.mesh = data_mesh(config.devices)
        self.mine = local_rows(self.mesh, config.meta_batch, "meta_batch")
        self.learner = MetaLearner(config, train.image_shape, self.mesh)
        self.steps = (self.learner.step,)
        self.total_steps = config.iterations

    def init(self):
        return self.learner.init(jax.random.key(self.config.seed))

    def units(self, done):
        every, last = self.config.log_every, self.config.iterations
        return sorted({*range(done + every - done % every, last + 1, every), last} - {done})

    def steps_before(self, unit):
        return unit

    def step_inputs(self, unit):
        cfg = self.config
        for it in range(unit - (unit - 1) % cfg.log_every - 1, unit):
            tasks = self.train_sampler.batch(cfg.meta_batch, seed=cfg.seed, index=it)
            yield (put_batch({k: v[self.mine] for k, v in tasks.items()}, self.mesh),)

    def step(self, state, tasks):
        return self.learner.step(state, tasks)

    def row(self, state, unit, means):
        return {"query_loss": means["loss"], "query_acc": means["acc"]}

    def write(self, state, rows):
        cfg = self.config
        plot_curves(
            rows,
            os.path.join(cfg.save, "curves.png"),
            "iteration",
            ("query_loss", "query_acc"),
            title=f"{cfg.algo}, {cfg.dataset}",
        )
        if cfg.searches_architecture:
            learner = self.learner
            arch = learner.space.derive(learner.relaxation.op_weights(
                jax.device_get(state.alpha)))
            title = f"meta-iteration {int(state.step)}"
            write_architecture(cfg.save, learner.space, learner.relaxation, state.alpha, arch,
                               title)

    def checkpoint_due(self, unit):
        return unit % self.config.checkpoint_every == 0 or unit == self.config.iterations

    def summary(self, row):
        return None

    def finish(self, state, rows):
        cfg = self.config
        path = os.path.join(cfg.save, "test.json")
        settings = {k: v for k, v in loop.config_dict(cfg).items() if k not in loop.RUN_FIELDS}
        result = _read_json(path)
        # A rerun of a finished run reports its test instead of running it again.
        if result is None or result.get("settings") != settings:
            mean, ci95, n = test_accuracy(
                self.learner, state, self.test_sampler, cfg.test_episodes, TEST_SEED
            )
            result = {"test_acc": mean, "test_ci95": ci95, "test_episodes": n,
                      "iterations": cfg.iterations, "settings": settings}
            if is_main_process():
                write_json(path, result)
        if is_main_process():
            print(
                f"test accuracy {100 * result['test_acc']:.2f} +- {100 * result['test_ci95']:.2f}"
                f" % (95% CI, {result['test_episodes']} episodes of {cfg.way}-way {cfg.shot}-shot "
                f"{cfg.dataset}, after {cfg.iterations} meta-iterations)",
                flush=True,
            )
            files = "metrics.jsonl, curves.png, test.json, config.json, checkpoints/"
            if cfg.searches_architecture:
                files += ", genotype.json, genotype.png, alphas.npz, alphas.png"
            print(f"files in {cfg.save}: {files}", flush=True)
        return {"rows": rows, **{k: v for k, v in result.items() if k != "settings"}}


def _read_json(path: str):
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def run_meta(config: MetaConfig, *, progress: bool = True) -> dict:
    """Meta-train (or resume), then test; returns {"rows": metrics, "test_acc", ...}."""
    desc = f"{config.algo} {config.dataset} {config.way}-way {config.shot}-shot"
    return loop.run(MetaJob(config), progress=progress, desc=desc)
