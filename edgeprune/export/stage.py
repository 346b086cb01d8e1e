"""The export stage: fp32 and INT8 ONNX / TFLite, each verified in its own runtime on the test split.

Files (``art.files`` keys): ``model.onnx`` (onnx_fp32), ``model_int8.onnx`` (onnx_int8), ``model.tflite``
(tflite_fp32), ``model_int8.tflite`` (tflite_int8). For every file the stage reports its size, export
time, test accuracy in its runtime, and max |output - torch fp32 output|. Whether the INT8 files carry
exactly the levels of model.nnr is the pipeline's next step (:func:`edgeprune.export.verify.verify_exported_levels`).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgeprune import quant
from edgeprune.artifact import Artifact, StageContext
from edgeprune.errors import ExportError
from edgeprune.export import onnx as onnx_export
from edgeprune.export import tflite as tflite_export
from edgeprune.options import COMMAND, COMPRESS, CliOption, cli, cli_each
from edgeprune.progress import warn

FORMATS = ("onnx", "tflite")
FILE_NAMES = {
    "onnx_fp32": "model.onnx",
    "onnx_int8": "model_int8.onnx",
    "tflite_fp32": "model.tflite",
    "tflite_int8": "model_int8.tflite",
    "dense_onnx_fp32": "dense.onnx",
    "dense_tflite_fp32": "dense.tflite",
}


def parse_formats(text: str | None) -> tuple[str, ...]:
    """``"onnx,tflite"`` -> ("onnx", "tflite"), rejecting unknown names."""
    chosen = tuple(dict.fromkeys(f.strip().lower() for f in (text or ",".join(FORMATS)).split(",") if f.strip()))
    unknown = [f for f in chosen if f not in FORMATS]
    if unknown or not chosen:
        raise ExportError(
            f"unknown export format {unknown[0] if unknown else text!r}",
            f"choose from {', '.join(FORMATS)} (comma-separated)",
        )
    return chosen


@dataclass
class ExportOptions:
    """Options of the export stage (``edgeprune export`` / ``compress --export-format ...``)."""

    formats: tuple[str, ...] = field(
        default=FORMATS,
        metadata=cli("Comma-separated export formats: onnx, tflite.", flag="format", parse=parse_formats),
    )
    int8: bool = field(
        default=True,
        metadata=cli_each(
            CliOption(
                "Export only fp32 files (no INT8 ONNX/TFLite).",
                flag="fp32-only",
                is_flag=True,
                inverted=True,
                only=COMPRESS,
            ),
            CliOption("Also write INT8 files (calibrated on --data).", is_flag=True, only=COMMAND),
        ),
    )
    opset: int = field(
        default=onnx_export.OPSET,
        metadata=cli("ONNX opset (18 is the lowest the exporter supports).", prefixed=False, low=18),
    )
    dynamic_batch: bool = field(
        default=True,
        metadata=cli(
            "Fix the ONNX batch dimension to 1 instead of dynamic.",
            flag="static-batch",
            is_flag=True,
            inverted=True,
            prefixed=False,
        ),
    )
    nhwc: bool = field(
        default=False,
        metadata=cli(
            "TFLite files take NHWC images (channels last), as phone cameras give.", is_flag=True, prefixed=False
        ),
    )
    verify_samples: int = 1000
    threads: int = 1
    # Also export the model as loaded (before prune/simplify) in fp32, so the bench stage can show
    # what pruning bought on the device ("dense vs pruned vs INT8").
    dense_baseline: bool = True


@dataclass
class _Verification:
    inputs: torch.Tensor
    labels: torch.Tensor | None
    reference: np.ndarray

    def measure(self, outputs: np.ndarray) -> dict[str, float | None]:
        accuracy = None if self.labels is None else float((outputs.argmax(1) == self.labels.numpy()).mean())
        # max|delta| alone has no scale: relative to the reference's logit range it says how far off the file is,
        # and top-1 agreement says whether that ever changes a prediction.
        span = float(self.reference.max() - self.reference.min())
        max_abs = float(np.abs(outputs - self.reference).max())
        return {
            "accuracy": accuracy,
            "samples": len(outputs),
            "max_abs_diff": max_abs,
            "max_abs_diff_relative": max_abs / span if span else None,
            "top1_agreement": float((outputs.argmax(1) == self.reference.argmax(1)).mean()),
        }


def _verification_set(art: Artifact, samples: int) -> _Verification:
    if art.data is not None:
        x, y = art.data.test.tensors
        x, y = x[:samples], y[:samples]
    else:  # no data: compare outputs on the example input only (no accuracy)
        x, y = art.example_input[:1], None
    with torch.no_grad():
        reference = art.model.eval()(x).numpy()
    return _Verification(x, y, reference)


@dataclass
class _Int8Job:
    """What every INT8 exporter is given: the model with its weights snapped to the INT8 grid, real
    calibration inputs, the per-channel scales to pin, and a scratch directory for intermediate files."""

    snapped: torch.nn.Module
    calibration: torch.Tensor
    scales: dict[str, np.ndarray]
    scratch: Path


def _int8_job(art: Artifact, ctx: StageContext, qw: quant.QuantizedWeights, scratch: Path) -> _Int8Job:
    samples = ctx.options_for("quantize", quant.QuantOptions).calibration_samples
    return _Int8Job(
        snapped=quant.with_quantized_weights(art.model, qw),
        calibration=quant.calibration_inputs(art, samples),
        scales={n: t.scale for n, t in qw.tensors.items()},
        scratch=scratch,
    )


# ONNX metadata_props key stating the preprocessing the data went through before it reached the model
PREPROCESSING_KEY = "edgeprune.input_preprocessing"


def run(art: Artifact, ctx: StageContext) -> dict[str, Any]:
    """Write, verify and measure every requested file (see the module docstring)."""
    opts: ExportOptions = ctx.options_for("export", ExportOptions)
    formats = parse_formats(",".join(opts.formats))
    if "tflite" in formats:
        tflite_export.require_litert_torch()  # fail before writing anything
    if art.quant is None:  # the quantize stage traced this very model already; else fail here, clearly
        quant.trace(art.model, art.example_input)
    qw = art.quant if opts.int8 else None
    if opts.int8 and qw is None:
        raise ExportError(
            "INT8 exports carry the quantize stage's levels, and the quantize stage did not run",
            "run it first (the pipeline does when export is asked for INT8 files), or export fp32 only",
        )
    verification = _verification_set(art, opts.verify_samples)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="edgeprune-export-") as scratch:
        job = _int8_job(art, ctx, qw, Path(scratch)) if qw is not None else None
        if "onnx" in formats:
            rows.append(_onnx_fp32(art, ctx, opts, verification))
            if job is not None:
                rows.append(_onnx_int8(art, ctx, opts, verification, job))
        if "tflite" in formats:
            rows.append(_tflite_fp32(art, ctx, opts, verification))
            if job is not None:
                rows.append(_tflite_int8(art, ctx, opts, verification, job))
    dense = art.dense_model
    if opts.dense_baseline and dense is not None:
        rows += _dense_baseline(art, ctx, opts, formats, dense)
    if art.data is not None:
        for key in ("onnx_fp32", "onnx_int8", "dense_onnx_fp32"):
            if key in art.files:
                onnx_export.stamp_metadata(art.files[key], {PREPROCESSING_KEY: art.data.preprocessing})
    return _summarise(rows, qw, opts)


def _dense_baseline(
    art: Artifact, ctx: StageContext, opts: ExportOptions, formats: tuple[str, ...], dense: torch.nn.Module
) -> list[dict[str, Any]]:
    """fp32 exports of the model as it was loaded, verified against that model's own outputs."""
    example = art.example_input  # simplify and quantize keep the input shape
    with torch.no_grad():
        x = art.data.test.tensors[0][: opts.verify_samples] if art.data is not None else example[:1]
        labels = art.data.test.tensors[1][: opts.verify_samples] if art.data is not None else None
        ver = _Verification(x, labels, dense.eval()(x).numpy())
    rows = []
    if "onnx" in formats:
        dest = ctx.out_dir / FILE_NAMES["dense_onnx_fp32"]
        _, seconds = _timed(onnx_export.export_fp32, dense, example, dest, opts.opset, opts.dynamic_batch)
        art.files["dense_onnx_fp32"] = dest
        outputs = onnx_export.run_session(dest, ver.inputs, opts.threads)
        rows.append(_row(art, "dense_onnx_fp32", "onnxruntime", "fp32 dense", seconds, ver.measure(outputs)))
    if "tflite" in formats:
        dest = ctx.out_dir / FILE_NAMES["dense_tflite_fp32"]
        _, seconds = _timed(tflite_export.export_fp32, dense, example, dest, opts.nhwc)
        art.files["dense_tflite_fp32"] = dest
        outputs = tflite_export.run_interpreter(dest, ver.inputs, opts.threads, opts.nhwc)
        rows.append(_row(art, "dense_tflite_fp32", "litert", "fp32 dense", seconds, ver.measure(outputs)))
    return rows


