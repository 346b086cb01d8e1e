"""ONNX / TFLite export: runtime verification on real data and the INT8 weight-equality check.

TFLite conversions take 2-15 s each, so the suite converts few models and marks those tests slow.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from support.tolerance import accuracy_tolerance
from torch import nn

from edgeprune import quant
from edgeprune.artifact import Artifact, StageContext
from edgeprune.checkpoint import save_model
from edgeprune.errors import ExportError, GraphError, VerificationError
from edgeprune.export import onnx as onnx_export
from edgeprune.export import stage as export_stage
from edgeprune.export import tflite as tflite_export
from edgeprune.export.verify import compare_levels, match_by_content, verify_exported_levels
from edgeprune.metrics import count_params, evaluate
from edgeprune.models import mobilenetv2_like, resnet20
from edgeprune.progress import QUIET
from edgeprune.prune.train import TrainConfig, fit

ONNX_ONLY = export_stage.ExportOptions(formats=("onnx",))


def _trained(factory, digits, epochs: int) -> Artifact:  # noqa: ANN001 - a model factory
    torch.manual_seed(0)
    model = factory(in_channels=1)
    fit(model, digits, TrainConfig(epochs=epochs, lr=0.05, batch_size=64), QUIET)
    return Artifact(model=model.eval(), example_input=digits.test.tensors[0][:1].clone(), data=digits)


@pytest.fixture(scope="module")
def lenet5_onnx(trained_lenet5, tmp_path_factory):
    """LeNet-5 on digits exported to fp32 + INT8 ONNX once for the tests that inspect the files."""
    art = copy.deepcopy(trained_lenet5)
    out = tmp_path_factory.mktemp("lenet5-onnx")
    result = _export(art, StageContext(out_dir=out, options={"export": ONNX_ONLY}))
    return art, result


def _export(art: Artifact, ctx: StageContext) -> dict:
    """The export stage after the quantize stage, as the pipeline runs them for INT8 files."""
    if art.quant is None and ctx.options_for("export", export_stage.ExportOptions).int8:
        quant.stage.run(art, ctx)
    result = export_stage.run(art, ctx)
    verify_exported_levels(art, result)  # the pipeline's step after export
    return result


def _float_accuracy(art: Artifact) -> float:
    return evaluate(art.model, art.data.loader("test", 256))["accuracy"]


def _assert_verified(result: dict, fp32_accuracy: float, runtime: str) -> None:
    rows = {r["precision"]: r for r in result["exports"] if r["runtime"] == runtime}
    assert rows["fp32"]["max_abs_diff"] < 1e-4
    assert rows["fp32"]["accuracy"] == pytest.approx(fp32_accuracy)
    tolerance = accuracy_tolerance(rows["int8"]["samples"])
    assert abs(rows["int8"]["accuracy"] - fp32_accuracy) <= tolerance, "INT8 flips more than quantisation explains"
    assert rows["int8"]["weight_mismatches"] == 0


def test_onnx_lenet5_files_accuracy_and_levels(lenet5_onnx, trained_lenet5):
    art, result = lenet5_onnx
    _assert_verified(result, _float_accuracy(trained_lenet5), "onnxruntime")
    assert result["weight_mismatches"] == 0 and result["weight_reference"] == "quantize stage"
    assert result["weight_check"]["onnx_int8"]["compared_values"] == art.quant.num_values
    out = art.files["onnx_fp32"].parent
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "model_int8.onnx", "quant.npz"]
    fp32 = onnx.load(str(art.files["onnx_fp32"]))
    assert fp32.opset_import[0].version == onnx_export.OPSET
    assert all(not init.external_data for init in fp32.graph.initializer)  # one self-contained file
    assert fp32.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch
    int8 = onnx.load(str(art.files["onnx_int8"]))
    op_types = {n.op_type for n in int8.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv", "Gemm"} <= op_types and "QLinearConv" not in op_types
    assert result["size_bytes"] < 0.35 * art.files["onnx_fp32"].stat().st_size


def test_onnx_weight_check_fails_when_one_level_is_altered(lenet5_onnx, tmp_path):
    art, _ = lenet5_onnx
    reference = {n: t.levels for n, t in art.quant.tensors.items()}
    model = onnx.load(str(art.files["onnx_int8"]))
    init = next(i for i in model.graph.initializer if i.name == "conv2.weight_quantized")
    levels = numpy_helper.to_array(init).copy()
    levels[3, 1, 0, 2] = np.int8(levels[3, 1, 0, 2] + (1 if levels[3, 1, 0, 2] < 127 else -1))
    init.CopyFrom(numpy_helper.from_array(levels, init.name))
    onnx.save(model, str(tmp_path / "altered.onnx"))
    assert compare_levels(reference, onnx_export.read_int8_weights(art.files["onnx_int8"])).mismatches == 0
    check = compare_levels(reference, onnx_export.read_int8_weights(tmp_path / "altered.onnx"))
    assert check.mismatches == 1 and check.as_dict()["mismatching_tensors"] == {"conv2.weight": 1}


def test_static_batch_onnx_calibrates_and_runs_one_sample_at_a_time(lenet5_onnx, tmp_path):
    art, result = lenet5_onnx
    qw = art.quant
    fp32 = onnx_export.export_fp32(
        quant.with_quantized_weights(art.model, qw), art.example_input, tmp_path / "static.onnx", dynamic_batch=False
    )
    int8 = onnx_export.quantize_int8(
        fp32,
        tmp_path / "static_int8.onnx",
        art.data.calibration_batch(16),
        weight_scales={n: t.scale for n, t in qw.tensors.items()},
    )
    assert onnx.load(str(int8)).graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    check = compare_levels({n: t.levels for n, t in qw.tensors.items()}, onnx_export.read_int8_weights(int8))
    assert check.mismatches == 0
    x, y = art.data.test.tensors
    accuracy = float((onnx_export.run_session(int8, x).argmax(1) == y.numpy()).mean())
    assert abs(accuracy - result["accuracy_onnxruntime_int8"]) <= accuracy_tolerance(len(y))


def test_best_calibration_keeps_the_file_that_agrees_most_on_validation(trained_lenet5, tmp_path):
    art = copy.deepcopy(trained_lenet5)
    options = {"export": ONNX_ONLY, "quantize": quant.QuantOptions(calibration="best", calibration_samples=32)}
    result = _export(art, StageContext(out_dir=tmp_path, options=options))
    row = next(r for r in result["exports"] if r["file"] == "model_int8.onnx")
    agreement = row["calibration_validation_agreement"]
    assert set(agreement) == set(quant.CALIBRATION_METHODS)
    assert agreement[row["calibration"]] == max(agreement.values())
    val = art.data.val.tensors[0]
    with torch.no_grad():
        reference = art.model(val).argmax(1).numpy()
    kept = onnx_export.run_session(art.files["onnx_int8"], val, exact=True).argmax(1)
    assert float((kept == reference).mean()) == agreement[row["calibration"]]  # the file is the chosen one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model_int8.onnx", "quant.npz"]
    assert art.quant.calibration["method"] == "best" and art.quant.calibration["ranges"] == "minmax"
    assert row["weight_mismatches"] == 0


def test_level_comparison_counts_missing_and_reshaped_tensors():
    ref = {"a": np.arange(6, dtype=np.int8).reshape(2, 3), "b": np.ones((4, 2), np.int8)}
    check = compare_levels(ref, {"a": np.arange(6, dtype=np.int8).reshape(2, 3)})
    assert check.mismatches == 8 and check.missing == ["b"] and check.compared_values == 14
    # unnamed candidates: the best match wins, so two same-shape tensors are not confused
    swapped = [("FULLY_CONNECTED", np.ones((4, 2), np.int8)), ("FULLY_CONNECTED", ref["a"].copy())]
    assert match_by_content(ref, swapped).mismatches == 0
    assert match_by_content(ref, swapped[:1]).missing == ["a"]


@pytest.fixture(scope="module")
def trained_resnet(digits):
    return _trained(resnet20, digits, epochs=3)


@pytest.fixture(scope="module")
def trained_mobilenet(digits):
    return _trained(mobilenetv2_like, digits, epochs=2)


@pytest.mark.parametrize("which", ["trained_resnet", pytest.param("trained_mobilenet", marks=pytest.mark.slow)])
def test_onnx_residual_and_depthwise_models(which, request, tmp_path, capfd):
    """The file's exact INT8 arithmetic is within quantisation noise of fp32 on every CPU; where this CPU's
    kernels saturate (x86 without VNNI, on the MobileNetV2-like net: 73.8 % vs 86.6 %), export says so."""
    art = copy.deepcopy(request.getfixturevalue(which))
    fp32_accuracy = _float_accuracy(art)
    assert fp32_accuracy > 0.85  # a real model, so the INT8 comparison means something
    result = _export(art, StageContext(out_dir=tmp_path, options={"export": ONNX_ONLY}))
    row = next(r for r in result["exports"] if r["file"] == "model_int8.onnx")
    tolerance = accuracy_tolerance(row["samples"])
    assert abs(row["accuracy_exact"] - fp32_accuracy) <= tolerance
    if row["kernel_flips"] is None:
        _assert_verified(result, fp32_accuracy, "onnxruntime")
    else:
        assert "INT8 kernels on this CPU change" in capfd.readouterr().err
    assert result["weight_check"]["onnx_int8"]["missing_tensors"] == []


@pytest.mark.slow
def test_seven_bit_weights_run_exactly_on_every_cpu(trained_mobilenet, tmp_path):
    """--weight-bits 7: levels within -63..63, which no INT8 kernel can saturate, so this CPU's result is
    the file's exact result and within quantisation noise of fp32."""
    art = copy.deepcopy(trained_mobilenet)
    fp32_accuracy = _float_accuracy(art)
    options = {"export": ONNX_ONLY, "quantize": quant.QuantOptions(weight_bits=7)}
    result = _export(art, StageContext(out_dir=tmp_path, options=options))
    assert max(int(np.abs(t.levels).max()) for t in art.quant.tensors.values()) <= 63
    row = next(r for r in result["exports"] if r["file"] == "model_int8.onnx")
    assert row["kernel_flips"] is None and row["weight_mismatches"] == 0
    assert abs(row["accuracy"] - fp32_accuracy) <= accuracy_tolerance(row["samples"])


