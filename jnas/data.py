"""Image classification data for architecture search: loading, the DARTS split, batches.

Everything here is numpy on the host; batches have one static shape so a jitted step
compiles once.
"""

import dataclasses
import io
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from jnas.errors import JnasError

DATASETS = ("digits", "cifar10", "cifar100")

# name -> (num_classes, per-channel mean, per-channel std), the constants DARTS uses.
_CIFAR = {
    "cifar10": (
        10,
        (0.49139968, 0.48215827, 0.44653124),
        (0.24703233, 0.24348505, 0.26158768),
    ),
    "cifar100": (100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}

_PAD = 4  # pixels of zero padding before the random crop (CIFAR augmentation)
_TFDS_CHUNK = 10_000  # examples per tf.data batch when reading a whole TFDS split


# eq=False: the fields are arrays, so generated __eq__/__hash__ would be ambiguous or fail.
@dataclasses.dataclass(frozen=True, eq=False)
class ImageDataset:
    name: str
    x: np.ndarray  # uint8, NHWC (grayscale gets a trailing channel axis of 1)
    y: np.ndarray  # int32, (N,)
    num_classes: int
    mean: tuple[float, ...]  # per channel, on the [0, 1] pixel scale
    std: tuple[float, ...]
    augment: bool  # random crop with 4-pixel zero padding + horizontal flip (CIFAR)

    def __post_init__(self):
        if self.x.dtype != np.uint8 or self.x.ndim != 4:
            raise JnasError(
                f"dataset {self.name!r}: `x` must be uint8 with shape (N, H, W, C), got "
                f"{self.x.dtype} {self.x.shape}; convert the images to uint8 NHWC"
            )
        if self.y.ndim != 1 or len(self.y) != len(self.x):
            raise JnasError(
                f"dataset {self.name!r}: `y` must have shape ({len(self.x)},) to match `x`, got "
                f"{self.y.shape}; give one label per image"
            )
        channels = self.x.shape[-1]
        if len(self.mean) != channels or len(self.std) != channels:
            raise JnasError(
                f"dataset {self.name!r}: `mean` and `std` need {channels} values (one per "
                f"channel), got {len(self.mean)} and {len(self.std)}"
            )

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, index) -> "ImageDataset":
        """Same metadata, rows x[index], y[index] (index: slice, integer or boolean array)."""
        return dataclasses.replace(self, x=self.x[index], y=self.y[index])


def load_dataset(name: str, data_dir: str | None = None, split: str = "train") -> ImageDataset:
    """Load "digits", "cifar10", "cifar100", or a whole .npz file (then split is ignored)."""
    if name.endswith(".npz"):
        x, y = read_npz(Path(name))
        mean, std = _channel_stats(x)
        return ImageDataset(name, x, y, int(y.max()) + 1, mean, std, augment=False)
    if name == "digits":
        return _load_digits(split)
    if name in _CIFAR:
        return _load_cifar(name, data_dir, split)
    raise JnasError(
        f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}, "
        "or give a path to a .npz file"
    )


def search_split(ds: ImageDataset, train_portion: float) -> tuple[ImageDataset, ImageDataset]:
    """Split into (weights part, architecture part) in file order, as the DARTS code does."""
    if not 0 < train_portion < 1:
        raise JnasError(
            f"`train_portion` must be strictly between 0 and 1, got {train_portion}; "
            "use e.g. `train_portion` 0.5"
        )
    cut = int(train_portion * len(ds))
    if cut == 0 or cut == len(ds):
        raise JnasError(
            f"`train_portion` {train_portion} of the {len(ds)} examples in {ds.name!r} leaves "
            "one part empty; use a `train_portion` nearer 0.5 or more data"
        )
    return ds.subset(slice(0, cut)), ds.subset(slice(cut, None))


def num_train_batches(ds: ImageDataset, batch_size: int) -> int:
    """Batches per epoch from train_batches (the last partial batch is dropped)."""
    if batch_size < 1:
        raise JnasError(f"`batch_size` must be at least 1, got {batch_size}")
    if batch_size > len(ds):
        # Dropping the remainder would leave no step at all, so say so instead of doing nothing.
        raise JnasError(
            f"`batch_size` {batch_size} is larger than the {len(ds)} examples in this "
            f"{ds.name!r} split; lower `batch_size` to at most {len(ds)}"
        )
    return len(ds) // batch_size


