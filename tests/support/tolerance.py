"""Accuracy tolerances derived from the number of test samples, so they hold on every CPU.

Why: an INT8 (or lossy-coded) model disagrees with its float reference on a few samples, and which ones
depends on float rounding that differs between ISAs (AVX2 vs AVX-512 reductions, FMA or not). A fixed
"within 0.01" is 3.6 images of the 359-image digits test split - one ISA crosses it, another does not.
Here each sample is modelled as flipping independently with a small probability ``flip_rate`` (the
disagreement rate quantisation is allowed to cause); the tolerance is the number of flips a
Binomial(n, flip_rate) exceeds with probability at most ``alpha``, divided by n. A real regression
(say 5 % of the samples flipping) is still far outside the bound.
"""

from __future__ import annotations

import math


def binomial_upper(n: int, p: float, alpha: float) -> int:
    """The smallest k with P(Binomial(n, p) > k) <= alpha (exact sum, no scipy needed)."""
    if n <= 0 or p <= 0.0:
        return 0
    cdf, k = 0.0, 0
    while k <= n:
        log_pmf = math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
        cdf += math.exp(log_pmf + k * math.log(p) + (n - k) * math.log1p(-p))
        if 1.0 - cdf <= alpha:
            return k
        k += 1
    return n


def accuracy_tolerance(n: int, flip_rate: float = 0.01, alpha: float = 1e-4) -> float:
    """Largest accuracy gap between two models on ``n`` samples that ``flip_rate`` flips explain.

    Every flipped prediction moves accuracy by at most 1/n, so the gap is bounded by the flip count.
    """
    return binomial_upper(n, flip_rate, alpha) / n
