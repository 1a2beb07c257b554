"""Few-shot data for meta-learning (MAML, T-NAS): class-grouped splits and N-way K-shot episodes.

A split holds its images grouped by class, `images[c, i]` being image i of class c; an
`EpisodeSampler` draws episodes from it: `way` classes, `shot` support and `query` query images
per class, labels 0..way-1. Everything is numpy on the host, and every batch of episodes has one
static shape so a jitted meta-step compiles once.
"""

import csv
import dataclasses
import functools
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from jnas.data import decode_jpegs, load_npz, load_tfds, preprocess, read_npz
from jnas.errors import JnasError

FEWSHOT_DATASETS = ("omniglot", "mini_imagenet")

_SPLITS = ("train", "val", "test")

_OMNIGLOT_FILES = ("omniglot_background.npz", "omniglot_evaluation.npz")
_OMNIGLOT_SIZE = 28
_OMNIGLOT_TRAIN_CHARACTERS = 1200  # characters 0..1199 meta-train, 1200..1622 meta-test
# Mean and std of the 28x28 inverted train images (4800 classes x 20, all four rotations), on
# the [0, 1] scale, measured once with jnas.data._channel_stats on
# load_fewshot("omniglot", "../shared/data", "train").images from the packed Lake files.
# Fixed constants, so that every split and every source is normalised the same way.
_OMNIGLOT_MEAN = (0.08260861761371215,)
_OMNIGLOT_STD = (0.23754846520085895,)

_MINI_FILE = "mini_imagenet_100_per_class_jpeg.npz"
_MINI_SIZE = 84
_MINI_MEAN = (0.485, 0.456, 0.406)  # the ImageNet constants
_MINI_STD = (0.229, 0.224, 0.225)


