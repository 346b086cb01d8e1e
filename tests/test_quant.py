"""INT8 quantisation: the level/scale rule, BatchNorm folding, calibration and the quantize stage."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from support.tolerance import accuracy_tolerance
from torch import nn

from edgeprune.artifact import Artifact, StageContext
from edgeprune.checkpoint import as_graph_module, load_model, save_model
from edgeprune.data import DataBundle
from edgeprune.errors import DataError
from edgeprune.metrics import evaluate
from edgeprune.models import mobilenetv2_like, resnet20
from edgeprune.quant import (
    QuantOptions,
    calibrate_activations,
    load_quantized,
    quantize_tensor,
    quantize_weights,
    to_deploy_graph,
    with_quantized_weights,
)
from edgeprune.quant.calibrate import entropy_threshold, mse_range
from edgeprune.quant.stage import run as run_quantize_stage


def test_levels_and_scale_follow_the_documented_rule():
    w = np.array([[127.0, 2.5, -2.5, 0.5, -127.0], [0, 0, 0, 0, 0], [1.0, -0.5, 0.25, 0.0, 0.0]], np.float32)
    qt = quantize_tensor(w)
    assert qt.levels.dtype == np.int8 and qt.scale.dtype == np.float32 and qt.axis == 0
    np.testing.assert_array_equal(qt.scale, np.float32([1.0, 1.0, 1.0 / 127]))
    # rint rounds half to even: 2.5 -> 2, -2.5 -> -2, 0.5 -> 0 (what torch.round / onnxruntime do)
    np.testing.assert_array_equal(qt.levels[0], [127, 2, -2, 0, -127])
    np.testing.assert_array_equal(qt.levels[1], 0)  # an all-zero (pruned) row: scale 1.0, no division by 0
    np.testing.assert_array_equal(qt.levels[2], [127, -64, 32, 0, 0])


@settings(max_examples=60, deadline=None)
@given(
    arrays(
        np.float32,
        st.tuples(st.integers(1, 6), st.integers(1, 5), st.integers(1, 3)),
        elements=st.floats(-8, 8, width=32),
    )
)
def test_dequantised_weights_are_within_half_a_step(w):
    qt = quantize_tensor(w)
    assert np.abs(qt.levels.astype(int)).max() <= 127
    err = np.abs(qt.dequantize() - w).reshape(w.shape[0], -1).max(axis=1)
    assert np.all(err <= qt.scale / 2 * (1 + 1e-5) + 1e-7)
    nonzero_rows = np.abs(w.reshape(w.shape[0], -1)).max(axis=1) > 1e-30
    # every non-zero row uses the full grid: its largest magnitude maps to +-127
    assert np.all(np.abs(qt.levels.reshape(w.shape[0], -1)).max(axis=1)[nonzero_rows] == 127)


def _randomise_batchnorm(model: nn.Module) -> nn.Module:
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
    return model.eval()


@pytest.mark.parametrize("factory", [resnet20, mobilenetv2_like])
def test_batchnorm_folding_keeps_outputs_and_names(factory):
    torch.manual_seed(0)
    model = _randomise_batchnorm(factory(in_channels=1))
    x = torch.randn(4, 1, 8, 8)
    deploy, folded = to_deploy_graph(model, x[:1])
    assert folded == sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    with torch.no_grad():
        assert torch.allclose(deploy(x), model(x), atol=1e-5)
    ops = {str(n.target) for n in deploy.graph.nodes if n.op == "call_function"}
    assert not any("batch_norm" in op for op in ops)
    state = deploy.state_dict()
    assert not any("running_mean" in k or ".bn" in k for k in state)
    # the conv keeps its parameter name and gains a bias next to it
    first_conv = "conv1" if factory is resnet20 else "features.0"
    assert f"{first_conv}.weight" in state and f"{first_conv}.bias" in state
    assert set(quantize_weights(deploy).tensors) == {k for k, v in state.items() if v.dim() > 1}


def test_folding_a_decomposed_program(digits):
    """Core-ATen programs (after run_decompositions) carry convolution + _native_batch_norm_legit_no_training."""
    model = _randomise_batchnorm(resnet20(in_channels=1))
    x = digits.test.tensors[0][:4]
    batch = torch.export.Dim("b", max=1024)  # a loaded program brings its own batch bounds
    program = torch.export.export(model, (x,), dynamic_shapes=({0: batch},)).run_decompositions()
    deploy, folded = to_deploy_graph(as_graph_module(program), x[:1])
    assert folded == 19
    with torch.no_grad():
        assert torch.allclose(deploy(x), model(x), atol=1e-5)
    assert "conv1.weight" in quantize_weights(deploy).tensors and "bn1.running_var" not in deploy.state_dict()


def test_plain_module_and_exported_graph_give_the_same_levels(tmp_path, trained_lenet5):
    model = trained_lenet5.model
    save_model(model, trained_lenet5.example_input, tmp_path / "m.pt2")
    graph_module = load_model(tmp_path / "m.pt2").model
    plain, graph = quantize_weights(model), quantize_weights(graph_module)
    assert list(plain.tensors) == list(graph.tensors) == ["conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight"]
    for name in plain.tensors:
        np.testing.assert_array_equal(plain.tensors[name].levels, graph.tensors[name].levels)
        np.testing.assert_array_equal(plain.tensors[name].scale, graph.tensors[name].scale)


def test_calibration_ranges(trained_lenet5, digits):
    deploy, _ = to_deploy_graph(trained_lenet5.model, trained_lenet5.example_input)
    batch = digits.calibration_batch(64)
    minmax = calibrate_activations(deploy, batch, "minmax")
    assert minmax["input"] == (float(batch.min()), float(batch.max()))
    relu_ranges = [r for name, r in minmax.items() if name.startswith("relu")]
    assert relu_ranges and all(low == 0.0 for low, _ in relu_ranges)
    clipped = calibrate_activations(deploy, batch, "percentile", percentile=99.0)
    assert clipped.keys() == minmax.keys()
    assert all(clipped[k][1] <= minmax[k][1] and clipped[k][0] >= minmax[k][0] for k in minmax)
    assert any(clipped[k][1] < minmax[k][1] for k in minmax)
    entropy = calibrate_activations(deploy, batch, "entropy")
    assert entropy.keys() == minmax.keys()
    assert all(minmax[k][0] <= entropy[k][0] <= entropy[k][1] <= minmax[k][1] for k in minmax)
    mse = calibrate_activations(deploy, batch, "mse")
    assert mse.keys() == minmax.keys()
    assert all(min(minmax[k][0], 0) <= mse[k][0] <= 0 <= mse[k][1] <= max(minmax[k][1], 0) for k in minmax)
    with pytest.raises(DataError, match="unknown calibration method 'kl'"):
        calibrate_activations(deploy, batch, "kl")


def test_entropy_threshold_clips_rare_outliers_and_keeps_a_dense_range():
    """KL calibration: a uniform distribution needs its whole range; a Gaussian with a handful of huge
    outliers is clipped far below them but not into its bulk (TensorRT lands at ~3-5 sigma)."""
    rng = np.random.default_rng(0)
    uniform = rng.uniform(0.0, 1.0, 50_000)
    assert entropy_threshold(uniform) >= 0.99 * uniform.max()
    gaussian = rng.standard_normal(50_000)
    gaussian[:5] = 60.0
    threshold = entropy_threshold(gaussian)
    assert 2.5 < threshold < 10.0
    assert entropy_threshold(np.zeros(10)) == 0.0


def _uint8_error(values: np.ndarray, low: float, high: float) -> float:
    scale = (high - low) / 255
    zero = np.round(-low / scale)
    return float((((np.clip(np.round(values / scale) + zero, 0, 255) - zero) * scale - values) ** 2).sum())


def test_mse_range_weighs_clipping_against_resolution():
    """The chosen range reconstructs the values better than minmax does (measured on the values, not the
    histogram the choice was made on), clips a long thin tail, and keeps a bounded distribution whole."""
    rng = np.random.default_rng(0)
    tailed = np.concatenate([rng.standard_normal(50_000), rng.standard_normal(200) * 12])
    low, high = mse_range(*np.histogram(tailed, bins=2048))
    assert tailed.min() < low < 0 < high < tailed.max()
    assert _uint8_error(tailed, low, high) < _uint8_error(tailed, tailed.min(), tailed.max())
    relu6 = np.clip(rng.standard_normal(50_000) * 3, 0, 6)
    assert mse_range(*np.histogram(relu6, bins=2048)) == pytest.approx((0.0, 6.0), abs=6 / 2048)
    assert mse_range(np.zeros(4), np.linspace(0, 1, 5)) == (0.0, 0.0)


def test_quantize_stage_on_real_data(tmp_path, trained_lenet5):
    art = copy.deepcopy(trained_lenet5)
    fp32 = evaluate(art.model, art.data.loader("test", 256))["accuracy"]
    options = QuantOptions(calibration_samples=32, weights="maxabs")
    result = run_quantize_stage(art, StageContext(out_dir=tmp_path, options={"quantize": options}))
    quant = art.quant
    assert result["quantized_tensors"] == 4 and result["quantized_values"] == quant.num_values
    assert result["weight_sqnr_db"] > 35
    assert abs(result["accuracy"] - fp32) <= accuracy_tolerance(len(art.data.test))
    assert quant.calibration == {"method": "minmax", "ranges": "minmax", "samples": 32, "percentile": 99.99}
    assert art.files["quant"] == tmp_path / "quant.npz"
    reloaded = load_quantized(art.files["quant"])
    for name, qt in quant.tensors.items():
        np.testing.assert_array_equal(reloaded.tensors[name].levels, qt.levels)
        np.testing.assert_array_equal(reloaded.tensors[name].scale, qt.scale)
    # the snapped model computes with exactly levels * scale
    snapped = with_quantized_weights(art.model, quant)
    snapped_weight = snapped.state_dict()["conv1.weight"].numpy()
    np.testing.assert_array_equal(snapped_weight, quant.tensors["conv1.weight"].dequantize())


def test_rate_allocated_levels_halve_the_coded_size_within_the_accuracy_budget(tmp_path, trained_lenet5):
    """The default: each tensor's step from its Fisher sensitivity, |level| <= 127, the coded levels at most
    half of raw INT8, and test accuracy within the 0.5-point budget (plus what 359 images can resolve)."""
    from edgeprune.nnr import coded_bytes
    from edgeprune.nnr.qp import step_size

    art = copy.deepcopy(trained_lenet5)
    fp32 = evaluate(art.model, art.data.loader("test", 256))["accuracy"]
    result = run_quantize_stage(art, StageContext(out_dir=tmp_path))
    quant = art.quant
    assert result["weight_quantisation"] == "allocated" and result["allocation_sensitivity"] == "fisher"
    state = art.model.state_dict()
    qps = {}
    for name, qt in quant.tensors.items():
        assert np.abs(qt.levels.astype(int)).max() <= 127
        absmax = np.abs(state[name].numpy().reshape(len(qt.scale), -1)).max(axis=1)
        step = float(qt.scale.min())  # the tensor's step: channels whose range fits 127 steps use it as is
        np.testing.assert_array_equal(qt.scale, np.maximum(np.float32(step), (absmax / np.float32(127))))
        qps[name] = step
    assert len(set(qps.values())) > 1, "steps are chosen per tensor"
    assert all(any(abs(step_size(q) - s) == 0 for q in range(-128, 128)) for s in qps.values())
    raw = quant.num_values
    assert coded_bytes({k: t.levels for k, t in quant.tensors.items()}) <= 0.5 * raw
    n = len(art.data.test)
    assert result["accuracy"] >= fp32 - 0.005 - accuracy_tolerance(n, flip_rate=0.005)
    maxabs = copy.deepcopy(trained_lenet5)
    run_quantize_stage(
        maxabs, StageContext(out_dir=tmp_path / "m", options={"quantize": QuantOptions(weights="maxabs")})
    )
    assert coded_bytes({k: t.levels for k, t in maxabs.quant.tensors.items()}) > raw * 0.9


def test_bit_budget_is_met_and_unknown_weight_mode_is_named(tmp_path, trained_lenet5):
    from edgeprune.nnr import coded_bytes

    art = copy.deepcopy(trained_lenet5)
    options = QuantOptions(weights="allocated", target_accuracy_drop=None, bits_per_weight=2.0)
    result = run_quantize_stage(art, StageContext(out_dir=tmp_path, options={"quantize": options}))
    quant = art.quant
    assert 8 * coded_bytes({k: t.levels for k, t in quant.tensors.items()}) <= 2.0 * quant.num_values
    assert result["allocation_bits_per_weight"] <= 2.0
    from edgeprune.quant.allocate import allocate_int8

    names = list(quant.tensors)
    free = allocate_int8(art.model, names, None, 0.5, None, quantize_weights)  # no data: one step for all
    assert free.sensitivity == "uniform" and len(set(free.qps.values())) == 1 and free.agreement is None
    with pytest.raises(DataError, match="unknown weight quantisation 'int4'"):
        run_quantize_stage(
            copy.deepcopy(trained_lenet5),
            StageContext(out_dir=tmp_path / "x", options={"quantize": QuantOptions(weights="int4")}),
        )


def test_wrong_calibration_shape_is_refused_and_no_data_quantizes_weights_only(tmp_path, trained_lenet5, digits):
    wrong = DataBundle(
        "wide",
        *(torch.utils.data.TensorDataset(torch.zeros(20, 1, 6, 6), torch.zeros(20).long()) for _ in range(3)),
        num_classes=10,
        classes=[str(i) for i in range(10)],
    )
    art = Artifact(model=copy.deepcopy(trained_lenet5.model), example_input=trained_lenet5.example_input, data=wrong)
    with pytest.raises(
        DataError,
        match=r"calibration data has samples of shape \[1, 6, 6\] but the model expects "
        r"\[1, 8, 8\]",
    ):
        run_quantize_stage(art, StageContext(out_dir=tmp_path))
    assert not any(tmp_path.iterdir())
    art.data = None  # without data: the weights only (one step for all), no activation ranges
    result = run_quantize_stage(art, StageContext(out_dir=tmp_path))
    assert result["calibration"] == {"method": None, "samples": 0} and art.quant.activation_ranges == {}
    assert result["allocation_sensitivity"] == "uniform" and "accuracy" not in result


def test_layers_on_constants_are_not_quantised_and_exports_match_the_levels(tmp_path, trained_lenet5):
    """A dead conv1 channel before the zero-padded conv2 makes simplify add a border-correction conv over
    a map of ones; exporters fold it into a float constant, so it must not be an INT8 weight."""
    from edgeprune.export import onnx as onnx_export
    from edgeprune.export.verify import compare_levels
    from edgeprune.quant import quantized_weight_names, to_deploy_graph, with_quantized_weights
    from edgeprune.simplify import simplify

    model = copy.deepcopy(trained_lenet5.model)
    with torch.no_grad():
        model.conv1.weight[:5] = 0
    small = simplify(model, trained_lenet5.example_input).model
    graph, _ = to_deploy_graph(small, trained_lenet5.example_input)
    names = quantized_weight_names(graph)
    aten = torch.ops.aten
    constant_convs = [
        n.args[1].target
        for n in graph.graph.nodes
        if n.target is aten.conv2d.default and n.args[0].target is aten.new_ones.default
    ]
    assert constant_convs, "the simplified model should carry a border correction"
    assert not set(constant_convs) & set(names)
    quant = quantize_weights(graph)
    snapped = with_quantized_weights(graph, quant)
    fp32 = onnx_export.export_fp32(snapped, trained_lenet5.example_input, tmp_path / "s.onnx")
    int8 = onnx_export.quantize_int8(fp32, tmp_path / "q.onnx", trained_lenet5.data.calibration_batch(32))
    check = compare_levels({k: t.levels for k, t in quant.tensors.items()}, onnx_export.read_int8_weights(int8))
    assert check.mismatches == 0 and not check.missing
