"""Per-tensor qp allocation: where the bits of an NNR stream really go.

NNCodec gives every >= 2-D tensor the same qp. At high rate, quantising tensor i with step d_i adds
about ``0.5 * F_i * N_i * d_i^2 / 12`` to the loss (F_i: mean diagonal Fisher information of its
weights, i.e. the mean squared loss gradient on real data) and costs about ``N_i * (h_i - log2 d_i)``
bits. Equal marginal loss per bit across tensors - the Lagrangian optimum - gives
``d_i ∝ 1 / sqrt(F_i)``: sensitive tensors get fine steps, insensitive ones coarse steps. One global
offset t then moves every qp together and is searched (bisection, the size and the loss are monotone
in t) until the stream meets ``--bits-per-weight`` or the validation accuracy meets
``--target-accuracy-drop``. 1-D tensors keep the near-lossless default (they are ~0.1 % of weights).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgeprune.errors import EdgepruneError
from edgeprune.metrics import evaluate
from edgeprune.nnr.model import load_decoded, model_tensors
from edgeprune.nnr.qp import QP_MAX, QP_MIN, default_qp, qp_for_step
from edgeprune.nnr.tensors import DecodedStream, cabac_payload, decode_stream, encode_tensors

SEARCH_SPAN = 32  # qp units either side of the default operating point (8 octaves of step size)


@dataclass
class Allocation:
    """The chosen per-tensor qps and what they measured at."""

    qps: dict[str, int]
    offset: int
    bits_per_weight: float
    val_accuracy: float | None
    trials: list[dict[str, float]] = field(default_factory=list)


def fisher_sensitivity(model: nn.Module, batches) -> dict[str, float]:  # noqa: ANN001 - any iterable of (x, y)
    """Mean squared gradient of the cross-entropy per parameter tensor (diagonal Fisher proxy)."""
    params = dict(model.named_parameters())
    sums = {k: 0.0 for k in params}
    count = 0
    was_training = model.training
    model.eval()
    for x, y in batches:
        model.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        for k, g in zip(params, grads, strict=True):
            if g is not None:
                sums[k] += float((g.detach() ** 2).mean())
        count += 1
    model.train(was_training)
    return {k: v / max(count, 1) for k, v in sums.items()}


def _qps_at(base: dict[str, int], fixed: dict[str, int], offset: int) -> dict[str, int]:
    qps = {k: int(min(QP_MAX, max(QP_MIN, q + offset))) for k, q in base.items()}
    qps.update(fixed)
    return qps


def allocate_qps(
    model: nn.Module,
    data,
    bits_per_weight: float | None = None,  # noqa: ANN001 - DataBundle
    target_accuracy_drop: float | None = None,
    dq: bool = True,
    calibration_batches: int = 4,
) -> Allocation:
    """Choose per-tensor qps for a bit budget (bits per coded weight) or an accuracy budget
    (percentage points below the float model on the validation split)."""
    if (bits_per_weight is None) == (target_accuracy_drop is None):
        raise EdgepruneError("give exactly one of --bits-per-weight and --target-accuracy-drop", "drop one of them")
    if target_accuracy_drop is not None and data is None:
        raise EdgepruneError("--target-accuracy-drop needs data to measure accuracy on", "pass --data")
    everything = model_tensors(model)
    tensors = {k: v for k, v in everything.items() if np.issubdtype(v.dtype, np.floating) and v.size}
    matrices = [k for k, v in tensors.items() if v.ndim >= 2 and np.any(v)]
    fixed = {k: default_qp(v) for k, v in tensors.items() if k not in matrices}
    if data is not None:
        loader = data.loader("train", batch_size=128, shuffle=True, seed=0)
        batches = [b for _, b in zip(range(calibration_batches), loader, strict=False)]
        fisher = fisher_sensitivity(model, batches)
    else:
        fisher = {}
    base: dict[str, int] = {}
    for k in matrices:
        f = fisher.get(k, 0.0)
        # without data (or for a tensor the loss ignores): fall back to the weight spread
        base[k] = qp_for_step(1.0 / np.sqrt(f)) if f > 0 else default_qp(tensors[k])
    anchor = int(np.median([default_qp(tensors[k]) - base[k] for k in matrices])) if matrices else 0
    trials: list[dict[str, float]] = []

    def measure(qps: dict[str, int], offset: int) -> tuple[float, float | None]:
        stream = encode_tensors(everything, qps=qps, dq=dq)
        bpw = (
            8.0
            * sum(t.ndu_bytes for t in stream.tensors if t.name in matrices)
            / max(1, sum(t.elements for t in stream.tensors if t.name in matrices))
        )
        acc = None
        if target_accuracy_drop is not None:
            decoded = decode_stream(stream.data)
            acc = _val_accuracy(model, decoded, data)
        trials.append({"offset": offset, "bits_per_weight": bpw, **({"val_accuracy": acc} if acc is not None else {})})
        return bpw, acc

    if target_accuracy_drop is not None:
        reference = evaluate(model, data.loader("val", 256))["accuracy"]
        ok = lambda r: r[1] >= reference - target_accuracy_drop / 100.0  # noqa: E731
    else:
        ok = lambda r: r[0] <= bits_per_weight  # noqa: E731
    # finest offset that passes for bits (sizes fall with t), coarsest that passes for accuracy
    lo, hi = anchor - SEARCH_SPAN, anchor + SEARCH_SPAN
    results: dict[int, tuple[float, float | None]] = {}

    def at(t: int) -> tuple[float, float | None]:
        if t not in results:
            results[t] = measure(_qps_at(base, fixed, t), t)
        return results[t]

    if target_accuracy_drop is not None:
        if not ok(at(lo)):
            raise EdgepruneError(
                f"even the finest quantisation loses more than {target_accuracy_drop} points",
                "raise --target-accuracy-drop",
            )
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if ok(at(mid)) else (lo, mid)
        best = lo
    else:
        if not ok(at(hi)):
            raise EdgepruneError(f"{bits_per_weight} bits per weight cannot be reached", "raise --bits-per-weight")
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if ok(at(mid)) else (mid, hi)
        best = hi
    # One offset step moves every tensor by a quarter octave at once, a coarse grain when one tensor
    # dominates. Refine tensor by tensor: spend leftover bits on the most sensitive tensors first
    # (bit budget), or coarsen the least sensitive ones while the accuracy holds (accuracy budget).
    qps = _qps_at(base, fixed, best)
    measured = at(best)
    by_sensitivity = sorted(matrices, key=lambda k: fisher.get(k, 0.0), reverse=target_accuracy_drop is None)
    step = -1 if target_accuracy_drop is None else 1
    for name in by_sensitivity:
        trial = dict(qps)
        trial[name] = int(min(QP_MAX, max(QP_MIN, trial[name] + step)))
        result = measure(trial, best)
        if ok(result):
            qps, measured = trial, result
    return Allocation(qps, best, measured[0], measured[1], trials)


@torch.no_grad()
def _val_accuracy(model: nn.Module, decoded: DecodedStream, data) -> float:  # noqa: ANN001 - DataBundle
    candidate = load_decoded(copy.deepcopy(model), decoded)
    return evaluate(candidate, data.loader("val", 256))["accuracy"]


def coded_bytes(levels: dict[str, np.ndarray]) -> int:
    """CABAC payload bytes of integer levels as model.nnr codes them (INT payload, row layout)."""
    return sum(len(cabac_payload(lv, lv.shape).data) for lv in levels.values())
