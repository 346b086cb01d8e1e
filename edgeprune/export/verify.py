"""The weight-equality check: do the INT8 files carry exactly the levels that were coded into model.nnr?

The reference is the levels decoded from ``model.nnr`` (``edgeprune.nnr.read_int8_levels``) when the
encode stage wrote one, otherwise the quantize stage's :class:`~edgeprune.quant.QuantizedWeights`.
Every reference value that differs in a file - or that the file lacks - counts as one mismatch.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np


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