def _prune_lenet5(model: nn.Module) -> nn.Module:
    """Zero whole channels the way structured pruning leaves them: half the conv1 filters (and the conv2
    inputs they feed), a third of the conv2 filters and 60 % of the fc1 neurons."""
    pruned = copy.deepcopy(model)
    with torch.no_grad():
        for layer, dead in (
            (pruned.conv1, range(0, 20, 2)),
            (pruned.conv2, range(0, 50, 3)),
            (pruned.fc1, range(0, 500, 5)),
        ):
            for c in dead:
                layer.weight[c] = 0
                layer.bias[c] = 0
        pruned.conv2.weight[:, 0:20:2] = 0
        pruned.fc1.weight[:, [c * 4 + k for c in range(0, 50, 3) for k in range(4)]] = 0
        pruned.fc2.weight[:, 0:500:5] = 0
    return pruned.eval()


def _prune_resnet(model: nn.Module) -> nn.Module:
    """Zero every other inner channel of each residual block (conv1's filters and their BN)."""
    pruned = copy.deepcopy(model)
    with torch.no_grad():
        for block in pruned.layers:
            block.conv1.weight[::2] = 0
            block.bn1.weight[::2] = 0
            block.bn1.bias[::2] = 0
    return pruned.eval()


def test_pruned_model_exports_zero_channels_with_equal_levels(trained_lenet5, tmp_path):
    """Zeroed channels get scale 1.0 and levels 0 in every file, and INT8 keeps the pruned accuracy."""
    art = Artifact(
        model=_prune_lenet5(trained_lenet5.model), example_input=trained_lenet5.example_input, data=trained_lenet5.data
    )
    fp32_accuracy = _float_accuracy(art)
    result = _export(art, StageContext(out_dir=tmp_path, options={"export": ONNX_ONLY}))
    _assert_verified(result, fp32_accuracy, "onnxruntime")
    tensors = art.quant.tensors.values()
    dead_scales = [t.scale[r] for t in tensors for r in range(len(t.scale)) if not t.levels[r].any()]
    assert len(dead_scales) == 10 + 17 + 100 and all(scale == 1.0 for scale in dead_scales)


