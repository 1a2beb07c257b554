"""Compile time, step time and peak memory of evaluation training (experiments/train.py).

    python bench/train_step.py                              # DARTS protocol: DARTS_V2, C=36,
                                                            # 20 cells, batch 96, aux, cutout
    python bench/train_step.py --protocol nas-bench-201     # the benchmark's: C=16, N=5, 256
    python bench/train_step.py --dtype bfloat16             # mixed precision (GPU, TPU)
    python bench/train_step.py --archs DARTS_V1,GDAS_F1 --init_channels 16 --layers 8
    # the official PyTorch step on the same machine (bench/train_torch.py, a quark0/darts clone)
    python bench/train_torch.py --darts_repo PATH

Prints one JSON line per architecture, each from a fresh subprocess, with the step's
projected seconds per epoch of CIFAR-10's 50,000 training images. Random images: the step's
cost does not depend on the pixels. Also times the host's crop-and-flip of one batch, which
runs beside the compiled step.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import environment, run_rows, timed  # noqa: E402

TRAIN_IMAGES = 50_000


def measure(args) -> dict:
    import jax
    import numpy as np

    from jnas import data as jdata
    from jnas.evaluation import TrainConfig, Trainer, param_counts
    from jnas.sharding import data_mesh, put_batch

    sizes = {k: v for k, v in vars(args).items()
             if k in ("batch_size", "init_channels", "layers", "cells_per_stage") and v}
    config = TrainConfig.published(args.protocol, arch=args.one, dtype=args.dtype, **sizes)
    steps_per_epoch = TRAIN_IMAGES // config.batch_size
    mesh = data_mesh(args.devices)
    trainer = Trainer(config, 10, steps_per_epoch, args.hw, mesh)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (config.batch_size * 4, args.hw, args.hw, 3), np.uint8)
    cifar = jdata.ImageDataset("random", images, np.zeros(len(images), np.int32), 10,
                               (0.5,) * 3, (0.25,) * 3, augment=True)
    host_s = timed(lambda i: next(jdata.train_batches(cifar, config.batch_size, seed=0,
                                                      epoch=i)), 6)
    batch = next(jdata.train_batches(cifar, config.batch_size, seed=0, epoch=0))
    batch["y"] = rng.integers(0, 10, config.batch_size).astype(np.int32)

    t = time.perf_counter()
    state = trainer.init(jax.random.key(0), batch["x"][:2])
    jax.block_until_ready(state)
    init_s = time.perf_counter() - t
    batch, key = put_batch(batch, mesh), jax.random.key(1)
    t = time.perf_counter()
    step = trainer.step.lower(state, batch, key).compile()
    compile_s = time.perf_counter() - t

    def run(i):
        nonlocal state
        state, metrics = step(state, batch, jax.random.fold_in(key, i))
        return state, metrics

    times = timed(run, args.steps + 1)
    env = environment(times)
    return {
        "bench": "train_step",
        "arch": args.one,
        "protocol": args.protocol,
        "batch_size": config.batch_size,
        "init_channels": config.init_channels,
        "layers": config.layers if args.protocol == "darts" else config.cells_per_stage,
        "auxiliary_weight": config.auxiliary_weight,
        "hw": args.hw,
        "dtype": config.dtype,
        "devices": mesh.size,
        "params": param_counts(state.params),
        "init_s": round(init_s, 2),
        "compile_s": round(compile_s, 2),
        "host_batch_s_median": round(sorted(host_s[1:])[len(host_s[1:]) // 2], 4),
        "epoch_s_projected": round(env["step_s_median"] * steps_per_epoch, 1),
        **env,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archs", dest="algos", default=None,
                   help="comma-separated architectures (default: the protocol's)")
    p.add_argument("--protocol", default="darts", help="darts or nas-bench-201")
    p.add_argument("--dtype", default="float32", help="float32 or bfloat16")
    p.add_argument("--batch_size", type=int, help="default: the protocol's")
    p.add_argument("--init_channels", type=int, help="default: the protocol's")
    p.add_argument("--layers", type=int, help="DARTS cells (default: the protocol's)")
    p.add_argument("--cells_per_stage", type=int, help="NAS-Bench-201's N")
    p.add_argument("--hw", type=int, default=32, help="image height and width")
    p.add_argument("--devices", type=int, default=1, help="split the batch over N devices")
    p.add_argument("--steps", type=int, default=5, help="timed steps after compilation")
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.algos is None:
        from jnas.evaluation import TrainConfig

        args.algos = TrainConfig.published(args.protocol).arch
    run_rows(args, args.algos.split(","), measure)


if __name__ == "__main__":
    main()
