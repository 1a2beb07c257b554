"""Evaluation training (experiments/train.py): the discrete networks, their parameter counts,
drop path, cutout, the auxiliary head's weight, a whole run and its resumption after kill -9."""

import dataclasses
import json
import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jnas
from jnas import cli
from jnas.evaluation import TrainConfig, Trainer, cutout, param_counts
from jnas.ops import drop_path
from jnas.sharding import data_mesh, put_batch, put_replicated
from jnas.spaces import DartsSpace, NB201Space
from jnas.spaces.dag import edge_row
from jnas.steps import cross_entropy
from tests.common import ROOT, load_script, random_batch, read_metrics

train = load_script("train")
# DARTS_V2 at the smallest size with every kind of cell and the auxiliary head (on 2x2 maps).
TINY_TRAIN = ["--dataset", "digits", "--layers", "3", "--init_channels", "4", "--batch_size",
              "32", "--epochs", "2", "--no_progress", "--devices", "1"]
TINY_CONFIG = dict(dataset="digits", layers=3, init_channels=4, batch_size=32, epochs=2)
STEPS = 44  # 1,437 digits // 32


@pytest.fixture(scope="module")
def train_run(tmp_path_factory):
    save = tmp_path_factory.mktemp("train")
    assert train.main([*TINY_TRAIN, "--save", str(save)]) == 0
    return save


@pytest.fixture(scope="module")
def tiny_trainer():
    trainer = Trainer(TrainConfig(**TINY_CONFIG), 10, STEPS, 8)
    return trainer, trainer.init(jax.random.key(0), random_batch(0)["x"][:2])


def _count(space, arch):
    aux = isinstance(space, DartsSpace)
    net = space.eval_network(space.load_arch(arch), 10, train=True, auxiliary=aux)
    rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
    shapes = jax.eval_shape(lambda: net.init(rngs, jnp.zeros((1, 32, 32, 3)), 0.0))
    return param_counts(shapes["params"])


def test_parameter_counts_are_the_official_networks():
    # quark0/darts at f276dd3: cnn/model.py's NetworkCIFAR(36, 10, 20, auxiliary=True, genotype)
    # counted by utils.count_parameters_in_MB (the auxiliary head left out) * 1e6, run with
    # torch 2.13 on CPU; the paper rounds DARTS_V2 to 3.3 M. The head itself: 476,426.
    space = DartsSpace(init_channels=36, layers=20)
    assert _count(space, "DARTS_V1") == {"total": 3_169_414, "auxiliary_head": 476_426}
    assert _count(space, "DARTS_V2") == {"total": 3_349_342, "auxiliary_head": 476_426}
    # AutoDL-Projects at f46486e: xautodl TinyNetwork(16, 5, Structure.str2structure(arch),
    # 10), the sum of p.numel(), the same way.
    nb201 = NB201Space()
    assert _count(nb201, nb201.eval_defaults["arch"])["total"] == 1_288_506
    assert _count(nb201, "|nor_conv_3x3~0|+|none~0|skip_connect~1|+|none~0|none~1|none~2|"
                  )["total"] == 316_346


def test_drop_path_is_unbiased_and_drops_whole_examples():
    x = jnp.ones((20_000, 2, 2, 3))
    y = drop_path(x, 0.3, jax.random.key(0))
    per_example = np.asarray(y).reshape(len(y), -1)
    # Each example is all zeros or all 1 / 0.7.
    np.testing.assert_allclose(np.unique(per_example), [0.0, 1 / 0.7], rtol=1e-6)
    assert (per_example == per_example[:, :1]).all()
    kept = (per_example[:, 0] > 0).mean()
    assert abs(kept - 0.7) < 4 * np.sqrt(0.7 * 0.3 / len(y))  # binomial, 4 sigma
    assert abs(float(y.mean()) - 1.0) < 0.02
    np.testing.assert_array_equal(drop_path(x, 0.0, jax.random.key(0)), x)


def test_cutout_zeros_the_official_square():
    x = jnp.ones((64, 10, 12, 3))
    key = jax.random.key(3)
    out = np.asarray(cutout(x, 6, key))
    # The official mask (cnn/utils.py Cutout) from the same centres.
    ky, kx = jax.random.split(key)
    cy = np.asarray(jax.random.randint(ky, (64, 1, 1), 0, 10)).ravel()
    cx = np.asarray(jax.random.randint(kx, (64, 1, 1), 0, 12)).ravel()
    for i in range(64):
        mask = np.ones((10, 12))
        mask[np.clip(cy[i] - 3, 0, 10) : np.clip(cy[i] + 3, 0, 10),
             np.clip(cx[i] - 3, 0, 12) : np.clip(cx[i] + 3, 0, 12)] = 0
        np.testing.assert_array_equal(out[i], np.repeat(mask[..., None], 3, -1))
    assert (out.reshape(64, -1).sum(1) < x[0].size).all()
    # Centres near the border cut the square off; inside it is whole.
    sizes = (out[..., 0] == 0).sum((1, 2))
    assert sizes.max() == 36 and sizes.min() < 36


