"""Rate-allocated INT8 levels: the per-tensor steps model.nnr codes and both INT8 exports carry.

The same Lagrangian argument as the qp-mode allocator (:func:`edgeprune.nnr.allocate_qps`), under
the constraint |level| <= 127 so that INT8 runtimes execute exactly what the bitstream holds; the
rate of a candidate is measured by the coder itself (:func:`edgeprune.nnr.coded_bytes`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeprune.errors import EdgepruneError
from edgeprune.metrics import evaluate
from edgeprune.nnr import QP_MAX, QP_MIN, WEIGHT_STEP_PER_STD, coded_bytes, fisher_sensitivity, qp_for_step
from edgeprune.quant.levels import with_quantized_weights

INT8_SEARCH_SPAN = 40  # qp units above the finest step (10 octaves): far beyond any useful coarsening
AGREEMENT_SAMPLES = 4096
# Training samples sit far from the decision boundary, so they flip less than unseen data: on the
# example LeNet-5 the same grid disagreed on 0.35 % of train+val samples but 1.7 % of test samples.
# The allocator therefore allows only a quarter of the budget as disagreement on the data it can see.
SEEN_DATA_MARGIN = 0.25


@torch.no_grad()
def _predictions(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    return torch.cat([model.eval()(chunk).argmax(1) for chunk in inputs.split(256)])


@dataclass
class Int8Allocation:
    """Per-tensor steps of the INT8 deploy levels and what they measured at.

    ``qps[name]`` is the NNC qp of the tensor's step; a channel whose range would need more than 127
    levels at that step gets the coarser ``max|w_c|/127`` instead (``scale_c = max(step, max|w_c|/127)``).
    """

    qps: dict[str, int]
    bits_per_weight: float
    agreement: float | None  # top-1 agreement with the float model (accuracy budget)
    reference_accuracy: float | None
    sensitivity: str  # "fisher" (data) or "uniform" (no data: one step for all tensors)
    trials: int
    budget_met: bool = True  # False: even max-abs INT8 misses the budget; the finest grid is kept


def uniform_qp(state: dict[str, np.ndarray], names: list[str]) -> int:
    """One qp for all tensors at the qp-mode default resolution: the size-weighted geometric mean of
    the tensors' std/8 steps (so the data-free stream costs about what per-tensor std/8 would)."""
    logs, weights = [], []
    for k in names:
        std = float(np.asarray(state[k], dtype=np.float32).std())
        if std > 0:
            logs.append(np.log(std * WEIGHT_STEP_PER_STD))
            weights.append(state[k].size)
    return qp_for_step(float(np.exp(np.average(logs, weights=weights)))) if logs else 0


