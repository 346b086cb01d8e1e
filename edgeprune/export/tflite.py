"""TFLite export with litert-torch (no TensorFlow) and reading INT8 weights back from the flatbuffer.

* fp32: ``litert_torch.convert(model, (x,))`` with a batch-of-one input (what mobile runtimes feed).
* INT8: full-integer via PT2E: ``torch.export`` -> ``prepare_pt2e`` with litert-torch's symmetric
  per-channel quantizer -> forward passes over the real calibration samples -> ``convert_pt2e`` ->
  ``litert_torch.convert(..., quant_config=QuantConfig(pt2e_quantizer=...))``. Inputs and outputs are
  int8 (the interpreter's (de)quantisation parameters are applied by :func:`run_interpreter`).
  PT2E's weight observer computes ``max|w|/127`` with int8 range [-127, 127]; fed the weight-snapped
  model (:func:`edgeprune.quant.with_quantized_weights`) it lands on exactly our levels.
* ``nhwc=True`` puts a transpose in front of the model so the file takes NHWC images, as camera
  pipelines on phones deliver them.

litert-torch is the optional ``[tflite]`` extra (it pulls jax and ~1 GB); the interpreter
(``ai-edge-litert``) is a core dependency so that TFLite files can always be verified and benchmarked.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from torch import nn

from edgeprune.errors import ExportError, first_line
from edgeprune.export.onnx import _quiet, describe_failure, failing_op
from edgeprune.fileio import atomic_path
from edgeprune.quant import trace

INSTALL_HINT = "pip install 'edgeprune[tflite]' -c constraints.txt, or pass --format onnx to skip TFLite"

# Weight layout of each TFLite op relative to torch's (out, in, *kernel) / (out, in):
# CONV_2D stores OHWI, DEPTHWISE_CONV_2D stores 1HWO, FULLY_CONNECTED stores (out, in) like torch.
_TO_TORCH_LAYOUT = {
    "CONV_2D": lambda a: np.moveaxis(a, -1, 1),
    "CONV_3D": lambda a: np.moveaxis(a, -1, 1),
    "DEPTHWISE_CONV_2D": lambda a: np.moveaxis(a, -1, 0),
    "FULLY_CONNECTED": lambda a: a,
}


def require_litert_torch() -> ModuleType:
    """Import litert-torch or fail with what to install."""
    try:
        with _quiet():  # its import logs warnings about optional CUDA kernels of torchao
            import litert_torch
    except ImportError:
        raise ExportError("TFLite export needs litert-torch, which is not installed", INSTALL_HINT) from None
    return litert_torch


def _convert(module: nn.Module, example: torch.Tensor, dest: Path, quant_config: object | None = None) -> Path:
    litert_torch = require_litert_torch()
    with atomic_path(dest) as tmp:
        try:
            with _quiet():
                edge = litert_torch.convert(module, (example,), quant_config=quant_config)
                edge.export(str(tmp))
        except ExportError:
            raise
        except Exception as exc:  # litert-torch/MLIR raise many types; all mean "cannot lower this model"
            raise ExportError(
                f"litert-torch cannot convert the model to TFLite{failing_op(exc)}: {describe_failure(exc)}",
                "replace the unsupported operation, or pass --format onnx",
            ) from None
    return dest


class _ChannelsLastInput(nn.Module):
    """Takes NHWC images and hands the wrapped model NCHW: the converter fuses the transpose away."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.permute(0, 3, 1, 2))


def _channel_last(module: nn.Module, example: torch.Tensor, nhwc: bool) -> tuple[nn.Module, torch.Tensor]:
    if not nhwc:
        return module, example[:1]
    if example.dim() != 4:
        raise ExportError(
            f"--nhwc needs image inputs (N,C,H,W), the model takes {list(example.shape)}", "drop --nhwc for this model"
        )
    return _ChannelsLastInput(module).eval(), example[:1].permute(0, 2, 3, 1).contiguous()


def export_fp32(model: nn.Module, example_input: torch.Tensor, dest: Path, nhwc: bool = False) -> Path:
    """Convert ``model`` to an fp32 .tflite at ``dest`` (batch of one, NCHW unless ``nhwc``)."""
    module, example = _channel_last(model.eval(), example_input, nhwc)
    return _convert(module, example, dest)


def content_key(tensor: torch.Tensor) -> str:
    """Identify a weight by its values (PT2E's graph renames parameters; the values stay bit-identical)."""
    array = tensor.detach().to(torch.float32).contiguous().cpu().numpy()
    return f"{array.shape}:{hashlib.sha1(array.tobytes()).hexdigest()}"