@pytest.mark.parametrize("which", ["lenet5", "resnet20"])
def test_pruned_and_simplified_models_export_with_equal_levels(which, trained_lenet5, request, tmp_path):
    """The narrower graph the simplify stage builds from a pruned model exports and verifies like any other."""
    from edgeprune.simplify import simplify

    source = trained_lenet5 if which == "lenet5" else request.getfixturevalue("trained_resnet")
    pruned = (_prune_lenet5 if which == "lenet5" else _prune_resnet)(source.model)
    simplified = simplify(pruned, source.example_input, source.data.calibration_batch(16)).model
    assert count_params(simplified) < count_params(pruned)
    art = Artifact(model=simplified, example_input=source.example_input, data=source.data)
    fp32_accuracy = _float_accuracy(art)
    result = _export(art, StageContext(out_dir=tmp_path, options={"export": ONNX_ONLY}))
    _assert_verified(result, fp32_accuracy, "onnxruntime")
    assert result["weight_check"]["onnx_int8"]["compared_values"] == art.quant.num_values


def test_encoded_nnr_levels_are_the_reference(lenet5_onnx, tmp_path, monkeypatch):
    """With model.nnr present the files are compared with the levels decoded from it."""
    art_done, _ = lenet5_onnx
    decoded = {n: t.levels.copy() for n, t in art_done.quant.tensors.items()}
    decoded["fc1.weight"][7, 11] = np.int8(-decoded["fc1.weight"][7, 11] or 5)  # one level differs in the .nnr
    import edgeprune.nnr

    nnr_file = tmp_path / "model.nnr"
    nnr_file.write_bytes(b"stand-in: the decoder is replaced below")
    monkeypatch.setattr(
        edgeprune.nnr, "read_int8_levels", lambda path: decoded if path == nnr_file else {}, raising=False
    )
    art = Artifact(
        model=art_done.model,
        example_input=art_done.example_input,
        data=art_done.data,
        files={"nnr": nnr_file},
        quant=art_done.quant,
    )
    with pytest.raises(
        VerificationError,
        match=r"model_int8.onnx: 1 INT8 weights differ from model.nnr "
        r"\(1 in fc1.weight.*not written",
    ):
        _export(art, StageContext(out_dir=tmp_path, options={"export": ONNX_ONLY}))
    assert not (tmp_path / "model_int8.onnx").exists()
    decoded["fc1.weight"][7, 11] = art_done.quant.tensors["fc1.weight"].levels[7, 11]
    result = _export(art, StageContext(out_dir=tmp_path, options={"export": ONNX_ONLY}))
    assert result["weight_reference"] == "model.nnr" and result["weight_mismatches"] == 0
    assert (tmp_path / "model_int8.onnx").is_file()


