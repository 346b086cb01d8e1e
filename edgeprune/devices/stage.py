"""The bench stage: time every exported model on the target device.

It benchmarks each ``.onnx`` / ``.tflite`` file in ``art.files`` - the export stage's
``onnx_fp32``, ``onnx_int8``, ``tflite_fp32``, ``tflite_int8`` and, when a stage provided them, the
dense (unpruned) model's exports under keys starting with ``dense_`` - on ``ctx.target`` through the
same transport path the devices use (the host runs the harness in a subprocess). It returns the
rows as ``results`` (report.md shows them as a table, report.py draws latency.png from their
``median_ms``) and ``latency_ms``, the median of the main INT8 model, for the stage summary.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from edgeprune.artifact import Artifact, StageContext
from edgeprune.devices.bench import BenchOptions, ModelFile, benchmark_files
from edgeprune.devices.profiles import DeviceProfile, load_profile
from edgeprune.errors import DeviceError
from edgeprune.fileio import write_json

__all__ = ["BenchOptions", "run", "models_to_bench", "headline_latency"]

MODEL_SUFFIXES = (".onnx", ".tflite")
# Order of the rows: the dense baseline first, then fp32 before int8, ONNX before TFLite.
_ORDER = ("onnx_fp32", "onnx_int8", "tflite_fp32", "tflite_int8")


def models_to_bench(files: dict[str, Any]) -> list[ModelFile]:
    """The benchmarkable exports among ``files``, dense baseline first, in a stable order."""
    chosen = [ModelFile(k, Path(v)) for k, v in files.items() if Path(v).suffix in MODEL_SUFFIXES]

    def rank(m: ModelFile) -> tuple[int, int, str]:
        base = m.key.removeprefix("dense_")
        return (0 if m.key.startswith("dense_") else 1, _ORDER.index(base) if base in _ORDER else len(_ORDER), m.key)

    return sorted(chosen, key=rank)


def headline_latency(rows: list[dict[str, Any]], profile: DeviceProfile) -> float | None:
    """Median latency of the main INT8 model in the device's preferred runtime (fp32 if no INT8 ran).

    A phone runs the TFLite file and a Pi with both runtimes the one listed first in its profile,
    so the headline number is the one a deployment on that device would see.
    """
    tflite_first = not profile.runtimes or profile.runtimes[0] != "onnxruntime"
    formats = ("tflite", "onnx") if tflite_first else ("onnx", "tflite")
    timed = {r["model"]: r["median_ms"] for r in rows if r.get("median_ms") is not None}
    for precision in ("int8", "fp32"):
        for fmt in formats:
            if f"{fmt}_{precision}" in timed:
                return timed[f"{fmt}_{precision}"]
    return next(iter(timed.values()), None)


def run(art: Artifact, ctx: StageContext) -> dict[str, Any]:
    options: BenchOptions = ctx.options_for("bench", BenchOptions)
    profile = load_profile(ctx.target)
    models = models_to_bench(art.files)
    if not models:
        raise DeviceError(
            "the bench stage found no exported .onnx or .tflite model",
            "run the export stage first (remove 'export' from --skip)",
        )
    options = dataclasses.replace(options, seed=options.seed or ctx.seed)
    shown = ctx.progress
    progress = (lambda items: shown.track(items, f"bench on {profile.name}")) if shown else iter
    rows = benchmark_files(profile, models, options, progress=progress)
    result = {
        "target": profile.name,
        "device": profile.description,
        "transport": profile.transport,
        "results": rows,
        "latency_ms": headline_latency(rows, profile),
    }
    art.files["bench"] = write_json(ctx.out_dir / "bench.json", result)
    return result
