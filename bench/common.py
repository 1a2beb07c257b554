"""What the benchmark scripts share: one fresh subprocess per measured row, timing, memory."""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time


def run_rows(args: argparse.Namespace, known, measure) -> None:
    """With `--one NAME`, print `measure(args)` as JSON; otherwise rerun this script once per
    name in `--algos`, so that neither compilation caches nor peak memory carry over."""
    if args.one:
        from jnas.cli import avoid_gpu_compiler_abort

        avoid_gpu_compiler_abort()
        print(json.dumps(measure(args)), flush=True)
        return
    for algo in args.algos.split(","):
        if algo not in known:
            sys.exit(f"unknown algo {algo!r}; choose from {sorted(known)}")
        subprocess.run([sys.executable, sys.argv[0], *sys.argv[1:], "--one", algo], check=True)


def random_tasks(config, shape) -> dict:
    """A meta-batch of `config`'s episode shapes (a `MetaConfig`) with random images: a
    meta-iteration's cost does not depend on the pixels."""
    import numpy as np

    rng = np.random.default_rng(0)
    b, way = config.meta_batch, config.way

    def sets(size):
        return (
            rng.normal(size=(b, way * size, *shape)).astype(np.float32),
            np.tile(np.repeat(np.arange(way), size), (b, 1)).astype(np.int32),
        )

    (sx, sy), (qx, qy) = sets(config.shot), sets(config.query)
    return {"support_x": sx, "support_y": sy, "query_x": qx, "query_y": qy}


def timed(fn, calls: int) -> list[float]:
    """Seconds of each of `calls` calls of `fn()`, waiting for its results."""
    import jax

    times = []
    for i in range(calls):
        t = time.perf_counter()
        jax.block_until_ready(fn(i))
        times.append(time.perf_counter() - t)
    return times


def environment(times: list[float]) -> dict:
    """The median step (the first call also moves inputs to the device, so it is dropped),
    peak memory and what ran it."""
    import jax

    device = jax.devices()[0]
    stats = device.memory_stats() or {}
    return {
        "step_s_median": round(statistics.median(times[1:]), 4),
        "steps_timed": len(times) - 1,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_device_mb": round(stats.get("peak_bytes_in_use", 0) / 2**20, 1) or None,
        "backend": jax.default_backend(),
        "device": device.device_kind,
        "jax": jax.__version__,
    }