@pytest.mark.slow
def test_torchvision_mobilenet_v2_with_bn_exports_the_exact_levels(digits, tmp_path):
    """A MobileNetV2 in torchvision's layout (depthwise, ReLU6, BN folded before quantising) whose
    BatchNorms include near-dead channels (gamma ~ 1e-9 and 3e-6), so the folded weights of those
    channels are far below litert's 2**-12 scale floor - the cause of 20,827 mismatching levels in
    the ImageNet MobileNetV2. Both INT8 files must carry exactly the quantize stage's levels."""
    from support import tv_layout

    torch.manual_seed(0)
    model = tv_layout.pretrained_like(tv_layout.mobilenet_v2(in_channels=1))
    with torch.no_grad():
        for i, bn in enumerate(m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.weight[1 + i % 3] = 1e-9 if i % 2 else 3e-6
    images = nn.functional.interpolate(digits.test.tensors[0], size=32)  # 1x32x32, real pixel statistics
    art = Artifact(model=model.eval(), example_input=images[:1].clone(), data=None)
    deploy, folded = quant.to_deploy_graph(art.model, art.example_input)
    assert folded == sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    qw = quant.quantize_weights(deploy)
    assert min(float(t.scale.min()) for t in qw.tensors.values()) < 2**-12 / 1000
    snapped = quant.with_quantized_weights(deploy, qw)
    scales = {n: t.scale for n, t in qw.tensors.items()}
    reference = {n: t.levels for n, t in qw.tensors.items()}
    tfl = tflite_export.export_int8(
        snapped, art.example_input, images[:64], tmp_path / "m.tflite", weight_scales=scales
    )
    check = match_by_content(reference, tflite_export.read_int8_weights(tfl))
    assert check.missing == [] and check.mismatches == 0, check.as_dict()
    fp32 = onnx_export.export_fp32(snapped, art.example_input, tmp_path / "m.onnx")
    int8 = onnx_export.quantize_int8(fp32, tmp_path / "m_int8.onnx", images[:64], weight_scales=scales)
    check = compare_levels(reference, onnx_export.read_int8_weights(int8))
    assert check.missing == [] and check.mismatches == 0, check.as_dict()
    with torch.no_grad():
        expected = deploy(images[64:128]).argmax(1).numpy()
    assert np.isfinite(tflite_export.run_interpreter(tfl, images[64:128])).all()
    # onnxruntime: an untrained net has small logit margins, so INT8 flips some; agreement far above
    # chance (10 %). LiteRT is not held to this on an untrained net: its histogram activation observer
    # deviates as much with litert's own weight scales (measured: logit deviation 1.42 vs 1.44 pinned).
    assert float((onnx_export.run_session(int8, images[64:128]).argmax(1) == expected).mean()) >= 0.5


@pytest.mark.slow
def test_tflite_lenet5_fp32_and_full_integer(trained_lenet5, tmp_path):
    art = copy.deepcopy(trained_lenet5)
    options = export_stage.ExportOptions(formats=("tflite",))
    result = _export(art, StageContext(out_dir=tmp_path, options={"export": options}))
    _assert_verified(result, _float_accuracy(trained_lenet5), "litert")
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(art.files["tflite_int8"]))
    assert interpreter.get_input_details()[0]["dtype"] == np.int8  # full integer: int8 in and out
    assert interpreter.get_output_details()[0]["dtype"] == np.int8
    # Altering one level inside the flatbuffer is caught: find conv2's OHWI bytes and change one.
    reference = {n: t.levels for n, t in art.quant.tensors.items()}
    data = bytearray(art.files["tflite_int8"].read_bytes())
    ohwi = np.moveaxis(reference["conv2.weight"], 1, -1).tobytes()
    offset = data.find(ohwi)
    assert offset >= 0
    data[offset + 100] = (data[offset + 100] + 1) % 256 if data[offset + 100] != 127 else 126
    (tmp_path / "altered.tflite").write_bytes(bytes(data))
    check = match_by_content(reference, tflite_export.read_int8_weights(tmp_path / "altered.tflite"))
    assert check.mismatches == 1 and check.as_dict()["mismatching_tensors"] == {"conv2.weight": 1}


