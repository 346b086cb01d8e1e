"""The ``encode`` stage: code the model into ``model.nnr``, decode it back and check the round trip.

Default in ``compress``: when the quantize stage ran (``art.quant``), ``model.nnr`` carries
exactly its INT8 deploy levels (one quantisation, two consumers: the export stage checks that the
INT8 ONNX/TFLite weights equal ``read_int8_levels(model.nnr)``), and a second stream
``model_qp.nnr`` is written in qp mode (per-tensor qps, DQ on), the compact one for storage and
transmission. Without quantize results ``model.nnr`` is the qp-mode stream. ``--nnr-sweep`` adds the
accuracy-vs-size curve of single-qp coding (NNCodec's scheme) for the report.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeprune.artifact import Artifact, StageContext
from edgeprune.errors import EdgepruneError, VerificationError
from edgeprune.fileio import write_bytes
from edgeprune.metrics import evaluate
from edgeprune.nnr.allocate import allocate_qps
from edgeprune.nnr.model import ModelEncodeOptions, architecture_record, encode_model, load_decoded
from edgeprune.nnr.qp import QP_MAX, QP_MIN
from edgeprune.nnr.tensors import EncodedStream, decode_stream
from edgeprune.options import COMMAND, COMPRESS, CliOption, cli, cli_each

SWEEP_QPS = (-38, -34, -30, -26, -22, -18, -14)


@dataclass
class NnrOptions:
    """Options of the encode stage (``compress --nnr-*`` / ``edgeprune encode``)."""

    int8: bool | None = field(  # None: INT8 levels when the quantize stage ran, else qp mode
        default=None,
        metadata=cli_each(
            CliOption(
                "model.nnr holds the quantize stage's INT8 levels / qp-mode levels.",
                flag="int8/qp-mode",
                default_text="INT8 when the quantize stage runs",
                only=COMPRESS,
            ),
            CliOption(
                "Code the INT8 deploy levels (BN folded, max-abs per-channel scales) instead.",
                is_flag=True,
                only=COMMAND,
            ),
        ),
    )
    qp: int | None = field(  # one qp for all >= 2-D tensors (None: per-tensor choice)
        default=None,
        metadata=cli(
            "One qp for every >= 2-D tensor of the qp-mode stream, NNC style "
            "(step = (1 + (qp mod 4)/4) * 2^(qp div 4)).",
            low=QP_MIN,
            high=QP_MAX,
            default_text="a per-tensor choice from the weight spread",
        ),
    )
    bits_per_weight: float | None = field(
        default=None,
        metadata=cli(
            "Choose a step per tensor (Fisher sensitivity) so the weights cost this many bits each "
            "(in compress: the INT8 levels model.nnr and the INT8 files share).",
            low=0,
            low_open=True,
            prefixed=False,
        ),
    )
    target_accuracy_drop: float | None = field(  # percentage points on the validation split
        default=None,
        metadata=cli(
            "Choose a step per tensor for the smallest stream within this many points of the float "
            "model (needs --data; compress defaults to 0.5 for its INT8 levels).",
            low=0,
            prefixed=False,
        ),
    )
    dq: bool = field(default=True, metadata=cli("Dependent quantisation (8-state trellis).", flag="dq/no-dq"))
    estimator_search: bool = field(
        default=False,
        metadata=cli(
            "Pick each context's estimator like NNCodec (about 0.5-1 % smaller, slower to encode).", is_flag=True
        ),
    )
    rdoq: float = field(
        default=0.0,
        metadata=cli(
            "RDOQ lambda scale (uniform quantisation only, needs --no-dq; measured near-useless: off).",
            low=0,
            only=COMMAND,
        ),
    )
    qp_stream: bool = True  # also write model_qp.nnr when model.nnr is the INT8 stream
    sweep: bool = field(
        default=False,
        metadata=cli("Also measure accuracy vs size over single qps (report plot).", is_flag=True, only=COMPRESS),
    )
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.rdoq > 0 and self.dq:
            raise EdgepruneError("--rdoq is implemented for uniform quantisation only", "add --no-dq")


def _qp_options(opts: NnrOptions, art: Artifact) -> tuple[ModelEncodeOptions, dict[str, Any]]:
    """qp-mode options, running the allocator when a budget was given."""
    info: dict[str, Any] = {}
    qps = None
    if opts.bits_per_weight is not None or opts.target_accuracy_drop is not None:
        allocation = allocate_qps(art.model, art.data, opts.bits_per_weight, opts.target_accuracy_drop, opts.dq)
        qps = allocation.qps
        info = {"allocation_offset": allocation.offset, "allocation_trials": len(allocation.trials)}
    return ModelEncodeOptions(
        qp=opts.qp, qps=qps, dq=opts.dq, estimator_search=opts.estimator_search, rdoq=opts.rdoq, threads=opts.threads
    ), info


def _round_trip(art: Artifact, stream: EncodedStream, int8_levels: dict[str, np.ndarray] | None) -> dict[str, Any]:
    """Decode ``stream``, check the coded integers, return accuracy of the decoded model and timings."""
    t0 = time.perf_counter()
    decoded = decode_stream(stream.data)
    decode_seconds = time.perf_counter() - t0
    if int8_levels is not None:
        bad = [k for k, v in int8_levels.items() if k not in decoded.levels or not np.array_equal(decoded.levels[k], v)]
        if bad:
            raise VerificationError(
                f"the decoded INT8 levels of {bad[0]} differ from the quantize stage's",
                "this is a bug in the NNR coder; please report it",
            )
    model = load_decoded(copy.deepcopy(art.model), decoded)
    result: dict[str, Any] = {"decode_seconds": decode_seconds}
    if art.data is not None:
        result["accuracy"] = evaluate(model, art.data.loader("test", 256))["accuracy"]
    return result


def _summary(stream: EncodedStream) -> dict[str, Any]:
    return {
        "size_bytes": len(stream.data),
        "weight_bytes": stream.weight_bytes,
        "topology_bytes": stream.topology_bytes,
        "num_weights": stream.num_weights,
        "bits_per_weight": 8.0 * stream.weight_bytes / max(1, stream.num_weights),
    }


def run(art: Artifact, ctx: StageContext) -> dict[str, Any]:
    opts: NnrOptions = ctx.options_for("nnr", NnrOptions)
    quant = art.quant
    use_int8 = quant is not None if opts.int8 is None else opts.int8
    if use_int8 and quant is None:
        raise EdgepruneError("INT8 coding was asked for, but no quantize stage ran", "run the quantize stage first")
    architecture = architecture_record(art.model, art.example_input)
    extra = {"architecture": architecture}

    qp_options, allocation_info = _qp_options(opts, art)
    main_options = (
        ModelEncodeOptions(int8=True, dq=opts.dq, estimator_search=opts.estimator_search, threads=opts.threads)
        if use_int8
        else qp_options
    )
    t0 = time.perf_counter()
    stream = encode_model(art.model, art.example_input, main_options, quant=quant, architecture=extra)
    encode_seconds = time.perf_counter() - t0
    path = write_bytes(ctx.out_dir / "model.nnr", stream.data)
    art.files["nnr"] = path
    int8_levels = (
        {k: np.asarray(v.levels) for k, v in quant.tensors.items()} if quant is not None and use_int8 else None
    )
    result: dict[str, Any] = {
        "mode": "int8" if use_int8 else "qp",
        **_summary(stream),
        "encode_seconds": encode_seconds,
        **_round_trip(art, stream, int8_levels),
        "roundtrip_levels_exact": True,
        **allocation_info,
    }
    result["tensors"] = [
        {
            "tensor": t.name,
            "shape": "x".join(map(str, t.shape)),
            "mode": t.mode,
            "qp": "" if t.qp is None else t.qp,
            "bytes": t.ndu_bytes,
            "bits/weight": round(t.bits_per_weight, 3),
        }
        for t in stream.tensors
    ]
    if use_int8 and opts.qp_stream:
        qp_stream = encode_model(art.model, art.example_input, qp_options, architecture=extra)
        art.files["nnr_qp"] = write_bytes(ctx.out_dir / "model_qp.nnr", qp_stream.data)
        checked = _round_trip(art, qp_stream, None)
        # flat keys: the report renders scalars, and report.py reads them without knowing this stage
        summary = {**_summary(qp_stream), **{k: v for k, v in checked.items() if k == "accuracy"}}
        result.update({f"qp_stream_{k}": v for k, v in summary.items() if k != "num_weights"})
    if opts.sweep:
        result["qp_sweep"] = qp_sweep(art, opts, extra)
    return result


def qp_sweep(art: Artifact, opts: NnrOptions, extra: dict[str, Any]) -> list[dict[str, Any]]:
    """Size and test accuracy of single-qp streams (NNCodec's scheme) across ``SWEEP_QPS``."""
    rows = []
    for qp in SWEEP_QPS:
        stream = encode_model(
            art.model,
            art.example_input,
            ModelEncodeOptions(qp=qp, dq=opts.dq, threads=opts.threads),
            architecture=extra,
        )
        row: dict[str, Any] = {
            "qp": qp,
            "size_bytes": len(stream.data),
            "bits_per_weight": round(8.0 * stream.weight_bytes / max(1, stream.num_weights), 4),
        }
        row.update({k: v for k, v in _round_trip(art, stream, None).items() if k == "accuracy"})
        rows.append(row)
    return rows
