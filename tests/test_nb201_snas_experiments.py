"""The NAS-Bench-201 space and SNAS end to end: experiments/darts.py and gdas.py with
`--space nas-bench-201` and a benchmark table, experiments/snas.py on the DARTS space."""

import csv
import itertools
import json

import numpy as np
import pytest

from jnas.spaces.nb201 import NB201_OPS, from_string, to_string
from tests.common import EPOCHS, TINY, assert_alpha_moved, load_script, read_metrics

# The tiny NB201 network: C=4, one cell per stage, on the 8x8 digits.
NB201_TINY = [
    "--space", "nas-bench-201", "--dataset", "digits", "--init_channels", "4",
    "--cells_per_stage", "1", "--batch_size", "32", "--epochs", str(EPOCHS), "--no_progress",
    "--devices", "1",
]  # fmt: skip


def score(ops):
    """A made-up benchmark metric that tells architectures apart."""
    return 50.0 + 3 * ops.count("nor_conv_3x3") + ops.count("nor_conv_1x1") + 0.5 * ops.count(
        "skip_connect")


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """Every one of the 5^6 cells with a made-up metric, as the benchmark CSV layout."""
    path = tmp_path_factory.mktemp("bench") / "nb201.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["arch", "cifar10_test", "cifar100_test"])
        for ops in itertools.product(NB201_OPS, repeat=6):
            w.writerow([to_string(ops), score(ops), score(ops) - 20])
    return path


@pytest.fixture(scope="module")
def nb201_run(tmp_path_factory, table):
    save = tmp_path_factory.mktemp("nb201") / "darts"
    code = load_script("darts").main([*NB201_TINY, "--benchmark", str(table), "--save",
                                      str(save)])
    assert code == 0
    return save


def test_darts_on_nb201_derives_benchmark_strings_and_looks_them_up(nb201_run, capsys):
    rows = read_metrics(nb201_run)
    assert [r["epoch"] for r in rows] == list(range(1, EPOCHS + 1))
    for r in rows:
        ops = from_string(r["genotype"]["arch"])
        assert list(ops) == r["genotype"]["ops"]
        assert r["benchmark_cifar10_test"] == score(ops)
        assert r["benchmark_cifar100_test"] == score(ops) - 20
    saved = json.loads((nb201_run / "genotype.json").read_text())
    assert saved == rows[-1]["genotype"]
    alphas = np.load(nb201_run / "alphas.npz")
    assert alphas.files == ["cell"] and alphas["cell"].shape == (6, 5)
    assert_alpha_moved(nb201_run)
    config = json.loads((nb201_run / "config.json").read_text())
    # The benchmark's DARTS config: Nesterov SGD with weight decay 5e-4.
    assert (config["space"], config["nesterov"], config["weight_decay"]) == (
        "nas-bench-201", True, 5e-4)
    for name in ("genotype.png", "alphas.png"):
        assert (nb201_run / name).is_file()


def test_gdas_on_nb201_runs_single_path_cells(tmp_path):
    save = tmp_path / "gdas"
    args = [*NB201_TINY, "--epochs", "1", "--save", str(save)]
    assert load_script("gdas").main(args) == 0
    (row,) = read_metrics(save)
    assert row["tau"] == 10.0 and from_string(row["genotype"]["arch"])
    config = json.loads((save / "config.json").read_text())
    assert (config["algorithm"], config["space"]) == ("gdas", "nas-bench-201")


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--layers", "3"], "--layers is a setting of the darts space"),
        (["--ops", "none,conv_9x9"], "unknown op"),
    ],
)
def test_settings_of_the_other_space_are_refused(tmp_path, capsys, flags, message):
    assert load_script("darts").main([*NB201_TINY, *flags, "--save", str(tmp_path / "r")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_a_benchmark_needs_the_nb201_space_and_the_architecture(tmp_path, capsys, table):
    darts = load_script("darts")
    assert darts.main([*TINY, "--benchmark", str(table), "--save", str(tmp_path / "a")]) == 2
    assert "--benchmark needs the nas-bench-201 space" in capsys.readouterr().err
    small = tmp_path / "small.csv"
    small.write_text("arch,cifar10_test\n" + to_string(("none",) * 6) + ",10.0\n")
    save = tmp_path / "b"
    assert darts.main([*NB201_TINY, "--epochs", "1", "--benchmark", str(small), "--save",
                       str(save)]) == 2
    assert "not in" in capsys.readouterr().err


def test_snas_search(search_run):
    save = search_run("snas")
    rows = read_metrics(save)
    # SNAS's temperature: linear from 1 to 0.03, stepped before the first epoch.
    taus = [(1 - (e + 1) / EPOCHS) * 0.97 + 0.03 for e in range(EPOCHS)]
    np.testing.assert_allclose([r["tau"] for r in rows], taus, rtol=1e-6)
    # Single-level: the architecture's loss is the training loss.
    assert all(r["arch_loss"] == pytest.approx(r["train_loss"]) for r in rows)
    assert rows[-1]["valid_acc"] > 0.15  # chance is 0.1: the child network has learned
    assert_alpha_moved(save)
    config = json.loads((save / "config.json").read_text())
    assert (config["algorithm"], config["relaxation"]) == ("snas", None)
