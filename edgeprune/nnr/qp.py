"""NNC's quantisation grid and edgeprune's default qp policy (numpy only).

step = (1 + (qp mod 4)/4) * 2^floor(qp/4) at qp density 2; the defaults give >= 2-D weights a step of
std/8 and 1-D tensors max|w|/2048, and keep positive vectors (BN variances) positive."""

from __future__ import annotations

import math

import numpy as np

from edgeprune.nnr import _cabac

QP_DENSITY = 2
QP_MIN, QP_MAX = -128, 127  # the per-tensor qp offset is 6 + qp_density = 8 bits
WEIGHT_STEP_PER_STD = 1 / 8  # default step of >= 2-D weights: std/8 (~30 dB)
VECTOR_STEP_PER_MAX = 2.0**-11  # default step of 1-D tensors: max|w| / 2048 (about 12 bits each)


def step_size(qp: int) -> float:
    """NNC's step for ``qp`` at qp density 2: (1 + (qp mod 4)/4) * 2^floor(qp/4), as float32."""
    return _cabac.step_size(int(qp), QP_DENSITY)


def qp_for_step(step: float) -> int:
    """The qp whose step is nearest to ``step`` in the log domain, clamped to the 8-bit offset range."""
    if not step > 0 or not math.isfinite(step):
        return QP_MAX
    guess = int(round(4 * math.log2(step)))
    best = min(range(guess - 3, guess + 4), key=lambda qp: abs(math.log2(step_size(qp)) - math.log2(step)))
    return int(min(QP_MAX, max(QP_MIN, best)))


def default_qp(weight: np.ndarray) -> int:
    """A per-tensor qp that keeps accuracy on the models we measured without wasting bits (see constants)."""
    w = np.asarray(weight, dtype=np.float32)
    if w.size == 0 or not np.any(w):
        return 0
    if w.ndim >= 2:
        return qp_for_step(float(w.std()) * WEIGHT_STEP_PER_STD)
    return qp_for_step(float(np.abs(w).max()) * VECTOR_STEP_PER_MAX)


POSITIVE_REL_STEP = 2.0**-8  # step of a strictly positive 1-D tensor: <= its smallest value / 256
RAW_ABOVE_BITS = 24  # ... unless that needs more than 24 bits of range: then store float32


def positive_qp(values: np.ndarray) -> int | None:
    """The qp of a strictly positive 1-D tensor (BatchNorm running variances, scales), or None for raw.

    Why: the default 1-D step (max|w|/2048) decodes small variances of a layer with one large one to 0
    or below, and the decoded model then divides by sqrt(var + eps) ~ 0 and produces NaN. A step of at
    most min/256 keeps every entry within 0.4 % (DQ included) and positive; when max/min is so large
    that this would need > 24 bits per value, float32 is cheaper and exact.
    """
    w = np.asarray(values, dtype=np.float32)
    smallest, largest = float(w.min()), float(w.max())
    if not smallest > 0:
        raise ValueError("positive_qp needs strictly positive values")
    qp = qp_for_step(smallest * POSITIVE_REL_STEP)
    while step_size(qp) > smallest * POSITIVE_REL_STEP and qp > QP_MIN:
        qp -= 1  # qp_for_step rounds to the nearest step; the bound must hold
    if math.log2(largest / step_size(qp)) > RAW_ABOVE_BITS or step_size(qp) > smallest * POSITIVE_REL_STEP:
        return None
    return qp


def is_positive_vector(values: np.ndarray) -> bool:
    """A 1-D float tensor that must stay > 0 after decoding: every value is > 0 (running variances are)."""
    return values.ndim <= 1 and values.size > 0 and bool(np.all(values > 0))


def step_size_at(qp: int, qp_density: int) -> float:
    return _cabac.step_size(int(qp), int(qp_density))
