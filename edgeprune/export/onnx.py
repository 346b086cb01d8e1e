"""ONNX export (fp32) and INT8 QDQ quantisation with onnxruntime, plus reading INT8 weights back.

* fp32: ``torch.onnx.export`` (the dynamo exporter) to **one self-contained file** (``external_data=False``:
  copying one file to a device is simpler), opset :data:`OPSET`, an optional dynamic batch axis, then
  ``onnxslim`` (constant folding, dead-node removal). Opset 18 is the oldest the dynamo exporter can
  target (lower ones fail in the version converter), and onnxruntime supports it since 1.14.
* INT8: ``onnxruntime.quantization.quantize_static`` in **QDQ** format (QOperator was measured 8x slower
  on x86), per-channel symmetric int8 weights, uint8 activations calibrated on real samples. It is run
  on the model exported from :func:`edgeprune.quant.with_quantized_weights`, whose weights are exact
  multiples of our scales, so onnxruntime's ``max|w|/127`` quantiser reproduces our levels exactly;
  :func:`read_int8_weights` reads them back so that this is checked, not assumed.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from edgeprune.errors import ExportError, first_line
from edgeprune.fileio import atomic_path
from edgeprune.graph.trace import FILE_BATCH, export_shapes, two_samples

OPSET = 18
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
_ORT_WEIGHT_SUFFIX = "_quantized"


def failing_op(exc: BaseException) -> str:
    """The torch op an exporter complained about, as ' (op aten.xxx)', or '' when it names none."""
    match = re.search(r"(?:aten|prims)[.:]{1,2}[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)?", str(exc))
    return f" (op {match.group(0)})" if match else ""


def describe_failure(exc: BaseException) -> str:
    """One line of an exporter's error: the root cause from its "Exception summary" when it prints one.

    torch.onnx's first line is a generic "Failed to convert ..." with terminal colour codes; the line
    that names the missing function comes after the summary heading.
    """
    lines = [ln.strip() for ln in re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).splitlines() if ln.strip()]
    if "## Exception summary" in lines[:-1]:
        cause = lines[lines.index("## Exception summary") + 1]
        return re.sub(r"^<class '[^']+'>:\s*", "", cause)[:240]
    return first_line(exc)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence exporters' chatter (``--json`` keeps stdout clean, ``--quiet`` means quiet).

    Python-level output is captured, and so are file descriptors 1 and 2: the TFLite converter's
    C++ (absl) logging writes to them directly. Failures still surface as exceptions.
    """
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            os.dup2(null.fileno(), 2)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        logging.disable(previous)


def export_fp32(
    model: nn.Module, example_input: torch.Tensor, dest: Path, opset: int = OPSET, dynamic_batch: bool = True
) -> Path:
    """Export ``model`` to a simplified, self-contained fp32 ONNX file at ``dest`` (atomically)."""
    import onnxslim

    # The export policy of edgeprune.graph.trace: the file's batch is named and dynamic; the resolution is fixed.
    example = two_samples(example_input) if dynamic_batch else example_input[:1]
    dynamic = export_shapes(example, FILE_BATCH, spatial=False) if dynamic_batch else None
    with atomic_path(dest) as tmp:
        try:
            with _quiet():
                torch.onnx.export(
                    model.eval(),
                    (example,),
                    str(tmp),
                    input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME],
                    opset_version=opset,
                    dynamic_shapes=dynamic,
                    external_data=False,
                    verbose=False,
                )
        except Exception as exc:  # the exporter raises assorted types; all mean "cannot export this model"
            raise ExportError(
                f"cannot export the model to ONNX{failing_op(exc)}: {describe_failure(exc)}",
                "replace the unsupported operation, or use --format tflite",
            ) from None
        with _quiet():
            slim = onnxslim.slim(onnx.load(str(tmp)))
        onnx.checker.check_model(slim)
        onnx.save(slim, str(tmp))
    return dest


