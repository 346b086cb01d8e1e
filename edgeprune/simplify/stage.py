"""The pipeline's simplify stage: replace the pruned model with its exact, smaller equivalent."""

from __future__ import annotations

from typing import Any

from edgeprune.artifact import Artifact, StageContext
from edgeprune.checkpoint import save_model
from edgeprune.simplify import simplify
from edgeprune.simplify.options import SimplifyOptions

PROOF_SAMPLES = 3  # real samples that join the random ones in the equivalence proof

__all__ = ["SimplifyOptions", "run"]


def run(art: Artifact, ctx: StageContext) -> dict[str, Any]:
    """Simplify ``art.model``, save it as ``simplified.pt2`` and return what was removed and the proof.

    The returned numbers are the simplify report (channels removed per group and per layer, BN
    folds, border corrections, refusals, float64/float32 max |delta|, resolutions checked); the
    pipeline adds parameters, MACs, accuracy and time itself.
    """
    options = ctx.options_for("simplify", SimplifyOptions)
    real = art.data.calibration_batch(PROOF_SAMPLES) if art.data is not None else None
    result = simplify(art.model, art.example_input, real, options, seed=ctx.seed)
    art.model = result.model
    path = save_model(result.model, art.example_input, ctx.out_dir / "simplified.pt2")
    art.files["simplified"] = path
    ctx.log.info(
        "simplify removed %d channels; float64 max|delta| %.3g",
        result.report["channels_removed"],
        result.report["max_abs_diff_float64"],
    )
    return {**result.report, "size_bytes": path.stat().st_size}