def train_batches(
    ds: ImageDataset, batch_size: int, *, seed: int, epoch: int, rows: slice = slice(None)
) -> Iterator[dict[str, np.ndarray]]:
    """One shuffled, augmented (if ds.augment), normalised epoch; same (seed, epoch), same data.

    `rows` selects the rows of every batch to load (a process's share of a global batch); the
    order and the augmentation are drawn for the whole batch, so the shares add up to it.
    """
    steps = num_train_batches(ds, batch_size)
    if seed < 0 or epoch < 0:
        raise JnasError(f"`seed` and `epoch` must be >= 0, got seed={seed}, epoch={epoch}")
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(ds))
    for step in range(steps):
        index = order[step * batch_size : (step + 1) * batch_size]
        crops = _draw_crops(rng, batch_size) if ds.augment else None
        index = index[rows]
        x = ds.x[index]
        if crops is not None:
            x = _crop_and_flip(x, *(c[rows] for c in crops))
        yield {"x": preprocess(ds, x), "y": ds.y[index]}


def eval_batches(
    ds: ImageDataset, batch_size: int, rows: slice = slice(None)
) -> Iterator[dict[str, np.ndarray]]:
    """All examples in order; the last batch is padded with row 0 and "mask" marks real rows.

    `rows` as in `train_batches`.
    """
    if batch_size < 1:
        raise JnasError(f"`batch_size` must be at least 1, got {batch_size}")
    for start in range(0, len(ds), batch_size):
        index = np.arange(start, start + batch_size)[rows]
        real = index < len(ds)
        index = np.where(real, index, 0)
        yield {
            "x": preprocess(ds, ds.x[index]),
            "y": ds.y[index],
            "mask": real.astype(np.float32),
        }


def preprocess(ds, x_uint8: np.ndarray) -> np.ndarray:
    """uint8 (..., H, W, C) -> float32 (x / 255 - mean) / std with the per-channel statistics
    of `ds` (an ImageDataset or a few-shot split: anything with `mean` and `std`)."""
    if x_uint8.dtype != np.uint8 or x_uint8.shape[-1:] != (len(ds.mean),):
        raise JnasError(
            f"preprocess expects uint8 images with {len(ds.mean)} channels last, got "
            f"{x_uint8.dtype} {x_uint8.shape}"
        )
    mean = np.asarray(ds.mean, np.float32)
    std = np.asarray(ds.std, np.float32)
    return (x_uint8.astype(np.float32) / 255.0 - mean) / std


def _draw_crops(rng: np.random.Generator, n: int):
    """Per image: crop offsets into the zero-padded image and whether to flip (p=0.5)."""
    top = rng.integers(0, 2 * _PAD + 1, n)
    left = rng.integers(0, 2 * _PAD + 1, n)
    return top, left, rng.random(n) < 0.5


