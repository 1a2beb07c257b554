"""experiments/darts.py end to end on the embedded digits data, with tiny networks."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import jnas

ROOT = Path(__file__).resolve().parents[1]
# On one of conftest.py's 4 CPU devices: on this 2-core machine 4 devices take a third longer.
# tests/test_sharding.py runs the scripts on all of them.
TINY = ["--dataset", "digits", "--layers", "2", "--init_channels", "4", "--batch_size", "32",
        "--no_progress", "--devices", "1"]
# Few ops keep the compile short for the tests of resuming and errors.
CHEAP = [*TINY, "--nodes", "2", "--ops", "none,max_pool_3x3,skip_connect,sep_conv_3x3"]


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


darts = load_script("darts")


def run(*args):
    return darts.main([str(a) for a in args])


def read_metrics(save):
    return [json.loads(line) for line in (save / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("order", ["first", "second"])
def test_one_epoch_writes_every_output(tmp_path, order):
    save = tmp_path / order
    flags = ["--second_order"] if order == "second" else []
    assert run(*TINY, "--epochs", "1", "--save", save, *flags) == 0

    (row,) = read_metrics(save)
    assert set(row) >= {"epoch", "train_loss", "train_acc", "valid_loss", "valid_acc",
                        "genotype", "seconds"}
    assert row["epoch"] == 1 and np.isfinite(row["train_loss"])
    # A digits classifier learns something within one epoch (chance is 0.1).
    assert row["valid_acc"] > 0.2
    alphas = np.load(save / "alphas.npz")
    assert set(alphas.files) == {"normal", "reduce"}
    assert alphas["normal"].shape == (14, 8)
    # Alpha moved from its 1e-3 * N(0, 1) initialisation.
    assert np.abs(alphas["reduce"]).max() > 5e-3
    genotype = jnas.load_genotype(save / "genotype.json")
    assert genotype == jnas.derive_genotype(dict(alphas))
    assert row["genotype"] == json.loads((save / "genotype.json").read_text())
    for png in ("genotype.png", "alphas.png"):
        assert min(Image.open(save / png).size) > 100
    assert (save / "checkpoints" / "1").is_dir()


def test_second_order_with_the_papers_finite_difference_hessian(tmp_path):
    save = tmp_path / "fd"
    flags = [*CHEAP, "--epochs", "1", "--second_order", "--hessian", "finite_difference"]
    assert run(*flags, "--save", save) == 0
    (row,) = read_metrics(save)
    assert row["valid_acc"] > 0.2
    assert json.loads((save / "config.json").read_text())["hessian"] == "finite_difference"
    alphas = np.load(save / "alphas.npz")
    assert np.all(np.isfinite(alphas["normal"])) and np.abs(alphas["reduce"]).max() > 5e-3


def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path):
    straight = tmp_path / "straight"
    assert run(*CHEAP, "--epochs", "2", "--save", straight) == 0
    # A crash after epoch 2 wrote its files but before its checkpoint landed.
    crashed = tmp_path / "crashed"
    shutil.copytree(straight, crashed)
    shutil.rmtree(crashed / "checkpoints" / "2")
    (crashed / "alphas.npz").unlink()
    assert run(*CHEAP, "--epochs", "2", "--save", crashed) == 0

    a, b = np.load(straight / "alphas.npz"), np.load(crashed / "alphas.npz")
    for k in ("normal", "reduce"):
        np.testing.assert_array_equal(a[k], b[k])
    drop = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert drop(read_metrics(straight)) == drop(read_metrics(crashed))
    assert [r["epoch"] for r in read_metrics(crashed)] == [1, 2]

    # A finished run resumed again does nothing and keeps its files.
    assert run(*CHEAP, "--epochs", "2", "--save", crashed) == 0
    assert len(read_metrics(crashed)) == 2


def test_bad_inputs_are_one_clear_message(tmp_path, capsys):
    def error_of(*args):
        assert run(*args) == 2
        return capsys.readouterr().err

    assert "unknown dataset" in error_of("--dataset", "mnist", "--save", tmp_path / "a").lower()
    assert "--batch_size" in error_of(*CHEAP, "--batch_size", "5000", "--save", tmp_path / "b")
    assert "unknown op" in error_of(*TINY, "--ops", "none,conv_9x9", "--save", tmp_path / "c")
    assert "--data_dir" in error_of("--dataset", "cifar10", "--data_dir", tmp_path / "empty",
                                    "--save", tmp_path / "d")

    save = tmp_path / "run"
    assert run(*CHEAP, "--epochs", "1", "--save", save) == 0
    err = error_of(*CHEAP, "--epochs", "1", "--learning_rate", "0.1", "--save", save)
    assert "other settings" in err and "learning_rate" in err

    # A corrupt checkpoint is reported, and left in place with everything else.
    for f in (save / "checkpoints" / "1").rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage")
    before = sorted(p.name for p in save.iterdir())
    err = error_of(*CHEAP, "--epochs", "1", "--save", save)
    assert "could not be read" in err
    assert sorted(p.name for p in save.iterdir()) == before


def test_diverging_search_stops_with_a_clear_message_and_keeps_files(tmp_path, capsys):
    save = tmp_path / "nan"
    flags = [*TINY, "--nodes", "2", "--ops", "none,max_pool_3x3,skip_connect", "--epochs", "1",
             "--learning_rate", "1e30", "--grad_clip", "1e30", "--save", save]
    assert run(*flags) == 2
    assert "non-finite" in capsys.readouterr().err
    assert not (save / "metrics.jsonl").exists()


def test_the_scripts_write_a_persistent_compilation_cache(tmp_path):
    # A fresh process, as a script is: JAX reads the cache folder at its first compilation.
    cache = tmp_path / "xla"
    program = (
        "import sys, jax, jax.numpy as jnp; "
        f"sys.path.insert(0, {str(ROOT)!r}); "
        "from jnas import cli; "
        "from experiments.darts import parser; "
        "f = jax.jit(lambda x: jnp.sin(x) @ x); "
        "run = lambda args: f(jnp.ones((64, 64))).block_until_ready(); "
        f"sys.exit(cli._run(parser(), ['--compile_cache', {str(cache)!r}], run))"
    )
    env = {**os.environ, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    subprocess.run([sys.executable, "-c", program], check=True, env=env, cwd=ROOT)
    assert any(cache.iterdir()), "no compiled program was cached"