def _timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    value = fn(*args, **kwargs)
    return value, time.perf_counter() - start


def _row(art: Artifact, key: str, runtime: str, precision: str, seconds: float, measured: dict) -> dict[str, Any]:
    path = art.files[key]
    return {
        "file": path.name,
        "runtime": runtime,
        "precision": precision,
        "size_bytes": path.stat().st_size,
        "export_s": round(seconds, 3),
        **measured,
    }


def _onnx_fp32(art: Artifact, ctx: StageContext, opts: ExportOptions, ver: _Verification) -> dict[str, Any]:
    dest = ctx.out_dir / FILE_NAMES["onnx_fp32"]
    _, seconds = _timed(onnx_export.export_fp32, art.model, art.example_input, dest, opts.opset, opts.dynamic_batch)
    art.files["onnx_fp32"] = dest
    outputs = onnx_export.run_session(dest, ver.inputs, opts.threads)
    return _row(art, "onnx_fp32", "onnxruntime", "fp32", seconds, ver.measure(outputs))


def _onnx_int8(
    art: Artifact, ctx: StageContext, opts: ExportOptions, ver: _Verification, job: _Int8Job
) -> dict[str, Any]:
    dest = ctx.out_dir / FILE_NAMES["onnx_int8"]
    qopts: quant.QuantOptions = ctx.options_for("quantize", quant.QuantOptions)
    start = time.perf_counter()
    snapped_onnx = onnx_export.export_fp32(
        job.snapped, art.example_input, job.scratch / "snapped.onnx", opts.opset, opts.dynamic_batch
    )
    methods = quant.CALIBRATION_METHODS if qopts.calibration == "best" else (qopts.calibration,)
    candidates = {
        method: onnx_export.quantize_int8(
            snapped_onnx,
            job.scratch / f"{method}_{dest.name}",
            job.calibration,
            method,
            qopts.percentile,
            weight_scales=job.scales,
        )
        for method in methods
    }
    agreement = _validation_agreement(art, candidates, job.calibration, opts.threads) if len(methods) > 1 else {}
    chosen = max(methods, key=lambda m: agreement[m]) if agreement else methods[0]  # ties: the first listed
    seconds = time.perf_counter() - start
    art.files["onnx_int8"] = Path(shutil.move(candidates[chosen], dest))  # the scratch directory may be elsewhere
    outputs = onnx_export.run_session(dest, ver.inputs, opts.threads)
    row = _row(art, "onnx_int8", "onnxruntime", "int8", seconds, ver.measure(outputs))
    row["calibration"] = chosen
    if agreement:
        row["calibration_validation_agreement"] = agreement
    exact = onnx_export.run_session(dest, ver.inputs, opts.threads, exact=True)
    row["accuracy_exact"] = ver.measure(exact)["accuracy"]
    row["kernel_flips"] = onnx_export.kernel_saturation(outputs, exact)
    if row["kernel_flips"] is not None:
        scored = (
            ""
            if row["accuracy"] is None
            else (f" (accuracy {100 * row['accuracy']:.2f} % here, {100 * row['accuracy_exact']:.2f} % exact)")
        )
        warn(
            f"{dest.name}: onnxruntime's INT8 kernels on this CPU change {100 * row['kernel_flips']:.1f} % of the "
            f"predictions of the file's exact INT8 arithmetic{scored}. x86 CPUs without VNNI add u8 x s8 products "
            "in 16 bits and saturate; the file itself is right and runs exactly on ARM and on VNNI x86. "
            "For such CPUs, quantize with --weight-bits 7"
        )
    return row


