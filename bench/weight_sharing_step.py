"""Compile and step times of RSPS's and ENAS's compiled pieces on NAS-Bench-201's network:
one JSON line each (random CIFAR-shaped batches, no data needed).

    python bench/weight_sharing_step.py [--channels 16 --cells 5 --steps 3]

RSPS's weight step (one uniformly drawn path per step) and one call of its selection (a chunk
of candidates, each on its own batch of `candidate_batch_size` images); ENAS's weight step
(the controller's child), one scoring call of a chunk of children and one controller update.
The first call of each is `compile_s` (compilation and one run), then the median of `--steps`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import numpy as np

from jnas.enas import Enas, EnasConfig
from jnas.search import Search, SearchConfig
from jnas.selection import uniform_selection
from jnas.sharding import data_mesh, put_batch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--cells", type=int, default=5)
    p.add_argument("--steps", type=int, default=3)
    a = p.parse_args()
    rng = np.random.default_rng(0)

    def batch(n, k=None):
        shape = (n, 32, 32, 3) if k is None else (n, k, 32, 32, 3)
        return {"x": rng.normal(size=shape).astype(np.float32),
                "y": rng.integers(0, 10, shape[:-3]).astype(np.int32)}

    def timed(name, fn, *args, **config):
        t = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        compile_s = time.perf_counter() - t
        times = []
        for _ in range(a.steps):
            t = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times.append(time.perf_counter() - t)
        print(json.dumps({"what": name, "compile_s": round(compile_s, 1),
                          "median_step_s": round(statistics.median(times), 3),
                          "backend": jax.default_backend(), "C": a.channels, "N": a.cells,
                          **config}), flush=True)
        return out

    mesh = data_mesh(1)
    size = dict(init_channels=a.channels, cells_per_stage=a.cells)
    cfg = SearchConfig.published("rsps", "nas-bench-201", **size)
    search = Search(cfg, 10, 390, mesh)
    state = search.init(jax.random.key(0), batch(2)["x"])
    b = put_batch(batch(cfg.batch_size), mesh)
    timed("rsps weight step", search.step, state, b, b, jax.random.key(1), batch=cfg.batch_size)
    sel = uniform_selection(search)
    vb = put_batch(batch(cfg.candidate_batch_size, sel.chunk), mesh)
    timed("rsps selection call", sel.step, state.params, state.batch_stats, None,
          jax.random.key(2), vb, candidates=sel.chunk, batch=cfg.candidate_batch_size)

    ecfg = EnasConfig.published("nas-bench-201", **size)
    enas = Enas(ecfg, 10, 195, mesh)
    estate = enas.init(jax.random.key(0), batch(2)["x"])
    timed("enas weight step", enas.weight_step, estate, put_batch(batch(ecfg.batch_size), mesh),
          jax.random.key(3), batch=ecfg.batch_size)
    cb = put_batch(batch(ecfg.batch_size, enas.selection.chunk), mesh)
    out = timed("enas children's scoring call", enas.selection.step, estate.params,
                estate.batch_stats, estate.controller, jax.random.key(4), cb,
                children=enas.selection.chunk, batch=ecfg.batch_size)
    timed("enas controller update", enas.controller_step, estate, out[0], out[3],
          children=enas.selection.chunk)


if __name__ == "__main__":
    main()
