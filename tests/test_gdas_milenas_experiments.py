"""experiments/gdas.py and experiments/milenas.py end to end on the embedded digits data."""

import json
import shutil

import numpy as np
import pytest

import jnas
from tests.common import (
    EPOCHS,
    OPS,
    TINY,
    assert_alpha_moved,
    load_script,
    read_metrics,
)

gdas = load_script("gdas")
milenas = load_script("milenas")


def call(script, *args):
    return script.main([str(a) for a in args])


def assert_outputs(save, cells=("normal", "reduce")):
    alphas = np.load(save / "alphas.npz")
    assert set(alphas.files) == set(cells)
    assert all(np.all(np.isfinite(alphas[c])) for c in cells)
    assert_alpha_moved(save)
    for name in ("genotype.json", "genotype.png", "alphas.png", "config.json"):
        assert (save / name).is_file()
    return alphas


def test_gdas_search_anneals_tau_and_resumes_exactly(search_run, tmp_path):
    straight = search_run("gdas")
    rows = read_metrics(straight)
    assert [r["tau"] for r in rows] == [10.0, pytest.approx(0.1)]
    alphas = assert_outputs(straight)
    genotype = jnas.load_genotype(straight / "genotype.json", OPS)
    assert genotype == jnas.derive_genotype(dict(alphas), OPS, steps=2, multiplier=2)
    assert json.loads((straight / "config.json").read_text())["algorithm"] == "gdas"

    # The Gumbel samples come from (seed, step): a resumed run draws the same ones.
    crashed = tmp_path / "crashed"
    shutil.copytree(straight, crashed)
    shutil.rmtree(crashed / "checkpoints" / str(EPOCHS))
    assert call(gdas, *TINY, "--save", crashed) == 0
    resumed = np.load(crashed / "alphas.npz")
    for k in ("normal", "reduce"):
        np.testing.assert_array_equal(alphas[k], resumed[k])


def test_gdas_with_the_fixed_reduction_cell_searches_the_normal_cell_only(tmp_path):
    # The FRC stands in for a 4-node cell of the 8 DARTS ops, so this run has them all.
    save = tmp_path / "frc"
    flags = ["--dataset", "digits", "--layers", "3", "--init_channels", "4", "--batch_size",
             "32", "--epochs", "1", "--no_progress", "--devices", "1", "--fix_reduction"]
    assert call(gdas, *flags, "--save", save) == 0
    assert_outputs(save, cells=("normal",))
    (row,) = read_metrics(save)
    assert row["valid_acc"] > 0.2
    assert row["genotype"]["reduce"] == [] and row["genotype"]["reduce_concat"] == []
    genotype = jnas.load_genotype(save / "genotype.json")
    assert len(genotype.normal) == 8 and genotype.reduce == ()


def test_milenas_search(search_run):
    save = search_run("milenas", "--lambda", "0.5")
    assert_outputs(save)
    rows = read_metrics(save)
    assert rows[-1]["valid_acc"] > 0.2 and "tau" not in rows[-1]
    config = json.loads((save / "config.json").read_text())
    assert (config["algorithm"], config["lam"], config["relaxation"]) == ("milenas", 0.5, None)


def test_milenas_with_the_gdas_relaxation(search_run):
    save = search_run("milenas", "--gdas")
    assert_outputs(save)
    assert [r["tau"] for r in read_metrics(save)] == [10.0, pytest.approx(0.1)]
    assert json.loads((save / "config.json").read_text())["relaxation"] == "gdas"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--tau_min", "0"], "0 < --tau_min <= --tau_max"),
        (["--tau_max", "0.01"], "0 < --tau_min <= --tau_max"),
        (["--fix_reduction"], "--nodes 4 and the 8 DARTS ops"),
    ],
)
def test_bad_gdas_flags_fail_before_anything_runs(tmp_path, capsys, args, message):
    save = tmp_path / "bad"
    assert call(gdas, *TINY, *args, "--save", save) == 2
    assert message in capsys.readouterr().err
    assert not save.exists()
