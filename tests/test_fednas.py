"""FedNAS: partitions, the federated transforms, and experiments/fednas.py end to end on
digits with a one-cell NAS-Bench-201 network."""

import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jnas
from jnas.errors import JnasError
from jnas.fednas import FedConfig, FedJob, local_defaults
from jnas.partition import PARTITIONS, class_counts, partition
from tests.common import ROOT, load_script, read_metrics

fednas = load_script("fednas")

# Short runs: two programs that compute the same step (vmapped or not, compiled in a process
# with 1 or 4 CPU devices) round differently (1e-8), and training amplifies
# the difference, about 1e4-fold over 22 steps of this network on digits. Batches of 64 make
# a round 5 steps, so programs that compute the same thing agree to float tolerance. Seed 2:
# the partition (client sizes 634 and 803) on which the tolerances below were measured.
FED_TINY = [
    "--space", "nas-bench-201", "--dataset", "digits", "--init_channels", "8",
    "--cells_per_stage", "1", "--batch_size", "64", "--clients", "2", "--rounds", "2",
    "--local_epochs", "1", "--no_progress", "--devices", "1", "--seed", "2",
]  # fmt: skip
ROUNDS = 2


def run(*args):
    return fednas.main([str(a) for a in args])


def tiny_config(save, **fed):
    local = local_defaults("search", "nas-bench-201", dataset="digits", init_channels=8,
                           cells_per_stage=1, batch_size=64, epochs=1, devices=1, seed=2,
                           save=str(save))
    return FedConfig(local=local, **{"clients": 2, "rounds": ROUNDS, **fed})


@pytest.fixture(scope="module")
def fed_run(tmp_path_factory):
    """`fed_run(*flags)`: the folder of a finished tiny run, once per flags."""
    runs = {}

    def get(*flags):
        if flags not in runs:
            save = tmp_path_factory.mktemp("fednas")
            assert run(*FED_TINY, *flags, "--save", save) == 0
            runs[flags] = save
        return runs[flags]

    return get


# Partitions.

LABELS = np.repeat(np.arange(10), 1000)


@pytest.mark.parametrize("kind", PARTITIONS)
def test_a_partition_uses_every_example_once_and_is_deterministic(kind):
    parts = partition(LABELS, 8, kind, seed=3)
    assert len(parts) == 8
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(len(LABELS)))
    again = partition(LABELS, 8, kind, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    other = partition(LABELS, 8, kind, seed=4)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other, strict=True))


def test_dirichlet_skew_grows_as_its_alpha_falls_and_keeps_the_minimum():
    def mean_entropy(alpha):
        counts = class_counts(LABELS, partition(LABELS, 10, dirichlet_alpha=alpha, seed=0,
                                                min_samples=50), 10)
        p = counts / counts.sum(1, keepdims=True)
        return float(np.mean(-np.sum(np.where(p > 0, p * np.log(np.maximum(p, 1e-12)), 0), 1)))

    entropies = [mean_entropy(a) for a in (100.0, 1.0, 0.1)]
    assert entropies[0] > 2.2  # near log(10) = 2.30: every class on every client
    assert entropies[0] > entropies[1] > entropies[2]
    sizes = [len(p) for p in partition(LABELS, 10, dirichlet_alpha=0.1, seed=0,
                                       min_samples=300)]
    assert min(sizes) >= 300


def test_shards_give_each_client_two_label_shards():
    counts = class_counts(LABELS, partition(LABELS, 5, "shards", seed=1), 10)
    # 10 shards of 1,000 sorted labels: one class each, two per client.
    assert ((counts > 0).sum(1) <= 2).all() and (counts.sum(1) == 2000).all()


@pytest.mark.parametrize("kwargs, message", [
    (dict(clients=20_001), "lower `clients`"),
    (dict(clients=4, dirichlet_alpha=0.0), "`dirichlet_alpha` must be > 0"),
    (dict(clients=4, kind="pathological"), "unknown `partition`"),
    (dict(clients=201, min_samples=100), "lower `clients`"),
    (dict(clients=3, dirichlet_alpha=1e-3, min_samples=6000), "no Dirichlet"),
])  # fmt: skip
def test_impossible_partitions_are_refused(kwargs, message):
    with pytest.raises(JnasError, match=message.replace("(", r"\(")):
        partition(np.repeat(np.arange(2), 10_000), **kwargs)


# The transforms.


def test_weighted_average_is_the_closed_form():
    rng = np.random.default_rng(0)
    tree = {"w": rng.normal(size=(3, 4, 5)), "alpha": {"normal": rng.normal(size=(3, 6))}}
    sizes = np.array([600.0, 200.0, 200.0])
    out = jnas.weighted_average(jax.tree.map(jnp.asarray, tree), sizes)
    np.testing.assert_allclose(out["w"], 0.6 * tree["w"][0] + 0.2 * (tree["w"][1] +
                                                                     tree["w"][2]), rtol=1e-6)
    np.testing.assert_allclose(out["alpha"]["normal"], sizes @ tree["alpha"]["normal"] / 1000,
                               rtol=1e-6)
    with pytest.raises(JnasError, match="leading client axis"):
        jnas.weighted_average({"w": jnp.zeros((2, 3))}, sizes)


def test_federated_round_on_a_linear_model_is_fedavg_of_local_sgd():
    """Two clients, three SGD steps each on a least-squares loss, by hand and as a round."""
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(2, 3, 8, 4)), rng.normal(size=(2, 3, 8))
    w0 = rng.normal(size=4)

    def step(w, xb, yb):
        g = jax.grad(lambda w: jnp.mean((xb @ w - yb) ** 2))(w)
        return w - 0.1 * g, {"loss": jnp.mean((xb @ w - yb) ** 2)}

    server, metrics = jnas.federated_round(step, w0, (x, y), jnp.array([3.0, 1.0]),
                                           start=lambda s: s, share=lambda s: s)
    local = []
    for k in range(2):
        w = w0
        for t in range(3):
            w = w - 0.1 * 2 * x[k, t].T @ (x[k, t] @ w - y[k, t]) / 8
        local.append(w)
    np.testing.assert_allclose(server, 0.75 * local[0] + 0.25 * local[1], rtol=1e-5)
    assert metrics["loss"].shape == (2, 3)