class BatchReader:
    """onnxruntime's ``CalibrationDataReader`` protocol over a calibration batch, in chunks (the
    exporter's and the calibration benchmark's peer runs read the same images the same way)."""

    def __init__(self, batch: torch.Tensor, chunk: int = 32) -> None:
        self._chunks = iter([{INPUT_NAME: c.numpy()} for c in batch.split(chunk)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._chunks, None)


def weight_scale_overrides(model: onnx.ModelProto, weight_scales: Mapping[str, np.ndarray]) -> dict[str, list]:
    """onnxruntime ``TensorQuantOverrides`` that pin every known weight's per-channel scales (axis 0).

    Why: onnxruntime would otherwise compute ``max|w|/127`` itself - equal to our scale only for
    max-abs levels - and, for a bias that overflows int32 at ``s_in * s_w``, silently enlarge the weight
    scale. Pinned scales (and ``QDQDisableWeightAdjustForInt32Bias``) make the file carry exactly the
    levels that were coded into model.nnr, whatever rule chose them.
    """
    shapes = {i.name: tuple(i.dims) for i in model.graph.initializer}
    overrides: dict[str, list] = {}
    for name, scale in weight_scales.items():
        scale = np.asarray(scale, dtype=np.float32).reshape(-1)
        if name in shapes and shapes[name] and shapes[name][0] == scale.size:
            overrides[name] = [{"axis": 0, "scale": np.float32(s), "zero_point": np.int8(0)} for s in scale]
    return overrides


def quantize_int8(
    snapped_fp32: Path,
    dest: Path,
    calibration: torch.Tensor,
    method: str = "minmax",
    percentile: float = 99.99,
    weight_scales: Mapping[str, np.ndarray] | None = None,
) -> Path:
    """Static QDQ INT8 ONNX from an fp32 ONNX of the weight-snapped model, calibrated on real samples.

    ``weight_scales`` (state_dict name -> per-output-channel scale) pins the weight quantisation to the
    quantize stage's grid (see :func:`weight_scale_overrides`).
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    model = onnx.load(str(snapped_fp32), load_external_data=False)
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    chunk = 32 if batch_dim.dim_param else max(1, batch_dim.dim_value)  # a fixed-batch file takes exactly that size
    reader = BatchReader(calibration, chunk)
    extra: dict = {"WeightSymmetric": True, "CalibPercentile": percentile, "QDQDisableWeightAdjustForInt32Bias": True}
    overrides = weight_scale_overrides(model, weight_scales) if weight_scales else {}
    if method == "mse":
        overrides.update(mse_activation_overrides(snapped_fp32, BatchReader(calibration, chunk), dest.parent))
    if overrides:
        extra["TensorQuantOverrides"] = overrides
    with atomic_path(dest) as tmp, _quiet():
        quantize_static(
            str(snapped_fp32),
            str(tmp),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=ort_calibration_method("minmax" if method == "mse" else method),
            extra_options=extra,
        )
    return dest


def mse_activation_overrides(fp32: Path, reader: BatchReader, scratch: Path) -> dict[str, list]:
    """``TensorQuantOverrides`` giving every activation its least-squared-error uint8 range.

    onnxruntime has no MSE calibrator, but its histogram calibrator collects the signed histogram of every
    tensor it would quantise; :func:`edgeprune.quant.mse_range` picks each range from it and onnxruntime
    builds its scale and zero point from that range as it would from a calibrated one.
    """
    from onnxruntime.quantization import CalibrationMethod, create_calibrator

    from edgeprune.quant import HISTOGRAM_BINS, mse_range

    with tempfile.TemporaryDirectory(dir=scratch) as tmp, _quiet():
        calibrator = create_calibrator(
            fp32,
            augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=CalibrationMethod.Percentile,
            extra_options={"symmetric": False, "num_bins": HISTOGRAM_BINS},
        )
        calibrator.collect_data(reader)
        histograms = calibrator.collector.histogram_dict
    overrides = {}
    for name, (counts, edges, *_) in histograms.items():
        low, high = mse_range(counts, edges)
        overrides[name] = [{"rmin": np.float32(low), "rmax": np.float32(high)}]
    return overrides


def ort_calibration_method(method: str):  # noqa: ANN201 - onnxruntime.quantization.CalibrationMethod
    """onnxruntime's calibrator for one of edgeprune's calibration method names."""
    from onnxruntime.quantization import CalibrationMethod

    return {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }[method]


def read_int8_weights(path: Path) -> dict[str, np.ndarray]:
    """INT8 weight levels in a QDQ ONNX file, keyed by the original initializer (= state_dict) name."""
    model = onnx.load(str(path))
    initializers = {i.name: i for i in model.graph.initializer}
    levels: dict[str, np.ndarray] = {}
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in initializers:
            continue
        values = numpy_helper.to_array(initializers[node.input[0]])
        if values.dtype == np.int8:
            levels[node.input[0].removesuffix(_ORT_WEIGHT_SUFFIX)] = values
    return levels


def stamp_metadata(path: Path, properties: Mapping[str, str]) -> None:
    """Add ``properties`` to the file's ``metadata_props`` (atomically), e.g. the input preprocessing
    the model expects - an ONNX file says nothing about it otherwise, and a model fed raw pixels
    instead of standardised ones fails silently."""
    model = onnx.load(str(path))
    kept = [p for p in model.metadata_props if p.key not in properties]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in properties.items():
        model.metadata_props.add(key=key, value=value)
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))


def run_session(
    path: Path, inputs: torch.Tensor, threads: int = 1, chunk: int = 256, exact: bool = False
) -> np.ndarray:
    """Outputs of the ONNX model on ``inputs`` (onnxruntime CPU, ``threads`` intra-op threads);
    ``exact``: see :func:`make_session`."""
    session = make_session(path, threads, exact)
    batch_fixed = session.get_inputs()[0].shape[0] == 1
    step = 1 if batch_fixed else chunk
    outs = [session.run(None, {INPUT_NAME: c.numpy()})[0] for c in inputs.split(step)]
    return np.concatenate(outs)


def make_session(path: Path, threads: int = 1, exact: bool = False):  # noqa: ANN201 - onnxruntime.InferenceSession
    """An onnxruntime CPU session pinned to ``threads`` threads (the benchmark and verification setup).

    ``exact=True`` keeps only the basic graph rewrites, so a QDQ file runs as its ONNX definition says -
    DequantizeLinear, the float op, QuantizeLinear - instead of through the fused INT8 kernels. That is
    the file's arithmetic on every CPU; the kernels are not: on x86 CPUs without VNNI, onnxruntime's
    u8 x s8 kernels add pairs of products in 16 bits (VPMADDUBSW) and saturate where two large weights
    meet two large activations (see :func:`kernel_saturation`).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if exact:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise ExportError(f"onnxruntime cannot load {path.name}: {first_line(exc)}", "re-export the model") from None


# Predictions that may change between a QDQ file's exact arithmetic and this CPU's INT8 kernels before it
# counts as saturation: requantisation rounding alone flips a handful of near-ties, saturation flips many.
SATURATION_FLIPS = 0.02


def kernel_saturation(kernel_outputs: np.ndarray, exact_outputs: np.ndarray) -> float | None:
    """The fraction of predictions this CPU's INT8 kernels change relative to the file's exact
    arithmetic, when it exceeds :data:`SATURATION_FLIPS` (else None).

    Why measured and not predicted from CPU flags: whether a sum saturates depends on the weights and
    the activations, and onnxruntime picks kernels by CPU features it does not report.
    """
    flips = float((kernel_outputs.argmax(1) != exact_outputs.argmax(1)).mean())
    return flips if flips > SATURATION_FLIPS else None
