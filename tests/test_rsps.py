"""RSPS: the uniform relaxation's samples, single-path scoring with shared weights against the
discrete cells' networks, and experiments/rsps.py end to end (resume, bad input)."""

import json
import shutil
from itertools import combinations

import jax
import numpy as np
import pytest

from jnas import data as jdata
from jnas.errors import JnasError
from jnas.relax import make_relaxation
from jnas.search import SearchConfig, search_relaxation
from jnas.selection import Scores, uniform_selection, validation_batches
from jnas.spaces import space_class
from jnas.steps import accuracy, cross_entropy
from tests.common import OPS, TINY, load_script, read_metrics

rsps = load_script("rsps")
RUN_FLAGS = ("--candidates", "4", "--candidate_batch_size", "64")
RUN_CONFIG = dict(algorithm="rsps", candidates=4, candidate_batch_size=64)
DARTS_TINY = dict(layers=3, init_channels=4, nodes=2, primitives=OPS)


def relaxation(space, **settings):
    config = SearchConfig(algorithm="rsps", space=space, dataset="digits", **settings)
    return search_relaxation(config)


def draws(relax, n):
    """n uniform samples' (weights, index) of `relax`, stacked."""
    keys = jax.random.split(jax.random.key(3), n)
    return jax.device_get(jax.jit(jax.vmap(lambda k: relax.train_weights({}, k, 0)))(keys))


def test_nb201_samples_one_op_per_edge_uniformly():
    n = 6000
    weights, index = draws(relaxation("nas-bench-201"), n)
    ops = index["cell"][..., 0]  # (n, 6)
    assert ops.min() >= 0 and ops.max() <= 4  # every edge runs one op, 'none' among them
    np.testing.assert_array_equal(weights["cell"], np.eye(5)[ops])
    freq = np.stack([np.bincount(ops[:, e], minlength=5) for e in range(6)]) / n
    # 4.5 binomial standard deviations around 1/5.
    assert np.abs(freq - 0.2).max() < 4.5 * np.sqrt(0.2 * 0.8 / n)


def test_darts_samples_two_distinct_inputs_with_real_ops_uniformly():
    n = 6000
    relax = relaxation("darts", **DARTS_TINY)
    weights, index = draws(relax, n)
    for cell in ("normal", "reduce"):
        ops = index[cell][..., 0]  # (n, 5): node 0 reads rows 0-1, node 1 rows 2-4
        np.testing.assert_array_equal(weights[cell], np.eye(4)[ops] * (ops >= 0)[..., None])
        assert np.all((ops == -1) | np.isin(ops, [1, 2, 3]))  # never 'none' (column 0)
        for rows in ((0, 1), (2, 3, 4)):
            taken = ops[:, rows] >= 0
            assert np.all(taken.sum(1) == 2)
            pairs = list(combinations(range(len(rows)), 2))
            counts = [np.all(taken[:, list(p)], 1).sum() for p in pairs]
            p = 1 / len(pairs)
            assert np.abs(np.array(counts) / n - p).max() <= 4.5 * np.sqrt(p * (1 - p) / n)
        real = ops[ops >= 0]
        p, m = 1 / 3, len(real)
        assert np.abs(np.bincount(real, minlength=4)[1:] / m - p).max() < 4.5 * np.sqrt(
            p * (1 - p) / m)


def test_uniform_relaxation_needs_its_space():
    with pytest.raises(JnasError, match="build it with `jnas.search.search_relaxation`"):
        make_relaxation("uniform", 1).train_weights({}, jax.random.key(0), 0)


