"""PC-DARTS: the partial-channel edge against a per-channel reference, the edge
normalisation and its derivation, the warm-up, and experiments/pcdarts.py end to end on both
spaces with resume."""

import csv
import itertools
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jnas.errors import JnasError
from jnas.ops import MixedOp
from jnas.relax import make_relaxation
from jnas.spaces.darts import DartsSpace
from jnas.spaces.nb201 import NB201_OPS, NB201Space, to_string
from tests.common import (
    EPOCHS,
    OPS,
    STEPS_PER_EPOCH,
    TINY,
    assert_alpha_moved,
    load_script,
    random_batch,
    read_metrics,
)

pcdarts = load_script("pcdarts")
# K=2: TINY's init_channels is 4, and a stride-2 skip_connect (FactorizedReduce) needs an even
# C/K. One warm-up epoch of the two.
PC_FLAGS = ("--partial_channels", "2", "--warmup_epochs", "1")
NB201_TINY = [
    "--space", "nas-bench-201", "--dataset", "digits", "--init_channels", "4",
    "--cells_per_stage", "1", "--batch_size", "32", "--epochs", str(EPOCHS), "--no_progress",
    "--devices", "1",
]  # fmt: skip


def pc_reference(op, variables, x, weights, k, stride):
    """The edge channel by channel: the ops on the first C/K channels, the others (2x2
    max-pooled on stride 2) scaled by the edge's weight, then channel g * C/K + j moved to
    j * K + g (PC-DARTS's channel_shuffle)."""
    c = x.shape[-1] // k
    ops = 0.0
    for i, name in enumerate(op.primitives):
        if name != "none":
            y, _ = op.apply(variables, x[..., :c], method=lambda m, x, i=i: m._op(i, x),
                            mutable=["batch_stats"])
            ops = ops + weights[i] * np.asarray(y)
    rest = np.asarray(x[..., c:])
    if stride == 2:
        n, h, w, ch = rest.shape
        rest = rest.reshape(n, h // 2, 2, w // 2, 2, ch).max(axis=(2, 4))
    before = np.concatenate([ops, rest * float(np.sum(weights))], axis=-1)
    after = np.empty_like(before)
    for g in range(k):
        for j in range(c):
            after[..., j * k + g] = before[..., g * c + j]
    return after


@pytest.mark.parametrize("stride", [1, 2])
def test_partial_channels_and_shuffle_against_a_per_channel_reference(key, stride):
    k, channels = 4, 16
    op = MixedOp(channels, stride, OPS, partial=k)
    x = jax.random.normal(key, (2, 8, 8, channels))
    # An edge weight of 0.3 (softmax * beta): it scales the bypass too.
    weights = 0.3 * jax.nn.softmax(jax.random.normal(jax.random.key(1), (len(OPS),)))
    variables = op.init(jax.random.key(2), x, weights)
    out, _ = op.apply(variables, x, weights, mutable=["batch_stats"])
    assert out.shape == (2, 8 // stride, 8 // stride, channels)
    want = pc_reference(op, variables, x, np.asarray(weights), k, stride)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)


def test_edge_normalisation_and_its_derivation(key):
    space = DartsSpace(OPS, init_channels=4, layers=3, nodes=2)  # nodes: rows (0, 1), (2, 3, 4)
    pc = make_relaxation("pcdarts", 1, incoming=space.incoming())
    start = pc.init_alpha(key, space.alpha_shapes())
    assert sorted(start) == ["beta_normal", "beta_reduce", "normal", "reduce"]
    for t in ("normal", "reduce"):  # the official 1e-3 * N(0, 1), one beta per edge
        beta = np.asarray(start[f"beta_{t}"])
        assert beta.shape == (5,) and 0 < np.abs(beta).max() < 5e-3
    assert not np.array_equal(start["beta_normal"], start["beta_reduce"])

    rng = np.random.default_rng(0)
    alpha = {k: rng.normal(size=np.shape(v)) for k, v in start.items()}
    for xp_alpha in (alpha, jax.tree.map(jnp.asarray, alpha)):  # numpy float64 and jax
        edges = pc.edge_weights(xp_alpha)
        weights = pc.op_weights(xp_alpha)
        for t in ("normal", "reduce"):
            b = alpha[f"beta_{t}"]
            for rows in space.incoming():
                rows = np.array(rows)
                np.testing.assert_allclose(edges[t][rows], np.exp(b[rows]) / np.exp(b[rows]).sum(),
                                           rtol=1e-5)
                np.testing.assert_allclose(np.sum(edges[t][rows]), 1.0, rtol=1e-6)
            soft = np.exp(alpha[t]) / np.exp(alpha[t]).sum(-1, keepdims=True)
            np.testing.assert_allclose(weights[t], soft * edges[t][:, None], rtol=1e-5)
        assert sorted(weights) == ["normal", "reduce"]

    # Node 1 (rows 2-4: inputs 0, 1 and node 0): DARTS keeps its two edges of the largest
    # softmax (sep_conv from input 0: 0.87, skip from input 1: 0.80, max_pool from node 0:
    # 0.71); beta (normalised 0.24, 0.09, 0.67) makes node 0's edge the strongest and drops
    # input 1's. Each kept edge keeps its op.
    logits = np.zeros((5, len(OPS)))
    logits[[0, 1], 3] = 1.0
    logits[2, OPS.index("sep_conv_3x3")] = 3.0
    logits[3, OPS.index("skip_connect")] = 2.5
    logits[4, OPS.index("max_pool_3x3")] = 2.0
    beta = np.array([0.0, 0.0, 0.0, -1.0, 1.0])
    alpha = {"normal": logits, "reduce": logits, "beta_normal": beta, "beta_reduce": beta}
    darts = make_relaxation("darts", 1)
    plain = space.derive(darts.op_weights({t: logits for t in ("normal", "reduce")}))
    pc_arch = space.derive(pc.op_weights(alpha))
    node1 = lambda arch: sorted(arch.normal[2:])  # noqa: E731
    assert node1(plain) == [("sep_conv_3x3", 0), ("skip_connect", 1)]
    assert node1(pc_arch) == [("max_pool_3x3", 2), ("sep_conv_3x3", 0)]
    assert pc_arch.normal[:2] == plain.normal[:2]


def test_bad_pcdarts_inputs(key):
    with pytest.raises(JnasError, match="needs `incoming`"):
        make_relaxation("pcdarts", 1)
    pc = make_relaxation("pcdarts", 1, incoming=NB201Space().incoming())
    with pytest.raises(JnasError, match="beta_"):
        pc.op_weights({"cell": np.zeros((6, 5))})  # an alpha without betas


def test_architecture_steps_start_after_the_warm_up(tiny_search):
    # The script run's settings (test_pcdarts_search): the same compiled step.
    search, state = tiny_search(algorithm="pcdarts", partial_channels=2, warmup_epochs=1,
                                learning_rate=0.1, learning_rate_min=0.0,
                                arch_learning_rate=6e-4)
    train, val, step_key = random_batch(1), random_batch(2), jax.random.key(3)

    def step_at(step):
        return search.step(state._replace(step=jnp.asarray(step, jnp.int32)), train, val,
                           step_key)

    for step in (0, STEPS_PER_EPOCH - 1):  # epoch 0: weight steps alone
        new, metrics = step_at(step)
        for k in state.alpha:
            np.testing.assert_array_equal(new.alpha[k], state.alpha[k])
        assert float(metrics["arch_loss"]) == 0.0
        assert not all(jax.tree.leaves(jax.tree.map(np.array_equal, new.params, state.params)))
    new, metrics = step_at(STEPS_PER_EPOCH)  # epoch 1's first step: alpha and beta move
    for k in state.alpha:
        assert np.abs(np.asarray(new.alpha[k]) - np.asarray(state.alpha[k])).max() > 1e-5, k
    assert float(metrics["arch_loss"]) > 0.0


def check_run(save, space, cells):
    """The warm-up in the metrics, alpha and beta in alphas.npz, the genotype derived from
    them by op weight times normalised beta."""
    rows = read_metrics(save)
    assert [r["epoch"] for r in rows] == list(range(1, EPOCHS + 1))
    assert rows[0]["arch_loss"] == 0.0 and rows[1]["arch_loss"] > 0.0
    alphas = np.load(save / "alphas.npz")
    assert sorted(alphas.files) == sorted([*cells, *(f"beta_{t}" for t in cells)])
    for t in cells:
        assert alphas[f"beta_{t}"].shape == (space.num_edges(),)
    assert_alpha_moved(save)
    pc = make_relaxation("pcdarts", 1, incoming=space.incoming())
    genotype = json.loads((save / "genotype.json").read_text())
    assert genotype == space.to_dict(space.derive(pc.op_weights(dict(alphas))))
    assert genotype == rows[-1]["genotype"]
    assert (save / "alphas.png").is_file() and (save / "genotype.png").is_file()
    return rows, json.loads((save / "config.json").read_text())


def test_pcdarts_search_and_resume(search_run, tmp_path):
    straight = search_run("pcdarts", *PC_FLAGS)
    rows, config = check_run(straight, DartsSpace(OPS, 4, 3, 2, partial_channels=2),
                             ("normal", "reduce"))
    assert rows[-1]["valid_acc"] > 0.15  # chance is 0.1
    # PC-DARTS's settings (train_search.py), TINY's network and batch.
    assert (config["algorithm"], config["learning_rate"], config["learning_rate_min"],
            config["arch_learning_rate"], config["partial_channels"]) == (
        "pcdarts", 0.1, 0.0, 6e-4, 2)

    crashed = tmp_path / "crashed"
    shutil.copytree(straight, crashed)
    shutil.rmtree(crashed / "checkpoints" / str(EPOCHS))
    assert pcdarts.main([*TINY, *PC_FLAGS, "--save", str(crashed)]) == 0
    a, b = np.load(straight / "alphas.npz"), np.load(crashed / "alphas.npz")
    for k in a.files:
        np.testing.assert_array_equal(a[k], b[k])


def test_pcdarts_on_nb201_with_a_benchmark(tmp_path):
    table = tmp_path / "nb201.csv"
    with open(table, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["arch", "cifar10_test"])
        for ops in itertools.product(NB201_OPS, repeat=6):
            w.writerow([to_string(ops), 50.0 + ops.count("nor_conv_3x3")])
    save = tmp_path / "nb201"
    assert pcdarts.main([*NB201_TINY, *PC_FLAGS, "--benchmark", str(table), "--save",
                         str(save)]) == 0
    rows, config = check_run(save, NB201Space(init_channels=4, cells_per_stage=1), ("cell",))
    assert all("benchmark_cifar10_test" in r for r in rows)
    # The benchmark's DARTS weight settings with PC-DARTS's method and alpha optimiser.
    assert (config["nesterov"], config["weight_decay"], config["learning_rate"],
            config["batch_size"], config["arch_learning_rate"], config["partial_channels"]) == (
        True, 5e-4, 0.025, 32, 6e-4, 2)


def test_warm_up_longer_than_the_run_is_refused(tmp_path, capsys):
    assert pcdarts.main([*TINY, "--save", str(tmp_path / "r")]) == 2  # 15 warm-up epochs of 2
    assert "--warmup_epochs must lie in [0, --epochs)" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