# eq=False: the fields are arrays, so generated __eq__/__hash__ would be ambiguous or fail.
@dataclasses.dataclass(frozen=True, eq=False)
class FewShotSplit:
    name: str  # e.g. "omniglot/train"
    images: np.ndarray  # uint8, (classes, per_class, H, W, C), grouped by class
    mean: tuple[float, ...]  # per channel, on the [0, 1] pixel scale
    std: tuple[float, ...]

    def __post_init__(self):
        if self.images.dtype != np.uint8 or self.images.ndim != 5:
            raise JnasError(
                f"few-shot split {self.name!r}: `images` must be uint8 with shape "
                f"(classes, per_class, H, W, C), got {self.images.dtype} {self.images.shape}; "
                "group the uint8 NHWC images by class"
            )
        if self.images.shape[0] < 1 or self.images.shape[1] < 1:
            raise JnasError(
                f"few-shot split {self.name!r} is empty: {self.images.shape[0]} classes of "
                f"{self.images.shape[1]} images; it needs at least one image of one class"
            )
        channels = self.images.shape[-1]
        if len(self.mean) != channels or len(self.std) != channels:
            raise JnasError(
                f"few-shot split {self.name!r}: `mean` and `std` need {channels} values (one per "
                f"channel), got {len(self.mean)} and {len(self.std)}"
            )
        if min(self.std) <= 0:
            raise JnasError(f"few-shot split {self.name!r}: `std` must be > 0, got {self.std}")

    @property
    def num_classes(self) -> int:
        return self.images.shape[0]

    @property
    def per_class(self) -> int:
        """Images per class."""
        return self.images.shape[1]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C)."""
        return tuple(self.images.shape[2:])


def load_fewshot(name: str, data_dir: str | None, split: str) -> FewShotSplit:
    """Load split "train", "val" or "test" of "omniglot" or "mini_imagenet", grouped by class.

    Omniglot (Vinyals et al. protocol, as in MAML): 28x28, ink bright on a black background,
    characters 0..1199 meta-train and 1200..1622 meta-test, each character rotated by 0, 90,
    180 and 270 degrees into 4 classes of 20 images. It has no "val" split.
    Mini-ImageNet: 84x84 RGB, Ravi & Larochelle's 64/16/20 class split.
    """
    if name not in FEWSHOT_DATASETS:
        raise JnasError(
            f"unknown few-shot dataset {name!r}: choose one of {', '.join(FEWSHOT_DATASETS)}"
        )
    if split not in _SPLITS:
        raise JnasError(f"{name} has splits {', '.join(map(repr, _SPLITS))}, got {split!r}")
    if name == "omniglot":
        return _load_omniglot(data_dir, split)
    return _load_mini_imagenet(data_dir, split)


class EpisodeSampler:
    """N-way K-shot episodes from one split: `way` classes, `shot` + `query` images of each."""

    def __init__(self, split: FewShotSplit, *, way: int, shot: int, query: int):
        for name, value in (("way", way), ("shot", shot), ("query", query)):
            if value < 1:
                raise JnasError(f"`{name}` must be at least 1, got {value}")
        if way > split.num_classes:
            raise JnasError(
                f"`way` {way} is more than the {split.num_classes} classes in {split.name!r}; "
                f"lower `way` to at most {split.num_classes}"
            )
        if shot + query > split.per_class:
            raise JnasError(
                f"`shot` {shot} + `query` {query} = {shot + query} images per class, but "
                f"{split.name!r} has only {split.per_class} per class; lower `shot` or `query` "
                f"so that they add up to at most {split.per_class}"
            )
        self.split = split
        self.way = way
        self.shot = shot
        self.query = query
        # Labels are the same in every episode: rows go class by class.
        self._support_y = np.repeat(np.arange(way, dtype=np.int32), shot)
        self._query_y = np.repeat(np.arange(way, dtype=np.int32), query)

    def batch(self, tasks: int, *, seed: int, index: int) -> dict[str, np.ndarray]:
        """`tasks` episodes for meta-iteration `index`; the same (seed, index), the same data.

        Episode t comes from its own stream (seed, 0, index, t), so the first episodes of a
        batch do not depend on how many tasks it has.
        """
        _check_count("tasks", tasks)
        if seed < 0 or index < 0:
            raise JnasError(f"`seed` and `index` must be >= 0, got seed={seed}, index={index}")
        episodes = [self._episode(np.random.default_rng([seed, 0, index, t])) for t in range(tasks)]
        return self._stack(episodes)

    def fixed(self, count: int, tasks: int, *, seed: int) -> Iterator[dict[str, np.ndarray]]:
        """The fixed evaluation set of `count` episodes, in ceil(count / tasks) batches of `tasks`.

        Episode i comes from the stream (seed, 1, i), apart from batch()'s, so the set is the
        same whatever `tasks` is. The last batch is padded by repeating episodes from the start;
        "mask" (float32, (tasks,)) is 1 for real episodes and 0 for the padding.
        """
        _check_count("count", count)
        _check_count("tasks", tasks)
        if seed < 0:
            raise JnasError(f"`seed` must be >= 0, got {seed}")
        return self._fixed(count, tasks, seed)

    def _fixed(self, count: int, tasks: int, seed: int) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, count, tasks):
            index = np.arange(start, start + tasks)
            real = index < count
            episodes = [self._episode(np.random.default_rng([seed, 1, i % count])) for i in index]
            yield {**self._stack(episodes), "mask": real.astype(np.float32)}

    def _episode(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(classes (way,), image indices (way, shot + query)); label l is classes[l]."""
        # Without replacement and in random order, so the label given to a class is random too.
        classes = rng.choice(self.split.num_classes, self.way, replace=False)
        # Per class, the first shot + query of a random permutation of its images.
        order = np.argsort(rng.random((self.way, self.split.per_class)), axis=1)
        return classes, order[:, : self.shot + self.query]

    def _stack(self, episodes) -> dict[str, np.ndarray]:
        classes = np.stack([c for c, _ in episodes])  # (tasks, way)
        picks = np.stack([i for _, i in episodes])  # (tasks, way, shot + query)
        x = self.split.images[classes[:, :, None], picks]  # (tasks, way, shot + query, H, W, C)
        tasks = len(episodes)
        shape = self.split.image_shape
        support = x[:, :, : self.shot].reshape(tasks, self.way * self.shot, *shape)
        query = x[:, :, self.shot :].reshape(tasks, self.way * self.query, *shape)
        return {
            "support_x": preprocess(self.split, support),
            "support_y": np.tile(self._support_y, (tasks, 1)),
            "query_x": preprocess(self.split, query),
            "query_y": np.tile(self._query_y, (tasks, 1)),
        }