def test_a_round_is_each_clients_milenas_steps_then_the_weighted_average(tmp_path):
    job = FedJob(tiny_config(tmp_path / "f"))
    state = job.init()
    server = state.server
    (local_epoch, batches, keys), = list(job.step_inputs(1))
    after = job.step(state, local_epoch, batches, keys)[0]

    search = job.learner.search
    for k in range(2):
        client = job.learner.start(server)
        for t in range(job.steps_per_epoch):
            train, val = (jax.tree.map(lambda b, i=(k, t): b[i], half) for half in batches)
            client = search.step(client, train, val, keys[k, t])[0]
        got = jax.tree.map(lambda x, k=k: x[k], after.clients)
        for name in ("params", "alpha", "batch_stats"):
            jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                         getattr(got, name), getattr(client, name))
        # The client's steps moved alpha: the comparison is not of initial values.
        assert np.abs(client.alpha["cell"] - server["alpha"]["cell"]).max() > 1e-4
    sizes = job.sizes / job.sizes.sum()
    expected = jax.tree.map(lambda x: sizes[0] * x[0] + sizes[1] * x[1], after.clients.alpha)
    np.testing.assert_allclose(after.server["alpha"]["cell"], expected["cell"], rtol=1e-5)


# The script.


def test_a_search_writes_every_output(fed_run):
    save = fed_run()
    for name in ("genotype.json", "genotype.png", "alphas.npz", "alphas.png", "curves.png",
                 "clients.png", "partition.png", "partition.txt", "config.json"):
        assert (save / name).is_file(), name
    rows = read_metrics(save)
    assert [r["round"] for r in rows] == list(range(1, ROUNDS + 1))
    assert all(len(r["client_valid_acc"]) == 2 for r in rows)
    # The union's accuracy is the clients' weighted by their validation halves.
    assert min(rows[-1]["client_valid_acc"]) <= rows[-1]["valid_acc"]
    assert rows[-1]["valid_acc"] <= max(rows[-1]["client_valid_acc"])
    assert rows[-1]["valid_acc"] > 0.3  # chance is 0.1
    assert "total" in (save / "partition.txt").read_text()


def test_four_devices_give_the_one_device_result(fed_run):
    one, four = fed_run(), fed_run("--devices", "4")  # 1 x 1 and 2 x 2 meshes
    a, b = np.load(one / "alphas.npz"), np.load(four / "alphas.npz")
    # The meshes reduce in different orders and 10 steps amplify that to ~2e-6; alpha moves
    # ~3e-3 over the run, and weighting the clients wrongly would show at ~1e-4.
    np.testing.assert_allclose(a["cell"], b["cell"], atol=1e-5)
    for r1, r4 in zip(read_metrics(one), read_metrics(four), strict=True):
        assert r1["valid_acc"] == pytest.approx(r4["valid_acc"], abs=2e-3)


def test_a_run_killed_mid_round_resumes_to_the_uninterrupted_result(fed_run, tmp_path):
    straight = fed_run()
    save = tmp_path / "killed"
    command = [sys.executable, str(ROOT / "experiments" / "fednas.py"), *FED_TINY,
               "--save", str(save)]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        while not (save / "checkpoints" / "1").is_dir() and proc.poll() is None:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert run(*FED_TINY, "--save", save) == 0
    a, b = np.load(straight / "alphas.npz"), np.load(save / "alphas.npz")
    # Not bitwise: the killed run's first round ran in a process with one CPU device, the
    # straight run in this one (4), and the two differ at 1e-9; a lost round, key or
    # optimizer state would differ by the size of a step (1e-4).
    np.testing.assert_allclose(a["cell"], b["cell"], rtol=0, atol=1e-7)
    timing = ("seconds", "steps_per_second")
    drop = lambda rows: [{k: v for k, v in r.items() if k not in timing} for r in rows]  # noqa: E731
    assert drop(read_metrics(straight)) == drop(read_metrics(save))


def test_fedavg_trains_a_fixed_architecture(fed_run):
    cell = "|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|skip_connect~0|none~1|none~2|"
    save = fed_run("--stage", "train", "--arch", cell)
    rows = read_metrics(save)
    assert rows[-1]["valid_acc"] > 0.3 and not (save / "alphas.npz").exists()
    assert rows[-1]["test_acc"] > 0.3  # the global model on digits' test split


@pytest.mark.parametrize("flags, message", [
    (("--clients", "2000"), "--clients"),
    (("--dirichlet_alpha", "0"), "--dirichlet_alpha"),
    (("--batch_size", "400"), "--batch_size to at most"),
    (("--rounds", "0"), "--rounds"),
    (("--track_hessian",), "unrecognized arguments"),
])  # fmt: skip
def test_bad_input_is_one_clear_message(tmp_path, capsys, flags, message):
    try:
        code = run(*FED_TINY, *flags, "--save", tmp_path / "bad")
    except SystemExit as e:  # argparse's own refusal
        code = e.code
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "bad" / "checkpoints").exists()


def test_settings_a_federated_search_does_not_read_are_refused(tmp_path):
    local = local_defaults("search", "nas-bench-201", track_hessian=True)
    with pytest.raises(JnasError, match="track_hessian"):
        FedConfig(local=local)
