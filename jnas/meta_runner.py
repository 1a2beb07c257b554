"""The meta-training loop of experiments/tnas.py: episodes -> step -> metrics -> files.

`run_meta(config)` writes into `config.save`:

- `metrics.jsonl`: one line per `log_every` meta-iterations (mean query loss and accuracy
  after adaptation, over the window's tasks; seconds; meta-iterations per second), and
  `curves.png`, the two against the meta-iteration
- `test.json`: the final test accuracy, mean and 95% confidence interval over the fixed
  `test_episodes` episodes of the test classes
- `genotype.json`, `alphas.npz`, `genotype.png`, `alphas.png` (Auto-MAML, T-NAS): the
  architecture derived from the meta-alpha
- `checkpoints/<iteration>/`, `config.json`: rerunning with the same `--save` resumes from
  the newest checkpoint; episodes depend only on (seed, iteration), so the result is that of
  an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import time

import jax
import numpy as np
from tqdm.auto import tqdm

from jnas.checkpoint import Checkpointer
from jnas.episodes import EpisodeSampler, load_fewshot
from jnas.errors import JnasError
from jnas.genotype import derive_genotype, save_genotype
from jnas.meta import MetaConfig, MetaLearner
from jnas.plotting import plot_alpha, plot_curves, plot_genotype
from jnas.runner import (
    RUN_FIELDS,
    check_resumable,
    read_metrics,
    stack_metrics,
    write_atomic,
)
from jnas.sharding import (
    assert_traced_once,
    data_mesh,
    is_main_process,
    local_rows,
    put_batch,
)

# Meta-training has no schedule, so a run may be continued to more iterations, and the final
# test may use another number of episodes.
_MAY_DIFFER = (*RUN_FIELDS, "iterations", "test_episodes")

# One test set for every run and seed, so that models are compared on the same episodes.
TEST_SEED = 0


def test_accuracy(learner: MetaLearner, state, sampler: EpisodeSampler, count: int, seed: int):
    """Accuracy on each of the `count` fixed test episodes -> (mean, 95% CI half-width, n).

    The interval is the normal approximation 1.96 * std / sqrt(n), as few-shot papers report.
    """
    batch = learner.config.meta_batch
    mine = local_rows(learner.mesh, batch, "--meta_batch")
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


def _write_architecture(config: MetaConfig, state) -> None:
    alpha = {k: np.asarray(v) for k, v in jax.device_get(state.alpha).items()}
    genotype = derive_genotype(alpha, config.primitives, config.nodes, config.nodes)
    save = config.save
    save_genotype(genotype, os.path.join(save, "genotype.json"))
    tmp = os.path.join(save, "alphas.tmp.npz")
    np.savez(tmp, **alpha)
    os.replace(tmp, os.path.join(save, "alphas.npz"))
    title = f"meta-iteration {int(state.step)}"
    plot_genotype(genotype, os.path.join(save, "genotype.png"), title=title)
    plot_alpha(
        alpha,
        os.path.join(save, "alphas.png"),
        primitives=config.primitives,
        title=f"softmax(alpha), {title}",
    )


def run_meta(config: MetaConfig, *, progress: bool = True) -> dict:
    """Meta-train (or resume), then test; returns {"rows": metrics, "test_acc", ...}."""
    train = load_fewshot(config.dataset, config.data_dir, "train")
    test = load_fewshot(config.dataset, config.data_dir, "test")
    shape = dict(way=config.way, shot=config.shot, query=config.query)
    train_sampler, test_sampler = EpisodeSampler(train, **shape), EpisodeSampler(test, **shape)
    mesh = data_mesh(config.devices)
    mine = local_rows(mesh, config.meta_batch, "--meta_batch")
    main = is_main_process()
    if main:
        os.makedirs(config.save, exist_ok=True)
    check_resumable(config, os.path.join(config.save, "config.json"), _MAY_DIFFER)

    learner = MetaLearner(config, train.image_shape, mesh)
    state = learner.init(jax.random.key(config.seed))
    checkpointer = Checkpointer(os.path.join(config.save, "checkpoints"))
    metrics_path = os.path.join(config.save, "metrics.jsonl")
    start = checkpointer.latest_epoch() or 0
    rows = []
    if start:
        state = checkpointer.restore(start, like=state)
        rows = read_metrics(metrics_path, start, key="iteration")
        if main:
            print(f"resuming {config.save} after meta-iteration {start}")

    bar = tqdm(
        range(start, config.iterations),
        initial=start,
        total=config.iterations,
        desc=f"{config.algo} {config.dataset} {config.way}-way {config.shot}-shot",
        disable=not (progress and main),
    )
    window, t0 = [], time.time()
    for it in bar:
        tasks = train_sampler.batch(config.meta_batch, seed=config.seed, index=it)
        state, m = learner.step(state, put_batch({k: v[mine] for k, v in tasks.items()}, mesh))
        window.append(m)  # kept on device: no host round trip until the window is logged
        assert_traced_once(learner.step)
        done = it + 1
        if done % config.log_every and done != config.iterations:
            continue
        means = {k: float(np.mean(v)) for k, v in jax.device_get(stack_metrics(window)).items()}
        if not all(np.isfinite(v) for v in means.values()):
            raise JnasError(
                f"the query loss became non-finite by meta-iteration {done} ({means}); the "
                f"last checkpoint in {config.save} is kept. Lower --meta_lr_w, --inner_lr_w or "
                "--inner_lr_alpha."
            )
        seconds = time.time() - t0
        rows.append(
            {
                "iteration": done,
                "query_loss": means["loss"],
                "query_acc": means["acc"],
                "seconds": seconds,
                "iterations_per_second": len(window) / seconds,
            }
        )
        bar.set_postfix(loss=f"{means['loss']:.3f}", acc=f"{means['acc']:.3f}")
        window, t0 = [], time.time()
        if main:
            write_atomic(metrics_path, "".join(json.dumps(r) + "\n" for r in rows))
            plot_curves(
                rows,
                os.path.join(config.save, "curves.png"),
                "iteration",
                ("query_loss", "query_acc"),
                title=f"{config.algo}, {config.dataset}",
            )
            if config.searches_architecture:
                _write_architecture(config, state)
        if done % config.checkpoint_every == 0 or done == config.iterations:
            checkpointer.save(done, state)
    bar.close()

    mean, ci95, n = test_accuracy(learner, state, test_sampler, config.test_episodes, TEST_SEED)
    result = {
        "test_acc": mean,
        "test_ci95": ci95,
        "test_episodes": n,
        "iterations": config.iterations,
    }
    if main:
        write_atomic(os.path.join(config.save, "test.json"), json.dumps(result, indent=2))
        print(
            f"test accuracy {100 * mean:.2f} +- {100 * ci95:.2f} % (95% CI, {n} episodes of "
            f"{config.way}-way {config.shot}-shot {config.dataset}, after {config.iterations} "
            "meta-iterations)",
            flush=True,
        )
    return {"rows": rows, **result}
