"""experiments/gdas.py and experiments/milenas.py end to end on the embedded digits data."""

import json
import shutil

import jax
import numpy as np
import optax
import pytest

import jnas
from jnas.search import Search, SearchConfig, cross_entropy
from tests.test_darts_experiment import CHEAP, TINY, load_script, read_metrics

gdas = load_script("gdas")
milenas = load_script("milenas")


def call(script, *args):
    return script.main([str(a) for a in args])


def assert_outputs(save, cells=("normal", "reduce")):
    alphas = np.load(save / "alphas.npz")
    assert set(alphas.files) == set(cells)
    assert all(np.all(np.isfinite(alphas[c])) for c in cells)
    assert max(np.abs(alphas[c]).max() for c in cells) > 2e-3  # moved from 1e-3 * N(0, 1)
    for name in ("genotype.json", "genotype.png", "alphas.png", "config.json"):
        assert (save / name).is_file()
    return alphas


def test_gdas_search_anneals_tau_and_resumes_exactly(tmp_path):
    straight = tmp_path / "straight"
    assert call(gdas, *CHEAP, "--epochs", "2", "--save", straight) == 0
    rows = read_metrics(straight)
    assert [r["tau"] for r in rows] == [10.0, pytest.approx(0.1)]
    alphas = assert_outputs(straight)
    primitives = CHEAP[CHEAP.index("--ops") + 1].split(",")
    genotype = jnas.load_genotype(straight / "genotype.json", primitives)
    assert genotype == jnas.derive_genotype(dict(alphas), primitives, steps=2, multiplier=2)
    assert json.loads((straight / "config.json").read_text())["algorithm"] == "gdas"

    # The Gumbel samples come from (seed, step): a resumed run draws the same ones.
    crashed = tmp_path / "crashed"
    shutil.copytree(straight, crashed)
    shutil.rmtree(crashed / "checkpoints" / "2")
    assert call(gdas, *CHEAP, "--epochs", "2", "--save", crashed) == 0
    resumed = np.load(crashed / "alphas.npz")
    for k in ("normal", "reduce"):
        np.testing.assert_array_equal(alphas[k], resumed[k])


def test_gdas_with_the_fixed_reduction_cell_searches_the_normal_cell_only(tmp_path):
    save = tmp_path / "frc"
    flags = [*TINY, "--layers", "3", "--fix_reduction", "--epochs", "1", "--save", save]
    assert call(gdas, *flags) == 0
    assert_outputs(save, cells=("normal",))
    (row,) = read_metrics(save)
    assert row["valid_acc"] > 0.2
    assert row["genotype"]["reduce"] == [] and row["genotype"]["reduce_concat"] == []
    genotype = jnas.load_genotype(save / "genotype.json")
    assert len(genotype.normal) == 8 and genotype.reduce == ()


def test_milenas_search(tmp_path):
    save = tmp_path / "milenas"
    assert call(milenas, *CHEAP, "--epochs", "1", "--lambda", "0.5", "--save", save) == 0
    assert_outputs(save)
    (row,) = read_metrics(save)
    assert row["valid_acc"] > 0.2 and "tau" not in row
    config = json.loads((save / "config.json").read_text())
    assert (config["algorithm"], config["lam"], config["gumbel"]) == ("milenas", 0.5, False)


def test_milenas_with_the_gdas_relaxation(tmp_path):
    save = tmp_path / "milenas_gdas"
    assert call(milenas, *CHEAP, "--gdas", "--epochs", "1", "--save", save) == 0
    assert_outputs(save)
    (row,) = read_metrics(save)
    assert row["tau"] == 10.0
    assert json.loads((save / "config.json").read_text())["gumbel"] is True


def test_milenas_step_moves_alpha_by_the_mixed_level_gradient():
    """The step's architecture update is Adam on milenas_hypergrad at the current weights."""
    config = SearchConfig(algorithm="milenas", lam=0.5, dataset="digits", batch_size=8,
                          init_channels=4, layers=3, nodes=2,
                          primitives=("none", "max_pool_3x3", "skip_connect", "sep_conv_3x3"))
    search = Search(config, num_classes=10, steps_per_epoch=4)
    k = jax.random.split(jax.random.key(0), 4)
    train = {"x": jax.random.normal(k[0], (8, 8, 8, 1)), "y": jax.random.randint(k[1], 8, 0, 10)}
    val = {"x": jax.random.normal(k[2], (8, 8, 8, 1)), "y": jax.random.randint(k[3], 8, 0, 10)}
    state = search.init(jax.random.key(1), train["x"][:2])
    new_state, _ = search.step(state, train, val, jax.random.key(2))

    def loss_fn(params, alpha, batch):
        logits, _ = search.model.apply({"params": params, "batch_stats": state.batch_stats},
                                       batch["x"], alpha, mutable=["batch_stats"])
        return cross_entropy(logits, batch["y"])

    mixed = jax.jit(lambda lam: jnas.milenas_hypergrad(
        loss_fn, state.params, state.alpha, train, val, lam=lam)[1])
    dalpha = mixed(0.5)
    updates, _ = search.alpha_tx.update(dalpha, state.alpha_opt_state, state.alpha)
    want = optax.apply_updates(state.alpha, updates)
    for t in want:
        np.testing.assert_allclose(new_state.alpha[t], want[t], rtol=1e-5, atol=1e-7)
        assert not np.allclose(new_state.alpha[t], state.alpha[t])
    # lam matters: the update with lam = 0 differs.
    d0 = mixed(0.0)
    for t in want:
        assert np.abs(np.asarray(dalpha[t])).max() > 0
        assert not np.allclose(d0[t], dalpha[t])


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
    assert call(gdas, *CHEAP, *args, "--save", save) == 2
    assert message in capsys.readouterr().err
    assert not save.exists()
