"""What the tests share: the one tiny search every search test runs, and small helpers.

Compilation is most of the suite's time, and every setting that enters a compiled step (the
algorithm, the network, the batch shape, the epochs and steps per epoch of the learning-rate
schedule, lambda) makes a new program. So every search test, from a single step to a whole
command-line run, uses the settings below, and each algorithm's step compiles once per test
run: later uses load it from the persistent compilation cache that conftest.py sets up.
"""

import importlib.util
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"

# The cheapest network with every kind of state: a normal cell and two reduction cells (3
# layers), an inner edge (2 nodes), a parameter-free op, a pooling op with BatchNorm, and a
# depthwise convolution.
OPS = ("none", "max_pool_3x3", "skip_connect", "sep_conv_3x3")
BATCH = 32
EPOCHS = 2
STEPS_PER_EPOCH = 22  # digits: 1,437 training images, half of them // 32
TINY = [
    "--dataset", "digits", "--layers", "3", "--init_channels", "4", "--nodes", "2",
    "--ops", ",".join(OPS), "--batch_size", str(BATCH), "--epochs", str(EPOCHS),
    "--no_progress", "--devices", "1",
]  # fmt: skip
# The SearchConfig fields of TINY.
TINY_CONFIG = dict(
    dataset="digits", layers=3, init_channels=4, nodes=2, primitives=OPS, batch_size=BATCH,
    epochs=EPOCHS,
)  # fmt: skip
DIGITS_SHAPE = (8, 8, 1)


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_metrics(save):
    return [json.loads(line) for line in (Path(save) / "metrics.jsonl").read_text().splitlines()]


def random_batch(seed, n=BATCH, shape=DIGITS_SHAPE, classes=10):
    """A batch of the digits' shape (so that steps compiled for the runs serve it too)."""
    rng = np.random.default_rng(seed)
    return {
        "x": rng.normal(size=(n, *shape)).astype(np.float32),
        "y": rng.integers(0, classes, n).astype(np.int32),
    }


def assert_alpha_moved(save, atol=1e-4):
    """The run's final alpha differs from the alpha it started from (the runner's keys:
    seed -> init key -> alpha key), in every searched cell type."""
    import jax

    from jnas.search import SearchConfig, search_relaxation, search_space

    fields = json.loads((Path(save) / "config.json").read_text())
    primitives = fields["primitives"] and tuple(fields["primitives"])
    config = SearchConfig(**{**fields, "primitives": primitives})
    init_key = jax.random.split(jax.random.key(config.seed))[0]
    start = search_relaxation(config).init_alpha(
        jax.random.split(init_key, 3)[1], search_space(config).alpha_shapes()
    )
    final = np.load(Path(save) / "alphas.npz")
    assert set(final.files) == set(start)
    for cell in start:
        assert np.abs(final[cell] - np.asarray(start[cell])).max() > atol, cell
