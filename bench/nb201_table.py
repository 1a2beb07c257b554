"""Every gradient-based method on NAS-Bench-201 under one protocol with equal budgets: the
benchmark accuracy of each epoch's derived cell, per method and seed.

    # the benchmark's protocol on CIFAR-10 (50 epochs, batch 64, C=16, N=5), 3 seeds
    python bench/nb201_table.py --dataset cifar10 --data_dir ~/tensorflow_datasets \
        --benchmark NATS-tss-v1_0-3ffb9-simple --seeds 0,1,2 --out runs/nb201_table
    # what bench/README.md reports: a reduced budget on the bundled digits, with a made-up
    # table standing in for the benchmark (no benchmark numbers come out of it)
    python bench/nb201_table.py --dataset digits --init_channels 8 --cells_per_stage 1 \
        --epochs 8 --batch_size 64 --seeds 0 --synthetic --out runs/nb201_table_digits

One protocol for all: the benchmark's DARTS search settings (`NB201Space.search_base`: SGD
0.025 cosine to 0.001, Nesterov momentum 0.9, weight decay 5e-4) with the same epochs and
batch for every method; each method keeps its own architecture-side settings (alpha's
optimiser, relaxation, partial channels, losses), and the warm-ups of PC-DARTS (15 of 50
epochs), ASAP (10 of 50) and ProxylessNAS are scaled to the budget. Every run is a search run
folder (`<out>/<method>_s<seed>`), so an interrupted table resumes where it stopped.

Writes `<out>/table.csv` (method, seed, epoch, the derived cell, its benchmark metric, the
search's validation accuracy, seconds) and `<out>/table.png` (the metric per epoch, mean over
seeds, one line per method), and prints one JSON line per run.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import resource
import time

# name -> (algorithm, its settings beside the protocol)
METHODS = {
    "darts_1st": ("darts", {}),
    "darts_2nd": ("darts", {"second_order": True}),
    "gdas": ("gdas", {}),
    "snas": ("snas", {}),
    "milenas": ("milenas", {}),
    "pcdarts": ("pcdarts", {}),
    "fairdarts": ("fairdarts", {}),
    "rdarts": ("rdarts", {}),
    "asap": ("asap", {}),
    "proxyless": ("proxyless", {}),
}
PROTOCOL_EPOCHS = 50  # the epochs that the methods' warm-ups are given for


def synthetic_table(path: str) -> str:
    """A made-up metric for all 15,625 cells: it rewards convolutions and skips and punishes
    'none', plus a fixed pseudo-random spread. It stands in for the benchmark's files where
    they are absent; it is not benchmark data."""
    from jnas.spaces.nb201 import NB201_OPS, to_string

    gain = {"none": -4.0, "skip_connect": 1.0, "avg_pool_3x3": 0.0, "nor_conv_1x1": 2.0,
            "nor_conv_3x3": 3.0}
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["arch", "cifar10_test"])
        for i, ops in enumerate(itertools.product(NB201_OPS, repeat=6)):
            w.writerow([to_string(ops), 70.0 + sum(gain[o] for o in ops) + (i * 7919 % 97) / 97])
    return path


def config_for(method: str, seed: int, args, table: str):
    from jnas.search import SearchConfig

    name, own = METHODS[method]
    published = SearchConfig.published(name, "nas-bench-201")
    warmup = round(published.warmup_epochs * args.epochs / PROTOCOL_EPOCHS)
    return SearchConfig.published(
        name, "nas-bench-201",
        dataset=args.dataset, data_dir=args.data_dir, epochs=args.epochs,
        batch_size=args.batch_size, init_channels=args.init_channels,
        cells_per_stage=args.cells_per_stage,
        warmup_epochs=min(warmup, args.epochs - 1), seed=seed, benchmark=table,
        save=os.path.join(args.out, f"{method}_s{seed}"), **own,
    )


def plot(rows, metric: str, path: str) -> None:
    import numpy as np
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), dpi=110, layout="constrained")
    ax = fig.subplots()
    for method in METHODS:
        mine = [r for r in rows if r["method"] == method]
        epochs = sorted({r["epoch"] for r in mine})
        if epochs:
            means = [np.mean([r[metric] for r in mine if r["epoch"] == e]) for e in epochs]
            ax.plot(epochs, means, marker=".", label=method)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{metric} of the derived cell")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.savefig(path)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--seeds", default="0")
    p.add_argument("--benchmark", help="a NATS-Bench file or folder, or a CSV table")
    p.add_argument("--synthetic", action="store_true",
                   help="a made-up table instead of the benchmark (<out>/synthetic_table.csv)")
    p.add_argument("--metric", default="cifar10_test", help="the benchmark column to report")
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--data_dir")
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--init_channels", type=int, default=16)
    p.add_argument("--cells_per_stage", type=int, default=5)
    p.add_argument("--out", default="runs/nb201_table")
    args = p.parse_args(argv)
    methods = args.methods.split(",")
    unknown = sorted(set(methods) - set(METHODS))
    if unknown or (args.benchmark is None) == (not args.synthetic):
        p.error(f"unknown methods {unknown}" if unknown else
                "give exactly one of --benchmark and --synthetic")
    os.makedirs(args.out, exist_ok=True)
    table = args.benchmark or synthetic_table(os.path.join(args.out, "synthetic_table.csv"))

    import jax

    from jnas.runner import run_search

    key = "benchmark_" + args.metric
    rows = []
    for method, seed in itertools.product(methods, [int(s) for s in args.seeds.split(",")]):
        config = config_for(method, seed, args, table)
        t0 = time.time()
        for r in run_search(config, progress=False):
            rows.append({"method": method, "seed": seed, "epoch": r["epoch"],
                         "arch": r["genotype"]["arch"], args.metric: r[key],
                         "valid_acc": r["valid_acc"], "seconds": r["seconds"]})
        mine = [r for r in rows if r["method"] == method and r["seed"] == seed]
        print(json.dumps({"method": method, "seed": seed, "epochs": len(mine),
                          "run_s": round(time.time() - t0, 1),
                          "epoch_s_median": sorted(r["seconds"] for r in mine)[len(mine) // 2],
                          f"final_{args.metric}": mine[-1][args.metric],
                          "final_arch": mine[-1]["arch"], "backend": jax.default_backend(),
                          "jax": jax.__version__, "peak_rss_mb": round(
                              resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}),
              flush=True)
    with open(os.path.join(args.out, "table.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    plot(rows, args.metric, os.path.join(args.out, "table.png"))


if __name__ == "__main__":
    main()
