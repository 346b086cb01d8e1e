"""Datasets for pruning, calibration and accuracy: nothing is ever downloaded.

``load_data(spec)`` understands:

* ``digits`` - scikit-learn's 1,797 8x8 handwritten digits (ships inside scikit-learn);
* a directory of MNIST / Fashion-MNIST IDX files (``train-images-idx3-ubyte[.gz]`` ...), e.g.
  ``/usr/share/datasets/fashion-mnist`` from Debian's ``dataset-fashion-mnist``;
* a CIFAR-10/100 python-pickle directory (``cifar-10-batches-py`` / ``cifar-100-python``);
* an ImageFolder tree (``root/<class>/<image>``; images read with Pillow);
* an ``.npz`` file with arrays ``x`` (N, C, H, W) or (N, H, W) and ``y`` (N,) integer labels.

Every source becomes a :class:`DataBundle` of float32 NCHW tensors, split deterministically into
train/val/test by ``seed``. Sources that ship an official test split keep it as the test set.

Preprocessing is what the user's model was trained on, never a guess: an ``.npz`` reaches the
model exactly as stored; image formats (IDX, CIFAR, image folders, digits) are scaled to [0, 1].
``normalize=(mean, std)`` (per channel, ``--normalize MEAN,STD`` on the command line) then applies
``(x - mean) / std`` when the model was trained on standardised inputs; ``normalize="standardize"``
uses the training split's own statistics (what the embedded examples were trained with). Feeding a
model differently normalised data than it was trained on costs most of its accuracy and makes
pruning fine-tune it to the new inputs silently, so the bundle records what was applied
(``DataBundle.preprocessing``) for the report.
"""

from __future__ import annotations

import gzip
import math
import os
import pickle
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from edgeprune.errors import DataError

FASHION_MNIST_DEBIAN = Path("/usr/share/datasets/fashion-mnist")
# Raw bytes a dataset may decode to before edgeprune converts it to float32 (x4): 256 MiB keeps a
# 1 GiB Raspberry Pi alive. Override with EDGEPRUNE_MAX_DATA_MB for bigger datasets on bigger hosts.
MAX_DATA_BYTES = int(float(os.environ.get("EDGEPRUNE_MAX_DATA_MB", "256")) * (1 << 20))
MAX_IMAGE_PIXELS = 16 << 20  # one image; Pillow's own bomb check allows ~90 M pixels
MAX_LABEL = 1 << 16  # class indices beyond this are certainly not a classification task


def _too_big(what: str, nbytes: int) -> DataError:
    return DataError(
        f"{what} would decode to {nbytes / (1 << 20):.0f} MiB, more than the {MAX_DATA_BYTES >> 20} MiB limit",
        "set EDGEPRUNE_MAX_DATA_MB if this host has the memory",
    )


def _exact(values: torch.Tensor) -> list[float]:
    return [float(f"{float(v):.9g}") for v in values.flatten()]


@dataclass
class DataBundle:
    """Deterministic train/val/test splits of one dataset as in-memory tensors."""

    name: str
    train: TensorDataset
    val: TensorDataset
    test: TensorDataset
    num_classes: int
    classes: list[str]
    preprocessing: str = "as given"

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one input sample without the batch dimension, e.g. (1, 8, 8)."""
        return tuple(self.train.tensors[0].shape[1:])

    def split(self, name: str) -> TensorDataset:
        try:
            return {"train": self.train, "val": self.val, "test": self.test}[name]
        except KeyError:
            raise ValueError(f"unknown split {name!r}; use train, val or test") from None

    def loader(self, split: str, batch_size: int = 128, shuffle: bool = False, seed: int = 0) -> DataLoader:
        """A DataLoader over ``split``; shuffling uses its own generator seeded by ``seed``."""
        generator = torch.Generator().manual_seed(seed) if shuffle else None
        return DataLoader(self.split(split), batch_size=batch_size, shuffle=shuffle, generator=generator)

    def calibration_batch(self, n: int = 128) -> torch.Tensor:
        """The first ``n`` training inputs: a fixed, real calibration set for quantisation."""
        return self.train.tensors[0][:n]

    def check_labels(self, num_outputs: int) -> None:
        """Raise a DataError when labels index past the model's ``num_outputs`` classes."""
        if self.num_classes > num_outputs:
            raise DataError(
                f"dataset {self.name!r} has labels up to {self.num_classes - 1} but the model has "
                f"{num_outputs} outputs",
                "use a model with one output per class (e.g. --arch-kwargs '{\"num_classes\": N}')",
            )

    def check_fits(self, input_shape: tuple[int, ...]) -> None:
        """Raise a DataError when samples do not have the model's input shape (batch dim ignored)."""
        if tuple(input_shape[1:]) != self.sample_shape:
            raise DataError(
                f"dataset {self.name!r} has samples of shape {list(self.sample_shape)} but the model "
                f"expects {list(input_shape[1:])}",
                "pass --input-shape matching the data, or a dataset of the model's input size",
            )


