"""FedNAS through Flower on localhost (experiments/flower/localhost.sh: a SuperLink, two
SuperNodes and `flwr run`), ending where the in-process simulation ends (slow: -m slow;
needs pip install "jnas[flower]")."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.common import ROOT
from tests.test_fednas import FED_TINY, ROUNDS

pytest.importorskip("flwr", reason='needs Flower: pip install "jnas[flower]"')
BIN = Path(sys.executable).parent
SIMULATE = """
import sys, jax, numpy as np
from jnas.cli import fednas_config
from jnas.fednas import run_fednas
config, _ = fednas_config("", sys.argv[2:])
server = jax.device_get(run_fednas(config, progress=False)["state"].server)
paths = jax.tree_util.tree_flatten_with_path(server)[0]
np.savez(sys.argv[1], **{jax.tree_util.keystr(p): v for p, v in paths})
"""


@pytest.mark.slow
def test_two_supernodes_end_where_the_simulation_ends(tmp_path):
    from jnas.cli import fednas_config
    from jnas.data import preprocess
    from jnas.fednas import FedJob

    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    save = tmp_path / "flower"
    script = ROOT / "experiments" / "flower" / "localhost.sh"
    out = subprocess.run(["bash", str(script), str(save), *FED_TINY], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=900)
    logs = "".join(p.read_text(errors="replace")[-3000:] for p in (save / "logs").glob("*"))
    assert out.returncode == 0, out.stdout + out.stderr + logs
    assert "finished:completed" in out.stdout

    rounds = [json.loads(line) for line in (save / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == list(range(1, ROUNDS + 1))
    deployed = dict(np.load(save / "server.npz"))

    # The simulation runs in a fresh process like the SuperNodes' ClientApps: XLA compiles
    # for this process's 4 CPU devices differently, and the difference (1e-8 a step) grows
    # to 6e-6 over the run; between processes of one device the two agree to 1e-7.
    simulated = tmp_path / "simulated.npz"
    subprocess.run([sys.executable, "-c", SIMULATE, str(simulated), *FED_TINY, "--save",
                    str(tmp_path / "simulated")], check=True, cwd=ROOT, env=env, timeout=600)
    server = dict(np.load(simulated))
    assert set(deployed) == set(server)
    for name, value in server.items():
        np.testing.assert_allclose(deployed[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
    # The search moved alpha: the comparison is not of initial values.
    config, _ = fednas_config("", [*FED_TINY, "--save", str(tmp_path / "simulated")])
    job = FedJob(config)
    initial = job.learner.init(job.init_key, preprocess(job.dataset, job.dataset.x[:2]))
    assert np.abs(server["['alpha']['cell']"] - initial["alpha"]["cell"]).max() > 1e-3
