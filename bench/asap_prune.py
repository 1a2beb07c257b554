"""ASAP's step time over a search as it prunes ops, against DARTS first order's step on the
same network, in one run.

    python bench/asap_prune.py                                  # what bench/README.md shows
    python bench/asap_prune.py --space nas-bench-201 --epochs 10

Runs a search job (digits by default, so no download) and times every step; prints one JSON
line per epoch (median step seconds, the share of ops not yet pruned) and a last line with
DARTS first order's median step and the environment, and draws both against the epoch into
`--plot`. The architecture step is made fast (`--arch_learning_rate`) so that pruning
happens within a few epochs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import environment  # noqa: E402


def timed_epochs(config, epochs: int):
    """(per epoch: median step seconds, mean unpruned share) of `config`'s search job."""
    import jax

    from jnas.runner import SearchJob

    job = SearchJob(config)
    state, out = job.init(), []
    for epoch in range(epochs):
        times, unpruned = [], []
        for inputs in job.step_inputs(epoch):
            t0 = time.perf_counter()
            state, m = jax.block_until_ready(job.step(state, *inputs))
            times.append(time.perf_counter() - t0)
            unpruned.append(float(m.get("unpruned", 1.0)))
        out.append((times, statistics.mean(unpruned)))
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--space", default="darts")
    p.add_argument("--dataset", default="digits")
    p.add_argument("--layers", type=int, default=5)
    p.add_argument("--init_channels", type=int, default=8)
    p.add_argument("--cells_per_stage", type=int, default=1)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--arch_learning_rate", type=float, default=0.02)
    p.add_argument("--plot", default="bench/asap_prune.png")
    args = p.parse_args(argv)

    from jnas.search import SearchConfig

    size = ({"layers": args.layers} if args.space == "darts" else
            {"cells_per_stage": args.cells_per_stage})
    config = SearchConfig.published(
        "asap", args.space, dataset=args.dataset, init_channels=args.init_channels, **size,
        epochs=args.epochs, batch_size=args.batch_size, warmup_epochs=0,
        arch_learning_rate=args.arch_learning_rate, save=tempfile.mkdtemp())
    asap = timed_epochs(config, args.epochs)
    darts = timed_epochs(dataclasses.replace(config, algorithm="darts", relaxation=None,
                                             prune_threshold=None, tau_max=None, tau_min=None,
                                             warmup_epochs=0), 1)
    for epoch, (times, unpruned) in enumerate(asap):
        # The first epoch's first step compiles: left out.
        print(json.dumps({"epoch": epoch, "step_s_median": round(statistics.median(
            times[1:] if epoch == 0 else times), 4), "unpruned": round(unpruned, 3)}))
    darts_times = darts[0][0]
    print(json.dumps({"darts_1st_step_s_median": round(statistics.median(darts_times[1:]), 4),
                      "config": {k: v for k, v in vars(args).items() if k != "plot"},
                      **environment(darts_times)}))

    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.6), dpi=110, layout="constrained")
    ax = fig.subplots()
    epochs = range(len(asap))
    ax.plot(epochs, [statistics.median(t[1:] if e == 0 else t) for e, (t, _) in enumerate(asap)],
            marker=".", label="ASAP step")
    ax.axhline(statistics.median(darts_times[1:]), color="gray", ls="--",
               label="DARTS first-order step")
    ax.set_xlabel("epoch")
    ax.set_ylabel("median step (s)")
    twin = ax.twinx()
    twin.plot(epochs, [u for _, u in asap], color="tab:red", marker="x", label="unpruned ops")
    twin.set_ylabel("share of ops not pruned")
    twin.set_ylim(0, 1.05)
    fig.legend(loc="upper right", fontsize=8)
    fig.savefig(args.plot)


if __name__ == "__main__":
    main()