def _known_scale_quantizer(weight_scales: Mapping[str, np.ndarray]):  # noqa: ANN202 - a PT2EQuantizer
    """litert-torch's symmetric per-channel quantizer, with weight scales pinned to ours.

    Why: its weight observer computes ``max(max|w|/127, 2**-12)``. The 2**-12 floor (inherited from
    XNNPACK's quantizer) re-quantises every channel with max|w| < 0.031 - after BatchNorm folding that
    is many channels of a real MobileNetV2 (20,827 mismatching weights on the ImageNet model) - and a
    max-abs rule could never carry rate-allocated levels anyway. The observer below returns the
    quantize stage's scale for every weight it recognises by content, and falls back to litert's rule
    for any other tensor.
    """
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from torchao.quantization.pt2e.observer import PerChannelMinMaxObserver

    scales = {
        key: torch.from_numpy(np.asarray(s, dtype=np.float32).reshape(-1).copy()) for key, s in weight_scales.items()
    }

    class KnownScaleObserver(PerChannelMinMaxObserver):
        def forward(self, x_orig: torch.Tensor) -> torch.Tensor:
            self.known_scale = scales.get(content_key(x_orig))
            return super().forward(x_orig)

        def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
            known = getattr(self, "known_scale", None)
            if known is None:
                return super().calculate_qparams()
            return known.clone(), torch.zeros(known.numel(), dtype=torch.int64)

    config = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False)
    spec = config.weight
    config = dataclasses.replace(
        config, weight=dataclasses.replace(spec, observer_or_fake_quant_ctr=KnownScaleObserver.with_args(eps=2**-12))
    )
    return PT2EQuantizer().set_global(config)


def export_int8(
    snapped_model: nn.Module,
    example_input: torch.Tensor,
    calibration: torch.Tensor,
    dest: Path,
    nhwc: bool = False,
    weight_scales: Mapping[str, np.ndarray] | None = None,
) -> Path:
    """Full-integer INT8 .tflite of the weight-snapped model, calibrated on ``calibration`` (PT2E).

    ``weight_scales`` (state_dict name -> per-output-channel scale) pins each weight's scale; the
    snapped weights are then exact multiples of it, so the file holds exactly the quantize stage's levels.
    """
    require_litert_torch()
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    state = snapped_model.state_dict()
    by_content = {content_key(state[name]): scale for name, scale in (weight_scales or {}).items() if name in state}
    quantizer = _known_scale_quantizer(by_content)
    module, example = _channel_last(snapped_model.eval(), example_input, nhwc)
    graph = trace(module, example)
    try:
        with _quiet():
            prepared = prepare_pt2e(graph, quantizer)
            with torch.no_grad():
                for chunk in calibration.split(32):
                    prepared(chunk.permute(0, 2, 3, 1).contiguous() if nhwc else chunk)
            converted = convert_pt2e(prepared, fold_quantize=False)
    except Exception as exc:  # torchao raises assorted types for graphs it cannot annotate
        raise ExportError(
            f"PT2E INT8 quantisation failed{failing_op(exc)}: {describe_failure(exc)}",
            "export fp32 TFLite only (omit --int8) or use --format onnx",
        ) from None
    return _convert(converted, example, dest, QuantConfig(pt2e_quantizer=quantizer))


def _interpreter(path: Path, threads: int = 1):  # noqa: ANN202 - ai_edge_litert Interpreter
    from ai_edge_litert.interpreter import Interpreter

    try:
        with _quiet():  # the XNNPACK delegate announces itself on stderr from C++
            interpreter = Interpreter(model_path=str(path), num_threads=threads)
            interpreter.allocate_tensors()
    except Exception as exc:  # the interpreter raises ValueError/RuntimeError with C++ messages
        raise ExportError(f"LiteRT cannot load {path.name}: {first_line(exc)}", "re-export the model") from None
    return interpreter


def run_interpreter(path: Path, inputs: torch.Tensor, threads: int = 1, nhwc: bool = False) -> np.ndarray:
    """Float outputs of the .tflite on ``inputs`` one sample at a time, (de)quantising int8 I/O."""
    interpreter = _interpreter(path, threads)
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    x_all = inputs.permute(0, 2, 3, 1).numpy() if nhwc else inputs.numpy()
    results = []
    for x in x_all:
        interpreter.set_tensor(inp["index"], quantize_input(x[None], inp))
        interpreter.invoke()
        results.append(dequantize_output(interpreter.get_tensor(out["index"]), out))
    return np.concatenate(results)


def quantize_input(x: np.ndarray, detail: dict) -> np.ndarray:
    """Feed float data to a tensor that may be int8 (scale/zero point from the tensor's details)."""
    if detail["dtype"] == np.float32:
        return x.astype(np.float32)
    scale, zero = detail["quantization"]
    info = np.iinfo(detail["dtype"])
    return np.clip(np.rint(x / scale) + zero, info.min, info.max).astype(detail["dtype"])


def dequantize_output(y: np.ndarray, detail: dict) -> np.ndarray:
    if detail["dtype"] == np.float32:
        return y
    scale, zero = detail["quantization"]
    return ((y.astype(np.float32) - zero) * scale).astype(np.float32)


def read_int8_weights(path: Path) -> list[tuple[str, np.ndarray]]:
    """``(op, levels)`` for the INT8 weight of every conv/fully-connected op, in torch layout.

    TFLite names tensors after source locations, not parameters, so the caller matches them to
    parameter names by shape and content (:func:`edgeprune.export.verify.match_by_content`).
    """
    interpreter = _interpreter(path)
    weights = []
    for op in interpreter._get_ops_details():  # the public API lists tensors but not which op reads them
        to_torch = _TO_TORCH_LAYOUT.get(op["op_name"])
        if to_torch is None or len(op["inputs"]) < 2:
            continue
        index = int(op["inputs"][1])
        detail = interpreter._get_tensor_details(index, 0)
        if detail["dtype"] == np.int8:
            weights.append((op["op_name"], to_torch(interpreter.get_tensor(index))))
    return weights
