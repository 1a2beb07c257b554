"""Compile time, meta-iteration time and peak memory of the MAML / Auto-MAML / T-NAS steps.

    python bench/meta_step.py                       # CPU: the four rows below, 5-way 1-shot
    python bench/meta_step.py --algos tnas_mini --meta_batch 4 --first_order
    python bench/meta_step.py --devices 8           # tasks split over 8 devices

Rows: `maml_omniglot` (28x28x1, the MAML paper's Omniglot inner loop: 1 step of 0.4, 3 at
test), `maml_mini`, `auto_maml_mini` and `tnas_mini` (84x84x3, 5 inner steps, 10 at test,
the T-NAS network C=16, a normal and a reduction cell). Episodes are random arrays of the
datasets' shapes (the step's cost does not depend on the pixels). Prints one JSON line per
row, each from a fresh subprocess: init, step compile and eval compile seconds, the median
meta-iteration, the median evaluation of one batch of tasks, peak memory. Where torch is
installed, a `maml_mini` run ends with the PyTorch reference of the same learner and shapes
(`meta_torch.py`, row `maml_mini_torch`).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import environment, random_tasks, run_rows, timed  # noqa: E402

ROWS = {
    "maml_omniglot": dict(algo="maml", dataset="omniglot", inner_steps=1, inner_lr_w=0.4,
                          inner_steps_test=3),
    "maml_mini": dict(algo="maml"),
    "auto_maml_mini": dict(algo="auto_maml"),
    "tnas_mini": dict(algo="tnas"),
}  # fmt: skip


def measure(args) -> dict:
    import jax

    from jnas.meta import MetaConfig, MetaLearner
    from jnas.sharding import data_mesh, put_batch

    row = dict(ROWS[args.one])
    dataset = row.pop("dataset", "mini_imagenet")
    # Overrides of the row's network, for small runs (bench/gpu.sh --smoke).
    sizes = {k: getattr(args, k) for k in ("init_channels", "nodes", "filters", "inner_steps",
                                           "inner_steps_test") if getattr(args, k) is not None}
    if args.ops:
        sizes["primitives"] = tuple(args.ops.split(","))
    config = MetaConfig(
        dataset=dataset, way=args.way, shot=args.shot, query=args.query,
        meta_batch=args.meta_batch, first_order=args.first_order, **{**row, **sizes},
    )  # fmt: skip
    shape = (28, 28, 1) if dataset == "omniglot" else (84, 84, 3)
    if args.image_size:
        shape = (args.image_size, args.image_size, shape[2])
    mesh = data_mesh(args.devices)
    learner = MetaLearner(config, shape, mesh)
    tasks = put_batch(random_tasks(config, shape), mesh)

    t = time.perf_counter()
    state = learner.init(jax.random.key(0))
    jax.block_until_ready(state)
    init_s = time.perf_counter() - t
    t = time.perf_counter()
    step = learner.step.lower(state, tasks).compile()
    compile_s = time.perf_counter() - t
    t = time.perf_counter()
    evaluate = learner.eval_step.lower(state, tasks).compile()
    eval_compile_s = time.perf_counter() - t

    def run(i):
        nonlocal state
        state, metrics = step(state, tasks)
        return state, metrics

    eval_times = timed(lambda i: evaluate(state, tasks), 4)
    times = timed(run, args.steps + 1)
    return {
        "row": args.one,
        **{k: getattr(config, k) for k in ("algo", "dataset", "way", "shot", "query",
                                           "meta_batch", "inner_steps", "inner_steps_test",
                                           "first_order", "init_channels", "nodes")},
        "image": list(shape),
        "devices": mesh.size,
        "tasks_at_once": learner.tasks_at_once,
        "init_s": round(init_s, 2),
        "compile_s": round(compile_s, 2),
        "eval_compile_s": round(eval_compile_s, 2),
        "eval_batch_s_median": round(statistics.median(eval_times[1:]), 4),
        **environment(times),
    }  # fmt: skip


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--algos", default=",".join(ROWS), help=f"from {sorted(ROWS)}")
    p.add_argument("--way", type=int, default=5)
    p.add_argument("--shot", type=int, default=1)
    p.add_argument("--query", type=int, default=15)
    p.add_argument("--meta_batch", type=int, default=4)
    p.add_argument("--first_order", action="store_true")
    p.add_argument("--devices", type=int, default=1, help="split the tasks over N devices")
    small = p.add_argument_group("smaller networks (default: the row's)")
    for name in ("init_channels", "nodes", "filters", "inner_steps", "inner_steps_test",
                 "image_size"):
        small.add_argument(f"--{name}", type=int)
    small.add_argument("--ops", help="comma-separated candidate ops")
    p.add_argument("--steps", type=int, default=3, help="timed meta-iterations after compiling")
    p.add_argument("--one", choices=sorted(ROWS), help=argparse.SUPPRESS)
    args = p.parse_args()
    run_rows(args, ROWS, measure)
    if not args.one and "maml_mini" in args.algos.split(",") and importlib.util.find_spec("torch"):
        # The PyTorch reference of the same learner and shapes, in the same run.
        sizes = {k: getattr(args, k) for k in ("meta_batch", "way", "shot", "query", "filters",
                                               "image_size", "inner_steps", "inner_steps_test")}
        flags = [f"--{k}={v}" for k, v in sizes.items() if v is not None]
        flags += ["--first_order"] if args.first_order else []
        here = os.path.dirname(os.path.abspath(__file__))
        subprocess.run([sys.executable, os.path.join(here, "meta_torch.py"), *flags,
                        f"--steps={args.steps}"], check=True)


if __name__ == "__main__":
    main()