Normalize = tuple[list[float], list[float]] | str | None


def parse_normalize(text: str | None) -> tuple[list[float], list[float]] | None:
    """``"MEAN,STD"`` with per-channel values separated by '/' (``0.1307,0.3081`` or
    ``0.485/0.456/0.406,0.229/0.224/0.225``) -> (mean, std); None stays None."""
    if text is None:
        return None
    parts = text.split(",")
    try:
        mean, std = ([float(v) for v in p.split("/")] for p in parts) if len(parts) == 2 else (None, None)
    except ValueError:
        mean = std = None
    if mean is None or std is None or len(mean) != len(std) or any(v <= 0 for v in std):
        raise DataError(
            f"--normalize {text!r} is not MEAN,STD with positive STD",
            "e.g. --normalize 0.1307,0.3081 or, per channel, --normalize 0.49/0.48/0.45,0.25/0.24/0.26",
        )
    return mean, std


def load_data(
    spec: str | Path,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    normalize: Normalize = None,
) -> DataBundle:
    """Load the dataset named or pointed to by ``spec`` (see the module docstring)."""
    bundle = _load(spec, seed, val_fraction, test_fraction)
    return _normalize(bundle, normalize)


def _normalize(bundle: DataBundle, normalize: Normalize) -> DataBundle:
    """Apply ``normalize`` (see the module docstring) to every split and record it."""
    if normalize is None:
        return bundle
    x = bundle.train.tensors[0]
    axes = (0, *range(2, x.dim()))
    if normalize == "standardize":
        mean, std = x.mean(dim=axes), x.std(dim=axes, unbiased=False) + 1e-6
        label = "standardised with the training split's statistics"
    elif isinstance(normalize, str):
        raise DataError(f"unknown normalisation {normalize!r}", "give (mean, std) or 'standardize'")
    else:
        mean, std = torch.tensor(normalize[0]), torch.tensor(normalize[1])
        label = ""
    channels = x.shape[1]
    if mean.numel() == 1:
        mean, std = mean.expand(channels), std.expand(channels)
    if mean.numel() != channels:
        raise DataError(
            f"--normalize gives {mean.numel()} values per statistic but the data has {channels} channels",
            "give one MEAN/STD value, or one per channel separated by '/'",
        )
    shape = (1, channels, *([1] * (x.dim() - 2)))
    mean, std = mean.float().reshape(shape), std.float().reshape(shape)
    for split in (bundle.train, bundle.val, bundle.test):
        split.tensors = ((split.tensors[0] - mean) / std, split.tensors[1])
    # float32-exact (9 significant digits): the string also goes into the exported files' metadata,
    # where a reader must be able to reproduce the input exactly
    stats = f"mean={_exact(mean)}, std={_exact(std)}"
    suffix = f" ({label})" if label else ""
    bundle.preprocessing = f"{bundle.preprocessing}, then (x - mean) / std with {stats}{suffix}"
    return bundle


