"""MAML, Auto-MAML and T-NAS learners: meta-gradients, derived architectures, sharding, and
experiments/tnas.py end to end on a tiny fake Omniglot."""

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jnas.errors import JnasError
from jnas.genotype import derive_genotype, genotype_from_dict, load_genotype
from jnas.meta import MetaConfig, MetaLearner
from jnas.sharding import data_mesh, put_batch
from jnas.spaces import DartsSpace
from jnas.transforms import maml_adapt, maml_meta_grad
from tests.common import OPS, load_script

# Ops without a convolution keep the second-order compilations short; the depthwise
# convolutions' derivatives, also under vmap, are tests/test_fast_ops.py's.
META_OPS = ("none", "max_pool_3x3", "skip_connect")
TINY_NAS = dict(init_channels=4, layers=2, nodes=2, primitives=META_OPS)


def fake_tasks(n, way=3, shot=1, query=2, size=28, channels=1, seed=0):
    """Episodes whose classes are learnable: class c brightens row block c of the image."""
    rng = np.random.default_rng(seed)

    def images(labels):
        x = rng.normal(size=(n, labels.shape[1], size, size, channels)).astype(np.float32)
        for c in range(way):
            x[:, :, 4 * c : 4 * c + 4] += 3.0 * (labels == c)[:, :, None, None, None]
        return x

    sy = np.tile(np.repeat(np.arange(way), shot), (n, 1)).astype(np.int32)
    qy = np.tile(np.repeat(np.arange(way), query), (n, 1)).astype(np.int32)
    return {"support_x": images(sy), "support_y": sy, "query_x": images(qy), "query_y": qy}


@pytest.mark.parametrize("steps,seed", [(2, 0), (4, 1), (4, 2)])
def test_traced_derivation_follows_derive_genotype(steps, seed):
    """The derived cells as 0/1 weights inside jit (T-NAS's test-time network) are those of
    the genotype files."""
    rng = np.random.default_rng(seed)
    space = DartsSpace(OPS, nodes=steps)
    edges = space.num_edges()
    derive = jax.jit(lambda w: space.derived_weights({"normal": w})["normal"])
    for _ in range(5):
        alpha = rng.normal(size=(edges, len(OPS)))
        alpha[rng.integers(edges), 0] = 5.0  # a dominant 'none' must not decide the edge
        weights = np.asarray(derive(jax.nn.softmax(jnp.asarray(alpha), -1)))
        genotype = derive_genotype({"normal": alpha, "reduce": alpha}, OPS, steps, steps)
        chosen = sorted(
            (OPS.index(op), node * (node + 3) // 2 + src)
            for node in range(steps)
            for op, src in genotype.normal[2 * node : 2 * node + 2]
        )
        got = sorted((int(o), int(e)) for e, o in zip(*np.nonzero(weights.T)[::-1], strict=True))
        assert got == chosen
        assert set(np.unique(weights)) <= {0.0, 1.0}


@pytest.fixture(scope="module")
def tiny_learner():
    """`tiny_learner(algo)`: (learner, initial state, jitted meta_grad), built once, so that
    the tests of one algorithm share its compiled meta-gradient."""
    built = {}

    def build(algo):
        if algo not in built:
            # MAML's takes 2 of the 3 tasks together and then the third (`lax.map` over groups
            # with a remainder); the others one at a time, the CPU default.
            extra = dict(filters=4, tasks_at_once=2) if algo == "maml" else TINY_NAS
            learner = MetaLearner(MetaConfig(algo=algo, way=3, inner_steps=2, **extra),
                                  IMAGE_SHAPE[algo])
            built[algo] = learner, learner.init(jax.random.key(0)), jax.jit(learner.meta_grad)
        return built[algo]

    return build


IMAGE_SHAPE = {"maml": (28, 28, 1), "auto_maml": (8, 8, 3), "tnas": (8, 8, 3)}


def tiny_tasks(algo, n=3, seed=0):
    size, _, channels = IMAGE_SHAPE[algo]
    return jax.tree.map(jnp.asarray, fake_tasks(n, size=size, channels=channels, seed=seed))


@pytest.mark.parametrize("algo", ["maml", "tnas"])
def test_vmapped_meta_batch_equals_mean_of_single_tasks(tiny_learner, algo):
    learner, state, meta_grad = tiny_learner(algo)
    tasks = tiny_tasks(algo)
    params = learner.meta_params(state)
    losses, accs, grads = meta_grad(params, tasks)

    @jax.jit
    def single(params, task):
        return maml_meta_grad(
            learner.loss, params, (task["support_x"], task["support_y"]),
            (task["query_x"], task["query_y"]), inner_lr=learner.inner_lr(), inner_steps=2,
            has_aux=True,
        )  # fmt: skip

    singles = []
    for t in range(3):
        (loss, acc), g = single(params, jax.tree.map(lambda x, t=t: x[t], tasks))
        np.testing.assert_allclose(losses[t], loss, rtol=1e-5)
        np.testing.assert_allclose(accs[t], acc)
        singles.append(g)
    mean = jax.tree.map(lambda *g: sum(g) / 3, *singles)
    chex.assert_trees_all_close(grads, mean, rtol=2e-4, atol=1e-6)


def test_conv_learner_meta_grad_matches_finite_differences():
    """Second order through BatchNorm, the pooling and the inner steps, in float64."""
    with jax.enable_x64(True):
        config = MetaConfig(algo="maml", way=3, inner_steps=2, inner_lr_w=0.1, filters=3)
        learner = MetaLearner(config, (28, 28, 1))
        w = jax.tree.map(lambda x: x.astype(jnp.float64), learner.init(jax.random.key(1)).w)
        task = jax.tree.map(lambda x: jnp.asarray(x[0]), fake_tasks(1))
        support, query = (task["support_x"], task["support_y"]), (task["query_x"], task["query_y"])
        support = (support[0].astype(jnp.float64), support[1])
        query = (query[0].astype(jnp.float64), query[1])

        def meta_loss(p):
            adapted = maml_adapt(
                learner.loss, p, support, inner_lr=0.1, inner_steps=2, has_aux=True
            )
            return learner.loss(adapted, query)[0]

        grads = jax.grad(meta_loss)(w)
        rng = np.random.default_rng(0)
        direction = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape)), w)
        eps = 1e-7  # small: a larger step crosses ReLU kinks among the 10^5 units
        plus, minus = (
            jax.tree.map(lambda p, d, s=s: p + s * eps * d, w, direction) for s in (1, -1)
        )
        fd = (meta_loss(plus) - meta_loss(minus)) / (2 * eps)
        analytic = sum(
            jnp.vdot(g, d)
            for g, d in zip(jax.tree.leaves(grads), jax.tree.leaves(direction), strict=True)
        )
        np.testing.assert_allclose(analytic, fd, rtol=1e-5)
        first = jax.grad(
            lambda p: learner.loss(
                maml_adapt(
                    learner.loss,
                    p,
                    support,
                    inner_lr=0.1,
                    inner_steps=2,
                    has_aux=True,
                    first_order=True,
                ),
                query,
            )[0]
        )(w)
        gap = max(
            float(jnp.max(jnp.abs(a - b)))
            for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(first), strict=True)
        )
        assert gap > 1e-4  # first order is a different quantity here