@pytest.mark.slow
def test_tflite_int8_depthwise_and_pruned_levels(trained_mobilenet, trained_lenet5, tmp_path):
    """Depthwise (1HWO) and zero-row weights read back from the flatbuffer equal the quantize stage's;
    the pruned LeNet-5 is also converted with NHWC input, as phone camera pipelines feed it."""
    pruned = Artifact(
        model=_prune_lenet5(trained_lenet5.model), example_input=trained_lenet5.example_input, data=trained_lenet5.data
    )
    for name, art, nhwc in (("mobilenet", copy.deepcopy(trained_mobilenet), False), ("pruned", pruned, True)):
        fp32_accuracy = _float_accuracy(art)
        quant.stage.run(art, StageContext(out_dir=tmp_path / name))
        qw = art.quant
        dest = tflite_export.export_int8(
            quant.with_quantized_weights(art.model, qw),
            art.example_input,
            art.data.calibration_batch(128),
            tmp_path / name / "int8.tflite",
            nhwc=nhwc,
            weight_scales={n: t.scale for n, t in qw.tensors.items()},
        )
        check = match_by_content({n: t.levels for n, t in qw.tensors.items()}, tflite_export.read_int8_weights(dest))
        assert check.mismatches == 0 and check.missing == []
        outputs = tflite_export.run_interpreter(dest, art.data.test.tensors[0], nhwc=nhwc)
        labels = art.data.test.tensors[1].numpy()
        accuracy = float((outputs.argmax(1) == labels).mean())
        assert abs(accuracy - fp32_accuracy) <= accuracy_tolerance(len(labels))


