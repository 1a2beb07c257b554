"""experiments/darts.py end to end on the embedded digits data, with tiny networks."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import jnas
from tests.common import (
    EPOCHS,
    OPS,
    ROOT,
    TINY,
    assert_alpha_moved,
    load_script,
    read_metrics,
)

darts = load_script("darts")


def run(*args):
    return darts.main([str(a) for a in args])


ORDERS = {
    "first": (),
    "second": ("--second_order",),
    "finite_difference": ("--second_order", "--hessian", "finite_difference"),
}


@pytest.mark.parametrize("order", ORDERS)
def test_a_search_writes_every_output(search_run, order):
    save = search_run("darts", *ORDERS[order])
    rows = read_metrics(save)
    assert [r["epoch"] for r in rows] == list(range(1, EPOCHS + 1))
    assert set(rows[0]) >= {"epoch", "train_loss", "train_acc", "arch_loss", "valid_loss",
                            "valid_acc", "lr", "genotype", "seconds"}
    assert all(np.isfinite(r["train_loss"]) for r in rows)
    # A digits classifier learns something within two epochs (chance is 0.1).
    assert rows[-1]["valid_acc"] > 0.2
    config = json.loads((save / "config.json").read_text())
    assert config["second_order"] == (order != "first")
    assert config["hessian"] == ("finite_difference" if order == "finite_difference" else "exact")
    alphas = np.load(save / "alphas.npz")
    assert set(alphas.files) == {"normal", "reduce"}
    assert alphas["normal"].shape == (5, len(OPS))
    assert_alpha_moved(save)
    genotype = jnas.load_genotype(save / "genotype.json", OPS)
    assert genotype == jnas.derive_genotype(dict(alphas), OPS, steps=2, multiplier=2)
    assert rows[-1]["genotype"] == json.loads((save / "genotype.json").read_text())
    for png in ("genotype.png", "alphas.png"):
        assert min(Image.open(save / png).size) > 100
    assert (save / "checkpoints" / str(EPOCHS)).is_dir()


def test_resume_after_a_crash_equals_an_uninterrupted_run(search_run, tmp_path):
    straight = search_run("darts")
    # A crash after the last epoch wrote its files but before its checkpoint landed.
    crashed = tmp_path / "crashed"
    shutil.copytree(straight, crashed)
    shutil.rmtree(crashed / "checkpoints" / str(EPOCHS))
    (crashed / "alphas.npz").unlink()
    assert run(*TINY, "--save", crashed) == 0

    a, b = np.load(straight / "alphas.npz"), np.load(crashed / "alphas.npz")
    for k in ("normal", "reduce"):
        np.testing.assert_array_equal(a[k], b[k])
    timing = ("seconds", "steps_per_second")
    drop = lambda rows: [{k: v for k, v in r.items() if k not in timing} for r in rows]  # noqa: E731
    assert drop(read_metrics(straight)) == drop(read_metrics(crashed))
    assert [r["epoch"] for r in read_metrics(crashed)] == list(range(1, EPOCHS + 1))

    # A finished run resumed again does nothing and keeps its files.
    assert run(*TINY, "--save", crashed) == 0
    assert len(read_metrics(crashed)) == EPOCHS


def test_bad_inputs_are_one_clear_message(search_run, tmp_path, capsys):
    def error_of(*args):
        assert run(*args) == 2
        return capsys.readouterr().err

    assert "unknown dataset" in error_of("--dataset", "mnist", "--save", tmp_path / "a").lower()
    assert "--batch_size" in error_of(*TINY, "--batch_size", "5000", "--save", tmp_path / "b")
    assert "unknown op" in error_of(*TINY, "--ops", "none,conv_9x9", "--save", tmp_path / "c")
    assert "--data_dir" in error_of("--dataset", "cifar10", "--data_dir", tmp_path / "empty",
                                    "--save", tmp_path / "d")

    save = tmp_path / "run"
    shutil.copytree(search_run("darts"), save)
    err = error_of(*TINY, "--learning_rate", "0.1", "--save", save)
    assert "other settings" in err and "learning_rate" in err

    # A corrupt checkpoint is reported, and left in place with everything else.
    for f in (save / "checkpoints" / str(EPOCHS)).rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage")
    before = sorted(p.name for p in save.iterdir())
    err = error_of(*TINY, "--save", save)
    assert "could not be read" in err
    assert sorted(p.name for p in save.iterdir()) == before


def test_diverging_search_stops_with_a_clear_message_and_keeps_files(tmp_path, capsys):
    save = tmp_path / "nan"
    i = TINY.index("--ops")
    flags = [*TINY[:i], *TINY[i + 2 :], "--ops", "none,max_pool_3x3,skip_connect",
             "--epochs", "1", "--learning_rate", "1e30", "--grad_clip", "1e30", "--save", save]
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
        f"cli.start(cli.search_config('darts', '', ['--compile_cache', {str(cache)!r}])[1]); "
        "jax.jit(lambda x: jnp.sin(x) @ x)(jnp.ones((64, 64))).block_until_ready()"
    )
    env = {**os.environ, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    subprocess.run([sys.executable, "-c", program], check=True, env=env, cwd=ROOT)
    assert any(cache.iterdir()), "no compiled program was cached"
