"""Options of the simplify stage (its own dataclass, as every stage has)."""

from __future__ import annotations

from dataclasses import dataclass

PADDED_CONSTANT_MODES = ("border", "carrier", "refuse")


@dataclass
class SimplifyOptions:
    """How simplify may turn dead channels into a smaller model.

    ``padded_constants``: a removed channel that carries a non-zero constant into a zero-padded
    conv contributes less at the borders than inside. "border" adds an exact, resolution-free
    correction (a one-input-channel conv of a ones map, plus an add). "carrier" instead keeps one
    such dead channel per conv that needs it and folds the others into its weights (exact, no
    extra op, falls back to "border" where no carrier fits) - fewer ops, but the extra channel
    breaks multiple-of-8 widths, which made ResNet-32 slower on onnxruntime (BENCHMARKS.md,
    Simplify), so it is not the default. "refuse" keeps all such channels instead.
    ``fold_batchnorm``: fold BN into the preceding Conv/Linear (exact in float64; BN that follows
    an add or a concat stays a per-channel BN module).
    ``tolerance``: the largest float64 output difference the equivalence proof accepts.
    """

    padded_constants: str = "border"
    fold_batchnorm: bool = True
    tolerance: float = 1e-9

    def __post_init__(self) -> None:
        from edgeprune.errors import EdgepruneError

        if self.padded_constants not in PADDED_CONSTANT_MODES:
            raise EdgepruneError(
                f"unknown padded-constant mode {self.padded_constants!r}",
                f"choose {' or '.join(PADDED_CONSTANT_MODES)}",
            )
        if not self.tolerance > 0:
            raise EdgepruneError(f"tolerance must be positive, got {self.tolerance}", "pass e.g. 1e-9")