# ---------------------------------------------------------------------------------------------- errors


class _Bessel(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.special.bessel_j0(x).flatten(1)


def test_unexportable_op_is_named(tmp_path, digits):
    with pytest.raises(ExportError, match=r"cannot export the model to ONNX \(op prims.bessel_j0\)"):
        onnx_export.export_fp32(_Bessel(), digits.test.tensors[0][:1], tmp_path / "m.onnx")
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_tflite_unlowerable_op_is_named(tmp_path, digits):
    with pytest.raises(ExportError, match=r"litert-torch cannot convert .* \(op aten.special_bessel_j0"):
        tflite_export.export_fp32(_Bessel(), digits.test.tensors[0][:1], tmp_path / "m.tflite")
    assert not any(tmp_path.iterdir())


class _DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1)) if x.sum() > 0 else -self.fc(x.flatten(1))


def test_untraceable_model_fails_before_writing(tmp_path, digits):
    art = Artifact(model=_DataDependent().eval(), example_input=digits.test.tensors[0][:1], data=digits)
    options = export_stage.ExportOptions(formats=("onnx",), int8=False)
    with pytest.raises(GraphError, match="cannot trace the model"):
        _export(art, StageContext(out_dir=tmp_path, options={"export": options}))
    assert not any(tmp_path.iterdir())


def test_missing_litert_torch_names_the_extra(monkeypatch, tmp_path, trained_lenet5):
    monkeypatch.setitem(sys.modules, "litert_torch", None)  # makes `import litert_torch` raise ImportError
    art = copy.deepcopy(trained_lenet5)
    with pytest.raises(ExportError, match=r"pip install 'edgeprune\[tflite\]' -c constraints.txt"):
        export_stage.run(art, StageContext(out_dir=tmp_path))
    assert not any(tmp_path.iterdir())


def test_int8_export_without_the_quantize_stage_is_refused(trained_lenet5, tmp_path):
    """Quantisation has one entry point (the quantize stage, which the pipeline adds for INT8 exports)."""
    art = copy.deepcopy(trained_lenet5)
    with pytest.raises(ExportError, match="quantize stage did not run"):
        export_stage.run(art, StageContext(out_dir=tmp_path, options={"export": ONNX_ONLY}))


def test_unknown_format_is_refused():
    with pytest.raises(ExportError, match="unknown export format 'tf'"):
        export_stage.parse_formats("onnx,tf")


# ---------------------------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def lenet5_file(trained_lenet5, tmp_path_factory) -> Path:
    return save_model(
        trained_lenet5.model, trained_lenet5.example_input, tmp_path_factory.mktemp("model") / "lenet5.pt2"
    )