@pytest.mark.parametrize("algo", ["auto_maml", "tnas"])
def test_auto_maml_adapts_weights_only_and_tnas_adapts_alpha(tiny_learner, algo):
    learner, state, meta_grad = tiny_learner(algo)
    tasks = tiny_tasks(algo)
    support = (tasks["support_x"][0], tasks["support_y"][0])
    _, _, grads = meta_grad(learner.meta_params(state), tasks)
    # Alpha is meta-learned in both; in Auto-MAML only through the weights' adaptation.
    assert all(float(jnp.max(jnp.abs(g))) > 0 for g in jax.tree.leaves(grads["alpha"]))
    task_alpha = jax.jit(learner.task_alpha)(state, support)
    moved = max(float(jnp.max(jnp.abs(task_alpha[t] - state.alpha[t]))) for t in state.alpha)
    assert (moved > 0) == (algo == "tnas")


def test_images_too_small_for_the_learner_are_refused():
    learner = MetaLearner(MetaConfig(algo="maml"), (8, 8, 1))
    with pytest.raises(JnasError, match="at least 16x16 pixels, got 8x8"):
        learner.init(jax.random.key(0))


def test_step_on_four_devices_equals_one_device():
    config = MetaConfig(algo="maml", way=3, inner_steps=1, filters=4, meta_batch=4)
    results = []
    for devices in (1, 4):  # one device takes the 4 tasks in turn, four devices one each
        learner = MetaLearner(config, (28, 28, 1), data_mesh(devices))
        state = learner.init(jax.random.key(0))
        for i in range(2):
            state, metrics = learner.step(state, put_batch(fake_tasks(4, seed=i), learner.mesh))
        evals = learner.eval_step(state, put_batch(fake_tasks(4, seed=9), learner.mesh))
        results.append(jax.device_get((state, metrics, evals)))
        assert len(state.w["Dense_0"]["kernel"].sharding.device_set) == devices
    for a, b in zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[1]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# --- experiments/tnas.py end to end ---------------------------------------------------------


