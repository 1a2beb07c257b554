import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jnas.data import (
    ImageDataset,
    eval_batches,
    load_dataset,
    num_train_batches,
    preprocess,
    search_split,
    train_batches,
)
from jnas.errors import JnasError

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MEAN = (0.5, 0.4, 0.3)
STD = (0.25, 0.2, 0.3)


def synthetic(n=40, size=8, augment=False, seed=0):
    """Random RGB images whose label is their row index, so batches reveal which rows they hold."""
    x = np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    return ImageDataset("synthetic", x, np.arange(n, dtype=np.int32), n, MEAN, STD, augment)


def to_uint8(ds, x):
    """Undo preprocess (exact up to float rounding, so round back to the integer pixels)."""
    pixels = (x * np.asarray(ds.std, np.float32) + np.asarray(ds.mean, np.float32)) * 255
    return np.round(pixels).astype(np.uint8)


def flat_colour_images(n, size=16):
    """Flat colours survive JPEG almost exactly, which makes a lossy round trip checkable."""
    colours = np.random.default_rng(1).integers(0, 256, (n, 3), dtype=np.uint8)
    return np.broadcast_to(colours[:, None, None, :], (n, size, size, 3)).copy()


def write_jpeg_npz(path, x, y):
    blobs = []
    for image in x:
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="JPEG", quality=95)
        blobs.append(np.frombuffer(buf.getvalue(), np.uint8))
    offsets = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype(np.int64)
    np.savez(path, jpeg=np.concatenate(blobs), offsets=offsets, y=np.asarray(y, np.int64))


# --- digits -----------------------------------------------------------------------------------


def test_digits_shapes_split_and_values():
    train = load_dataset("digits")
    test = load_dataset("digits", split="test")
    assert train.x.shape == (1437, 8, 8, 1) and test.x.shape == (360, 8, 8, 1)
    assert train.x.dtype == np.uint8 and train.y.dtype == np.int32
    assert train.num_classes == 10 and not train.augment
    assert train.x.max() == 255 and train.x.min() == 0  # 16 maps to 255, 0 to 0
    assert set(np.unique(train.y)) == set(range(10))
    # Train and test are different rows of the same 1797 images: together they are all of them.
    from sklearn.datasets import load_digits

    original = np.round(load_digits().images * 255 / 16).astype(np.uint8).reshape(1797, -1)
    both = np.concatenate([train.x, test.x]).reshape(1797, -1)
    assert sorted(map(bytes, both)) == sorted(map(bytes, original))
    assert not set(map(bytes, train.x.reshape(1437, -1))) & set(map(bytes, test.x.reshape(360, -1)))
    # Statistics come from the train split and are shared by the test split.
    assert train.mean == test.mean and train.std == test.std
    assert train.mean[0] == pytest.approx(train.x.mean() / 255, rel=1e-6)
    assert train.std[0] == pytest.approx((train.x / 255).std(), rel=1e-6)
    # Deterministic: a second load gives the same rows.
    np.testing.assert_array_equal(load_dataset("digits").x, train.x)


def test_preprocess_normalises_to_zero_mean_unit_std():
    train = load_dataset("digits")
    x = preprocess(train, train.x)
    assert x.dtype == np.float32 and x.shape == train.x.shape
    assert x.mean() == pytest.approx(0, abs=1e-4)
    assert x.std() == pytest.approx(1, abs=1e-4)


# --- search_split ------------------------------------------------------------------------------


def test_search_split_sizes_and_file_order():
    ds = synthetic(n=25)
    weights, arch = search_split(ds, 0.5)
    assert len(weights) == 12 and len(arch) == 13  # int(0.5 * 25) == 12
    np.testing.assert_array_equal(weights.y, np.arange(12))
    np.testing.assert_array_equal(arch.y, np.arange(12, 25))
    np.testing.assert_array_equal(arch.x, ds.x[12:])
    assert arch.mean == ds.mean and arch.augment == ds.augment and arch.name == ds.name


@pytest.mark.parametrize("portion", [0.0, 1.0, -0.1, 1.5])
def test_search_split_rejects_bad_portion(portion):
    with pytest.raises(JnasError, match="train_portion"):
        search_split(synthetic(), portion)


def test_search_split_rejects_empty_part():
    with pytest.raises(JnasError, match="empty"):
        search_split(synthetic(n=3), 0.2)


# --- train_batches -----------------------------------------------------------------------------