def _load(spec: str | Path, seed: int, val_fraction: float, test_fraction: float) -> DataBundle:
    spec_str = str(spec)
    if spec_str == "digits":
        x, y, classes = _digits()
        return _split("digits", x, y, None, None, classes, seed, val_fraction, test_fraction)
    if spec_str in ("fashion-mnist", "fashion_mnist") and FASHION_MNIST_DEBIAN.is_dir():
        spec = FASHION_MNIST_DEBIAN
    path = Path(spec).expanduser()
    if not path.exists():
        raise DataError(
            f"dataset {spec_str!r} not found",
            "use 'digits', an .npz file, or a directory with MNIST IDX, CIFAR pickle or ImageFolder data",
        )
    if path.is_file():
        if path.suffix != ".npz":
            raise DataError(f"{path} is not an .npz file", "give a .npz with arrays 'x' and 'y', or a directory")
        x, y = _npz(path)
        return _split(path.stem, x, y, None, None, None, seed, val_fraction, test_fraction, "as given (.npz)")
    if _idx_file(path, "train-images") is not None:
        (x, y), (xt, yt) = _idx_dir(path)
        return _split(path.name, x, y, xt, yt, None, seed, val_fraction, test_fraction)
    cifar = _cifar_dir(path)
    if cifar is not None:
        (x, y), (xt, yt), classes = cifar
        return _split(path.name, x, y, xt, yt, classes, seed, val_fraction, test_fraction)
    subdirs = sorted(p for p in path.iterdir() if p.is_dir())
    if subdirs:
        x, y, classes = _image_folder(path, subdirs)
        return _split(path.name, x, y, None, None, classes, seed, val_fraction, test_fraction)
    raise DataError(
        f"{path} holds no dataset edgeprune recognises",
        "expected MNIST IDX files, cifar-10-batches-py / cifar-100-python, class sub-folders of images, or an .npz",
    )


def _digits() -> tuple[np.ndarray, np.ndarray, list[str]]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None]
    return x, d.target.astype(np.int64), [str(i) for i in range(10)]


def _npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with zipfile.ZipFile(path) as zf:  # sizes from the zip directory, before anything is inflated
            total = sum(info.file_size for info in zf.infolist())
        if total > MAX_DATA_BYTES:
            raise _too_big(str(path), total)
        with np.load(path, allow_pickle=False) as f:
            if "x" not in f or "y" not in f:
                raise DataError(f"{path} has arrays {sorted(f.files)}", "save the inputs as 'x' and the labels as 'y'")
            x, y = f["x"], f["y"]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, KeyError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise DataError(f"{path} is not a readable .npz file: {first}", "re-create it with numpy.savez") from None
    if x.dtype.kind not in "biuf":
        raise DataError(f"{path}: inputs x have dtype {x.dtype}", "store real numbers (float or integer pixels)")
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim not in (2, 4) or y.ndim != 1 or len(x) != len(y):
        raise DataError(
            f"{path}: x has shape {list(x.shape)} and y {list(y.shape)}",
            "x must be (N, C, H, W), (N, H, W) or (N, F) and y (N,) with the same N",
        )
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: labels y have dtype {y.dtype}", "store class indices as integers")
    return x.astype(np.float32), y.astype(np.int64)  # as given: the model's own preprocessing


def _idx_file(path: Path, prefix: str) -> Path | None:
    for candidate in sorted(path.glob(f"{prefix}*")):
        if "idx" in candidate.name:
            return candidate
    return None


