"""Activation calibration: per-tensor ranges on real samples (``minmax`` or ``percentile``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import fx

from edgeprune.artifact import Artifact
from edgeprune.errors import DataError

CALIBRATION_METHODS = ("minmax", "percentile")


class _RangeRecorder(fx.Interpreter):
    """Runs the graph and reduces every floating-point intermediate to ``(low, high)`` on the spot.

    Reducing immediately keeps memory flat (no activation is kept) and reads each value before a later
    in-place op (``relu_``, ``hardtanh_``) could overwrite it.
    """

    def __init__(self, gm: fx.GraphModule, reduce: Any) -> None:
        super().__init__(gm)
        self.reduce = reduce
        self.ranges: dict[str, list[tuple[float, float]]] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        if n.op in ("placeholder", "call_function") and isinstance(out, torch.Tensor) and out.is_floating_point():
            self.ranges.setdefault("input" if n.op == "placeholder" else n.name, []).append(self.reduce(out))
        return out


@torch.no_grad()
def calibrate_activations(
    model: fx.GraphModule, batch: torch.Tensor, method: str = "minmax", percentile: float = 99.99, chunk: int = 32
) -> dict[str, tuple[float, float]]:
    """Per-tensor ``(low, high)`` of every activation of ``model`` (an aten GraphModule) on ``batch``.

    ``minmax`` takes the extremes over the whole batch; ``percentile`` the ``100-p`` and ``p``
    percentiles (averaged over chunks of ``chunk`` samples), which ignores the few outliers that would
    otherwise stretch an 8-bit grid.
    """
    if method not in CALIBRATION_METHODS:
        raise DataError(f"unknown calibration method {method!r}", f"choose one of {', '.join(CALIBRATION_METHODS)}")

    def reduce(value: torch.Tensor) -> tuple[float, float]:
        if method == "minmax":
            return float(value.min()), float(value.max())
        low, high = np.percentile(value.detach().reshape(-1).numpy(), [100.0 - percentile, percentile])
        return float(low), float(high)

    recorder = _RangeRecorder(model, reduce)
    for part in batch.split(chunk):
        recorder.run(part)
    ranges: dict[str, tuple[float, float]] = {}
    for name, per_chunk in recorder.ranges.items():
        lows, highs = np.asarray(per_chunk).T
        combined = (lows.min(), highs.max()) if method == "minmax" else (lows.mean(), highs.mean())
        ranges[name] = (float(combined[0]), float(combined[1]))
    return ranges


def calibration_inputs(art: Artifact, samples: int) -> torch.Tensor:
    """Real calibration samples from the artifact's dataset, checked against the model's input shape."""
    if art.data is None:
        raise DataError("INT8 calibration needs real data", "pass --data (e.g. --data digits or a dataset directory)")
    batch = art.data.calibration_batch(samples)
    expected = tuple(art.example_input.shape[1:])
    if tuple(batch.shape[1:]) != expected:
        raise DataError(
            f"calibration data has samples of shape {list(batch.shape[1:])} but the model expects {list(expected)}",
            "pass --data whose samples match the model's input shape",
        )
    if len(batch) == 0:
        raise DataError("the dataset has no training samples to calibrate on", "use a larger dataset")
    return batch