@pytest.fixture(scope="module")
def fake_omniglot(tmp_path_factory):
    """Packed Omniglot files with 8 train and 6 test characters, 4 drawings each: each
    character a random ink pattern, its drawings that pattern with a few pixels flipped."""
    folder = tmp_path_factory.mktemp("omniglot")
    rng = np.random.default_rng(0)
    for name, ids in (("background", range(8)), ("evaluation", range(1200, 1206))):
        x, y = [], []
        for c in ids:
            pattern = rng.random((15, 15)) < 0.3
            for _ in range(4):
                drawing = pattern ^ (rng.random((15, 15)) < 0.03)
                x.append(np.where(np.kron(drawing, np.ones((7, 7))), 0, 255).astype(np.uint8))
                y.append(c)
        np.savez(folder / f"omniglot_{name}.npz", x=np.stack(x)[..., None], y=np.array(y))
    return str(folder)


def tnas_args(data_dir, save, algo, *extra):
    args = [
        "--algo", algo, "--dataset", "omniglot", "--data_dir", data_dir, "--save", str(save),
        "--way", "2", "--shot", "1", "--query", "2", "--meta_batch", "2", "--inner_steps", "1",
        "--inner_steps_test", "2", "--test_episodes", "5", "--log_every", "2",
        "--checkpoint_every", "2", "--devices", "1", "--no_progress",
    ]  # fmt: skip
    if algo == "maml":
        return args + ["--filters", "4", *extra]
    return args + ["--init_channels", "4", "--nodes", "2", "--ops", ",".join(META_OPS), *extra]


def test_maml_run_resumes_to_the_uninterrupted_result(fake_omniglot, tmp_path, capsys):
    script = load_script("tnas")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert script.main(tnas_args(fake_omniglot, straight, "maml", "--iterations", "4")) == 0
    assert script.main(tnas_args(fake_omniglot, resumed, "maml", "--iterations", "2")) == 0
    assert script.main(tnas_args(fake_omniglot, resumed, "maml", "--iterations", "4")) == 0
    assert "resuming" in capsys.readouterr().out
    # Meta-training has no schedule, so a run may be continued to more iterations; every
    # number computed must agree with the uninterrupted run's.
    rows = [[json.loads(x) for x in open(d / "metrics.jsonl")] for d in (straight, resumed)]
    assert [r["iteration"] for r in rows[0]] == [2, 4] == [r["iteration"] for r in rows[1]]
    for a, b in zip(rows[0], rows[1], strict=True):
        assert a["query_loss"] == pytest.approx(b["query_loss"], rel=1e-6)
    tests = [json.load(open(d / "test.json")) for d in (straight, resumed)]
    assert tests[0]["test_episodes"] == 5 and 0 <= tests[0]["test_acc"] <= 1
    assert tests[0]["test_acc"] == pytest.approx(tests[1]["test_acc"])
    assert not (straight / "genotype.json").exists()
    assert (straight / "curves.png").stat().st_size > 0


@pytest.mark.parametrize("algo", ["auto_maml", "tnas"])
def test_architecture_runs_write_the_derived_genotype(fake_omniglot, tmp_path, algo):
    script = load_script("tnas")
    save = tmp_path / algo
    assert script.main(tnas_args(fake_omniglot, save, algo, "--iterations", "2")) == 0
    alphas = dict(np.load(save / "alphas.npz"))
    assert set(alphas) == {"normal", "reduce"} and alphas["normal"].shape == (5, len(META_OPS))
    genotype = load_genotype(save / "genotype.json", META_OPS)
    assert genotype == derive_genotype(alphas, META_OPS, 2, 2)
    assert (save / "genotype.png").exists() and (save / "alphas.png").exists()
    result = json.load(open(save / "test.json"))
    assert 0 <= result["test_acc"] <= 1 and result["test_ci95"] >= 0
    assert genotype_from_dict(json.load(open(save / "genotype.json")), META_OPS) == genotype


def test_bad_settings_are_refused(fake_omniglot, tmp_path, capsys):
    script = load_script("tnas")
    cases = [
        (["--iterations", "2", "--checkpoint_every", "3"], "multiple of --log_every"),
        (["--iterations", "2", "--way", "40"], "--way 40"),
        (["--iterations", "2", "--meta_batch", "3", "--devices", "2"], "--meta_batch 3"),
        (["--iterations", "0"], "--iterations must be positive"),
        (["--iterations", "2", "--tasks_at_once", "0"], "--tasks_at_once must be positive"),
    ]
    for extra, message in cases:
        args = tnas_args(fake_omniglot, tmp_path / "bad", "maml", *extra)
        assert script.main(args) == 2
        assert message in capsys.readouterr().err
    missing = tnas_args(str(tmp_path / "nowhere"), tmp_path / "bad2", "maml", "--iterations", "2")
    assert script.main(missing) == 2
    assert "omniglot_background.npz" in capsys.readouterr().err
