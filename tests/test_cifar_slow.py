"""A real CIFAR-10 search epoch from the packed files in ../shared/data (slow: -m slow)."""

import json
from pathlib import Path

import numpy as np
import pytest

from jnas.data import load_dataset
from tests.test_darts_experiment import run

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.mark.slow
def test_darts_search_on_real_cifar10_images(tmp_path):
    if not (SHARED / "cifar10" / "cifar10_train_jpeg.npz").exists():
        pytest.skip(f"no CIFAR-10 files in {SHARED}")
    # The real JPEG-packed training set, cut to 1,024 images: a whole 25,000-image search
    # epoch takes hours on a 2-core CPU.
    cifar = load_dataset("cifar10", data_dir=str(SHARED))
    assert cifar.x.shape == (50000, 32, 32, 3) and cifar.augment
    subset = tmp_path / "cifar10_1024.npz"
    np.savez(subset, x=cifar.x[:1024], y=cifar.y[:1024])

    save = tmp_path / "cifar"
    flags = ["--dataset", subset, "--layers", "3", "--init_channels", "4", "--batch_size", "32",
             "--epochs", "2", "--no_progress", "--save", save]
    assert run(*flags) == 0
    rows = [json.loads(line) for line in (save / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(np.isfinite(r["train_loss"]) for r in rows)
    # Two epochs of 16 steps: the training loss falls below chance level, log(10) = 2.30.
    assert rows[-1]["train_loss"] < 2.2
