"""Every tensor of a real-layout checkpoint survives encode -> decode, and decoded BatchNorms stay valid.

The models have torchvision's exact state_dict names (tests/support/tv_layout.py) and BatchNorm statistics
like a trained network's: 0-dim int64 ``num_batches_tracked`` (one beyond the coder's level range),
running variances from 1e-6 to 80. They go through the CLI as a user's state_dict would (``--arch``).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from support import tv_layout

from edgeprune.checkpoint import load_model
from edgeprune.nnr.model import decode_model, model_tensors
from edgeprune.nnr.tensors import decode_stream, encode_tensors

MODELS = {"mobilenet_v2": tv_layout.mobilenet_v2, "resnet18ish": tv_layout.resnet18ish}
INPUT = "1,3,32,32"


def _checkpoint(name: str, tmp_path) -> tuple[torch.nn.Module, object]:
    torch.manual_seed(0)  # the weights must not depend on which tests ran before
    model = tv_layout.pretrained_like(MODELS[name]())
    first_bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    first_bn.num_batches_tracked.fill_((1 << 40) + 3)  # beyond the CABAC level range: stored as raw int64
    path = tmp_path / f"{name}.pt"
    torch.save(model.state_dict(), path)
    fresh = MODELS[name]()
    fresh.load_state_dict(torch.load(path))
    return fresh.eval(), path


def _check_round_trip(reference: torch.nn.Module, decoded: torch.nn.Module) -> None:
    want, got = reference.state_dict(), decoded.state_dict()
    assert sorted(got) == sorted(want)  # the rebuilt graph registers tensors in the order it uses them
    for key, ref in want.items():
        value = got[key]
        assert value.shape == ref.shape and value.dtype == ref.dtype, key
        if not ref.is_floating_point():
            assert torch.equal(value, ref), key  # integer buffers are lossless
        elif key.endswith("running_var"):
            assert bool((value > 0).all()), f"{key} decoded to a non-positive variance"
            assert float(((value - ref) / ref).abs().max()) <= 2.0**-8, key
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out_ref, out = reference(x), decoded(x)
    assert torch.isfinite(out).all()
    # Coding noise ~ std/8 per weight (~18 dB per layer, through ~10 layers): the same function, noisier
    # (seed 0: 0.17 for mobilenet_v2, 0.43 for resnet18ish, whose random weights amplify the noise).
    assert float((out - out_ref).norm() / out_ref.norm()) < 0.5


@pytest.mark.parametrize("name", sorted(MODELS))
def test_torchvision_layout_state_dict_round_trips_through_the_cli(name, runner, cli, tmp_path):
    reference, path = _checkpoint(name, tmp_path)
    arch = f"support.tv_layout:{MODELS[name].__name__}"
    nnr, out = tmp_path / "m.nnr", tmp_path / "m.pt2"
    result = runner.invoke(cli, ["encode", str(path), "--arch", arch, "--input-shape", INPUT, "-o", str(nnr), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["size_bytes"] == nnr.stat().st_size
    result = runner.invoke(cli, ["decode", str(nnr), "-o", str(out)])  # the .nnr's own architecture record
    assert result.exit_code == 0, result.output
    _check_round_trip(reference, load_model(out).model)
    model, _, _ = decode_model(nnr, arch=arch)  # rebuilt from the factory, as `decode --arch` does
    _check_round_trip(reference, model)


def test_zero_dim_and_integer_tensors_keep_shape_dtype_and_value():
    tensors = {
        "count": np.array(7, dtype=np.int64),
        "big": np.array(-(1 << 50), dtype=np.int64),
        "scalar": np.array(0.25, dtype=np.float32),
        "flag": np.array(True),
        "ids": np.arange(-5, 5, dtype=np.int16).reshape(2, 5),
        "empty": np.zeros((0, 3), np.float32),
    }
    decoded = decode_stream(encode_tensors(tensors).data).tensors
    for key, value in tensors.items():
        assert decoded[key].shape == value.shape and decoded[key].dtype == value.dtype, key
        if value.dtype != np.float32:
            assert np.array_equal(decoded[key], value), key
    assert decoded["scalar"] == pytest.approx(0.25, rel=2.0**-8)


@pytest.mark.parametrize("spread", [2.0, 6.0, 12.0])
def test_decoded_positive_vectors_are_never_zero_or_negative(spread):
    """Variances whose range spans up to e^(4*12): coded with a relative step, or float32 when too wide."""
    rng = np.random.default_rng(int(spread))
    var = np.exp(rng.normal(0.0, spread, size=4096)).astype(np.float32)
    weight = rng.normal(size=(64, 64)).astype(np.float32)
    decoded = decode_stream(encode_tensors({"bn.running_var": var, "conv.weight": weight}).data).tensors
    assert np.all(decoded["bn.running_var"] > 0)
    assert np.abs(decoded["bn.running_var"] / var - 1).max() <= 2.0**-8


def test_model_tensors_keeps_zero_dim_buffers():
    model = tv_layout.mobilenet_v2()
    assert model_tensors(model)["features.0.1.num_batches_tracked"].shape == ()
