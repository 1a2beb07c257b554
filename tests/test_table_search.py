"""jnas.table_search on a synthetic table of all 15,625 NAS-Bench-201 cells with a known best:
REINFORCE learns, random search answers its best sample, an interrupted run resumes to the
uninterrupted result, and bad input is refused by name."""

import csv
import dataclasses
import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from jnas.errors import JnasError
from jnas.spaces.nb201 import NB201_OPS, from_string, to_string
from jnas.table_search import TableSearchConfig, run_table_search
from tests.common import load_script

# accuracy = 40 + sum over the 6 edges of a per-edge op score: the best cell takes each
# edge's best op, and no two cells tie.
SCORES = np.random.default_rng(0).permutation(30).reshape(6, 5) / 3
BEST = tuple(NB201_OPS[i] for i in SCORES.argmax(1))


def accuracy(ops):
    return 40.0 + sum(SCORES[e, NB201_OPS.index(o)] for e, o in enumerate(ops))


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    path = tmp_path_factory.mktemp("table") / "table.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["arch", "cifar10_test", "cifar10_valid"])
        for ops in itertools.product(NB201_OPS, repeat=6):
            w.writerow([to_string(ops), accuracy(ops), accuracy(ops) - 1])
    return str(path)


def history(save):
    return [json.loads(line) for line in (Path(save) / "history.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def reinforce_run(table, tmp_path_factory):
    config = TableSearchConfig(benchmark=table, samples=300, learning_rate=0.01,
                               save=str(tmp_path_factory.mktemp("rl")))
    return config, run_table_search(config, progress=False)


def test_reinforce_learns_to_draw_better_cells(reinforce_run):
    config, result = reinforce_run
    rows = history(config.save)
    rewards = np.array([r["reward"] for r in rows])
    assert len(rows) == 300 and [r["sample"] for r in rows] == list(range(1, 301))
    mean = 40 + SCORES.mean(1).sum()  # the table's mean accuracy
    assert rewards[:50].mean() < mean + 3  # it starts near uniform ...
    assert rewards[-50:].mean() > mean + 8  # ... and ends drawing far better cells
    assert result["best"] == rewards.max() > mean + 12
    assert result["table_best_arch"] == to_string(BEST)
    assert result["table_best"] == accuracy(BEST)
    assert result["regret"] == pytest.approx(accuracy(BEST) - result["best"])
    assert result["benchmark"] == {"benchmark_cifar10_test": result["best"],
                                   "benchmark_cifar10_valid": result["best"] - 1}
    assert (Path(config.save) / "progress.png").stat().st_size > 0


def test_random_search_answers_the_best_of_its_samples(table, tmp_path):
    config = TableSearchConfig(algo="random", benchmark=table, samples=40, batch_size=8,
                               save=str(tmp_path))
    result = run_table_search(config, progress=False)
    rows = history(tmp_path)
    assert all(r["reward"] == accuracy(from_string(r["arch"])) for r in rows)
    rewards = [r["reward"] for r in rows]
    assert [r["best"] for r in rows] == list(np.maximum.accumulate(rewards))
    first_best = int(np.argmax(rewards))
    assert (result["best"], result["best_arch"], result["best_sample"]) == (
        rewards[first_best], rows[first_best]["arch"], first_best + 1)
    assert len({r["arch"] for r in rows}) > 30  # uniform draws over 15,625 cells rarely repeat


# REINFORCE's settings are reinforce_run's, whose compiled steps the persistent cache holds.
@pytest.mark.parametrize("algo,batch_size", [("reinforce", 1), ("random", 5)])
def test_an_interrupted_run_resumes_to_the_uninterrupted_result(table, tmp_path, algo,
                                                                batch_size):
    whole = TableSearchConfig(algo=algo, benchmark=table, samples=60, batch_size=batch_size,
                              learning_rate=0.01, save=str(tmp_path / "whole"))
    expected = run_table_search(whole, progress=False)
    # Stopped after 23 samples (mid-batch for 5), the last line cut short by the crash.
    cut = dataclasses.replace(whole, samples=23, save=str(tmp_path / "cut"))
    run_table_search(cut, progress=False)
    path = tmp_path / "cut" / "history.jsonl"
    path.write_text(path.read_text()[:-20])
    resumed = run_table_search(dataclasses.replace(whole, save=cut.save), progress=False)
    assert resumed == expected
    assert history(cut.save) == history(whole.save)
    # A run with other settings is refused, named as the config field.
    with pytest.raises(JnasError, match="`seed`"):
        run_table_search(dataclasses.replace(whole, save=cut.save, seed=1), progress=False)


def test_bad_input_is_refused_by_name(table, tmp_path):
    with pytest.raises(JnasError, match="`space` darts .* use `space` nas-bench-201"):
        TableSearchConfig(space="darts", benchmark=table)
    with pytest.raises(JnasError, match="`batch_size`"):
        TableSearchConfig(benchmark=table, batch_size=0)
    with pytest.raises(JnasError, match="`baseline_decay`"):
        TableSearchConfig(benchmark=table, baseline_decay=2.0)
    with pytest.raises(JnasError, match="`benchmark` is required"):
        run_table_search(TableSearchConfig(save=str(tmp_path)), progress=False)
    with pytest.raises(JnasError, match="`metric` 'cifar100_test' is not a column"):
        run_table_search(TableSearchConfig(benchmark=table, metric="cifar100_test",
                                           save=str(tmp_path)), progress=False)


def test_command_line(table, tmp_path, capsys):
    script = load_script("table_search")
    save = tmp_path / "cli"
    assert script.main(["--algo", "random", "--benchmark", table, "--samples", "8",
                        "--batch_size", "8", "--save", str(save), "--no_progress"]) == 0
    assert json.loads((save / "result.json").read_text())["samples"] == 8
    assert script.main(["--benchmark", table, "--entropy_weight", "-1"]) == 2
    assert "--entropy_weight must be >= 0" in capsys.readouterr().err