def _check_count(what: str, value: int) -> None:
    if value < 1:
        raise JnasError(f"`{what}` must be at least 1, got {value}")


def _folders(data_dir: str | None, name: str) -> list[Path]:
    # Also data_dir/name/, so one --data_dir can hold several datasets' folders.
    return [Path(data_dir), Path(data_dir) / name] if data_dir else []


def _file_key(path: Path) -> tuple[str, int, int]:
    """Cache key of a file: resolved path, modification time and size (a rewrite misses)."""
    stat = path.stat()
    return str(path.resolve()), stat.st_mtime_ns, stat.st_size


def _read_only(x: np.ndarray) -> np.ndarray:
    """Cached arrays are shared by every load, so nobody may write into them."""
    x.setflags(write=False)
    return x


def _group_by_label(x: np.ndarray, y: np.ndarray, source: str) -> tuple[np.ndarray, np.ndarray]:
    """(sorted class ids, images (classes, per_class, ...)); within a class, in input order."""
    ids, counts = np.unique(y, return_counts=True)
    if len(ids) == 0:
        raise JnasError(f"{source} holds no images")
    odd = np.flatnonzero(counts != counts[0])
    if len(odd):
        raise JnasError(
            f"{source}: class {ids[odd[0]]} has {counts[odd[0]]} images but class {ids[0]} has "
            f"{counts[0]}; few-shot episodes need the same number of images in every class"
        )
    order = np.argsort(y, kind="stable")
    return ids, x[order].reshape(len(ids), counts[0], *x.shape[1:])


# --- Omniglot -----------------------------------------------------------------------------------


def _load_omniglot(data_dir: str | None, split: str) -> FewShotSplit:
    if split == "val":
        raise JnasError(
            "Omniglot's protocol (Vinyals et al., MAML) has only 'train' (characters 0-1199) and "
            "'test' (characters 1200-1622), no 'val'; use split 'train' or 'test'"
        )
    ids, chars = _omniglot_characters(data_dir)
    in_train = ids < _OMNIGLOT_TRAIN_CHARACTERS
    keep = in_train if split == "train" else ~in_train
    if not keep.any():
        raise JnasError(
            f"omniglot {split!r}: the data found has no characters "
            f"{'below' if split == 'train' else 'from'} {_OMNIGLOT_TRAIN_CHARACTERS} (its class "
            f"ids run {int(ids.min())}-{int(ids.max())}); give the full 1623-character Omniglot"
        )
    chars = chars[keep]  # (K, per_class, 28, 28)
    # Every character gives 4 classes, rotated by 0, 90, 180, 270 degrees (counter-clockwise,
    # np.rot90); class 4 * j + r is character j rotated r times.
    rotated = np.stack([np.rot90(chars, r, axes=(2, 3)) for r in range(4)], axis=1)
    images = rotated.reshape(4 * len(chars), chars.shape[1], *chars.shape[2:], 1)
    return FewShotSplit(f"omniglot/{split}", images, _OMNIGLOT_MEAN, _OMNIGLOT_STD)