def test_selection_scores_equal_each_discrete_cell_run_alone(tiny_search):
    """The selection step (uniform draws, single paths, one lax.map) against a plain
    evaluation of each candidate on its batch: the supernet run with the one-hot weights that
    the space's own derivation gives that cell, every op computed (batch statistics both
    ways). The search and the step are those of the command-line run below."""
    search, state = tiny_search(**RUN_CONFIG)
    space, model = search.space, search.model
    selection = uniform_selection(search)
    split = jdata.search_split(jdata.load_dataset("digits"), 0.5)[1]
    scores = selection(state.params, state.batch_stats, None, jax.random.key(4), split,
                       candidates=4, seed=2, draw=(1,))
    assert selection.chunk == 4 and len(scores.accuracies) == 4
    batches = validation_batches(split, 64, 4, seed=2, unit=(1,))
    variables = {"params": state.params, "batch_stats": state.batch_stats}

    @jax.jit
    def mixed(weights, batch):
        logits, _ = model.apply(variables, batch["x"], weights, None, mutable=["batch_stats"])
        return cross_entropy(logits, batch["y"]), accuracy(logits, batch["y"])

    real = np.array([p != "none" for p in space.primitives])
    for i in range(4):
        one_hot = {t: np.eye(len(real), dtype=np.float32)[o[i]] * (o[i] >= 0)[:, None]
                   for t, o in scores.ops.items()}
        derived = space.derived_weights(one_hot)  # the space's derivation picks that cell
        for t in one_hot:
            np.testing.assert_array_equal(derived[t], one_hot[t] * real)
        loss, acc = mixed(derived, {k: v[:, i] for k, v in batches.items()})
        np.testing.assert_allclose(scores.losses[i], loss, rtol=2e-5)
        assert scores.accuracies[i] == acc


def test_scores_keep_the_best_and_rank_the_candidates():
    space = space_class("nas-bench-201")()
    ops = {"cell": np.array([[0] * 6, [3] * 6, [1] * 6])}
    scores = Scores(ops, np.array([2.0, 1.0, 1.5]), np.array([0.25, 0.75, 0.75]))
    assert scores.best() == 1  # the first of a tie
    assert scores.architecture(space, 1) == ("nor_conv_3x3",) * 6
    assert [r["valid_acc"] for r in scores.table(space)] == [0.75, 0.75, 0.25]
    assert scores.table(space)[0]["arch"] == space.to_string(("nor_conv_3x3",) * 6)


@pytest.fixture(scope="module")
def run(search_run):
    return search_run("rsps", *RUN_FLAGS)


def test_rsps_run_selects_the_best_candidate_each_epoch(run):
    rows = read_metrics(run)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all("arch_loss" not in r and "valid_acc" not in r for r in rows)
    selection = json.loads((run / "selection.json").read_text())
    table = selection["candidates"]
    assert selection["epoch"] == 2 and len(table) == 4
    accs = [c["valid_acc"] for c in table]
    assert accs == sorted(accs, reverse=True)
    last = rows[-1]
    assert last["select_acc"] == accs[0] == max(accs)
    assert last["candidates_acc"] == pytest.approx(np.mean(accs))
    space = space_class("darts")(**DARTS_TINY)
    assert table[0]["arch"] == space.to_string(space.from_dict(last["genotype"]))
    assert json.loads((run / "genotype.json").read_text()) == last["genotype"]
    assert (run / "genotype.png").is_file()
    assert not (run / "alphas.npz").exists()  # alpha is never trained: no pretence
    config = json.loads((run / "config.json").read_text())
    assert (config["algorithm"], config["relaxation"]) == ("rsps", None)


def test_rsps_resumes_to_the_uninterrupted_result(run, tmp_path):
    crashed = tmp_path / "crashed"
    shutil.copytree(run, crashed)
    shutil.rmtree(crashed / "checkpoints" / "2")
    assert rsps.main([*TINY, *RUN_FLAGS, "--save", str(crashed)]) == 0
    strip = [{k: v for k, v in r.items() if k not in ("seconds", "steps_per_second")}
             for r in read_metrics(run)]
    again = [{k: v for k, v in r.items() if k not in ("seconds", "steps_per_second")}
             for r in read_metrics(crashed)]
    assert again == strip
    for name in ("genotype.json", "selection.json"):
        assert (crashed / name).read_text() == (run / name).read_text()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--arch_learning_rate", "1e-3"], "--arch_learning_rate is a setting of alpha's "
                                           "training; rsps trains no alpha"),
        (["--candidates", "0"], "--candidates must be positive"),
        (["--candidate_batch_size", "5000"], "--candidate_batch_size 5000 is larger than the "
                                             "719 validation examples"),
    ],
)
def test_bad_rsps_flags_fail_with_one_message(tmp_path, capsys, args, message):
    save = tmp_path / "bad"
    assert rsps.main([*TINY, *RUN_FLAGS, *args, "--save", str(save)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (save / "checkpoints").exists()