def _crop_and_flip(x: np.ndarray, top, left, flip) -> np.ndarray:
    """Random crop of the zero-padded images, then the horizontal flips, all at once."""
    n, h, w, _ = x.shape
    padded = np.pad(x, ((0, 0), (_PAD, _PAD), (_PAD, _PAD), (0, 0)))
    rows = top[:, None] + np.arange(h)
    cols = left[:, None] + np.arange(w)
    # Flipping the crop is reading its columns right to left.
    cols = np.where(flip[:, None], cols[:, ::-1], cols)
    return padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def _channel_stats(x: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std on the [0, 1] scale, in chunks so big sets need no float copy."""
    flat = x.reshape(-1, x.shape[-1])
    total = np.zeros(flat.shape[1])
    squares = np.zeros(flat.shape[1])
    chunk = 1 << 20
    for start in range(0, len(flat), chunk):
        part = flat[start : start + chunk].astype(np.float64)
        total += part.sum(axis=0)
        squares += (part * part).sum(axis=0)
    # Integer pixel sums are exact in float64, so E[x^2] - E[x]^2 loses nothing that matters.
    mean = total / len(flat) / 255.0
    std = np.sqrt(np.maximum(squares / len(flat) / 255.0**2 - mean**2, 0.0))
    # A constant channel carries no information; std 1 only centres it instead of dividing by 0.
    std = np.where(std > 0, std, 1.0)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def _load_digits(split: str) -> ImageDataset:
    from sklearn.datasets import load_digits

    if split not in ("train", "test"):
        raise JnasError(f"digits has splits 'train' and 'test', got {split!r}")
    digits = load_digits()
    x = np.round(digits.images * 255.0 / 16.0).astype(np.uint8)[..., None]
    y = digits.target.astype(np.int32)
    # One fixed shuffle, so the 80/20 split is the same on every machine and run.
    order = np.random.default_rng(0).permutation(len(y))
    cut = int(0.8 * len(y))
    train, test = order[:cut], order[cut:]
    mean, std = _channel_stats(x[train])
    index = train if split == "train" else test
    return ImageDataset("digits", x[index], y[index], 10, mean, std, augment=False)


def _load_cifar(name: str, data_dir: str | None, split: str) -> ImageDataset:
    num_classes, mean, std = _CIFAR[name]
    local_names = (f"{name}_{split}_jpeg.npz", f"{name}_{split}.npz")
    # Also data_dir/name/, so one --data_dir can hold several datasets' folders.
    folders = [Path(data_dir), Path(data_dir) / name] if data_dir else []
    candidates = [folder / f for folder in folders for f in local_names]
    local = next((p for p in candidates if p.is_file()), None)
    if local is not None:
        x, y = read_npz(local)
        source = str(local)
    else:
        x, y = load_tfds(name, data_dir, split, local_names)
        source = f"TFDS {name} split {split!r}"
    if x.shape[1:] != (32, 32, 3):
        raise JnasError(f"{source}: {name} images must be 32x32x3, got {x.shape[1:]}")
    if len(y) and y.max() >= num_classes:
        raise JnasError(
            f"{source}: labels must be below {num_classes} for {name}, found {int(y.max())}"
        )
    return ImageDataset(name, x, y, num_classes, mean, std, augment=True)


def load_tfds(
    name: str, data_dir: str | None, split: str, local_names: tuple[str, ...], joiner: str = "or"
) -> tuple[np.ndarray, np.ndarray]:
    """A whole TFDS split as (x uint8 NHWC, y int32); `local_names` are the local files that
    were looked for instead (any one of them: joiner "or"; all: "and"), for the messages."""
    files = f" {joiner} ".join(local_names)
    if data_dir:
        no_local = f"no {files} in `data_dir` {data_dir} or {Path(data_dir) / name}"
    else:
        no_local = f"no `data_dir` was given to look for {files}"
    tfds_dir = data_dir or "TFDS's default data dir ($TFDS_DATA_DIR or ~/tensorflow_datasets)"
    # Keep TensorFlow's start-up chatter out of the training log unless the user asked for it.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf
        import tensorflow_datasets as tfds
    except ImportError:
        raise JnasError(
            f"{name} split {split!r}: {no_local}, and tensorflow-datasets is not installed; "
            'pip install "jnas[tfds]", or pass a `data_dir` that holds those .npz files'
        ) from None
    try:
        # TF must not reserve the GPU that JAX is about to use; it only feeds numpy here.
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:
        pass  # TF was already initialised by the caller; its device choice stands.
    try:
        ds = tfds.load(name, split=split, data_dir=data_dir, download=False, as_supervised=True)
        # Whole split in a few large batches rather than batch_size=-1, which needs the split
        # size from metadata (absent under tfds.testing.mock_data, where it aborts TF).
        parts = list(tfds.as_numpy(ds.batch(_TFDS_CHUNK)))
    except Exception as err:  # TFDS raises assorted types when data is missing or unreadable
        # First sentence only: TFDS's own advice (download=True) does not apply here.
        text = str(err).strip()
        reason = text.split(". ")[0].splitlines()[0] if text else type(err).__name__
        raise JnasError(
            f"{name} split {split!r} was not found: {no_local}, and TFDS has no prepared "
            f"'{name}' in {tfds_dir} ({reason}). Where there is internet, run: python -c "
            f"\"import tensorflow_datasets as tfds; tfds.builder('{name}', "
            f"data_dir='{data_dir or 'DIR'}').download_and_prepare()\", then pass `data_dir` "
            "pointing at that folder"
        ) from None
    if not parts:
        raise JnasError(f"TFDS {name} split {split!r} in {tfds_dir} has no examples")
    x = np.concatenate([p[0] for p in parts]).astype(np.uint8)
    y = np.concatenate([p[1] for p in parts]).astype(np.int32)
    return x, y


def load_npz(path: Path, keys: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """The arrays of an .npz file (those of `keys` that it has, or all), or an error that
    names the file when it is not a readable .npz."""
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in (f.files if keys is None else keys) if k in f.files}
    except Exception as err:  # numpy, zipfile and zlib raise many types for a bad file
        raise JnasError(
            f"{path} is not a readable numpy .npz file: it is damaged, cut short or another "
            f"format ({type(err).__name__}); write it again with numpy.savez"
        ) from None


def read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read plain (x, y) or JPEG-packed (jpeg, offsets, y) arrays; x comes back uint8 NHWC."""
    if not path.is_file():
        raise JnasError(f"dataset file {path} does not exist; check the path")
    arrays = load_npz(path)
    if {"jpeg", "offsets", "y"} <= arrays.keys():
        x = decode_jpegs(path, arrays["jpeg"], arrays["offsets"], len(arrays["y"]))
    elif {"x", "y"} <= arrays.keys():
        x = arrays["x"]
        if x.ndim == 3:
            x = x[..., None]  # grayscale NHW -> NHW1
    else:
        raise JnasError(
            f"{path} has keys {sorted(arrays)}; expected 'x' and 'y' (uint8 images, labels) "
            "or 'jpeg', 'offsets' and 'y' (JPEG-packed images, labels)"
        )
    y = arrays["y"]
    if x.dtype != np.uint8 or x.ndim != 4:
        raise JnasError(
            f"{path}: x must be uint8 with shape (N, H, W) or (N, H, W, C), got "
            f"{x.dtype} {x.shape}; save the images as uint8"
        )
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer) or len(y) != len(x):
        raise JnasError(
            f"{path}: y must be {len(x)} integer labels (one per image), got {y.dtype} {y.shape}"
        )
    if len(y) == 0:
        raise JnasError(f"{path} holds no examples")
    if y.min() < 0:
        raise JnasError(f"{path}: labels must be >= 0, found {int(y.min())}")
    return x, y.astype(np.int32)


