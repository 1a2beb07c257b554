import csv
import io
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jnas.data import _channel_stats
from jnas.episodes import (
    FEWSHOT_DATASETS,
    EpisodeSampler,
    FewShotSplit,
    load_fewshot,
    preprocess,
)
from jnas.errors import JnasError

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
OMNIGLOT = SHARED_DATA / "omniglot"
MINI = SHARED_DATA / "mini_imagenet" / "mini_imagenet_100_per_class_jpeg.npz"
MEAN = (0.5, 0.25)
STD = (0.5, 2.0)


def coded_split(classes=12, per_class=10, size=3):
    """Channel 0 of every pixel is the class, channel 1 the image index within the class."""
    c = np.arange(classes, dtype=np.uint8)[:, None, None, None]
    i = np.arange(per_class, dtype=np.uint8)[None, :, None, None]
    images = np.stack(np.broadcast_arrays(c, i), axis=-1)  # (classes, per_class, 1, 1, 2)
    images = np.broadcast_to(images, (classes, per_class, size, size, 2)).copy()
    return FewShotSplit("coded", images, MEAN, STD)


def decode(x):
    """(class, image index) of every row of a preprocessed (..., H, W, 2) array."""
    pixels = np.round((x * np.asarray(STD, np.float32) + np.asarray(MEAN, np.float32)) * 255)
    pixels = pixels.astype(np.int64)
    return pixels[..., 0, 0, 0], pixels[..., 0, 0, 1]


def episodes(batch):
    """Per episode: support (classes, images), query (classes, images)."""
    sc, si = decode(batch["support_x"])
    qc, qi = decode(batch["query_x"])
    return list(zip(sc, si, qc, qi, strict=True))


# --- FewShotSplit and preprocess -----------------------------------------------------------------


def test_split_properties_and_preprocess():
    split = coded_split(classes=7, per_class=5, size=4)
    assert split.num_classes == 7 and split.per_class == 5 and split.image_shape == (4, 4, 2)
    x = preprocess(split, split.images[3, 2])
    assert x.dtype == np.float32 and x.shape == (4, 4, 2)
    np.testing.assert_allclose(x[0, 0], [(3 / 255 - 0.5) / 0.5, (2 / 255 - 0.25) / 2.0], rtol=1e-6)
    with pytest.raises(JnasError, match="2 channels"):
        preprocess(split, np.zeros((4, 4, 3), np.uint8))


@pytest.mark.parametrize(
    ("images", "mean", "message"),
    [
        (np.zeros((2, 3, 4, 4, 1), np.float32), (0.5,), "uint8"),
        (np.zeros((6, 4, 4, 1), np.uint8), (0.5,), r"\(classes, per_class, H, W, C\)"),
        (np.zeros((0, 3, 4, 4, 1), np.uint8), (0.5,), "empty"),
        (np.zeros((2, 3, 4, 4, 1), np.uint8), (0.5, 0.5, 0.5), "1 values"),
    ],
)
def test_split_validation(images, mean, message):
    with pytest.raises(JnasError, match=message):
        FewShotSplit("bad", images, mean, (1.0,) * len(mean))


# --- EpisodeSampler.batch ------------------------------------------------------------------------