def test_the_auxiliary_loss_is_added_with_its_weight(tiny_trainer):
    trainer, state = tiny_trainer
    batch = random_batch(1)
    grad = jax.jit(jax.value_and_grad(trainer.loss, has_aux=True))
    args = (state.params, state.batch_stats, batch["x"], batch["y"], 0.1, jax.random.key(2))
    (t1, (main, _, _)), g1 = grad(*args, 0.5)
    (t2, (main2, _, _)), g2 = grad(*args, 1.5)
    (t3, _), g3 = grad(*args, 2.5)
    # The auxiliary head's own loss, from the network's second output.
    _, aux = trainer.model.apply(
        {"params": state.params, "batch_stats": state.batch_stats}, batch["x"], 0.1,
        rngs={"dropout": jax.random.key(2)}, mutable=["batch_stats"])[0]
    aux_loss = cross_entropy(aux, batch["y"])
    np.testing.assert_allclose(main, main2)
    np.testing.assert_allclose(t1 - main, 0.5 * aux_loss, rtol=1e-5)
    np.testing.assert_allclose(t2 - main, 1.5 * aux_loss, rtol=1e-5)
    # Gradients are affine in the weight; the head's own scale with it, the rest of the
    # network gets the head's gradient too.
    step_a = jax.tree.map(lambda a, b: b - a, g1, g2)
    step_b = jax.tree.map(lambda a, b: b - a, g2, g3)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-6),
                 step_a, step_b)
    head = g1["auxiliary_head"]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(3 * a, b, rtol=1e-4, atol=1e-7),
                 head, g2["auxiliary_head"])
    assert np.abs(step_a["Conv_0"]["kernel"]).max() > 0  # the stem gets the head's gradient


def test_a_run_writes_its_files_and_ramps_drop_path(train_run):
    rows = read_metrics(train_run)
    assert [r["epoch"] for r in rows] == [1, 2]
    # DARTS's schedules: drop path 0.2 * (epoch - 1) / epochs, cosine lr stepped per epoch.
    assert [r["drop_path_prob"] for r in rows] == pytest.approx([0.0, 0.1])
    assert [r["lr"] for r in rows] == pytest.approx([0.025, 0.0125])
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert rows[-1]["test_acc"] > 0.5  # 10 classes: chance is 0.1
    result = json.loads((train_run / "result.json").read_text())
    assert result["test_acc"] == rows[-1]["test_acc"]
    assert result["test_error"] == pytest.approx(100 * (1 - rows[-1]["test_acc"]))
    assert result["arch"] == jnas.genotype.genotype_to_dict(jnas.DARTS_V2)
    assert result["params"] > 0 and result["params_auxiliary_head"] > 0
    assert (train_run / "curves.png").stat().st_size > 10_000


def test_resume_after_kill_9_gives_the_uninterrupted_result(train_run, tmp_path):
    save = tmp_path / "killed"
    cmd = [sys.executable, str(ROOT / "experiments" / "train.py"), *TINY_TRAIN,
           "--save", str(save)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for line in proc.stdout:  # the epoch's line is printed after its checkpoint
        if line.startswith("epoch 1:"):
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert sorted(p.name for p in (save / "checkpoints").iterdir()) == ["1"]
    assert not (save / "result.json").exists()

    assert train.main([*TINY_TRAIN, "--save", str(save)]) == 0
    timing = ("seconds", "steps_per_second")
    drop = lambda rows: [{k: v for k, v in r.items() if k not in timing} for r in rows]  # noqa: E731
    assert drop(read_metrics(save)) == drop(read_metrics(train_run))
    assert json.loads((save / "result.json").read_text()) == json.loads(
        (train_run / "result.json").read_text())


def test_four_devices_take_the_step_of_one(tiny_trainer):
    one, state = tiny_trainer
    four = Trainer(one.config, 10, STEPS, 8, data_mesh(4))
    batch, key = random_batch(4), jax.random.key(5)
    a, _ = one.step(state, put_batch(batch, one.mesh), key)
    b, _ = four.step(put_replicated(state, four.mesh), put_batch(batch, four.mesh), key)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=2e-4, atol=2e-6),
                 a.params, b.params)


