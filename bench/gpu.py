"""The prepared benchmark run for a GPU machine (run through bench/gpu.sh).

    bash bench/gpu.sh              # on the accelerator: about 8 minutes
    bash bench/gpu.sh --smoke      # tiny sizes on any machine (the test suite runs this)

Prints one JSON line per item: the device first; then, each in a fresh subprocess with its
own time limit, the four search steps at the paper's network and batch 64 (compile seconds,
median step seconds, peak device memory), DARTS's and GDAS's on NAS-Bench-201's network,
MAML's and T-NAS's meta-iterations at their defaults with 4 and with 32 tasks, the
evaluation training step by DARTS's protocol in float32 and bfloat16; then the projected wall
time of each full published run from the measured steps. An item that fails or runs out of
time prints its error and the run goes on.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

# name -> (script, its --one, arguments at full size, arguments for --smoke); in the order
# they run, the slowest to compile last.
SMOKE_SEARCH = ["--batch", "8", "--hw", "8", "--layers", "3", "--init_channels", "4",
                "--nodes", "1", "--ops", "none,skip_connect,max_pool_3x3", "--steps", "1"]
SEARCH = ["--batch", "64", "--steps", "5"]
NB201 = ["--space", "nas-bench-201"]
SMOKE_NB201 = [*NB201, "--batch", "8", "--hw", "8", "--init_channels", "4",
               "--cells_per_stage", "1", "--steps", "1"]
SMOKE_META = ["--steps", "1", "--meta_batch", "1", "--way", "2", "--query", "1", "--image_size",
              "8", "--inner_steps", "1", "--inner_steps_test", "1"]
SMOKE_TNAS = [*SMOKE_META, "--init_channels", "4", "--nodes", "1", "--ops", "none,skip_connect"]
SMOKE_MAML = [*SMOKE_META, "--filters", "4", "--image_size", "16"]  # 4 halvings: 16 -> 1
SMOKE_TRAIN = ["--init_channels", "4", "--layers", "3", "--batch_size", "8", "--hw", "8",
               "--steps", "1"]
ITEMS = {
    "gdas": ("search_step.py", "gdas", SEARCH, SMOKE_SEARCH),
    "nb201_darts_1st": ("search_step.py", "darts_1st", [*NB201, *SEARCH], SMOKE_NB201),
    "nb201_gdas": ("search_step.py", "gdas", [*NB201, *SEARCH], SMOKE_NB201),
    "darts_1st": ("search_step.py", "darts_1st", SEARCH, SMOKE_SEARCH),
    "milenas": ("search_step.py", "milenas", SEARCH, SMOKE_SEARCH),
    "tnas_mini": ("meta_step.py", "tnas_mini", ["--steps", "2"], SMOKE_TNAS),
    "maml_mini": ("meta_step.py", "maml_mini", ["--steps", "3"], SMOKE_MAML),
    # 32 tasks per meta-iteration (the MAML paper's Omniglot meta-batch), all at once.
    "maml_mini_32": ("meta_step.py", "maml_mini", ["--steps", "3", "--meta_batch", "32"],
                     [*SMOKE_MAML, "--meta_batch", "2"]),
    "tnas_mini_32": ("meta_step.py", "tnas_mini", ["--steps", "2", "--meta_batch", "32"],
                     [*SMOKE_TNAS, "--meta_batch", "2"]),
    # experiments/train.py's step by DARTS's protocol (DARTS_V2, C=36, 20 cells, batch 96).
    "train_darts_f32": ("train_step.py", "DARTS_V2", ["--steps", "5"], SMOKE_TRAIN),
    "train_darts_bf16": ("train_step.py", "DARTS_V2", ["--steps", "5", "--dtype", "bfloat16"],
                         [*SMOKE_TRAIN, "--dtype", "bfloat16"]),
    # Last: on an H200 (jax 0.11.2) it ran past the whole 450 s budget, leaving the others
    # no time (bench/README.md).
    "darts_2nd": ("search_step.py", "darts_2nd", SEARCH, SMOKE_SEARCH),
}
# Full published runs: (item whose step it repeats, epochs, steps per epoch). A CIFAR-10
# search trains on half of the 50,000 training images at batch 64, the last partial batch
# dropped: 25,000 // 64 = 390 steps per epoch.
PROJECTIONS = {
    "darts_2nd_search_50_epochs": ("darts_2nd", 50, 25_000 // 64),
    "gdas_search_240_epochs": ("gdas", 240, 25_000 // 64),
    "nb201_darts_search_50_epochs": ("nb201_darts_1st", 50, 25_000 // 64),
    "nb201_gdas_search_250_epochs": ("nb201_gdas", 250, 25_000 // 64),
    # DARTS's evaluation: all 50,000 training images at batch 96, 600 epochs.
    "darts_v2_train_600_epochs": ("train_darts_f32", 600, 50_000 // 96),
    "darts_v2_train_600_epochs_bf16": ("train_darts_bf16", 600, 50_000 // 96),
}


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def run_item(name: str, smoke: bool, limit: float) -> dict:
    script, one, full, small = ITEMS[name]
    command = [sys.executable, os.path.join(HERE, script), *(small if smoke else full),
               "--one", one]
    start = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        return {"item": name, "error": f"over its {limit:.0f} s limit"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return {"item": name, "error": f"exit {done.returncode}: {' | '.join(tail)}"}
    return {"item": name, **json.loads(lines[-1]),
            "wall_s": round(time.perf_counter() - start, 1)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny sizes, any device")
    p.add_argument("--budget", type=float, default=450.0,
                   help="seconds for all items together (default %(default)s)")
    p.add_argument("--item_limit", type=float, default=150.0,
                   help="seconds for one item at most (default %(default)s)")
    p.add_argument("--items", default=",".join(ITEMS), help=f"from {', '.join(ITEMS)}")
    args = p.parse_args()
    unknown = sorted(set(args.items.split(",")) - set(ITEMS))
    if unknown:
        p.error(f"unknown items {unknown}; choose from {', '.join(ITEMS)}")

    probe = subprocess.run(
        [sys.executable, "-c", "import jax, json; d = jax.devices()[0]; print(json.dumps(["
         "jax.__version__, jax.default_backend(), d.device_kind, len(jax.devices())]))"],
        capture_output=True, text=True,
    )
    if probe.returncode:
        emit({"device": None, "error": probe.stderr.strip().splitlines()[-1:]})
        return 1
    # JSON: a device kind has spaces ("NVIDIA H200").
    version, backend, kind, count = json.loads(probe.stdout.strip().splitlines()[-1])
    emit({"device": kind, "backend": backend, "devices": count, "jax": version,
          "smoke": args.smoke})

    deadline = time.perf_counter() + args.budget
    results = {}
    for name in args.items.split(","):
        left = deadline - time.perf_counter()
        if left < 10:
            emit({"item": name, "error": "no time left in --budget"})
            continue
        results[name] = run_item(name, args.smoke, min(left, args.item_limit))
        emit(results[name])
    for name, (item, epochs, per_epoch) in PROJECTIONS.items():
        step = results.get(item, {}).get("step_s_median")
        if step is None:
            emit({"projection": name, "error": f"no {item} step time"})
            continue
        hours = step * epochs * per_epoch / 3600
        emit({"projection": name, "step_s": step, "epochs": epochs,
              "steps_per_epoch": per_epoch, "hours": round(hours, 2)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
