"""ENAS: the controller's REINFORCE update on a problem with a known answer, the shared-weight
step on the sampled child's path alone, the warm-restart schedule, and experiments/enas.py
end to end (outputs, resume, bad input) on the tiny NAS-Bench-201 network."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jnas.enas import (
    Enas,
    EnasConfig,
    controller_optimizer,
    controller_update,
    weight_schedule,
)
from jnas.sampling import to_ops
from jnas.sharding import data_mesh
from tests.common import STEPS_PER_EPOCH, load_script, random_batch, read_metrics

enas = load_script("enas")
# The tiny NB201 network on the digits, two short controller phases; no weight decay, so
# that a weight step moves only what the sampled child's loss reaches.
TINY = dict(
    dataset="digits", init_channels=4, cells_per_stage=1, batch_size=32, epochs=2,
    train_portion=0.5, controller_train_steps=2, controller_num_aggregate=4, derive_samples=4,
    weight_decay=0.0,
)  # fmt: skip
FLAGS = ["--space", "nas-bench-201", "--no_progress", "--devices", "1"] + [
    a for k, v in TINY.items() for a in (f"--{k}", str(v))]
NB201_GROUPS = {"edges_0": (0, 1, 3), "edges_1": (2, 4, 5)}  # the cell's stacked edge rows


def test_controller_update_learns_the_cell_of_highest_reward():
    """Reward: the share of edges whose op is nor_conv_3x3 (column 3); 1 for the all-3x3
    cell, which starts at probability 5^-6."""
    config = EnasConfig.published("nas-bench-201", controller_lr=0.1)
    ctrl = config.controller()
    tx = controller_optimizer(config)
    theta = ctrl.init(jax.random.key(0))
    target = np.full(6, 3)

    @jax.jit
    def update(theta, opt_state, baseline, key):
        actions = jax.vmap(ctrl.sample, in_axes=(None, 0))(theta, jax.random.split(key, 16))[0]
        return controller_update(ctrl, tx, theta, opt_state, baseline, actions,
                                 (actions == 3).mean(-1), baseline_decay=0.9,
                                 entropy_weight=config.entropy_weight)

    p0 = float(np.exp(ctrl.log_prob(theta, target)[0]))
    opt_state, baseline, rewards = tx.init(theta), jnp.zeros(()), []
    for i in range(25):
        theta, opt_state, baseline, m = update(theta, opt_state, baseline, jax.random.key(i))
        rewards.append(float(m["reward"]))
    assert p0 < 1e-3
    assert float(np.exp(ctrl.log_prob(theta, target)[0])) > 0.5
    np.testing.assert_array_equal(ctrl.greedy(theta), target)
    assert rewards[0] < 0.35 and np.mean(rewards[-5:]) > 0.8  # from 1/5, a uniform draw's
    assert 0.0 < float(baseline) < 1.0


def test_weight_schedule_restarts_its_cosine():
    config = EnasConfig(learning_rate=1.0, learning_rate_min=0.0, restart_epochs=2,
                        restart_mult=2, epochs=7)
    schedule = weight_schedule(config, steps_per_epoch=3)
    cycles = [(0, 2), (1, 2), (0, 4), (1, 4), (2, 4), (3, 4), (0, 8)]  # (t, T) per epoch
    for epoch, (t, length) in enumerate(cycles):
        want = (1 + np.cos(np.pi * t / length)) / 2
        for step in range(3 * epoch, 3 * epoch + 3):
            assert float(schedule(step)) == pytest.approx(want, abs=1e-6)
    assert float(schedule(100)) == pytest.approx(1.0)  # past the end: the last epoch's
    plain = weight_schedule(EnasConfig(restart_epochs=0, epochs=4), 1)
    assert [float(plain(e)) for e in range(4)] == pytest.approx(
        [0.0005 + 0.0495 * (1 + np.cos(np.pi * e / 4)) / 2 for e in range(4)])


def test_weight_step_trains_only_the_sampled_path():
    config = EnasConfig.published("nas-bench-201", **TINY)
    search = Enas(config, 10, STEPS_PER_EPOCH, data_mesh(1))
    state = search.init(jax.random.key(0), random_batch(0)["x"][:2])
    key = jax.random.key(7)
    new, metrics = search.weight_step(state, random_batch(1), key)
    assert int(new.step) == 1 and np.isfinite(float(metrics["train_loss"]))
    # The step's child: the controller's sample from the step's key.
    actions = jax.jit(search.controller.sample)(state.controller, key)[0]
    ops = np.asarray(to_ops(search.space, actions)["cell"])
    before, after = state.params["cells_0"], new.params["cells_0"]
    moved = 0
    for group, rows in NB201_GROUPS.items():
        for column in before[group]:  # ops_2 (nor_conv_1x1), ops_3 (nor_conv_3x3)
            k = int(column.split("_")[1])
            for pos, row in enumerate(rows):
                old = jax.tree.map(lambda x, p=pos: np.asarray(x)[0, p], before[group][column])
                now = jax.tree.map(lambda x, p=pos: np.asarray(x)[0, p], after[group][column])
                same = all(np.array_equal(a, b) for a, b in
                           zip(jax.tree.leaves(old), jax.tree.leaves(now), strict=True))
                if ops[row] != k:
                    assert same, (row, column)
                moved += not same
    assert moved > 0 or not np.isin(ops, (2, 3)).any()
    # The controller, its optimizer and the baseline are the controller phase's.
    for a, b in zip(jax.tree.leaves(state.controller), jax.tree.leaves(new.controller),
                    strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    save = tmp_path_factory.mktemp("enas") / "run"
    assert enas.main([*FLAGS, "--save", str(save)]) == 0
    return save


def test_enas_run_logs_the_controller_and_derives_the_best_sample(run):
    rows = read_metrics(run)
    assert [r["epoch"] for r in rows] == [1, 2]
    for r in rows:
        assert 0 <= r["reward"] <= 1 and r["entropy"] > 0 and r["greedy"]["arch"]
    assert 0 < rows[0]["baseline"] < rows[1]["baseline"] < 1  # moving toward the rewards
    table = json.loads((run / "selection.json").read_text())["candidates"]
    result = json.loads((run / "result.json").read_text())
    assert len(table) == 4 and result["valid_acc"] == table[0]["valid_acc"] == max(
        c["valid_acc"] for c in table)
    assert result["arch"] == table[0]["arch"]
    assert json.loads((run / "genotype.json").read_text()) == result["genotype"]
    assert result["genotype"]["arch"] == result["arch"]
    for name in ("genotype.png", "curves.png", "controller.png", "config.json"):
        assert (run / name).is_file()
    config = json.loads((run / "config.json").read_text())
    assert (config["space"], config["lstm_size"], config["temperature"]) == (
        "nas-bench-201", 32, 5.0)  # NAS-Bench-201's controller


def test_enas_resumes_to_the_uninterrupted_result(run, tmp_path):
    crashed = tmp_path / "crashed"
    shutil.copytree(run, crashed)
    shutil.rmtree(crashed / "checkpoints" / "2")
    (crashed / "result.json").unlink()
    assert enas.main([*FLAGS, "--save", str(crashed)]) == 0

    def rows(save):
        return [{k: v for k, v in r.items() if k not in ("seconds", "steps_per_second")}
                for r in read_metrics(save)]

    assert rows(crashed) == rows(run)
    for name in ("result.json", "selection.json", "genotype.json"):
        assert (crashed / name).read_text() == (run / name).read_text()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--controller_num_aggregate", "0"], "--controller_num_aggregate must be at least 1"),
        (["--baseline_decay", "1.5"], "--baseline_decay must lie in [0, 1]"),
        (["--train_portion", "0.9", "--batch_size", "200"],
         "--batch_size 200 is larger than the 144 validation examples"),
        (["--layers", "5"], "--layers is a setting of the darts space"),
    ],
)
def test_bad_enas_flags_fail_with_one_message(tmp_path, capsys, args, message):
    save = tmp_path / "bad"
    assert enas.main([*FLAGS, *args, "--save", str(save)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (save / "checkpoints").exists()
