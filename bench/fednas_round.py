"""Seconds per FedNAS round on one device, three ways in one run: every client one array axis
(`vmap`, the simulation: `jnas.fednas.Federation`), a Python loop over clients (`loop`: one
compiled client program called once per client, `FedJob.client_round`), and a Flower
deployment on localhost (`flower`: experiments/flower/localhost.sh, one SuperNode per client,
a new ClientApp process per client and round; needs `pip install "jnas[flower]"`).

    python bench/fednas_round.py                       # 16 clients, NB201 C=8 N=1, CPU
    python bench/fednas_round.py --modes vmap,loop,flower --clients 4
    python bench/fednas_round.py --init_channels 16 --cells_per_stage 5 --batch 64   # GPU

Prints one JSON line per mode, each from a fresh subprocess. The data are random CIFAR-shaped
images (a step's cost does not depend on the pixels) with random labels, split by the
Dirichlet(0.5) partition. `round_s_median` is a whole round after the first two, making the
batches on the host included (`batches_s_median`); Flower's rows add the clients' medians of
`compute_s` (their local epochs) and `handler_s` (the ClientApp's whole handler).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import environment, run_rows, timed  # noqa: E402

MODES = {"vmap", "loop", "flower"}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fednas_flags(args) -> list[str]:
    import numpy as np

    rng = np.random.default_rng(0)
    data = os.path.join(tempfile.mkdtemp(), "random.npz")
    np.savez(data, x=rng.integers(0, 256, (args.examples, 32, 32, 3), np.uint8),
             y=rng.integers(0, 10, args.examples))
    return ["--space", args.space, "--dataset", data, "--batch_size", str(args.batch),
            "--init_channels", str(args.init_channels), "--cells_per_stage",
            str(args.cells_per_stage), "--local_epochs", str(args.local_epochs), "--clients",
            str(args.clients), "--rounds", str(args.rounds + 2), "--min_client_samples",
            str(2 * args.batch), "--devices", "1", "--no_progress",
            "--save", tempfile.mkdtemp()]  # fmt: skip


def measure(args) -> dict:
    import jax
    import numpy as np

    from jnas.cli import fednas_config
    from jnas.data import preprocess
    from jnas.federated import weighted_average
    from jnas.fednas import FedJob, FedState

    flags = fednas_flags(args)
    job = FedJob(fednas_config("", flags)[0])
    row = {"mode": args.one, **{k: getattr(args, k) for k in (
        "clients", "local_epochs", "batch", "space", "init_channels", "cells_per_stage",
        "examples")}, "steps_per_local_epoch": job.steps_per_epoch}  # fmt: skip
    if args.one == "flower":
        return {**row, **flower(flags)}
    server = job.learner.init(job.init_key, preprocess(job.dataset, job.dataset.x[:2]))
    state = FedState(server, job.fed.start(server))
    batching = []

    def inputs(r):
        t = time.perf_counter()
        out = list(job.step_inputs(r))
        batching.append(time.perf_counter() - t)
        return out

    def vmapped(r):
        nonlocal state
        for e, batches, keys in inputs(r + 1):
            state, _ = job.step(state, e, batches, keys)
        return state

    def loop(r):
        nonlocal state
        inputs(r + 1)  # the same host work, for the batches' share of a round
        shared = [job.client_round(state.server, k, r + 1)[0] for k in range(job.config.clients)]
        stacked = jax.tree.map(lambda *xs: np.stack(xs), *jax.device_get(shared))
        state = state._replace(server=weighted_average(stacked, job.sizes))
        return state.server

    fn = vmapped if args.one == "vmap" else loop
    t = time.perf_counter()
    jax.block_until_ready(fn(0))  # compiles
    first_s = time.perf_counter() - t
    times = timed(lambda i: fn(i + 1), args.rounds + 1)
    return {**row, "first_round_s": round(first_s, 2),
            "round_s_median": round(statistics.median(times[1:]), 3),
            "batches_s_median": round(statistics.median(batching[2:]), 3),
            **environment(times)}  # fmt: skip


def flower(flags: list[str]) -> dict:
    save = tempfile.mkdtemp()
    script = os.path.join(ROOT, "experiments", "flower", "localhost.sh")
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}"
           f"{os.environ['PATH']}"}  # fmt: skip
    subprocess.run(["bash", script, save, *flags], check=True, env=env, cwd=ROOT,
                   stdout=subprocess.DEVNULL)
    with open(os.path.join(save, "rounds.jsonl")) as f:
        rounds = [json.loads(line) for line in f]
    later = rounds[2:]
    median = lambda key: round(statistics.median(  # noqa: E731
        c[key] for r in later for c in r["clients"]), 3)
    env = environment([r["seconds"] for r in rounds[1:]])
    return {"first_round_s": round(rounds[0]["seconds"], 2),
            "round_s_median": round(statistics.median(r["seconds"] for r in later), 3),
            "compute_s_median": median("compute_s"), "handler_s_median": median("handler_s"),
            **{k: v for k, v in env.items() if k in ("backend", "device", "jax")}}  # fmt: skip


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--modes", dest="algos", default="vmap,loop", help="vmap, loop, flower")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--examples", type=int, default=8000, help="examples over all clients")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--local_epochs", type=int, default=1)
    p.add_argument("--space", default="nas-bench-201")
    p.add_argument("--init_channels", type=int, default=8)
    p.add_argument("--cells_per_stage", type=int, default=1)
    p.add_argument("--rounds", type=int, default=2, help="timed rounds after the first two")
    p.add_argument("--one", choices=sorted(MODES), help=argparse.SUPPRESS)
    run_rows(p.parse_args(), MODES, measure)


if __name__ == "__main__":
    main()