def _validation_agreement(
    art: Artifact, candidates: dict[str, Path], calibration: torch.Tensor, threads: int
) -> dict[str, float]:
    """Each candidate file's top-1 agreement with the float model on the validation split (the
    calibration samples when there is none), run exactly (no CPU-specific INT8 kernels), so the
    choice is the same on every machine and never looks at the test split the report scores."""
    val = art.data.val.tensors[0] if art.data is not None and len(art.data.val) else calibration
    with torch.no_grad():
        reference = art.model.eval()(val).numpy().argmax(1)
    return {
        method: float((onnx_export.run_session(path, val, threads, exact=True).argmax(1) == reference).mean())
        for method, path in candidates.items()
    }


def _tflite_fp32(art: Artifact, ctx: StageContext, opts: ExportOptions, ver: _Verification) -> dict[str, Any]:
    dest = ctx.out_dir / FILE_NAMES["tflite_fp32"]
    _, seconds = _timed(tflite_export.export_fp32, art.model, art.example_input, dest, opts.nhwc)
    art.files["tflite_fp32"] = dest
    outputs = tflite_export.run_interpreter(dest, ver.inputs, opts.threads, opts.nhwc)
    return _row(art, "tflite_fp32", "litert", "fp32", seconds, ver.measure(outputs))