def _read_idx(file: Path) -> np.ndarray:
    opener = gzip.open if file.suffix == ".gz" else open
    try:
        with opener(file, "rb") as f:
            raw = f.read(MAX_DATA_BYTES + 1)  # a gzip bomb stops here
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot read {file}: {exc}", "re-extract the IDX files") from None
    if len(raw) > MAX_DATA_BYTES:
        raise _too_big(str(file), len(raw))
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{file} is not an unsigned-byte IDX file", "give the original MNIST/Fashion-MNIST files")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = 4 + 4 * ndim + math.prod(dims)  # Python ints: crafted dimensions cannot wrap around
    if len(raw) != expected:
        raise DataError(f"{file} is truncated ({len(raw)} of {expected} bytes)", "re-extract the IDX files")
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _idx_dir(path: Path) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    parts = {}
    for key, prefix in (("x", "train-images"), ("y", "train-labels"), ("xt", "t10k-images"), ("yt", "t10k-labels")):
        f = _idx_file(path, prefix)
        if f is None:
            raise DataError(f"{path} lacks the {prefix} IDX file", "the directory needs all four MNIST IDX files")
        parts[key] = _read_idx(f)
    for images, labels in (("x", "y"), ("xt", "yt")):
        if parts[images].ndim != 3 or parts[labels].ndim != 1 or len(parts[images]) != len(parts[labels]):
            raise DataError(
                f"{path}: the IDX files hold {list(parts[images].shape)} images and {list(parts[labels].shape)} labels",
                "give matching MNIST image and label files",
            )
    to_x = lambda a: (a.astype(np.float32) / 255.0)[:, None]  # noqa: E731
    return (to_x(parts["x"]), parts["y"].astype(np.int64)), (to_x(parts["xt"]), parts["yt"].astype(np.int64))


def _unpickle(file: Path) -> dict:
    try:
        with open(file, "rb") as f:
            # CIFAR batches are plain dicts of arrays; refuse anything that would need a class.
            return _SafeUnpickler(f, encoding="latin1").load()
    except (OSError, EOFError, pickle.UnpicklingError) as exc:
        raise DataError(f"cannot read CIFAR batch {file}: {exc}", "re-extract the CIFAR archive") from None