def _omniglot_characters(data_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
    """(global character ids, sorted; images (characters, per_class, 28, 28) uint8, inverted)."""
    for folder in _folders(data_dir, "omniglot"):
        found = [folder / f for f in _OMNIGLOT_FILES]
        present = [p for p in found if p.is_file()]
        if len(present) == 2:
            return _omniglot_packed(*(_file_key(p) for p in found))
        if present:
            missing = next(p for p in found if not p.is_file())
            raise JnasError(
                f"{present[0]} is there but {missing.name} is not; Omniglot needs both "
                f"{' and '.join(_OMNIGLOT_FILES)} in one folder (the 1200/423 character split "
                "takes characters from both)"
            )
    return _omniglot_tfds(data_dir)


@functools.lru_cache(maxsize=2)
def _omniglot_packed(background, evaluation) -> tuple[np.ndarray, np.ndarray]:
    # Reading and resizing all 32,460 images takes about 4 s on one core (1.4 s of it is
    # np.load decompressing the two files), hence the cache for repeated loads.
    parts = [read_npz(Path(key[0])) for key in (background, evaluation)]
    (xb, yb), (xe, ye) = parts
    overlap = np.intersect1d(yb, ye)
    if len(overlap):
        raise JnasError(
            f"{evaluation[0]} repeats class ids of {background[0]} (e.g. {int(overlap[0])}); "
            "the evaluation file must hold characters 964-1622, the background file 0-963"
        )
    x = np.concatenate([_omniglot_28(xb, background[0]), _omniglot_28(xe, evaluation[0])])
    ids, chars = _group_by_label(x, np.concatenate([yb, ye]), " + ".join(_OMNIGLOT_FILES))
    return _read_only(ids), _read_only(chars)


@functools.lru_cache(maxsize=2)
def _omniglot_tfds(data_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
    # TFDS splits "train" (background, 964 characters) and "test" (evaluation, 659); "label"
    # is the global character id 0..1622 in both, the same numbering as the packed files.
    xs, ys = [], []
    for tfds_split in ("train", "test"):
        x, y = load_tfds("omniglot", data_dir, tfds_split, _OMNIGLOT_FILES, joiner="and")
        xs.append(_omniglot_28(x[..., :1], f"TFDS omniglot {tfds_split!r}"))  # RGB, all alike
        ys.append(y)
    ids, chars = _group_by_label(np.concatenate(xs), np.concatenate(ys), "TFDS omniglot")
    return _read_only(ids), _read_only(chars)


def _omniglot_28(x: np.ndarray, source: str) -> np.ndarray:
    """(N, H, W, 1) 0 = ink -> (N, 28, 28), resized (PIL LANCZOS, as MAML) and inverted."""
    from PIL import Image

    if x.shape[-1] != 1:
        raise JnasError(
            f"{source}: Omniglot images must have 1 channel, got shape {x.shape}; save them "
            "as grayscale (N, H, W) or (N, H, W, 1)"
        )
    size = (_OMNIGLOT_SIZE, _OMNIGLOT_SIZE)
    out = np.empty((len(x), *size), np.uint8)
    for i, image in enumerate(x[..., 0]):
        out[i] = np.asarray(Image.fromarray(image).resize(size, Image.LANCZOS))
    # Inverted so that ink is bright and the background is 0: the zero padding of the
    # convolutions then matches the background.
    return 255 - out


# --- Mini-ImageNet ------------------------------------------------------------------------------


def _load_mini_imagenet(data_dir: str | None, split: str) -> FewShotSplit:
    folders = _folders(data_dir, "mini_imagenet")
    csvs = [f"{s}.csv" for s in _SPLITS]
    for folder in folders:  # 1. Ravi & Larochelle: images/*.jpg and train/val/test.csv
        if (folder / "images").is_dir() and any((folder / c).is_file() for c in csvs):
            table = folder / f"{split}.csv"
            if not table.is_file():
                raise JnasError(
                    f"{folder} has images/ and some of {', '.join(csvs)} but no {split}.csv; "
                    f"add {split}.csv (header filename,label) to that folder"
                )
            images = _mini_csv(_file_key(table))
            break
    else:
        packed = next((f / _MINI_FILE for f in folders if (f / _MINI_FILE).is_file()), None)
        if packed is None:  # 2. the JPEG-packed file
            where = (
                f"`data_dir` {data_dir} or {folders[1]}" if data_dir else "no `data_dir` was given"
            )
            raise JnasError(
                f"mini_imagenet split {split!r} was not found ({where}). Give a `data_dir` "
                "(or a folder mini_imagenet/ in it) that holds either Ravi & Larochelle's layout, "
                f"images/*.jpg with {', '.join(csvs)} (header filename,label), or the packed "
                f"{_MINI_FILE}"
            )
        images = _mini_packed(_file_key(packed), split)
    return FewShotSplit(f"mini_imagenet/{split}", images, _MINI_MEAN, _MINI_STD)


@functools.lru_cache(maxsize=3)
def _mini_csv(table_key) -> np.ndarray:
    """One Ravi & Larochelle CSV's images as (classes, per_class, 84, 84, 3)."""
    from PIL import Image

    table = Path(table_key[0])
    with open(table, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or [c.strip() for c in rows[0]] != ["filename", "label"]:
        raise JnasError(
            f"{table}: the first line must be the header filename,label, got "
            f"{','.join(rows[0]) if rows else 'an empty file'}"
        )
    classes: dict[str, list[str]] = {}  # label -> file names, labels in order of first sight
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != 2:
            raise JnasError(f"{table} line {line}: expected filename,label, got {row}")
        classes.setdefault(row[1].strip(), []).append(row[0].strip())
    if not classes:
        raise JnasError(f"{table} lists no images; add lines filename,label")
    counts = {label: len(files) for label, files in classes.items()}
    first, per_class = next(iter(counts.items()))
    for label, count in counts.items():
        if count != per_class:
            raise JnasError(
                f"{table}: class {label} has {count} images but class {first} has {per_class}; "
                "every class of a split needs the same number (600 in the standard set); "
                "fix the CSV"
            )
    size = (_MINI_SIZE, _MINI_SIZE)
    out = np.empty((len(classes), per_class, *size, 3), np.uint8)
    for c, files in enumerate(classes.values()):
        for i, name in enumerate(files):
            path = table.parent / "images" / name
            try:
                with Image.open(path) as image:
                    image = image.convert("RGB")
                    if image.size != size:
                        image = image.resize(size, Image.LANCZOS)  # as the original script
                    out[c, i] = np.asarray(image)
            except OSError as err:
                raise JnasError(
                    f"{table} lists {name}, but {path} is missing or not a readable image ({err})"
                ) from None
    return _read_only(out)


@functools.lru_cache(maxsize=3)
def _mini_packed(file_key, split: str) -> np.ndarray:
    """The classes of `split` from the JPEG-packed file, as (classes, per_class, 84, 84, 3)."""
    path = Path(file_key[0])
    keys = ("jpeg", "offsets", "y", "class_split")
    arrays = load_npz(path, keys)
    if len(arrays) != len(keys):
        raise JnasError(
            f"{path} has the keys {sorted(arrays)} of {', '.join(keys)}; a packed "
            "mini-ImageNet file needs them all"
        )
    jpeg, offsets, y, class_split = (arrays[k] for k in keys)
    if offsets.shape != (len(y) + 1,) or y.ndim != 1:
        raise JnasError(
            f"{path}: need one label per image and len(y) + 1 offsets, got y {y.shape} and "
            f"offsets {offsets.shape}"
        )
    if len(y) and (y.min() < 0 or y.max() >= len(class_split)):
        raise JnasError(
            f"{path}: labels must index class_split (0..{len(class_split) - 1}), found "
            f"{int(y.min())}..{int(y.max())}"
        )
    wanted = np.flatnonzero(class_split == split)
    if len(wanted) == 0:
        raise JnasError(
            f"{path} has no classes whose class_split is {split!r} "
            f"(it has {sorted(set(class_split.tolist()))})"
        )
    rows = np.flatnonzero(np.isin(y, wanted))
    ids, index = _group_by_label(rows, y[rows], f"{path} split {split!r}")
    missing = np.setdiff1d(wanted, ids)
    if len(missing):
        raise JnasError(f"{path}: class {int(missing[0])} of split {split!r} has no images")
    index = index.reshape(-1)  # rows of the file, class by class
    # Decode only this split's images: gather their bytes into one buffer with new offsets.
    starts, ends = offsets[index], offsets[index + 1]
    sub_offsets = np.concatenate([[0], np.cumsum(ends - starts)])
    buffer = np.concatenate([jpeg[s:e] for s, e in zip(starts, ends, strict=True)])
    x = decode_jpegs(path, buffer, sub_offsets, len(index))
    if x.shape[1:] != (_MINI_SIZE, _MINI_SIZE, 3):
        raise JnasError(f"{path}: mini-ImageNet images must be 84x84x3, got {x.shape[1:]}")
    return _read_only(x.reshape(len(ids), -1, *x.shape[1:]))