def test_bfloat16_computes_in_bfloat16_and_keeps_float32_state(tiny_trainer):
    trainer, state = tiny_trainer
    mixed = Trainer(dataclasses.replace(trainer.config, dtype="bfloat16"), 10, STEPS, 8)
    batch = random_batch(6)
    args = (state.params, state.batch_stats, batch["x"], batch["y"], 0.0, jax.random.key(0), 0.4)
    full, _ = jax.jit(trainer.loss)(*args)
    half, (_, logits, stats) = jax.jit(mixed.loss)(*args)
    assert logits.dtype == jnp.bfloat16
    assert {x.dtype for x in jax.tree.leaves(stats)} == {jnp.dtype("float32")}
    assert abs(float(half) - float(full)) < 0.05 * float(full)


def test_nb201_discrete_network_is_the_search_network_with_one_hot_alpha():
    space = NB201Space(init_channels=4, cells_per_stage=1)
    arch = ("nor_conv_3x3", "none", "skip_connect", "avg_pool_3x3", "nor_conv_1x1",
            "nor_conv_3x3")
    search, discrete = space.network(10, train=True), space.eval_network(arch, 10, train=True)
    x = jax.random.normal(jax.random.key(0), (4, 8, 8, 3))
    one_hot = {"cell": jax.nn.one_hot([space.primitives.index(op) for op in arch], 5)}
    variables = jax.eval_shape(search.init, jax.random.key(1), x, one_hot)
    # Random search weights, so that every op's parameters matter.
    leaves, tree = jax.tree.flatten(variables["params"])
    keys = jax.random.split(jax.random.key(2), len(leaves))
    params = jax.tree.unflatten(tree, [0.3 * jax.random.normal(k, p.shape)
                                       for k, p in zip(keys, leaves, strict=True)])
    # The search ops' convolution biases (their BatchNorm is affine-free) stay 0: the discrete
    # ops have the BatchNorm shift instead, after the normalisation, at its initial 0.
    params = jax.tree_util.tree_map_with_path(
        lambda path, v: v * 0 if "cells_" in path[0].key and path[-1].key == "bias" else v,
        params)
    theirs = jax.eval_shape(discrete.init, jax.random.key(3), x)["params"]
    mine = {k: v for k, v in params.items() if not k.startswith("cells_")}
    groups = [[edge_row(n, 0, 1) for n in range(3)], [edge_row(n, s, 1) for n in (1, 2)
                                                      for s in range(1, n + 1)]]
    for stage in range(3):
        cells = {}
        for name, edge in theirs[f"cells_{stage}"].items():
            row = int(name.split("_")[1])
            group = 0 if row in groups[0] else 1
            ops = params[f"cells_{stage}"][f"edges_{group}"]
            conv = ops[f"ops_{space.primitives.index(arch[row])}"]["PatchConv_0"]
            cells[name] = {"PatchConv_0": {"kernel": conv["kernel"][:, groups[group].index(row)]},
                           "BatchNorm_0": {"scale": jnp.ones(edge["BatchNorm_0"]["scale"].shape),
                                           "bias": jnp.zeros(edge["BatchNorm_0"]["bias"].shape)}}
        mine[f"cells_{stage}"] = cells
    # Training mode normalises with the batch's statistics; the running ones are only updated.
    stats = {"batch_stats": jax.tree.map(lambda v: jnp.zeros(v.shape), variables["batch_stats"])}
    want = jax.jit(lambda p: search.apply({"params": p, **stats}, x, one_hot,
                                          mutable=["batch_stats"])[0])(params)
    got = jax.jit(lambda p: discrete.apply({"params": p}, x, mutable=["batch_stats"])[0][0])(mine)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_architectures_and_settings_get_clear_errors(capsys):
    def error_of(*args, flags=TINY_TRAIN):
        assert train.main([*flags, *args]) == 2
        return capsys.readouterr().err

    assert "--arch: 'DARTS_V9' is not a known genotype (DARTS_V1, " in error_of(
        "--arch", "DARTS_V9")
    err = error_of("--arch", "|nor_conv_3x3~0|+|none~0|skip_connect~1|+|none~0|none~1|none~2|")
    assert "nas-bench-201 space: train it with --protocol nas-bench-201" in err
    err = error_of("--protocol", "nas-bench-201", "--auxiliary_weight", "0.4",
                   flags=["--dataset", "digits"])
    assert "no auxiliary head" in err and "--auxiliary_weight 0" in err
    assert "--cells_per_stage" in error_of("--cells_per_stage", "2")
    assert "--test_dataset" in error_of("--dataset", "x.npz")
    assert "--drop_path_prob must lie in [0, 1)" in error_of("--drop_path_prob", "1")
    with pytest.raises(jnas.JnasError, match="is not a known genotype"):
        DartsSpace().load_arch("normal=[sep_conv_3x3]")
    # Python-written genotypes, as DARTS's genotypes.py and jnas's logs write them.
    assert DartsSpace().load_arch(str(tuple(jnas.DARTS_V1))) == jnas.DARTS_V1
    assert cli.train_config("", ["--protocol", "nas-bench-201"])[0].learning_rate == 0.1
