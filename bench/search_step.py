"""Compile time, step time and peak memory of the search steps at the paper's network.

    python bench/search_step.py                     # CPU: batch 16, DARTS, GDAS, MiLeNAS
    python bench/search_step.py --batch 64          # GPU
    python bench/search_step.py --algos darts_1st --layers 3 --init_channels 8
    python bench/search_step.py --batch 64 --devices 8   # data-parallel over 8 devices
    python bench/search_step.py --space nas-bench-201 --batch 64 --algos darts_1st,snas
    python bench/search_step.py --space nas-bench-201 --cells_per_stage 1   # compile vs N
    python bench/search_step.py --algos darts_1st,proxyless --phases   # memory per phase
    JAX_NUM_CPU_DEVICES=4 python bench/search_step.py --devices 4   # 4 CPU devices

Prints one JSON line per algorithm. Each algorithm runs in a fresh subprocess so that neither
compilation caches nor peak memory carry over between rows. `step_temp_mb` is the compiled
step's scratch memory (XLA's buffer assignment: the activations kept for the backward pass
and the other intermediates, on any backend); `--phases` adds each phase compiled alone
(`arch_temp_mb`, `weights_temp_mb`, on one device), e.g. ProxylessNAS's two-path
architecture step and one-path weight step against DARTS's all-op steps.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import environment, run_rows, timed  # noqa: E402

ALGOS = {
    "darts_1st": {"algorithm": "darts"},
    "darts_2nd": {"algorithm": "darts", "second_order": True, "hessian": "exact"},
    "darts_2nd_fd": {"algorithm": "darts", "second_order": True, "hessian": "finite_difference"},
    "gdas": {"algorithm": "gdas"},
    "rsps": {"algorithm": "rsps"},
    "milenas": {"algorithm": "milenas"},
    "milenas_gdas": {"algorithm": "milenas", "relaxation": "gdas"},
    "snas": {"algorithm": "snas"},
    "proxyless": {"algorithm": "proxyless"},
    "pcdarts": {"algorithm": "pcdarts", "partial_channels": 4},
    "fairdarts": {"algorithm": "fairdarts"},
    "asap": {"algorithm": "asap"},  # before any op is pruned: its costliest step
    "rdarts": {"algorithm": "rdarts", "second_order": True, "track_hessian": True},
}


def measure(args) -> dict:
    import jax
    import numpy as np

    from jnas.search import Search, SearchConfig
    from jnas.sharding import data_mesh, put_batch

    config = SearchConfig(
        space=args.space,
        batch_size=args.batch,
        init_channels=args.init_channels,
        layers=args.layers,
        nodes=args.nodes,
        cells_per_stage=args.cells_per_stage,
        primitives=tuple(args.ops.split(",")) if args.ops else None,
        **ALGOS[args.one],
    )
    mesh = data_mesh(args.devices)
    search = Search(config, args.classes, steps_per_epoch=391, mesh=mesh)
    rng = np.random.default_rng(0)

    def batch():
        return {
            "x": rng.normal(size=(args.batch, args.hw, args.hw, 3)).astype(np.float32),
            "y": rng.integers(0, args.classes, args.batch).astype(np.int32),
        }

    t = time.perf_counter()
    state = search.init(jax.random.key(0), batch()["x"][:2])
    jax.block_until_ready(state)
    init_s = time.perf_counter() - t

    train, val, key = put_batch(batch(), mesh), put_batch(batch(), mesh), jax.random.key(1)
    t = time.perf_counter()
    step = search.step.lower(state, train, val, key).compile()
    compile_s = time.perf_counter() - t
    memory = {"step_temp_mb": temp_mb(step)}
    if args.phases:
        keys, lr, epoch = {"arch": key, "weights": key}, search.lr_schedule(0), jax.numpy.int32(0)
        for phase in search.algorithm.order:
            fn = jax.jit(search._phases[phase])
            memory[f"{phase}_temp_mb"] = temp_mb(
                fn.lower(state, train, val, keys, lr, epoch).compile())

    def run(i):
        nonlocal state
        # A new key each step: GDAS's time depends on which ops the sample picked.
        state, metrics = step(state, train, val, jax.random.fold_in(key, i))
        return state, metrics

    times = timed(run, args.steps + 1)
    if config.track_hessian:  # RobustDARTS's eigenvalue, once per epoch
        t = time.perf_counter()
        jax.block_until_ready(search.hessian_step(state, val, key))
        memory["hessian_first_s"] = round(time.perf_counter() - t, 2)
        memory["hessian_s"] = round(statistics.median(timed(
            lambda i: jax.block_until_ready(search.hessian_step(state, val, key)), 3)), 3)
    return {
        "algo": args.one,
        "space": args.space,
        "batch": args.batch,
        "devices": mesh.size,
        "init_channels": args.init_channels,
        "layers": args.layers,
        "nodes": args.nodes,
        "cells_per_stage": args.cells_per_stage,
        "ops": len(search.space.primitives),
        "hw": args.hw,
        "classes": args.classes,
        "init_s": round(init_s, 2),
        "compile_s": round(compile_s, 2),
        **memory,
        **environment(times),
    }


def temp_mb(compiled) -> float:
    return round(compiled.memory_analysis().temp_size_in_bytes / 2**20, 2)


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument(
        "--algos", default="darts_1st,darts_2nd,gdas,milenas", help=f"from {sorted(ALGOS)}"
    )
    p.add_argument("--space", default="darts", help="darts or nas-bench-201")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--init_channels", type=int, default=16)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--nodes", type=int, default=4, help="DARTS space")
    p.add_argument("--cells_per_stage", type=int, default=5, help="NAS-Bench-201 space")
    p.add_argument("--ops", help="comma-separated candidate ops (default: the space's)")
    p.add_argument("--hw", type=int, default=32)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--devices", type=int, default=1, help="split the batch over N devices")
    p.add_argument("--steps", type=int, default=5, help="timed steps after compilation")
    p.add_argument("--phases", action="store_true",
                   help="also the scratch memory of each phase compiled alone")
    p.add_argument("--one", choices=sorted(ALGOS), help=argparse.SUPPRESS)
    run_rows(p.parse_args(), ALGOS, measure)


if __name__ == "__main__":
    main()
