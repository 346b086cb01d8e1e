"""Loading every supported checkpoint format, and a clear error for every bad one."""

from __future__ import annotations

import pytest
import torch

from edgeprune.checkpoint import load_model, parse_input_shape, save_model
from edgeprune.errors import CheckpointError
from edgeprune.models import lenet5, resnet20

SHAPE = (1, 3, 32, 32)


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return resnet20().eval()


@pytest.fixture(scope="module")
def state_dict_file(tmp_path_factory, resnet):
    path = tmp_path_factory.mktemp("ckpt") / "resnet20.pt"
    torch.save(resnet.state_dict(), path)
    return path


def _same_function(a, b, shape=SHAPE, batch=3):
    x = torch.randn(batch, *shape[1:])
    with torch.no_grad():
        return torch.allclose(a(x), b(x), atol=1e-6)


def test_state_dict_with_arch(state_dict_file, resnet):
    loaded = load_model(state_dict_file, arch="edgeprune.models:resnet20", input_shape=SHAPE)
    assert loaded.meta["format"] == "state-dict"
    assert tuple(loaded.example_input.shape) == SHAPE
    assert _same_function(loaded.model, resnet)


def test_wrapped_state_dict_and_arch_kwargs(tmp_path):
    model = lenet5(num_classes=7, input_size=8).eval()
    path = tmp_path / "wrapped.pt"
    torch.save({"state_dict": model.state_dict(), "epoch": 3}, path)
    loaded = load_model(
        path,
        arch="edgeprune.models:lenet5",
        arch_kwargs='{"num_classes": 7, "input_size": 8}',
        input_shape=(1, 1, 8, 8),
    )
    assert _same_function(loaded.model, model, (1, 1, 8, 8))


def test_exported_program_roundtrip_keeps_shape_and_dynamic_batch(tmp_path, resnet):
    path = save_model(resnet, torch.randn(SHAPE), tmp_path / "m.pt2")
    loaded = load_model(path)
    assert loaded.meta["format"] == "exported-program"
    assert tuple(loaded.example_input.shape) == SHAPE
    loaded.model.eval()  # GraphModules from torch.export must accept eval()/train()
    assert _same_function(loaded.model, resnet, batch=5)


def test_torchscript(tmp_path, resnet):
    path = tmp_path / "m.ts"
    torch.jit.trace(resnet, torch.randn(SHAPE)).save(str(path))
    loaded = load_model(path, input_shape=SHAPE)
    assert loaded.meta["format"] == "torchscript"
    assert _same_function(loaded.model, resnet, batch=1)


def test_torchscript_needs_input_shape(tmp_path, resnet):
    path = tmp_path / "m.ts"
    torch.jit.trace(resnet, torch.randn(SHAPE)).save(str(path))
    with pytest.raises(CheckpointError, match="--input-shape"):
        load_model(path)


def test_pickled_module_needs_trust(tmp_path, resnet):
    path = tmp_path / "whole.pt"
    torch.save(resnet, path)
    with pytest.raises(CheckpointError, match="--trust-checkpoint"):
        load_model(path, input_shape=SHAPE)
    loaded = load_model(path, input_shape=SHAPE, trust=True)
    assert loaded.meta["format"] == "pickled-module"


@pytest.mark.parametrize(
    ("setup", "kwargs", "message"),
    [
        ("missing", {}, "does not exist"),
        ("truncated", {"arch": "edgeprune.models:resnet20"}, "not a PyTorch checkpoint|corrupt"),
        ("garbage", {}, "not a PyTorch checkpoint"),
        ("state_dict", {}, "--arch"),
        ("state_dict", {"arch": "edgeprune.models:resnet32"}, "does not match the architecture: missing"),
        ("state_dict", {"arch": "edgeprune.models:resnet20", "arch_kwargs": '{"num_classes": 5}'}, "has shape"),
        ("state_dict", {"arch": "edgeprune.models:nope"}, "has no attribute"),
        ("state_dict", {"arch": "no_such_pkg.mod:f"}, "cannot import"),
        ("state_dict", {"arch": "edgeprune.models:resnet20", "arch_kwargs": "{bad json"}, "not valid JSON"),
        ("state_dict", {"arch": "edgeprune.models:resnet20", "input_shape": (1, 5, 32, 32)}, "does not accept inputs"),
    ],
)
def test_bad_checkpoints_raise_one_line_errors(tmp_path, state_dict_file, setup, kwargs, message):
    path = {"missing": tmp_path / "nope.pt", "state_dict": state_dict_file}.get(setup, tmp_path / f"{setup}.pt")
    if setup == "truncated":
        path.write_bytes(state_dict_file.read_bytes()[:4000])
    elif setup == "garbage":
        path.write_bytes(b"this is not a model at all")
    kwargs.setdefault("input_shape", SHAPE)
    with pytest.raises(CheckpointError, match=message) as info:
        load_model(path, **kwargs)
    assert "\n" not in str(info.value)
    assert info.value.hint


def test_corrupt_byte_in_exported_program(tmp_path, resnet):
    path = save_model(resnet, torch.randn(SHAPE), tmp_path / "m.pt2")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt|cannot load"):
        load_model(path)


@pytest.mark.parametrize("text", ["1,3,x", "3", "1,0,4,4", "-1,3,8,8"])
def test_bad_input_shape_text(text):
    with pytest.raises(CheckpointError, match="invalid input shape"):
        parse_input_shape(text)


def test_save_model_is_atomic_when_export_fails(tmp_path):
    class Untraceable(torch.nn.Module):
        def forward(self, x):
            return x * 2 if float(x.sum()) > 0 else x

    dest = tmp_path / "u.pt2"
    with pytest.raises(CheckpointError, match="cannot export"):
        save_model(Untraceable(), torch.randn(1, 3), dest)
    assert list(tmp_path.iterdir()) == []


def test_saving_the_same_model_twice_gives_identical_bytes(tmp_path):
    """torch.export.save names its archive folder after the file: no temporary name may leak into it."""
    model, x = lenet5(input_size=8).eval(), torch.zeros(1, 1, 8, 8)
    first = save_model(model, x, tmp_path / "a" / "model.pt2").read_bytes()
    second = save_model(model, x, tmp_path / "b" / "model.pt2").read_bytes()
    assert first == second
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["model.pt2"]  # no temporary left behind
