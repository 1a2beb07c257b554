"""The feature-history estimator (jnas.feature_history, Cao 2021): its overhead against a
training epoch, and how well it ranks NAS-Bench-201 cells from short budgets.

    # (a) overhead: one estimate at the thesis's sizes (K = 10 epochs of 8,000 training and
    # 2,000 validation features, D = 64, 10 classes) against one training epoch of the
    # NAS-Bench-201 network (C=16, N=5, batch 256) on 8,000 32x32 images, projected from the
    # median step (random images: the step's cost does not depend on the pixels)
    python bench/feature_history.py overhead
    # (b) rank correlation: cells (a seeded uniform sample plus the benchmark's best cell)
    # each trained once for the largest budget B under the linear schedule of horizon B, so
    # that its first b epochs are its budget-b run; per budget b = 1, 2, 4, ..., B, Kendall's
    # tau of (the validation accuracy at b) and of (the feature-history estimate at b) with the
    # validation accuracy at B. Every finished cell's rows go to --out (JSONL) at once, and a
    # rerun skips the cells already there, so the run resumes.
    python bench/feature_history.py kendall --data_dir ../shared/data --out runs/fh_tau.jsonl \
        --cells 20 --budget 8 --train_images 2000 --val_images 1000 --init_channels 8 \
        --cells_per_stage 1 --batch_size 64

Prints JSON lines: (a) "estimator" (compile seconds, median seconds of a whole estimate) and
"train_epoch" (compile seconds, median step, projected epoch); (b) one "cell" line per cell
trained and one "tau" line per budget.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import environment, timed  # noqa: E402


def measure_estimator(args) -> dict:
    import jax
    import numpy as np

    from jnas.feature_history import EstimatorConfig, FeatureRecord, feature_history_estimate

    config = EstimatorConfig()
    rng = np.random.default_rng(0)
    n, m, d, c = args.train_images, args.val_images, args.features, 10
    val_y = (np.arange(m) % c).astype(np.int32)
    records = [FeatureRecord(rng.normal(size=(n, d)).astype(np.float32),
                             rng.integers(0, c, n).astype(np.int32),
                             rng.normal(size=(m, d)).astype(np.float32), val_y,
                             0.1 * rng.normal(size=(d, c)).astype(np.float32),
                             np.zeros(c, np.float32)) for _ in range(config.history)]
    key = jax.random.key(0)
    t = time.perf_counter()
    feature_history_estimate(records, config, key)
    first_s = time.perf_counter() - t
    times = timed(lambda i: feature_history_estimate(records, config, jax.random.fold_in(key, i)),
                  args.steps + 1)
    env = environment(times)
    env["estimate_s_median"] = env.pop("step_s_median")
    return {"bench": "estimator", "history": config.history, "train_features": n,
            "val_features": m, "dim": d, "classes": c, "fine_tune_epochs": config.epochs,
            "batch_size": config.batch_size, "first_call_s": round(first_s, 2),
            "compile_s": round(first_s - env["estimate_s_median"], 2), **env}


def measure_epoch(args) -> dict:
    import jax
    import numpy as np

    from jnas import data as jdata
    from jnas.evaluation import TrainConfig, Trainer
    from jnas.sharding import data_mesh, put_batch

    config = TrainConfig.published("nas-bench-201", lr_schedule="linear", devices=1)
    steps_per_epoch = args.train_images // config.batch_size
    trainer = Trainer(config, 10, steps_per_epoch, 32, data_mesh(1), record_features=True)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (config.batch_size, 32, 32, 3), np.uint8)
    fake = jdata.ImageDataset("random", images, rng.integers(0, 10, len(images)).astype(np.int32),
                              10, (0.5,) * 3, (0.25,) * 3, augment=True)
    batch = put_batch(next(jdata.train_batches(fake, config.batch_size, seed=0, epoch=0)),
                      trainer.mesh)
    state = trainer.init(jax.random.key(0), batch["x"][:2])
    key = jax.random.key(1)
    t = time.perf_counter()
    step = trainer.step.lower(state, batch, key).compile()
    compile_s = time.perf_counter() - t

    def run(i):
        nonlocal state
        state, metrics = step(state, batch, jax.random.fold_in(key, i))
        return state, metrics

    env = environment(timed(run, args.steps + 1))
    return {"bench": "train_epoch", "arch": config.arch, "init_channels": config.init_channels,
            "cells_per_stage": config.cells_per_stage, "batch_size": config.batch_size,
            "train_images": args.train_images, "steps_per_epoch": steps_per_epoch,
            "record_features": True, "compile_s": round(compile_s, 2),
            "epoch_s_projected": round(env["step_s_median"] * steps_per_epoch, 1), **env}


def overhead(args) -> None:
    from jnas.cli import avoid_gpu_compiler_abort

    avoid_gpu_compiler_abort()
    estimate = measure_estimator(args)
    print(json.dumps(estimate), flush=True)
    epoch = measure_epoch(args)
    epoch["estimator_fraction_of_epoch"] = round(
        estimate["estimate_s_median"] / epoch["epoch_s_projected"], 4)
    print(json.dumps(epoch), flush=True)


def sample_cells(count: int, seed: int) -> list[str]:
    """`count` distinct NAS-Bench-201 cells drawn uniformly (jnas.sampling), then the
    benchmark's best CIFAR-10 cell."""
    import jax

    from jnas.sampling import architecture, to_ops, uniform_actions
    from jnas.spaces.nb201 import BEST_CIFAR10, NB201Space

    space, cells, key = NB201Space(), [], jax.random.key(seed)
    while len(cells) < count:
        key, draw = jax.random.split(key)
        cell = space.to_string(architecture(space, to_ops(space, uniform_actions(space, draw))))
        if cell not in cells and cell != BEST_CIFAR10:
            cells.append(cell)
    return [*cells, BEST_CIFAR10]


