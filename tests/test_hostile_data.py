"""Hostile datasets and options: one line, exit 2, nothing written - and no memory blow-up."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeprune import models
from edgeprune.checkpoint import save_model
from edgeprune.data import load_data
from edgeprune.errors import DataError

RNG = np.random.default_rng(0)


def _npz(p: Path, name: str = "d.npz", **arrays) -> Path:
    arrays.setdefault("x", RNG.random((40, 1, 8, 8), dtype=np.float32))
    arrays.setdefault("y", RNG.integers(0, 10, 40))
    np.savez(p / name, **arrays)
    return p / name


def _truncated(p: Path) -> Path:
    src = _npz(p)
    src.write_bytes(src.read_bytes()[:300])
    return src


def _bit_flipped(p: Path) -> Path:
    src = _npz(p)
    data = bytearray(src.read_bytes())
    data[len(data) // 2] ^= 0xFF
    src.write_bytes(bytes(data))
    return src


def _idx(p: Path, images: bytes, labels_n: int) -> Path:
    root = p / "mnist"
    root.mkdir()
    labels = bytes([0, 0, 8, 1]) + labels_n.to_bytes(4, "big") + bytes(labels_n)
    for prefix in ("train", "t10k"):
        (root / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(images))
        (root / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels))
    return root


def _idx_header(dims: list[int]) -> bytes:
    return bytes([0, 0, 8, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)


def _cifar(p: Path, batch) -> Path:  # noqa: ANN001
    root = p / "cifar-10-batches-py"
    root.mkdir()
    for name in ("data_batch_1", "test_batch"):
        (root / name).write_bytes(pickle.dumps(batch))
    return p


def _png_bomb(p: Path) -> Path:
    from PIL import Image

    for cls in ("a", "b"):
        (p / cls).mkdir()
        Image.new("L", (20000, 20000)).save(p / cls / "big.png", optimize=True)
    return p


CASES = {
    "truncated npz": (_truncated, "not a readable .npz"),
    "bit-flipped npz": (_bit_flipped, "not a readable .npz"),
    "string x": (lambda p: _npz(p, x=np.array(["a"] * 40)), "dtype <U1"),
    "complex x": (lambda p: _npz(p, x=np.ones((40, 1, 8, 8), np.complex64)), "complex64"),
    "nan x": (lambda p: _npz(p, x=np.full((40, 1, 8, 8), np.nan, np.float32)), "NaN or infinite"),
    "negative labels": (lambda p: _npz(p, y=-RNG.integers(1, 5, 40)), "labels from -"),
    "single class": (lambda p: _npz(p, y=np.zeros(40, int)), "single class"),
    "idx overflow": (lambda p: _idx(p, _idx_header([1 << 31, 1 << 31, 1 << 31]), 4), "truncated"),
    "idx count mismatch": (lambda p: _idx(p, _idx_header([30, 8, 8]) + bytes(30 * 64), 20), "labels"),
    "cifar list": (lambda p: _cifar(p, [1, 2, 3]), "not a dict"),
    "cifar missing key": (lambda p: _cifar(p, {"data": np.zeros((10, 3072), np.uint8)}), "not a dict"),
    "png bomb": (_png_bomb, "pixels"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_dataset_is_one_line(tmp_path, case):
    make, message = CASES[case]
    spec = make(tmp_path)
    with pytest.raises(DataError, match=message):
        load_data(spec)


@pytest.fixture(scope="module")
def lenet(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return save_model(
        models.lenet5(input_size=8, num_classes=3).eval(),
        torch.zeros(1, 1, 8, 8),
        tmp_path_factory.mktemp("m") / "lenet.pt2",
    )


def _invoke(runner, cli, tmp_path: Path, args: list[str]) -> str:  # noqa: ANN001
    out = tmp_path / "out"
    result = runner.invoke(cli, [*args, "-o", str(out)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith(("error:", "Error:")) and "Traceback" not in result.output
    assert not out.exists()
    return result.output


def test_labels_beyond_the_model_outputs(runner, cli, lenet, tmp_path):
    data = _npz(tmp_path)  # labels 0..9, the model has 3 outputs
    output = _invoke(runner, cli, tmp_path, ["prune", str(lenet), "--data", str(data)])
    assert "labels up to 9 but the model has 3 outputs" in output


@pytest.mark.parametrize("option", [["--twt", "nan"], ["--lr", "inf"]])
def test_non_finite_options(runner, cli, lenet, tmp_path, option):
    output = _invoke(runner, cli, tmp_path, ["prune", str(lenet), "--data", "digits", *option])
    assert "not a finite number" in output


def test_arch_kwargs_negative_classes(runner, cli, lenet, tmp_path):
    weights = tmp_path / "sd.pt"
    torch.save(models.lenet5().state_dict(), weights)
    output = _invoke(
        runner,
        cli,
        tmp_path,
        ["simplify", str(weights), "--arch", "edgeprune.models:lenet5", "--arch-kwargs", '{"num_classes": -5}'],
    )
    assert output.startswith("error: cannot build edgeprune.models:lenet5")


def test_arch_kwargs_with_an_integer_past_the_digit_limit(runner, cli, tmp_path):
    weights = tmp_path / "sd.pt"
    torch.save(models.lenet5().state_dict(), weights)
    huge = '{"num_classes": ' + "1" * 5000 + "}"
    args = ["simplify", str(weights), "--arch", "edgeprune.models:lenet5", "--arch-kwargs", huge]
    output = _invoke(runner, cli, tmp_path, args)
    assert output.startswith("error: --arch-kwargs is not valid JSON")


def test_checkpoint_that_is_a_single_byte(runner, cli, tmp_path):
    bad = tmp_path / "m.pt"
    bad.write_bytes(b"\x80")
    output = _invoke(runner, cli, tmp_path, ["simplify", str(bad)])
    assert output.startswith("error:") and "m.pt" in output


@pytest.mark.parametrize("target", ["dangling", "."])
def test_output_that_is_a_dangling_symlink_or_the_current_directory(runner, cli, lenet, tmp_path, target, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if target == "dangling":
        Path("dangling").symlink_to(tmp_path / "nowhere")
    before = sorted(p.name for p in tmp_path.iterdir())
    result = runner.invoke(cli, ["compress", str(lenet), "--data", "digits", "-o", target, "--force"])
    assert result.exit_code == 2 and result.output.startswith("error:"), result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.slow  # trains the example LeNet-5 once per session
@pytest.mark.parametrize("payload", [[1, 2, 3], {"config": {}}, "text"])
def test_resume_from_a_checkpoint_that_is_not_one(trained_lenet5, tmp_path, payload):
    import copy

    from edgeprune.errors import EdgepruneError
    from edgeprune.prune.pruner import PruneOptions, prune_model

    checkpoint = tmp_path / "state.pt"
    torch.save(payload, checkpoint)
    with pytest.raises(EdgepruneError, match="not an edgeprune training checkpoint"):
        prune_model(
            copy.deepcopy(trained_lenet5.model),
            trained_lenet5.example_input,
            trained_lenet5.data,
            PruneOptions(epochs=1, finetune_epochs=0, checkpoint=checkpoint, resume=True),
        )
