"""bench/gpu.sh, the prepared GPU benchmark run, in its --smoke form: tiny sizes on the CPU,
so that the script cannot rot between the sessions that have a GPU."""

import json
import os
import subprocess
import sys

import pytest

from tests.common import ROOT

# One item per script and space: search_step.py's second-order DARTS and GDAS rows (the other
# algorithms' rows are the same lines with another --one; their steps run in the search
# tests), NB201's GDAS row, meta_step.py's T-NAS row (MAML's and the 32-task rows differ in
# --one and --meta_batch). Not the training steps, whose Trainer tests/test_evaluation.py
# runs: each item costs 20-30 s of compiling here.
SMOKED = ("darts_2nd", "gdas", "nb201_gdas", "tnas_mini")


@pytest.mark.slow  # 110 s: a check of the prepared GPU run, not of the library
def test_gpu_benchmark_smoke_run_prints_every_item():
    env = {**os.environ, "PYTHON": sys.executable, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu.sh"), "--smoke", "--items", ",".join(SMOKED)],
        env=env, capture_output=True, text=True, timeout=900, cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert records[0]["backend"] == "cpu" and records[0]["smoke"] is True
    items = {r["item"]: r for r in records if "item" in r}
    for name in SMOKED:
        assert "error" not in items[name], items[name]
        assert items[name]["compile_s"] > 0 and items[name]["step_s_median"] > 0
    assert items["nb201_gdas"]["space"] == "nas-bench-201"
    projections = {r["projection"]: r for r in records if "projection" in r}
    darts = projections["darts_2nd_search_50_epochs"]
    assert darts["hours"] == round(items["darts_2nd"]["step_s_median"] * 50 * 390 / 3600, 2)
    assert "hours" in projections["gdas_search_240_epochs"]
    assert "hours" in projections["nb201_gdas_search_250_epochs"]