def kendall(args) -> None:
    import numpy as np
    from scipy.stats import kendalltau

    from jnas import data as jdata
    from jnas.evaluation import TrainConfig
    from jnas.feature_history import EstimatorConfig, train_candidate

    full = jdata.load_dataset("cifar10", args.data_dir, split="train")
    # The file's rows cycle through the classes, so both prefixes are class-balanced.
    train = full.subset(slice(0, args.train_images))
    val = full.subset(slice(args.train_images, args.train_images + args.val_images))
    done = {}
    if os.path.exists(args.out):
        with open(args.out) as f:
            for line in f:
                row = json.loads(line)
                done.setdefault(row["arch"], []).append(row)
    cells = sample_cells(args.cells, args.seed)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    for i, cell in enumerate(cells):
        if len(done.get(cell, [])) == args.budget:
            continue
        config = TrainConfig.published(
            "nas-bench-201", arch=cell, dataset="cifar10", lr_schedule="linear",
            epochs=args.budget, batch_size=args.batch_size, init_channels=args.init_channels,
            cells_per_stage=args.cells_per_stage, seed=args.seed, devices=1)
        t = time.perf_counter()
        rows = [{"arch": cell, **row} for row in train_candidate(config, train, val,
                                                                 estimator=EstimatorConfig())]
        with open(args.out, "a") as f:
            f.write("".join(json.dumps(r) + "\n" for r in rows))
        done[cell] = rows
        print(json.dumps({"bench": "cell", "index": i, "arch": cell,
                          "seconds": round(time.perf_counter() - t, 1),
                          "val_acc": [round(r["val_acc"], 4) for r in rows],
                          "feature_history": [round(r["feature_history"], 4) for r in rows]}),
              flush=True)
    by_epoch = {cell: {r["epoch"]: r for r in done[cell]} for cell in cells}
    final = [by_epoch[cell][args.budget]["val_acc"] for cell in cells]
    # Epoch 1 compiles the step and the estimator; later epochs are the steady cost.
    later = [r for cell in cells for e, r in by_epoch[cell].items() if e > 1]
    epoch_s = statistics.median(r["seconds"] for r in later) if later else None
    estimator_s = statistics.median(r["estimator_seconds"] for r in later) if later else None
    budget = 1
    while budget <= args.budget:
        row = {"bench": "tau", "budget": budget, "largest_budget": args.budget,
               "cells": len(cells), "train_images": len(train), "val_images": len(val),
               "init_channels": args.init_channels, "cells_per_stage": args.cells_per_stage,
               "batch_size": args.batch_size, "epoch_s_median": epoch_s,
               "estimator_s_median": estimator_s}
        for key in ("val_acc", "feature_history"):
            tau = kendalltau([by_epoch[cell][budget][key] for cell in cells], final).statistic
            row[f"tau_{key}"] = round(float(tau), 4)
        row["mean_val_acc"] = round(float(np.mean([by_epoch[c][budget]["val_acc"]
                                                   for c in cells])), 4)
        print(json.dumps(row), flush=True)
        budget *= 2


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    o = sub.add_parser("overhead", help="(a) the estimator's seconds against an epoch's")
    o.add_argument("--train_images", type=int, default=8000, help="training features/images")
    o.add_argument("--val_images", type=int, default=2000, help="validation features")
    o.add_argument("--features", type=int, default=64,
                   help="D: NB201's classifier input at C=16 is 4C = 64")
    o.add_argument("--steps", type=int, default=5, help="timed calls after the first")
    k = sub.add_parser("kendall", help="(b) rank correlations over cells and budgets")
    k.add_argument("--data_dir", default="../shared/data", help="holds cifar10_train*.npz")
    k.add_argument("--out", default="runs/feature_history_tau.jsonl", help="rows, per cell")
    k.add_argument("--cells", type=int, default=20, help="uniformly drawn cells (+ the best)")
    k.add_argument("--budget", type=int, default=8, help="the largest budget B, in epochs")
    k.add_argument("--train_images", type=int, default=2000)
    k.add_argument("--val_images", type=int, default=1000)
    k.add_argument("--init_channels", type=int, default=8)
    k.add_argument("--cells_per_stage", type=int, default=1)
    k.add_argument("--batch_size", type=int, default=64)
    k.add_argument("--seed", type=int, default=0, help="cells drawn, initialisation, data order")
    args = p.parse_args()
    if args.mode == "kendall" and args.budget & (args.budget - 1):
        sys.exit("--budget must be a power of 2 (the budgets are 1, 2, 4, ..., B)")
    if args.mode == "overhead":
        overhead(args)
    else:
        kendall(args)


if __name__ == "__main__":
    main()
