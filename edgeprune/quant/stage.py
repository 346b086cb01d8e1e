"""The pipeline's quantize stage: fold BN, choose the INT8 levels (rate-allocated or max-abs),
calibrate activations, write ``quant.npz``."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from edgeprune.artifact import Artifact, StageContext
from edgeprune.checkpoint import save_model
from edgeprune.errors import DataError
from edgeprune.metrics import evaluate
from edgeprune.nnr import NnrOptions
from edgeprune.options import cli
from edgeprune.quant.allocate import allocate_int8
from edgeprune.quant.calibrate import CALIBRATION_CHOICES, calibrate_activations, calibration_inputs
from edgeprune.quant.deploy import to_deploy_graph
from edgeprune.quant.levels import (
    WEIGHT_BITS,
    quantize_weights,
    quantized_weight_names,
    save_quantized,
    weight_sqnr_db,
    with_quantized_weights,
)

WEIGHT_MODES = ("allocated", "maxabs")


@dataclass
class QuantOptions:
    """Options of the quantize stage (``edgeprune quantize`` / ``compress --calibration ...``).

    ``weights``: ``allocated`` (default) picks each tensor's step from its sensitivity for the
    smallest model.nnr within ``target_accuracy_drop`` points (or at ``bits_per_weight``);
    ``maxabs`` is classic INT8 (``max|w_c|/127`` per channel, the full -127..127 range).
    """

    calibration: str = field(
        default="minmax",
        metadata=cli(
            "How INT8 activation ranges are calibrated: extremes (minmax), percentiles or the KL-optimal "
            "threshold (entropy) that ignore outliers, the least-squared-error uint8 range per tensor (mse), "
            "or 'best': the INT8 ONNX export tries all four and keeps the file that agrees most with the "
            "float model on the validation split.",
            choices=CALIBRATION_CHOICES,
            prefixed=False,
        ),
    )
    calibration_samples: int = field(
        default=128, metadata=cli("Training samples used to calibrate INT8 activations.", prefixed=False, low=1)
    )
    percentile: float = 99.99
    weights: str = field(
        default="allocated",
        metadata=cli(
            "INT8 weight levels: 'allocated' picks each tensor's step from its sensitivity (smallest "
            "model.nnr within --target-accuracy-drop, default 0.5 point); 'maxabs' uses max|w|/127.",
            flag="weight-quant",
            choices=WEIGHT_MODES,
            prefixed=False,
        ),
    )
    target_accuracy_drop: float | None = 0.5
    bits_per_weight: float | None = None
    weight_bits: int = field(
        default=8,
        metadata=cli(
            "7 keeps every weight level within -63..63, for x86 CPUs without VNNI, whose INT8 kernels "
            "saturate on full-range weights (export warns when it measures this).",
            choices=tuple(str(b) for b in WEIGHT_BITS),
            parse=int,
            prefixed=False,
        ),
    )
    # Also write model_deploy.pt2, the BN-folded float model whose weights were quantised
    # (``edgeprune quantize`` sets it; in ``compress`` the exports carry that model).
    save_deploy_model: bool = False

    def __post_init__(self) -> None:
        if self.weight_bits not in WEIGHT_BITS:
            raise DataError(
                f"weight bits must be one of {', '.join(map(str, WEIGHT_BITS))} (got {self.weight_bits})",
                "use --weight-bits 8 (default) or 7",
            )

    @property
    def max_level(self) -> int:
        """The largest |level|: 127 for 8-bit weights, 63 for 7-bit ones."""
        return 2 ** (self.weight_bits - 1) - 1


def run(art: Artifact, ctx: StageContext) -> dict[str, Any]:
    """The quantize stage: fold BN, quantise the weights, calibrate activations on real data.

    Replaces ``art.model`` by the BN-folded graph (the model every later stage codes and exports),
    stores the :class:`QuantizedWeights` in ``art.quant`` and writes ``quant.npz``. Without data
    the weights are still quantised (the allocation falls back to one step for all tensors), but no
    activation is calibrated: INT8 exports, which need those ranges, then ask for data themselves.
    """
    opts: QuantOptions = ctx.options_for("quantize", QuantOptions)
    batch = calibration_inputs(art, opts.calibration_samples) if art.data is not None else None
    original = art.model.eval()
    deploy, folded = to_deploy_graph(original, art.example_input)
    probe = batch if batch is not None else art.example_input
    with torch.no_grad():
        fold_diff = float((original(probe) - deploy(probe)).abs().max())
    allocation = None
    if opts.weights == "allocated":
        drop, bits = _budget(opts, ctx)
        quantize = functools.partial(quantize_weights, max_level=opts.max_level)
        allocation = allocate_int8(deploy, quantized_weight_names(deploy), art.data, drop, bits, quantize)
        quant = quantize(deploy, allocation.qps)
    elif opts.weights == "maxabs":
        quant = quantize_weights(deploy, max_level=opts.max_level)
    else:
        raise DataError(f"unknown weight quantisation {opts.weights!r}", f"choose one of {', '.join(WEIGHT_MODES)}")
    if batch is not None:
        ranges = "minmax" if opts.calibration == "best" else opts.calibration  # "best" is chosen at export
        quant.activation_ranges = calibrate_activations(deploy, batch, ranges, opts.percentile)
        quant.calibration = {
            "method": opts.calibration,
            "ranges": ranges,
            "samples": len(batch),
            "percentile": opts.percentile,
        }
    else:
        quant.calibration = {"method": None, "samples": 0}
    art.model = deploy
    art.quant = quant
    art.files["quant"] = save_quantized(quant, ctx.out_dir / "quant.npz")
    if opts.save_deploy_model:
        art.files["deploy_model"] = save_model(deploy, art.example_input, ctx.out_dir / "model_deploy.pt2")
    result: dict[str, Any] = {
        "quantized_tensors": len(quant.tensors),
        "quantized_values": quant.num_values,
        "batchnorms_folded": folded,
        "fold_max_abs_diff": fold_diff,
        "weight_sqnr_db": weight_sqnr_db(deploy, quant),
        "calibration": quant.calibration,
        "size_bytes": art.files["quant"].stat().st_size,
    }
    result["weight_quantisation"] = opts.weights
    result["weight_bits"] = opts.weight_bits
    if allocation is not None:
        result.update(
            allocation_bits_per_weight=round(allocation.bits_per_weight, 4),
            allocation_sensitivity=allocation.sensitivity,
            allocation_trials=allocation.trials,
            allocation_budget_met=allocation.budget_met,
            allocation_agreement=allocation.agreement,
            max_abs_level=int(max((int(np.abs(t.levels).max()) for t in quant.tensors.values()), default=0)),
        )
    if art.data is not None:
        # Accuracy with INT8 weights and float activations: the share of the INT8 loss due to weights.
        result["accuracy"] = evaluate(with_quantized_weights(deploy, quant), art.data.loader("test", 256))["accuracy"]
    return result


def _budget(opts: QuantOptions, ctx: StageContext) -> tuple[float | None, float | None]:
    """The one rate knob: the encode stage's budget when the user gave one there (``compress
    --target-accuracy-drop/--bits-per-weight`` set it), else the quantize options' (0.5 point)."""
    nnr = ctx.options_for("nnr", NnrOptions)
    if nnr.bits_per_weight is not None:
        return None, nnr.bits_per_weight
    if nnr.target_accuracy_drop is not None:
        return nnr.target_accuracy_drop, None
    if opts.bits_per_weight is not None:
        return None, opts.bits_per_weight
    return opts.target_accuracy_drop, None
