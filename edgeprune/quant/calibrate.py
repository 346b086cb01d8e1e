"""Activation calibration: per-tensor ranges on real samples (``minmax``, ``percentile``, ``entropy``, ``mse``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import fx

from edgeprune.artifact import Artifact
from edgeprune.errors import DataError

CALIBRATION_METHODS = ("minmax", "percentile", "entropy", "mse")
# "best": the INT8 ONNX export quantises with every method and keeps the file whose exact INT8 outputs agree
# most with the float model on the validation split (the methods' rank changes from model to model).
CALIBRATION_CHOICES = (*CALIBRATION_METHODS, "best")
HISTOGRAM_BINS = 2048  # of |x|, for the entropy threshold (TensorRT's choice)
QUANTIZED_BINS = 128  # the levels one sign of an 8-bit grid has
THRESHOLD_STRIDE = 16  # candidate thresholds every 16 bins (0.8 % of the range): 120 KL evaluations, not 1,920
ACTIVATION_LEVELS = 255  # uint8 activations with a zero point: (high - low) / 255 per step
MSE_CANDIDATES = np.linspace(0.2, 1.0, 81)  # shrink factors of the observed range tried by the mse method


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
    percentiles, which ignores the few outliers that would otherwise stretch an 8-bit grid; ``entropy``
    the clipping threshold whose 8-bit histogram keeps the most information (:func:`entropy_threshold`);
    ``mse`` the range whose uint8 grid reconstructs the values with the least squared error, clipping
    included (:func:`mse_range`). Percentile, entropy and mse ranges are averaged over chunks of ``chunk``
    samples.
    """
    if method not in CALIBRATION_METHODS:
        raise DataError(f"unknown calibration method {method!r}", f"choose one of {', '.join(CALIBRATION_METHODS)}")

    def reduce(value: torch.Tensor) -> tuple[float, float]:
        if method == "minmax":
            return float(value.min()), float(value.max())
        if method == "entropy":
            flat = value.detach().reshape(-1).numpy()
            threshold = entropy_threshold(flat)
            return max(float(flat.min()), -threshold), min(float(flat.max()), threshold)
        if method == "mse":
            flat = value.detach().reshape(-1).numpy().astype(np.float64)
            low, high = min(float(flat.min()), 0.0), max(float(flat.max()), 0.0)
            counts, edges = np.histogram(flat, bins=HISTOGRAM_BINS, range=(low, high) if high > low else None)
            return mse_range(counts, edges)
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


def entropy_threshold(values: np.ndarray) -> float:
    """The clipping threshold ``t`` on |x| that minimises the KL divergence between the distribution of
    |x| and its 128-level quantisation over [0, t] (TensorRT's entropy calibration, which onnxruntime's
    ``Entropy`` calibrator also implements): outliers are clipped once resolving the bulk is worth more.
    """
    magnitudes = np.abs(values.astype(np.float64))
    top = float(magnitudes.max()) if magnitudes.size else 0.0
    if top == 0.0:
        return 0.0
    hist, edges = np.histogram(magnitudes, bins=HISTOGRAM_BINS, range=(0.0, top))
    hist = hist.astype(np.float64)
    best, best_kl = HISTOGRAM_BINS, np.inf
    for stop in range(QUANTIZED_BINS, HISTOGRAM_BINS + 1, THRESHOLD_STRIDE):
        reference = hist[:stop].copy()
        reference[-1] += hist[stop:].sum()  # the clipped mass lands on the last level
        # Merge the kept bins into 128 levels, then spread each level's mass over its non-empty bins.
        starts = (np.arange(QUANTIZED_BINS) * stop) // QUANTIZED_BINS
        used = hist[:stop] > 0
        level_mass = np.add.reduceat(hist[:stop], starts)
        level_used = np.add.reduceat(used.astype(np.float64), starts)
        per_bin = np.divide(level_mass, level_used, out=np.zeros_like(level_mass), where=level_used > 0)
        candidate = np.where(used, np.repeat(per_bin, np.diff(np.append(starts, stop))), 0.0)
        mask = reference > 0
        if (candidate[mask] == 0).any():  # clipped mass on an empty last bin: q cannot represent p
            continue
        p = reference[mask] / reference.sum()
        q = candidate[mask] / candidate.sum()
        kl = float(np.sum(p * np.log(p / q)))
        if kl < best_kl:
            best, best_kl = stop, kl
    return float(edges[best])


def mse_range(counts: np.ndarray, edges: np.ndarray) -> tuple[float, float]:
    """The range ``(low, high)`` whose uint8 grid (255 steps, zero point on the grid, as onnxruntime builds
    it) reconstructs a histogram's values with the least squared error, clipping included.

    Candidates shrink the observed range (widened to contain 0) by MSE_CANDIDATES; a value is taken at its
    bin's centre. Minmax wastes levels on rare outliers and percentile clips a fixed share whatever it costs;
    this weighs the two errors against each other per tensor.
    """
    counts = np.asarray(counts, dtype=np.float64)
    edges = np.asarray(edges, dtype=np.float64)
    centres = (edges[:-1] + edges[1:]) / 2
    occupied = counts > 0
    if not occupied.any():
        return 0.0, 0.0
    low = min(float(edges[:-1][occupied].min()), 0.0)
    high = max(float(edges[1:][occupied].max()), 0.0)
    if high <= low:
        return low, high
    lows, highs = MSE_CANDIDATES[:, None] * low, MSE_CANDIDATES[:, None] * high
    scale = (highs - lows) / ACTIVATION_LEVELS
    zero = np.round(-lows / scale)
    levels = np.clip(np.round(centres[None, :] / scale) + zero, 0, ACTIVATION_LEVELS)
    error = ((levels - zero) * scale - centres[None, :]) ** 2 @ counts
    best = int(np.argmin(error))
    return float(lows[best, 0]), float(highs[best, 0])


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