class _SafeUnpickler(pickle.Unpickler):
    """Unpickles only numpy arrays and builtins: a dataset file must not be able to run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str):  # noqa: ANN201
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _cifar_dir(path: Path):  # noqa: ANN202 - internal tuple
    root = path
    for name in ("cifar-10-batches-py", "cifar-100-python"):
        if (path / name).is_dir():
            root = path / name
    if not isinstance(meta := _unpickle(root / "batches.meta") if (root / "batches.meta").exists() else {}, dict):
        raise DataError(f"{root}/batches.meta is not a dict", "re-extract the CIFAR archive")
    if (root / "data_batch_1").exists():
        batches = [_unpickle(root / f"data_batch_{i}") for i in range(1, 6) if (root / f"data_batch_{i}").exists()]
        test = _unpickle(root / "test_batch")
        label_key = "labels"
        classes = [str(c) for c in meta.get("label_names", [str(i) for i in range(10)])]
    elif (root / "train").is_file() and (root / "test").is_file():
        batches, test, label_key = [_unpickle(root / "train")], _unpickle(root / "test"), "fine_labels"
        meta = _unpickle(root / "meta") if (root / "meta").exists() else {}
        meta = meta if isinstance(meta, dict) else {}
        classes = [str(c) for c in meta.get("fine_label_names", [str(i) for i in range(100)])]
    else:
        return None

    def arrays(batch_list: list[dict]) -> tuple[np.ndarray, np.ndarray]:
        for b in batch_list:
            if not (isinstance(b, dict) and isinstance(b.get("data"), np.ndarray) and label_key in b):
                raise DataError(
                    f"a CIFAR batch under {root} is not a dict with 'data' and {label_key!r}",
                    "re-extract the CIFAR archive",
                )
        try:
            x = np.concatenate([np.asarray(b["data"], dtype=np.uint8) for b in batch_list])
            y = np.concatenate([np.asarray(b[label_key], dtype=np.int64) for b in batch_list])
            if x.size % (3 * 32 * 32) or len(x.reshape(-1, 3, 32, 32)) != len(y):
                raise ValueError(f"{x.size} pixel values for {len(y)} labels")
        except (ValueError, TypeError, OverflowError) as exc:
            raise DataError(
                f"CIFAR batches under {root} are malformed: {str(exc)[:120]}", "re-extract the CIFAR archive"
            ) from None
        return x.reshape(-1, 3, 32, 32).astype(np.float32) / 255.0, y

    return arrays(batches), arrays([test]), classes


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def _image_folder(path: Path, subdirs: list[Path]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    from PIL import Image, UnidentifiedImageError

    xs, ys, size = [], [], None
    for label, d in enumerate(subdirs):
        for file in sorted(d.iterdir()):
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(file) as im:  # reads the header only: the size is known before decoding
                    if im.size[0] * im.size[1] > MAX_IMAGE_PIXELS:
                        raise DataError(
                            f"image {file} has {im.size[0]}x{im.size[1]} pixels, more than the "
                            f"{MAX_IMAGE_PIXELS} allowed",
                            "resize the images first",
                        )
                    arr = np.asarray(im.convert("RGB" if im.mode not in ("L", "I;16") else "L"))
            except (UnidentifiedImageError, OSError, Image.DecompressionBombError, ValueError) as exc:
                raise DataError(f"cannot read image {file}: {exc}", "remove or fix the file") from None
            if size is None:
                size = arr.shape
            elif arr.shape != size:
                raise DataError(
                    f"{file} has shape {arr.shape}, other images {size}", "resize all images to one size first"
                )
            xs.append(arr)
            ys.append(label)
    if not xs:
        raise DataError(f"no images found under {path}", "put images in one sub-folder per class")
    x = np.stack(xs).astype(np.float32) / 255.0
    x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
    return x, np.asarray(ys, dtype=np.int64), [d.name for d in subdirs]


def _split(
    name: str,
    x: np.ndarray,
    y: np.ndarray,
    x_test: np.ndarray | None,
    y_test: np.ndarray | None,
    classes: list[str] | None,
    seed: int,
    val_fraction: float,
    test_fraction: float,
    preprocessing: str = "scaled to [0, 1]",
) -> DataBundle:
    """Shuffle with ``seed``, carve out val (and test when none ships); values are left as they are."""
    if len(x) < 10:
        raise DataError(f"dataset {name!r} has only {len(x)} samples", "provide at least 10 labelled samples")
    _check_values(name, x, y, x_test, y_test)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    n = len(x)
    n_test = 0 if x_test is not None else max(1, int(round(n * test_fraction)))
    n_val = max(1, int(round(n * val_fraction)))
    if x_test is None or y_test is None:
        x_test, y_test = x[:n_test], y[:n_test]
    x_val, y_val = x[n_test : n_test + n_val], y[n_test : n_test + n_val]
    x_train, y_train = x[n_test + n_val :], y[n_test + n_val :]

    def ds(a: np.ndarray, b: np.ndarray) -> TensorDataset:
        return TensorDataset(torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)), torch.from_numpy(b))

    num_classes = int(max(y.max(), y_test.max())) + 1
    return DataBundle(
        name=name,
        train=ds(x_train, y_train),
        val=ds(x_val, y_val),
        test=ds(x_test, y_test),
        num_classes=num_classes,
        classes=classes or [str(i) for i in range(num_classes)],
        preprocessing=preprocessing,
    )


def _check_values(
    name: str, x: np.ndarray, y: np.ndarray, x_test: np.ndarray | None, y_test: np.ndarray | None
) -> None:
    """Refuse data that would train or calibrate into NaN, or index past the classifier's outputs."""
    for arr in (x, x_test):
        if arr is not None and arr.nbytes > MAX_DATA_BYTES * 4:
            raise _too_big(f"dataset {name!r}", arr.nbytes)
        if arr is not None and not np.all(np.isfinite(arr)):
            raise DataError(f"dataset {name!r} contains NaN or infinite inputs", "clean the data first")
    labels = np.concatenate([y, y_test]) if y_test is not None else y
    if labels.size and (labels.min() < 0 or labels.max() >= MAX_LABEL):
        raise DataError(
            f"dataset {name!r} has labels from {labels.min()} to {labels.max()}",
            f"labels must be class indices 0..N-1 (N < {MAX_LABEL})",
        )
    if len(np.unique(labels)) < 2:
        raise DataError(f"dataset {name!r} has a single class", "a classifier needs at least two classes")
