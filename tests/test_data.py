"""Every dataset source loads into deterministic, normalised splits; bad data fails clearly."""

from __future__ import annotations

import gzip
import pickle

import numpy as np
import pytest
import torch

from edgeprune.data import load_data
from edgeprune.errors import DataError


def test_digits_is_real_and_deterministic():
    a, b = load_data("digits", seed=3), load_data("digits", seed=3)
    c = load_data("digits", seed=4)
    assert a.sample_shape == (1, 8, 8) and a.num_classes == 10
    assert len(a.train) + len(a.val) + len(a.test) == 1797
    assert torch.equal(a.train.tensors[0], b.train.tensors[0])
    assert not torch.equal(a.train.tensors[0], c.train.tensors[0])
    # images reach the model scaled to [0, 1], not re-normalised (see data.py)
    x = a.train.tensors[0]
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0


def test_loader_shuffle_is_seeded(digits):
    first = next(iter(digits.loader("train", 16, shuffle=True, seed=1)))[1]
    again = next(iter(digits.loader("train", 16, shuffle=True, seed=1)))[1]
    assert torch.equal(first, again)


def test_npz(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "d.npz"
    np.savez(path, x=rng.integers(0, 255, (50, 12, 12), dtype=np.uint8), y=rng.integers(0, 3, 50))
    data = load_data(path)
    assert data.sample_shape == (1, 12, 12) and data.num_classes == 3


def _write_idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def _mnist_dir(root, n=40):
    rng = np.random.default_rng(0)
    root.mkdir()
    _write_idx(root / "train-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)))
    _write_idx(root / "train-labels-idx1-ubyte.gz", rng.integers(0, 10, n))
    _write_idx(root / "t10k-images-idx3-ubyte.gz", rng.integers(0, 255, (n // 2, 28, 28)))
    _write_idx(root / "t10k-labels-idx1-ubyte.gz", rng.integers(0, 10, n // 2))
    return root


def test_mnist_idx_directory_keeps_official_test_split(tmp_path):
    data = load_data(_mnist_dir(tmp_path / "mnist"))
    assert data.sample_shape == (1, 28, 28)
    assert len(data.test) == 20 and len(data.train) + len(data.val) == 40


def test_truncated_idx_file(tmp_path):
    root = _mnist_dir(tmp_path / "mnist")
    f = root / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(f.read_bytes())
    f.write_bytes(gzip.compress(raw[:-100]))
    with pytest.raises(DataError, match="truncated"):
        load_data(root)


def test_cifar10_pickle_directory(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(1, 3):
        batch = {"data": rng.integers(0, 255, (20, 3072), dtype=np.uint8), "labels": list(rng.integers(0, 10, 20))}
        (root / f"data_batch_{i}").write_bytes(pickle.dumps(batch))
    (root / "test_batch").write_bytes(
        pickle.dumps({"data": rng.integers(0, 255, (10, 3072), dtype=np.uint8), "labels": list(range(10))})
    )
    data = load_data(tmp_path)
    assert data.sample_shape == (3, 32, 32) and len(data.test) == 10


def test_cifar_pickle_cannot_run_code(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    for name in ("data_batch_1", "test_batch"):
        (root / name).write_bytes(pickle.dumps({"data": Evil(), "labels": []}))
    with pytest.raises(DataError, match="refusing to load"):
        load_data(tmp_path)


def test_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(8):
            Image.fromarray(rng.integers(0, 255, (10, 10, 3), dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    data = load_data(tmp_path)
    assert data.sample_shape == (3, 10, 10) and data.classes == ["cat", "dog"]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "missing", "not found"),
        (lambda p: (p / "x.txt").write_text("hi") and p / "x.txt", "not an .npz"),
        (lambda p: np.savez(p / "a.npz", inputs=np.zeros((20, 4))) or p / "a.npz", "'x'"),
        (lambda p: np.savez(p / "b.npz", x=np.zeros((20, 4)), y=np.zeros(19, int)) or p / "b.npz", "same N"),
        (lambda p: np.savez(p / "c.npz", x=np.zeros((20, 4)), y=np.zeros(20)) or p / "c.npz", "integers"),
        (lambda p: (p / "empty").mkdir() or p / "empty", "no dataset"),
    ],
)
def test_bad_data_sources(tmp_path, make, message):
    with pytest.raises(DataError, match=message):
        load_data(make(tmp_path))


def test_shape_mismatch_is_reported(digits):
    with pytest.raises(DataError, match=r"\[1, 8, 8\].*\[3, 32, 32\]"):
        digits.check_fits((1, 3, 32, 32))