def test_train_batches_deterministic_static_and_drop_remainder():
    ds = synthetic(n=43)
    first = list(train_batches(ds, 8, seed=3, epoch=0))
    again = list(train_batches(ds, 8, seed=3, epoch=0))
    other = list(train_batches(ds, 8, seed=3, epoch=1))
    assert len(first) == num_train_batches(ds, 8) == 5  # 43 // 8, the last 3 dropped
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a["x"], b["x"])
        np.testing.assert_array_equal(a["y"], b["y"])
    assert not np.array_equal(
        np.concatenate([b["y"] for b in first]), np.concatenate([b["y"] for b in other])
    )
    for batch in first:
        assert set(batch) == {"x", "y"}
        assert batch["x"].shape == (8, 8, 8, 3) and batch["x"].dtype == np.float32
        assert batch["y"].shape == (8,) and batch["y"].dtype == np.int32


def test_train_batches_each_example_at_most_once_and_matches_its_row():
    ds = synthetic(n=43)
    seen = []
    for batch in train_batches(ds, 8, seed=0, epoch=2):
        # Without augmentation a batch is exactly the normalised rows its labels name.
        np.testing.assert_allclose(batch["x"], preprocess(ds, ds.x[batch["y"]]), rtol=0, atol=0)
        seen.extend(batch["y"].tolist())
    assert len(seen) == 40 and len(set(seen)) == 40
    assert seen != sorted(seen)  # shuffled


def test_train_batches_rejects_bad_batch_size():
    ds = synthetic(n=10)
    with pytest.raises(JnasError, match=r"10 examples.*lower `batch_size`"):
        next(train_batches(ds, 11, seed=0, epoch=0))
    with pytest.raises(JnasError, match="at least 1"):
        num_train_batches(ds, 0)


def test_augmentation_is_a_padded_crop_then_maybe_a_flip():
    ds = synthetic(n=64, augment=True)
    padded = np.pad(ds.x, ((0, 0), (4, 4), (4, 4), (0, 0)))
    flips, tops, lefts = 0, set(), set()
    for batch in train_batches(ds, 16, seed=0, epoch=0):
        assert batch["x"].shape == (16, 8, 8, 3)
        for image, label in zip(to_uint8(ds, batch["x"]), batch["y"], strict=True):
            matches = [
                (top, left, flip)
                for top in range(9)
                for left in range(9)
                for flip in (False, True)
                if np.array_equal(
                    image,
                    padded[label, top : top + 8, left : left + 8][:, :: -1 if flip else 1],
                )
            ]
            assert len(matches) == 1, "augmented image is not a crop/flip of its own source"
            top, left, flip = matches[0]
            flips += flip
            tops.add(top)
            lefts.add(left)
    assert 10 < flips < 54  # p = 0.5 over 64 images
    assert len(tops) > 5 and len(lefts) > 5  # crops move both ways, over the 9 offsets


# --- eval_batches ------------------------------------------------------------------------------


def test_eval_batches_cover_everything_once_with_mask():
    ds = synthetic(n=21)
    batches = list(eval_batches(ds, 8))
    assert len(batches) == 3
    for batch in batches:
        assert batch["x"].shape == (8, 8, 8, 3) and batch["mask"].dtype == np.float32
    np.testing.assert_array_equal(batches[0]["mask"], np.ones(8))
    np.testing.assert_array_equal(batches[-1]["mask"], [1, 1, 1, 1, 1, 0, 0, 0])
    real = np.concatenate([b["y"][b["mask"] == 1] for b in batches])
    np.testing.assert_array_equal(real, np.arange(21))  # in order, each exactly once
    np.testing.assert_array_equal(batches[-1]["y"][5:], [0, 0, 0])  # padding repeats row 0
    x = np.concatenate([b["x"] for b in batches])[:21]
    np.testing.assert_array_equal(x, preprocess(ds, ds.x))  # no augmentation


def test_eval_batches_larger_than_dataset():
    (batch,) = eval_batches(synthetic(n=5, augment=True), 8)
    assert batch["x"].shape[0] == 8 and batch["mask"].sum() == 5


# --- .npz files --------------------------------------------------------------------------------


def test_plain_npz_round_trip_grayscale(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (12, 6, 6), dtype=np.uint8)
    y = np.arange(12) % 4
    np.savez(tmp_path / "gray.npz", x=x, y=y)
    ds = load_dataset(str(tmp_path / "gray.npz"), split="ignored")
    assert ds.x.shape == (12, 6, 6, 1) and ds.x.dtype == np.uint8
    np.testing.assert_array_equal(ds.x[..., 0], x)
    np.testing.assert_array_equal(ds.y, y)
    assert ds.y.dtype == np.int32 and ds.num_classes == 4 and not ds.augment
    assert ds.mean[0] == pytest.approx(x.mean() / 255) and ds.std[0] == pytest.approx(x.std() / 255)


