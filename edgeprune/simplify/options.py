"""Options of the simplify stage (its own dataclass, as every stage has)."""

from __future__ import annotations

from dataclasses import dataclass, field

from edgeprune.options import cli

PADDED_CONSTANT_MODES = ("border", "carrier", "map", "refuse")


@dataclass
class SimplifyOptions:
    """How simplify may turn dead channels into a smaller model.

    ``padded_constants``: a removed channel that carries a non-zero constant into a zero-padded
    conv contributes less at the borders than inside. "border" adds an exact, resolution-free
    correction (a one-input-channel conv of a ones map, plus an add). "carrier" instead keeps one
    such dead channel per conv that needs it and folds the others into its weights (exact, no
    extra op, falls back to "border" where no carrier fits) - fewer ops, but the extra channel
    breaks multiple-of-8 widths, which made ResNet-32 slower on onnxruntime (BENCHMARKS.md,
    Simplify), so it is not the default. "map" precomputes the correction at the example's
    resolution and adds it as one constant (no correction conv) - faster on LiteRT, level on
    onnxruntime (BENCHMARKS.md, Simplify) - but the simplified model then accepts only that
    resolution, so it is for deployments with a fixed input size. "refuse" keeps all such
    channels instead.
    ``fold_batchnorm``: fold BN into the preceding Conv/Linear (exact in float64; BN that follows
    an add or a concat stays a per-channel BN module).
    ``tolerance``: the largest float64 output difference the equivalence proof accepts.
    """

    padded_constants: str = field(
        default="border",
        metadata=cli(
            "A removed channel's constant entering a zero-padded conv: add an exact border correction, "
            "fold it into one kept dead channel (no extra op), add it as one precomputed map (fixed "
            "input resolution), or keep the channel.",
            choices=PADDED_CONSTANT_MODES,
            prefixed=False,
        ),
    )
    fold_batchnorm: bool = field(
        default=True,
        metadata=cli(
            "Do not fold BatchNorm into the preceding Conv/Linear.",
            flag="keep-batchnorm",
            is_flag=True,
            inverted=True,
            prefixed=False,
        ),
    )
    tolerance: float = field(
        default=1e-9,
        metadata=cli(
            "Largest float64 output difference the equivalence proof accepts.",
            flag="simplify-tolerance",
            prefixed=False,
            low=0,
            low_open=True,
        ),
    )

    def __post_init__(self) -> None:
        from edgeprune.errors import EdgepruneError

        if self.padded_constants not in PADDED_CONSTANT_MODES:
            raise EdgepruneError(
                f"unknown padded-constant mode {self.padded_constants!r}",
                f"choose {' or '.join(PADDED_CONSTANT_MODES)}",
            )
        if not self.tolerance > 0:
            raise EdgepruneError(f"tolerance must be positive, got {self.tolerance}", "pass e.g. 1e-9")