def test_batch_shapes_dtypes_and_labels():
    sampler = EpisodeSampler(coded_split(), way=5, shot=2, query=3)
    batch = sampler.batch(4, seed=0, index=0)
    assert set(batch) == {"support_x", "support_y", "query_x", "query_y"}
    assert batch["support_x"].shape == (4, 10, 3, 3, 2) and batch["support_x"].dtype == np.float32
    assert batch["query_x"].shape == (4, 15, 3, 3, 2) and batch["query_x"].dtype == np.float32
    assert batch["support_y"].shape == (4, 10) and batch["support_y"].dtype == np.int32
    assert batch["query_y"].shape == (4, 15) and batch["query_y"].dtype == np.int32
    for support_y, query_y in zip(batch["support_y"], batch["query_y"], strict=True):
        np.testing.assert_array_equal(np.bincount(support_y, minlength=5), np.full(5, 2))
        np.testing.assert_array_equal(np.bincount(query_y, minlength=5), np.full(5, 3))
        np.testing.assert_array_equal(support_y, np.arange(10) // 2)  # class by class
        np.testing.assert_array_equal(query_y, np.arange(15) // 3)


def test_episode_rows_are_their_labels_classes_and_distinct_images():
    split = coded_split()
    sampler = EpisodeSampler(split, way=5, shot=2, query=3)
    for index in range(20):
        batch = sampler.batch(3, seed=1, index=index)
        for t, (sc, si, qc, qi) in enumerate(episodes(batch)):
            # The rows are exactly the normalised images they decode to.
            np.testing.assert_array_equal(
                batch["support_x"][t], preprocess(split, split.images[sc, si])
            )
            sy, qy = batch["support_y"][t], batch["query_y"][t]
            drawn = [sc[sy == label][0] for label in range(5)]
            assert len(set(drawn)) == 5  # different labels, different classes
            for label in range(5):  # same label, same class, in support and query alike
                assert set(sc[sy == label]) == {drawn[label]}
                assert set(qc[qy == label]) == {drawn[label]}
            pairs = list(zip(sc, si, strict=True)) + list(zip(qc, qi, strict=True))
            assert len(set(pairs)) == len(pairs) == 25  # no image twice, support/query disjoint


def test_relabelling_is_a_random_permutation():
    sampler = EpisodeSampler(coded_split(), way=5, shot=1, query=1)
    classes_of_label_0, sorted_draws, images_used, orders = set(), 0, set(), set()
    for index in range(100):
        batch = sampler.batch(2, seed=0, index=index)
        for sc, si, _, _ in episodes(batch):
            classes_of_label_0.add(int(sc[0]))
            sorted_draws += bool(np.all(np.diff(sc) > 0))
            images_used.update(si.tolist())
            orders.add(tuple(np.argsort(sc)))
    assert classes_of_label_0 == set(range(12))  # label 0 is any class
    assert sorted_draws < 20  # 200 draws; a sorted 5-permutation has p = 1/120
    assert len(orders) > 60  # many of the 120 label orders occur
    assert images_used == set(range(10))


def test_batch_is_deterministic_in_seed_and_index():
    sampler = EpisodeSampler(coded_split(), way=3, shot=2, query=2)
    first = sampler.batch(4, seed=5, index=7)
    again = sampler.batch(4, seed=5, index=7)
    for key in first:
        np.testing.assert_array_equal(first[key], again[key])
    assert not np.array_equal(first["support_x"], sampler.batch(4, seed=5, index=8)["support_x"])
    assert not np.array_equal(first["support_x"], sampler.batch(4, seed=6, index=7)["support_x"])
    # Episode t has its own stream: the first episodes do not depend on the number of tasks.
    fewer = sampler.batch(2, seed=5, index=7)
    np.testing.assert_array_equal(fewer["query_x"], first["query_x"][:2])
    # Episodes within a batch differ.
    assert not np.array_equal(first["support_x"][0], first["support_x"][1])


# --- EpisodeSampler.fixed ------------------------------------------------------------------------


def test_fixed_set_does_not_depend_on_tasks():
    sampler = EpisodeSampler(coded_split(), way=4, shot=1, query=2)
    by4 = list(sampler.fixed(10, 4, seed=3))
    by7 = list(sampler.fixed(10, 7, seed=3))
    assert len(by4) == math.ceil(10 / 4) == 3 and len(by7) == 2
    for batches, tasks in ((by4, 4), (by7, 7)):
        for batch in batches:
            assert batch["support_x"].shape == (tasks, 4, 3, 3, 2)
            assert batch["query_y"].shape == (tasks, 8)
            assert batch["mask"].shape == (tasks,) and batch["mask"].dtype == np.float32
    np.testing.assert_array_equal(by4[-1]["mask"], [1, 1, 0, 0])
    np.testing.assert_array_equal(by7[-1]["mask"], [1, 1, 1, 0, 0, 0, 0])
    assert sum(b["mask"].sum() for b in by4) == sum(b["mask"].sum() for b in by7) == 10
    for key in ("support_x", "support_y", "query_x", "query_y"):
        real4 = np.concatenate([b[key][b["mask"] == 1] for b in by4])
        real7 = np.concatenate([b[key][b["mask"] == 1] for b in by7])
        assert len(real4) == 10
        np.testing.assert_array_equal(real4, real7)
    # The 10 episodes are different ones, the padding repeats episodes from the start.
    real = np.concatenate([b["support_x"][b["mask"] == 1] for b in by4])
    assert len({r.tobytes() for r in real}) == 10
    np.testing.assert_array_equal(by4[-1]["query_x"][2:], by4[0]["query_x"][:2])
    np.testing.assert_array_equal(by7[-1]["support_x"][3:], by7[0]["support_x"][:4])
    # A fixed set, and not batch()'s stream.
    again = list(sampler.fixed(10, 4, seed=3))
    np.testing.assert_array_equal(again[1]["query_x"], by4[1]["query_x"])
    assert not np.array_equal(by4[0]["support_x"], sampler.batch(4, seed=3, index=0)["support_x"])
    assert not np.array_equal(by4[0]["support_x"], next(sampler.fixed(10, 4, seed=4))["support_x"])


def test_fixed_exact_multiple_has_no_padding():
    sampler = EpisodeSampler(coded_split(), way=2, shot=1, query=1)
    batches = list(sampler.fixed(8, 4, seed=0))
    assert len(batches) == 2 and all(b["mask"].tolist() == [1, 1, 1, 1] for b in batches)
    (single,) = sampler.fixed(3, 8, seed=0)
    assert single["mask"].tolist() == [1, 1, 1, 0, 0, 0, 0, 0]


# --- sampler errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("way", "shot", "query", "message"),
    [
        (13, 1, 1, r"`way` 13 is more than the 12 classes.*at most 12"),
        (5, 6, 5, r"`shot` 6 \+ `query` 5 = 11 .*only 10 per class.*`shot` or `query`"),
        (0, 1, 1, "`way` must be at least 1, got 0"),
        (5, 0, 1, "`shot` must be at least 1, got 0"),
        (5, 1, 0, "`query` must be at least 1, got 0"),
    ],
)
def test_sampler_rejects_impossible_episodes(way, shot, query, message):
    with pytest.raises(JnasError, match=message):
        EpisodeSampler(coded_split(), way=way, shot=shot, query=query)


def test_sampler_limits_are_inclusive_and_counts_checked():
    sampler = EpisodeSampler(coded_split(), way=12, shot=4, query=6)  # all classes, all images
    sc, si, qc, qi = episodes(sampler.batch(1, seed=0, index=0))[0]
    assert len(set(zip(sc, si, strict=True)) | set(zip(qc, qi, strict=True))) == 120
    with pytest.raises(JnasError, match="`tasks` must be at least 1"):
        sampler.batch(0, seed=0, index=0)
    with pytest.raises(JnasError, match="`count` must be at least 1"):
        sampler.fixed(0, 4, seed=0)
    with pytest.raises(JnasError, match="`seed` and `index` must be >= 0"):
        sampler.batch(1, seed=0, index=-1)


# --- load_fewshot arguments ----------------------------------------------------------------------


def test_load_rejects_unknown_name_and_split(tmp_path):
    assert FEWSHOT_DATASETS == ("omniglot", "mini_imagenet")
    with pytest.raises(JnasError, match=r"unknown few-shot dataset 'cub'.*omniglot, mini_imagenet"):
        load_fewshot("cub", str(tmp_path), "train")
    with pytest.raises(JnasError, match=r"'train', 'val', 'test'.*'validation'"):
        load_fewshot("mini_imagenet", str(tmp_path), "validation")
    with pytest.raises(JnasError, match=r"Omniglot's protocol.*only 'train'.*'test'.*no 'val'"):
        load_fewshot("omniglot", str(tmp_path), "val")


# --- real data -----------------------------------------------------------------------------------


def omniglot_reference(path, row_start, rows=20):
    """The protocol recomputed independently: LANCZOS to 28x28, then 255 - x."""
    with np.load(path) as f:
        x = f["x"][row_start : row_start + rows, :, :, 0]
    small = [np.asarray(Image.fromarray(i).resize((28, 28), Image.LANCZOS)) for i in x]
    return 255 - np.stack(small)[..., None]


def test_real_omniglot_protocol():
    if not (OMNIGLOT / "omniglot_evaluation.npz").is_file():
        pytest.skip(f"no packed Omniglot in {OMNIGLOT}")
    train = load_fewshot("omniglot", str(SHARED_DATA), "train")  # found in data_dir/omniglot/
    test = load_fewshot("omniglot", str(OMNIGLOT), "test")  # and in data_dir itself
    assert train.name == "omniglot/train" and test.name == "omniglot/test"
    assert train.images.shape == (4800, 20, 28, 28, 1) and train.images.dtype == np.uint8
    assert test.images.shape == (1692, 20, 28, 28, 1)
    # Rotations: class 4j + r is character j turned r quarter turns.
    for j in (0, 599, 1199):
        for r in (1, 2, 3):
            np.testing.assert_array_equal(
                train.images[4 * j + r], np.rot90(train.images[4 * j], r, axes=(1, 2))
            )
    np.testing.assert_array_equal(
        test.images[4 * 422 + 1], np.rot90(test.images[4 * 422], 1, (1, 2))
    )
    # Inverted: the background is 0 and the ink bright.
    assert np.mean(train.images == 0) > 0.6 and train.images.max() == 255
    assert np.mean(train.images[:, :, 0, 0] == 0) > 0.99  # the corners are background
    # The split boundary: characters 0-1199 (all 964 background, 236 evaluation) are train.
    background = OMNIGLOT / "omniglot_background.npz"
    evaluation = OMNIGLOT / "omniglot_evaluation.npz"
    np.testing.assert_array_equal(train.images[0], omniglot_reference(background, 0))
    np.testing.assert_array_equal(train.images[4 * 1199], omniglot_reference(evaluation, 235 * 20))
    np.testing.assert_array_equal(test.images[0], omniglot_reference(evaluation, 236 * 20))
    np.testing.assert_array_equal(test.images[4 * 422], omniglot_reference(evaluation, 658 * 20))
    # No drawing is in both splits (a leaked character would bring its drawings along).
    seen = {image.tobytes() for image in train.images.reshape(-1, 784)}
    assert not any(image.tobytes() in seen for image in test.images.reshape(-1, 784))
    # The fixed normalisation constants are the train statistics, shared by the test split.
    mean, std = _channel_stats(train.images.reshape(-1, 28, 28, 1))
    assert train.mean == pytest.approx(mean, abs=1e-9) and train.std == pytest.approx(std, abs=1e-9)
    assert test.mean == train.mean and test.std == train.std
    batch = EpisodeSampler(test, way=20, shot=1, query=19).batch(2, seed=0, index=0)
    assert batch["query_x"].shape == (2, 380, 28, 28, 1)


def test_real_mini_imagenet_packed_splits():
    if not MINI.is_file():
        pytest.skip(f"no packed mini-ImageNet at {MINI}")
    splits = {
        s: load_fewshot("mini_imagenet", str(SHARED_DATA), s) for s in ("train", "val", "test")
    }
    for s, classes in (("train", 64), ("val", 16), ("test", 20)):
        assert splits[s].images.shape == (classes, 100, 84, 84, 3)
        assert splits[s].name == f"mini_imagenet/{s}"
        assert splits[s].mean == (0.485, 0.456, 0.406) and splits[s].std == (0.229, 0.224, 0.225)
    # Each split's classes are the file's classes of that split, in file order.
    with np.load(MINI) as f:
        jpeg, offsets, y, class_split = f["jpeg"], f["offsets"], f["y"], f["class_split"]
    for s in ("train", "val", "test"):
        wanted = np.flatnonzero(class_split == s)
        for c in (0, len(wanted) - 1):
            row = np.flatnonzero(y == wanted[c])[37]
            buf = jpeg[offsets[row] : offsets[row + 1]].tobytes()
            expected = np.asarray(Image.open(io.BytesIO(buf)).convert("RGB"))
            np.testing.assert_array_equal(splits[s].images[c, 37], expected)
    # No image in two splits.
    hashes = {
        s: {i.tobytes() for i in v.images.reshape(-1, 84 * 84 * 3)} for s, v in splits.items()
    }
    assert len(hashes["train"]) > 6390 and len(hashes["test"]) > 1990  # (the data has a repeat)
    assert not hashes["train"] & hashes["val"]
    assert not hashes["train"] & hashes["test"]
    assert not hashes["val"] & hashes["test"]
    # A second load is the cached array.
    assert load_fewshot("mini_imagenet", str(MINI.parent), "val").images is splits["val"].images
    batch = EpisodeSampler(splits["test"], way=5, shot=5, query=15).batch(2, seed=0, index=0)
    assert batch["support_x"].shape == (2, 25, 84, 84, 3)
    assert batch["query_x"].shape == (2, 75, 84, 84, 3)


# --- mini-ImageNet local layouts -----------------------------------------------------------------


def write_ravi_folder(folder, classes, sizes, split="train"):
    """images/<wnid><n>.jpg of flat colours, rows interleaved across classes in the CSV."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    colours = {}
    rows = []
    per_class = max(len(v) for v in classes.values())
    for i in range(per_class):
        for c, (wnid, numbers) in enumerate(classes.items()):
            if i >= len(numbers):
                continue
            name = f"{wnid}{numbers[i]:08d}.jpg"
            colour = (40 * c + 20, 50 * i + 10, 200 - 30 * c)
            size = sizes[(c + i) % len(sizes)]
            Image.new("RGB", size, colour).save(folder / "images" / name, quality=95)
            colours[name] = colour
            rows.append((name, wnid))
    with open(folder / f"{split}.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filename", "label"])
        writer.writerows(rows)
    return colours


def test_ravi_larochelle_csv_layout(tmp_path):
    classes = {"n02": [5, 6, 7, 8], "n01": [1, 2, 3, 4], "n03": [9, 10, 11, 12]}
    colours = write_ravi_folder(tmp_path / "mini_imagenet", classes, [(84, 84), (100, 90)])
    split = load_fewshot("mini_imagenet", str(tmp_path), "train")  # in data_dir/mini_imagenet/
    assert split.images.shape == (3, 4, 84, 84, 3) and split.images.dtype == np.uint8
    # Classes in order of first appearance, images in CSV order, resized where needed.
    for c, (wnid, numbers) in enumerate(classes.items()):
        for i, number in enumerate(numbers):
            expected = colours[f"{wnid}{number:08d}.jpg"]
            assert np.abs(split.images[c, i].astype(int) - expected).max() <= 3
    assert split.mean == (0.485, 0.456, 0.406)
    # The layout also counts directly in data_dir, and wins over a packed file there.
    write_ravi_folder(tmp_path / "flat", {"n05": [1, 2], "n06": [3, 4]}, [(50, 60)], split="test")
    (tmp_path / "flat" / "mini_imagenet_100_per_class_jpeg.npz").write_bytes(b"not read")
    flat = load_fewshot("mini_imagenet", str(tmp_path / "flat"), "test")
    assert flat.images.shape == (2, 2, 84, 84, 3) and flat.name == "mini_imagenet/test"
    with pytest.raises(JnasError, match=r"no val\.csv"):
        load_fewshot("mini_imagenet", str(tmp_path / "flat"), "val")


def test_ravi_larochelle_unequal_classes_and_missing_image(tmp_path):
    write_ravi_folder(tmp_path, {"n01": [1, 2, 3], "n02": [4, 5, 6]}, [(84, 84)])
    assert load_fewshot("mini_imagenet", str(tmp_path), "train").images.shape[:2] == (2, 3)
    # Rewriting the CSV is seen (the cache is keyed by the file's time and size).
    write_ravi_folder(tmp_path, {"n01": [1, 2, 3], "n02": [4, 5]}, [(84, 84)])
    with pytest.raises(JnasError, match=r"class n02 has 2 images but class n01 has 3"):
        load_fewshot("mini_imagenet", str(tmp_path), "train")
    write_ravi_folder(tmp_path, {"n01": [1, 2], "n02": [4, 5]}, [(84, 84)])
    (tmp_path / "images" / "n0200000005.jpg").unlink()
    with pytest.raises(JnasError, match=r"lists n0200000005\.jpg.*missing"):
        load_fewshot("mini_imagenet", str(tmp_path), "train")
    (tmp_path / "train.csv").write_text("file,class\na.jpg,n01\n")
    with pytest.raises(JnasError, match="header filename,label"):
        load_fewshot("mini_imagenet", str(tmp_path), "train")


def test_packed_mini_imagenet_selects_the_split_classes(tmp_path):
    class_split = np.array(["train", "val", "train", "test"])
    y = np.repeat(np.arange(4), 3)
    blobs = []
    for label, i in zip(y, np.tile(np.arange(3), 4), strict=True):
        buf = io.BytesIO()
        Image.new("RGB", (84, 84), (60 * label, 80 * i, 7)).save(buf, format="JPEG", quality=95)
        blobs.append(np.frombuffer(buf.getvalue(), np.uint8))
    offsets = np.concatenate([[0], np.cumsum([len(b) for b in blobs])])
    np.savez(
        tmp_path / "mini_imagenet_100_per_class_jpeg.npz",
        jpeg=np.concatenate(blobs),
        offsets=offsets,
        y=y,
        class_split=class_split,
    )
    train = load_fewshot("mini_imagenet", str(tmp_path), "train")
    assert train.images.shape == (2, 3, 84, 84, 3)
    colours = train.images[:, :, 40, 40].astype(int)  # (2, 3, 3)
    expected = np.array([[[0, 80 * i, 7] for i in range(3)], [[120, 80 * i, 7] for i in range(3)]])
    assert np.abs(colours - expected).max() <= 3  # classes 0 and 2, images in order
    assert load_fewshot("mini_imagenet", str(tmp_path), "test").images.shape == (1, 3, 84, 84, 3)


def test_mini_imagenet_missing_names_both_layouts(tmp_path):
    with pytest.raises(JnasError) as info:
        load_fewshot("mini_imagenet", str(tmp_path), "train")
    message = str(info.value)
    for part in (
        f"`data_dir` {tmp_path}",
        str(tmp_path / "mini_imagenet"),
        "images/*.jpg",
        "train.csv",
        "mini_imagenet_100_per_class_jpeg.npz",
    ):
        assert part in message
    with pytest.raises(JnasError, match="no `data_dir` was given"):
        load_fewshot("mini_imagenet", None, "test")


# --- Omniglot local files, TFDS and errors -------------------------------------------------------


def test_omniglot_packed_files_tiny(tmp_path):
    # Characters 0, 1 (background) and 1199, 1200 (evaluation), 3 drawings each; a drawing is a
    # dark top half (ink) over a grey bottom half whose value codes (character, drawing).
    for name, ids, base in (("background", [0, 1], 100), ("evaluation", [1199, 1200], 120)):
        x = np.zeros((len(ids) * 3, 105, 105), np.uint8)
        for row in range(len(x)):
            x[row, 53:] = base + 10 * (row // 3) + row % 3
        np.savez(tmp_path / f"omniglot_{name}.npz", x=x, y=np.repeat(ids, 3))
    train = load_fewshot("omniglot", str(tmp_path), "train")
    test = load_fewshot("omniglot", str(tmp_path), "test")
    assert train.images.shape == (12, 3, 28, 28, 1) and test.images.shape == (4, 3, 28, 28, 1)
    # Inverted: the top half (ink, 0) becomes 255; the bottom codes the drawing.
    assert np.all(train.images[0::4, :, 0, 0, 0] == 255)
    bottom = 255 - train.images[0::4, :, 27, 0, 0].astype(int)
    np.testing.assert_array_equal(bottom, [[100, 101, 102], [110, 111, 112], [120, 121, 122]])
    np.testing.assert_array_equal(255 - test.images[0, :, 27, 0, 0].astype(int), [130, 131, 132])
    assert np.all(test.images[0::4, :, 0, 0, 0] == 255)
    np.testing.assert_array_equal(train.images[1], np.rot90(train.images[0], 1, axes=(1, 2)))


def test_omniglot_tfds_mock_groups_by_label(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    tf = pytest.importorskip("tensorflow")
    # TFDS "train" is the background set and "test" the evaluation set; "label" is the global
    # character id. Character 1000 is evaluation but below 1200, so it is meta-train.
    labels = {"train": [1, 0, 1, 0, 0, 1], "test": [1300, 1000, 1300, 1000, 1000, 1300]}

    def as_dataset(self, split, *args, **kwargs):
        y = np.array(labels[str(split)], np.int64)
        image = np.full((len(y), 105, 105, 3), 255, np.uint8)  # white background
        image[:, :50] = 0  # ink on the top half
        code = np.select([y == 0, y == 1, y == 1000], [10, 40, 70], 100) + np.arange(len(y))
        image[:, 60:, :, 0] = code[:, None, None]  # codes (character, row) in channel 0 only
        return tf.data.Dataset.from_tensor_slices(
            {
                "image": image,
                "label": y,
                "alphabet": np.zeros_like(y),
                "alphabet_char_id": np.zeros_like(y),
            }
        )

    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
        train = load_fewshot("omniglot", str(tmp_path), "train")
        test = load_fewshot("omniglot", str(tmp_path), "test")
    assert train.images.shape == (12, 3, 28, 28, 1) and test.images.shape == (4, 3, 28, 28, 1)
    codes = 255 - train.images[0::4, :, 27, 0, 0].astype(int)  # one channel, inverted
    # Characters 0, 1, 1000 in order; each has its own three drawings, in reading order.
    np.testing.assert_array_equal(codes, [[11, 13, 14], [40, 42, 45], [71, 73, 74]])
    assert np.all(train.images[:, :, 0, 0, 0][0::4] == 255)  # the ink, inverted
    np.testing.assert_array_equal(train.images[6], np.rot90(train.images[4], 2, axes=(1, 2)))
    np.testing.assert_array_equal(255 - test.images[0, :, 27, 0, 0].astype(int), [100, 102, 105])


def test_omniglot_missing_names_both_layouts(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(JnasError) as info:
        load_fewshot("omniglot", str(tmp_path), "train")
    message = str(info.value)
    for part in (
        "omniglot_background.npz and omniglot_evaluation.npz",
        f"`data_dir` {tmp_path}",
        str(tmp_path / "omniglot"),
        "TFDS has no prepared 'omniglot'",
        "download_and_prepare",
    ):
        assert part in message


def test_omniglot_half_of_the_files(tmp_path):
    np.savez(tmp_path / "omniglot_background.npz", x=np.zeros((20, 8, 8), np.uint8), y=np.zeros(20))
    with pytest.raises(JnasError, match=r"omniglot_evaluation\.npz is not.*needs both"):
        load_fewshot("omniglot", str(tmp_path), "train")


def test_omniglot_without_tfds_installed(tmp_path, monkeypatch):
    # A None entry in sys.modules makes the import fail as if the package were absent.
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    with pytest.raises(JnasError, match=r'omniglot_background\.npz.*pip install "jnas\[tfds\]"'):
        load_fewshot("omniglot", str(tmp_path / "elsewhere"), "test")