def allocate_int8(
    model: nn.Module,
    names: list[str],
    data,  # noqa: ANN001 - DataBundle or None
    target_accuracy_drop: float | None = 0.5,
    bits_per_weight: float | None = None,
    quantize: Any = None,
    calibration_batches: int = 4,
) -> Int8Allocation:
    """Choose the step of every INT8 weight tensor: the coarsest grid that keeps the budget.

    The same Lagrangian argument as :func:`allocate_qps` (``d_i ∝ 1/sqrt(F_i)``), but the levels are
    uniform (no DQ) and bounded by |level| <= 127, so that INT8 runtimes execute exactly what the .nnr
    codes. One global qp offset is bisected, then tensors are coarsened one by one (least sensitive
    first) while the budget holds. ``quantize(model, qps)`` builds the candidate QuantizedWeights.
    Without data every tensor gets the same step (:func:`uniform_qp`): with nothing known about
    sensitivity, equal steps minimise the total squared weight error at a given rate, and measured
    (benchmarks/bench_quant.py) they deviate the logits less than per-tensor std/8 at equal size.
    """
    if target_accuracy_drop is not None and bits_per_weight is not None:
        raise EdgepruneError("give one of --target-accuracy-drop and --bits-per-weight", "drop one of them")
    state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    fisher: dict[str, float] = {}
    if data is not None:
        loader = data.loader("train", batch_size=128, shuffle=True, seed=0)
        batches = [b for _, b in zip(range(calibration_batches), loader, strict=False)]
        graded = copy.deepcopy(model)
        for p in graded.parameters():
            p.requires_grad_(True)
        fisher = fisher_sensitivity(graded, batches)
    base: dict[str, int] = {}
    uniform = uniform_qp(state, names)
    for k in names:
        f = fisher.get(k, 0.0)
        base[k] = qp_for_step(1.0 / np.sqrt(f)) if f > 0 else uniform
    # anchor: the offset at which the median tensor gets max-abs-like resolution (std/64, ~9 bits)
    anchor = int(np.median([qp_for_step(float(state[k].std()) / 64) - base[k] for k in names if state[k].any()] or [0]))
    use_accuracy = target_accuracy_drop is not None and data is not None
    reference = evaluate(model, data.loader("val", 256))["accuracy"] if data is not None else None
    # The accuracy budget is checked as top-1 *agreement* with the float model on validation plus
    # training samples (up to AGREEMENT_SAMPLES): accuracy can fall by at most the disagreement rate,
    # and a 180-image validation split alone cannot resolve half a point (one image is 0.56 points).
    inputs = expected = None
    if use_accuracy:
        inputs = torch.cat([data.val.tensors[0], data.train.tensors[0]])[:AGREEMENT_SAMPLES]
        expected = _predictions(model, inputs)
    trials = 0

    def measure(qps: dict[str, int]) -> tuple[float, float | None]:
        nonlocal trials
        trials += 1
        qw = quantize(model, qps)
        bpw = 8.0 * coded_bytes({k: t.levels for k, t in qw.tensors.items()}) / max(1, qw.num_values)
        agreement = None
        if inputs is not None and expected is not None:
            agreement = float((_predictions(with_quantized_weights(model, qw), inputs) == expected).float().mean())
        return bpw, agreement

    if use_accuracy and target_accuracy_drop is not None:
        allowed = SEEN_DATA_MARGIN * target_accuracy_drop / 100.0
        ok = lambda r: r[1] is not None and r[1] >= 1.0 - allowed - 1e-12  # noqa: E731
    elif bits_per_weight is not None:
        ok = lambda r: r[0] <= bits_per_weight  # noqa: E731
    else:  # data-free accuracy budget: one step for all tensors, at the qp-mode default resolution
        qps = dict.fromkeys(names, uniform)
        bpw, _ = measure(qps)
        return Int8Allocation(qps, bpw, None, reference, "uniform", trials)

    def at(t: int) -> dict[str, int]:
        return {k: int(min(QP_MAX, max(QP_MIN, base[k] + t))) for k in names}

    lo, hi = anchor, anchor + INT8_SEARCH_SPAN
    results: dict[int, tuple[float, float | None]] = {}

    def check(t: int) -> bool:
        if t not in results:
            results[t] = measure(at(t))
        return ok(results[t])

    if use_accuracy:
        if not check(lo):
            lo, hi = lo - INT8_SEARCH_SPAN, lo
            if not check(lo):
                # Even the finest INT8 grid (max|w_c|/127 everywhere) misses the budget: keep it - no INT8
                # levels do better - and say so instead of failing the pipeline.
                return Int8Allocation(
                    at(lo), results[lo][0], results[lo][1], reference, "fisher", trials, budget_met=False
                )
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if check(mid) else (lo, mid)
        best = lo
    else:
        if not check(hi):
            raise EdgepruneError(
                f"{bits_per_weight} bits per weight cannot be reached with INT8 levels", "raise --bits-per-weight"
            )
        lo = lo - INT8_SEARCH_SPAN
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if check(mid) else (mid, hi)
        best = hi
    qps, measured = at(best), results[best]
    # refine tensor by tensor: coarsen the least sensitive (accuracy budget) / refine the most (bits)
    step = 1 if use_accuracy else -1
    for name in sorted(names, key=lambda k: fisher.get(k, 0.0), reverse=not use_accuracy):
        trial = dict(qps)
        trial[name] = int(min(QP_MAX, max(QP_MIN, trial[name] + step)))
        result = measure(trial)
        if ok(result):
            qps, measured = trial, result
    return Int8Allocation(qps, measured[0], measured[1], reference, "fisher" if fisher else "uniform", trials)
