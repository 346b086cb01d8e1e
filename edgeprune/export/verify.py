"""The weight-equality check: do the INT8 files carry exactly the levels that were coded into model.nnr?

The reference is the levels decoded from ``model.nnr`` (``edgeprune.nnr.read_int8_levels``) when the
encode stage wrote one, otherwise the quantize stage's :class:`~edgeprune.quant.QuantizedWeights`.
Every reference value that differs in a file - or that the file lacks - counts as one mismatch.

:func:`verify_exported_levels` is a step of the pipeline, run right after the export stage, and a
gate rather than a number: a file whose levels differ from model.nnr is a different model from the
one that was coded and measured, so a mismatch deletes that file and raises VerificationError
(exit 2; the commands' output directories are atomic, so nothing of the run is left either).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeprune.artifact import Artifact
from edgeprune.errors import VerificationError


@dataclass
class LevelCheck:
    """Outcome of comparing one file's INT8 weights with the reference levels."""

    compared_values: int = 0
    mismatches: int = 0
    missing: list[str] = field(default_factory=list)
    per_tensor: dict[str, int] = field(default_factory=dict)

    def record(self, name: str, reference: np.ndarray, differences: int | None) -> None:
        """Tally one reference tensor; ``None`` (no matching tensor in the file) counts every value."""
        if differences is None:
            self.missing.append(name)
            differences = reference.size
        self.per_tensor[name] = differences
        self.compared_values += reference.size
        self.mismatches += differences

    def as_dict(self) -> dict:
        return {
            "compared_values": self.compared_values,
            "mismatches": self.mismatches,
            "missing_tensors": self.missing,
            "mismatching_tensors": {k: v for k, v in self.per_tensor.items() if v},
        }


def _differences(reference: np.ndarray, candidate: np.ndarray) -> int | None:
    """Mismatching values, or None when the arrays cannot be the same tensor (different size/channels)."""
    if candidate.size != reference.size or candidate.shape[0] != reference.shape[0]:
        return None
    return int(np.count_nonzero(candidate.reshape(reference.shape) != reference))


def compare_levels(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray]) -> LevelCheck:
    """Compare name-keyed levels (ONNX initializers, an .nnr): absent or reshaped tensors count fully."""
    check = LevelCheck()
    for name, ref in reference.items():
        got = candidate.get(name)
        check.record(name, ref, None if got is None else _differences(ref, got))
    return check


def match_by_content(reference: dict[str, np.ndarray], candidates: Iterable[tuple[str, np.ndarray]]) -> LevelCheck:
    """Compare with unnamed tensors (TFLite): each reference tensor takes the unused candidate of its
    size that differs least, so an altered level still shows up as a mismatch, never as a swap."""
    pool: list[np.ndarray | None] = [array for _, array in candidates]
    check = LevelCheck()
    for name, ref in reference.items():
        scored = [
            (d, i) for i, cand in enumerate(pool) if cand is not None and (d := _differences(ref, cand)) is not None
        ]
        diff = None
        if scored:
            diff, index = min(scored)
            pool[index] = None
        check.record(name, ref, diff)
    return check


def _onnx_levels(path: Path) -> dict[str, np.ndarray]:
    from edgeprune.export.onnx import read_int8_weights

    return read_int8_weights(path)


def _tflite_levels(path: Path) -> list[tuple[str, np.ndarray]]:
    from edgeprune.export.tflite import read_int8_weights

    return read_int8_weights(path)


# INT8 file key -> (reader of its weight levels, comparison): ONNX names its initializers after the
# model's tensors; TFLite's are matched by content.
INT8_FILES: dict[str, tuple[Callable[[Path], Any], Callable[..., LevelCheck]]] = {
    "onnx_int8": (_onnx_levels, compare_levels),
    "tflite_int8": (_tflite_levels, match_by_content),
}


def reference_levels(art: Artifact) -> tuple[str, dict[str, np.ndarray]]:
    """The levels every INT8 file must carry: decoded from model.nnr when the encode stage wrote it,
    else the quantize stage's."""
    nnr_path = art.files.get("nnr")
    if nnr_path is not None:
        from edgeprune.nnr import read_int8_levels

        return "model.nnr", read_int8_levels(nnr_path)
    if art.quant is None:
        raise VerificationError("there are INT8 files but no INT8 levels to check them against", "run quantize")
    return "quantize stage", {name: t.levels for name, t in art.quant.tensors.items()}


def verify_exported_levels(art: Artifact, metrics: dict[str, Any]) -> None:
    """The pipeline step after export: check every INT8 file against the reference levels and add
    the outcome to the export stage's ``metrics`` (per file in its ``exports`` row, and in all);
    a mismatch deletes the file and raises VerificationError (see the module docstring)."""
    present = [key for key in INT8_FILES if key in art.files]
    if not present:
        return
    reference_name, reference = reference_levels(art)
    checks: dict[str, LevelCheck] = {}
    for key in present:
        path = art.files[key]
        read, compare = INT8_FILES[key]
        check = checks[key] = compare(reference, read(path))
        if check.mismatches:
            path.unlink(missing_ok=True)
            del art.files[key]
            worst = max(check.per_tensor, key=lambda k: check.per_tensor[k])
            what = "lacks" if worst in check.missing else "differs from"
            raise VerificationError(
                f"{path.name}: {check.mismatches} INT8 weights differ from {reference_name} "
                f"({check.per_tensor[worst]} in {worst}, which the file {what} the reference); not written",
                "this is a bug in edgeprune's exporter (please report it); --export-fp32-only exports fp32 only",
            )
    for row in metrics.get("exports", []):
        file_key = next((k for k in present if art.files[k].name == row.get("file")), None)
        if file_key is not None:
            row["weight_mismatches"] = checks[file_key].mismatches
    metrics["weight_reference"] = reference_name
    metrics["weight_mismatches"] = sum(c.mismatches for c in checks.values())
    metrics["weight_check"] = {key: c.as_dict() for key, c in checks.items()}