def decode_jpegs(path: Path, jpeg: np.ndarray, offsets: np.ndarray, n: int) -> np.ndarray:
    """`n` JPEGs packed in `jpeg` (image i is bytes offsets[i]:offsets[i + 1]) -> uint8 NHWC."""
    from PIL import Image

    if jpeg.dtype != np.uint8 or jpeg.ndim != 1 or offsets.shape != (n + 1,):
        raise JnasError(
            f"{path}: JPEG-packed files need 'jpeg' uint8 1-D and 'offsets' of shape "
            f"({n + 1},), got {jpeg.dtype} {jpeg.shape} and {offsets.shape}"
        )
    out = None
    for i in range(n):
        try:
            buf = jpeg[offsets[i] : offsets[i + 1]]
            image = np.asarray(Image.open(io.BytesIO(buf.tobytes())).convert("RGB"))
        except OSError as err:
            raise JnasError(f"{path}: image {i} is not a readable JPEG ({err})") from None
        if out is None:
            out = np.empty((n, *image.shape), np.uint8)  # decode straight into one array
        if image.shape != out.shape[1:]:
            raise JnasError(
                f"{path}: image {i} is {image.shape}, image 0 is {out.shape[1:]}; "
                "all images must have one size"
            )
        out[i] = image
    return out if out is not None else np.zeros((0, 1, 1, 3), np.uint8)