def _tflite_int8(
    art: Artifact, ctx: StageContext, opts: ExportOptions, ver: _Verification, job: _Int8Job
) -> dict[str, Any]:
    dest = ctx.out_dir / FILE_NAMES["tflite_int8"]
    candidate, seconds = _timed(
        tflite_export.export_int8,
        job.snapped,
        art.example_input,
        job.calibration,
        job.scratch / dest.name,
        opts.nhwc,
        job.scales,
    )
    art.files["tflite_int8"] = Path(shutil.move(candidate, dest))
    outputs = tflite_export.run_interpreter(dest, ver.inputs, opts.threads, opts.nhwc)
    return _row(art, "tflite_int8", "litert", "int8", seconds, ver.measure(outputs))


def _summarise(rows: list[dict[str, Any]], qw: quant.QuantizedWeights | None, opts: ExportOptions) -> dict[str, Any]:
    """The report numbers: the per-file table plus the headline keys (INT8 accuracy, main file size)."""
    result: dict[str, Any] = {"exports": rows, "onnx_opset": opts.opset if "onnx" in opts.formats else None}
    for row in rows:
        stem = f"{row['runtime']}_{row['precision'].replace(' ', '_')}"
        result[f"accuracy_{stem}"] = row["accuracy"]
        result[f"max_abs_diff_{stem}"] = row["max_abs_diff"]
    main = next((r for r in reversed(rows) if r["precision"] == ("int8" if qw is not None else "fp32")), None)
    if main is not None:
        result["size_bytes"] = main["size_bytes"]
        result["accuracy"] = main["accuracy"]
    return result