def test_cli_quantize(runner, cli, lenet5_file, example_normalize, tmp_path):
    out = tmp_path / "q"
    res = runner.invoke(
        cli,
        [
            "quantize",
            str(lenet5_file),
            "--data",
            "digits",
            "--normalize",
            example_normalize,
            "--calibration",
            "percentile",
            "-o",
            str(out),
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout)
    assert sorted(p.name for p in out.iterdir()) == ["model_deploy.pt2", "quant.json", "quant.npz"]
    assert result["quantized_tensors"] == 4 and result["calibration"]["method"] == "percentile"
    assert set(quant.load_quantized(out / "quant.npz").tensors) == {
        "conv1.weight",
        "conv2.weight",
        "fc1.weight",
        "fc2.weight",
    }
    assert json.loads((out / "quant.json").read_text())["activation_ranges"]["input"][0] < 0
    again = runner.invoke(cli, ["quantize", str(lenet5_file), "--data", "digits", "-o", str(out)])
    assert again.exit_code == 2 and "already contains results" in again.output


@pytest.mark.parametrize(("weight_bits", "weight_quant"), [("8", "allocated"), ("7", "maxabs")])
def test_cli_export_onnx_int8(
    runner, cli, lenet5_file, example_normalize, tmp_path, monkeypatch, weight_bits, weight_quant
):
    monkeypatch.setitem(sys.modules, "litert_torch", None)  # --format onnx must not need the [tflite] extra
    out = tmp_path / "e"
    args = ["export", str(lenet5_file), "--data", "digits", "--normalize", example_normalize, "--format", "onnx"]
    res = runner.invoke(
        cli, [*args, "--int8", "--weight-bits", weight_bits, "--weight-quant", weight_quant, "-o", str(out)]
    )
    assert res.exit_code == 0, res.output
    assert "model_int8.onnx" in res.output and "weight mismatches 0" in res.output
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "model.onnx", "model_int8.onnx", "quant.npz"]
    result = json.loads((out / "export.json").read_text())
    assert result["weight_mismatches"] == 0 and result["accuracy_onnxruntime_int8"] > 0.95
    for name in ("model.onnx", "model_int8.onnx"):  # the files say how their input was preprocessed
        props = {p.key: p.value for p in onnx.load(str(out / name)).metadata_props}
        assert "(x - mean) / std" in props[export_stage.PREPROCESSING_KEY]
        assert example_normalize.split(",")[0] in props[export_stage.PREPROCESSING_KEY]
    levels = np.load(out / "quant.npz")
    largest = max(int(np.abs(levels[k]).max()) for k in levels.files if levels[k].dtype == np.int8)
    bound = 2 ** (int(weight_bits) - 1) - 1  # max-abs levels reach it; allocated ones stay within it
    assert largest == bound if weight_quant == "maxabs" else largest <= bound


def test_cli_export_errors(runner, cli, lenet5_file, tmp_path, monkeypatch):
    no_data = runner.invoke(cli, ["export", str(lenet5_file), "--format", "onnx", "--int8", "-o", str(tmp_path / "a")])
    assert no_data.exit_code == 2
    assert "error: INT8 calibration needs real data (pass --data" in no_data.output
    bad_format = runner.invoke(cli, ["export", str(lenet5_file), "--format", "coreml", "-o", str(tmp_path / "b")])
    assert bad_format.exit_code == 2 and "unknown export format 'coreml'" in bad_format.output
    monkeypatch.setitem(sys.modules, "litert_torch", None)
    no_extra = runner.invoke(cli, ["export", str(lenet5_file), "--format", "tflite", "-o", str(tmp_path / "c")])
    assert no_extra.exit_code == 2
    assert "pip install 'edgeprune[tflite]' -c constraints.txt" in no_extra.output
    assert "Traceback" not in no_extra.output
    assert not any(p.name in {"a", "b", "c"} for p in tmp_path.iterdir())


def test_compress_checks_exported_levels_against_model_nnr(runner, cli, lenet5_file, tmp_path):
    """quantize -> encode (INT8 deploy .nnr) -> export: the files carry exactly the levels in model.nnr."""
    out = tmp_path / "c"
    res = runner.invoke(
        cli,
        [
            "compress",
            str(lenet5_file),
            "--data",
            "digits",
            "--stages",
            "load,quantize,encode,export",
            "--export-format",
            "onnx",
            "-o",
            str(out),
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    stages = {s["name"]: s for s in json.loads(res.stdout)["stages"]}
    export_metrics = stages["export"]["metrics"]
    assert export_metrics["weight_reference"] == "model.nnr"
    assert export_metrics["weight_mismatches"] == 0
    assert export_metrics["weight_check"]["onnx_int8"]["compared_values"] == 114180  # every LeNet-5 weight
    assert export_metrics["onnx_opset"] == onnx_export.OPSET
    assert stages["quantize"]["metrics"]["quantized_tensors"] == 4
    assert (out / "model_int8.onnx").is_file() and (out / "model.nnr").is_file()