def test_jpeg_packed_npz_round_trip(tmp_path):
    x = flat_colour_images(10)
    write_jpeg_npz(tmp_path / "packed.npz", x, np.arange(10) % 3)
    ds = load_dataset(str(tmp_path / "packed.npz"))
    assert ds.x.shape == (10, 16, 16, 3) and ds.x.dtype == np.uint8
    assert np.abs(ds.x.astype(int) - x).max() <= 3  # JPEG is lossy, flat colour nearly exact
    np.testing.assert_array_equal(ds.y, np.arange(10) % 3)
    assert ds.num_classes == 3


def test_cifar_local_files_in_data_dir(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "cifar10_train.npz", x=x, y=np.arange(6))
    ds = load_dataset("cifar10", data_dir=str(tmp_path))
    np.testing.assert_array_equal(ds.x, x)
    assert ds.augment and ds.num_classes == 10 and ds.mean[0] == pytest.approx(0.49139968)
    # The JPEG-packed file wins over the plain one when both are there.
    write_jpeg_npz(tmp_path / "cifar10_train_jpeg.npz", flat_colour_images(4, 32), np.zeros(4))
    assert len(load_dataset("cifar10", data_dir=str(tmp_path))) == 4
    cifar100 = tmp_path / "cifar100"  # also found in data_dir/<name>/
    cifar100.mkdir()
    np.savez(cifar100 / "cifar100_test.npz", x=x, y=np.arange(6) * 15)
    ds = load_dataset("cifar100", data_dir=str(tmp_path), split="test")
    assert ds.num_classes == 100 and ds.std[0] == pytest.approx(0.2673)


# --- errors ------------------------------------------------------------------------------------


def test_unknown_name():
    with pytest.raises(JnasError, match=r"unknown dataset 'mnist'.*digits, cifar10, cifar100"):
        load_dataset("mnist")


def test_missing_npz(tmp_path):
    with pytest.raises(JnasError, match=r"nope\.npz does not exist"):
        load_dataset(str(tmp_path / "nope.npz"))


def test_npz_with_wrong_keys(tmp_path):
    np.savez(tmp_path / "bad.npz", images=np.zeros((2, 4, 4), np.uint8), labels=np.zeros(2))
    with pytest.raises(JnasError, match=r"keys \['images', 'labels'\].*'x' and 'y'.*'jpeg'"):
        load_dataset(str(tmp_path / "bad.npz"))


@pytest.mark.parametrize(
    ("x", "y", "message"),
    [
        (np.zeros((3, 4, 4), np.float32), np.zeros(3, int), "uint8"),
        (np.zeros((3, 4, 4), np.uint8), np.zeros(2, int), "one per image"),
        (np.zeros((3, 4, 4), np.uint8), np.array([0, -1, 2]), ">= 0"),
    ],
)
def test_npz_with_bad_arrays(tmp_path, x, y, message):
    np.savez(tmp_path / "bad.npz", x=x, y=y)
    with pytest.raises(JnasError, match=message):
        load_dataset(str(tmp_path / "bad.npz"))


def test_digits_unknown_split():
    with pytest.raises(JnasError, match="'train' and 'test'"):
        load_dataset("digits", split="validation")


# --- real data and TFDS ------------------------------------------------------------------------


def test_real_cifar10_test_file():
    folder = SHARED_DATA / "cifar10"
    if not (folder / "cifar10_test_jpeg.npz").is_file():
        pytest.skip(f"no packed CIFAR-10 in {folder}")
    ds = load_dataset("cifar10", data_dir=str(folder), split="test")
    assert ds.x.shape == (10000, 32, 32, 3) and ds.x.dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(ds.y, minlength=10), np.full(10, 1000))
    assert ds.augment and ds.num_classes == 10


def test_tfds_mock_load(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=20):
        ds = load_dataset("cifar10", data_dir=str(tmp_path))
    assert ds.x.shape == (20, 32, 32, 3) and ds.x.dtype == np.uint8
    assert ds.y.shape == (20,) and ds.y.dtype == np.int32 and ds.augment


def test_tfds_not_prepared_names_data_dir(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(JnasError, match=r"`data_dir`.*download_and_prepare") as info:
        load_dataset("cifar10", data_dir=str(tmp_path))
    assert str(tmp_path) in str(info.value) and "cifar10_train_jpeg.npz" in str(info.value)


def test_tfds_not_installed(tmp_path, monkeypatch):
    import sys

    # A None entry in sys.modules makes the import fail as if the package were absent.
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    with pytest.raises(JnasError, match=r'pip install "jnas\[tfds\]".*`data_dir`'):
        load_dataset("cifar100", data_dir=str(tmp_path))
