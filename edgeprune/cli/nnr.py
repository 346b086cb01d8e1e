"""``edgeprune encode`` / ``decode`` / ``inspect`` and the encode-stage options of ``edgeprune compress``.

The commands only parse options and call :mod:`edgeprune.nnr`; the compress options map onto
:class:`edgeprune.nnr.stage.NnrOptions` (prefixed ``--nnr-`` where a plain name could clash).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgeprune.checkpoint import parse_input_shape, save_model
from edgeprune.cli.common import (
    FiniteFloatRange,
    data_options,
    emit,
    force_option,
    json_option,
    load_artifact,
    model_options,
    refuse_existing_file,
)
from edgeprune.cli.declared import StageCli
from edgeprune.errors import EdgepruneError
from edgeprune.fileio import write_bytes
from edgeprune.nnr.codec import QP_MAX, QP_MIN, ModelEncodeOptions, decode_model, encode_model, inspect_stream
from edgeprune.nnr.stage import NnrOptions
from edgeprune.options import COMMAND

STAGE = StageCli("nnr", NnrOptions, prefix="nnr-")
STAGES = (STAGE,)
_budget_options = STAGE.decorator(COMMAND, names=("bits_per_weight", "target_accuracy_drop"))


@click.command("encode", context_settings={"show_default": True})
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="The .nnr file to write.")
@click.option(
    "--qp",
    type=click.IntRange(QP_MIN, QP_MAX),
    help="One qp for every >= 2-D tensor, NNC style (step = (1 + (qp mod 4)/4) * 2^(qp div 4)); "
    "default: a per-tensor choice from the weight spread.",
)
@click.option("--int8", is_flag=True, help="Code the INT8 deploy levels (BN folded, per-channel scales) instead.")
@click.option("--dq/--no-dq", default=True, help="Dependent quantisation (8-state trellis).")
@click.option(
    "--rdoq",
    type=FiniteFloatRange(min=0),
    default=0.0,
    help="RDOQ lambda scale (uniform quantisation only, needs --no-dq; measured near-useless: off).",
)
@click.option(
    "--estimator-search",
    is_flag=True,
    help="Pick each context's estimator like NNCodec (about 0.5-1 % smaller, slower to encode).",
)
@_budget_options
@model_options
@data_options
@force_option
@json_option
@click.pass_context
def encode_command(
    ctx: click.Context,
    model: str,
    output: str,
    qp: int | None,
    int8: bool,
    dq: bool,
    rdoq: float,
    estimator_search: bool,
    force: bool,
    as_json: bool,
    **kwargs: Any,
) -> None:
    """Encode a model's weights into an MPEG-NNR bitstream (.nnr) that NNCodec can decode too.

    \b
    Examples:
      edgeprune encode model.pt2 -o model.nnr
      edgeprune encode model.pt2 -o model.nnr --target-accuracy-drop 0.5 --data digits
      edgeprune encode model.pt --arch edgeprune.models:lenet5 --arch-kwargs '{"input_size": 8}' --int8 -o m.nnr
    """
    out = Path(output)
    refuse_existing_file(out, force)
    budget = STAGE.build(kwargs, COMMAND)
    bits_per_weight, target_accuracy_drop = budget.bits_per_weight, budget.target_accuracy_drop
    if rdoq > 0 and dq:
        raise EdgepruneError("--rdoq is implemented for uniform quantisation only", "add --no-dq")
    if int8 and (qp is not None or bits_per_weight is not None or target_accuracy_drop is not None):
        raise EdgepruneError("--int8 codes fixed INT8 levels; --qp and the budgets do not apply", "drop one of them")
    art = load_artifact(kwargs, model)
    quant = None
    if int8:
        from edgeprune.quant import quantize_weights, to_deploy_graph

        art.model, _ = to_deploy_graph(art.model, art.example_input)
        quant = quantize_weights(art.model)
    qps = None
    if bits_per_weight is not None or target_accuracy_drop is not None:
        from edgeprune.nnr.allocate import allocate_qps

        qps = allocate_qps(art.model, art.data, bits_per_weight, target_accuracy_drop, dq).qps
    options = ModelEncodeOptions(qp=qp, qps=qps, int8=int8, dq=dq, estimator_search=estimator_search, rdoq=rdoq)
    stream = encode_model(art.model, art.example_input, options, quant=quant)
    write_bytes(out, stream.data)
    bpw = 8.0 * stream.weight_bytes / max(1, stream.num_weights)
    result = {
        "output": str(out),
        "size_bytes": len(stream.data),
        "weight_bytes": stream.weight_bytes,
        "num_weights": stream.num_weights,
        "bits_per_weight": bpw,
        "mode": "int8" if int8 else "qp",
    }
    emit(
        ctx,
        result,
        as_json,
        f"wrote {out}: {len(stream.data)} bytes, {stream.num_weights} weights, {bpw:.3f} bits/weight",
    )


@click.command("decode", context_settings={"show_default": True})
@click.argument("bitstream", type=click.Path(dir_okay=False))
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False),
    help="The model file to write (a torch.export program, .pt2).",
)
@click.option("--arch", help="Rebuild with this package.module:factory instead of the architecture in the .nnr.")
@click.option("--arch-kwargs", help="JSON keyword arguments for --arch.")
@click.option("--input-shape", help="Input shape when the .nnr does not record one, e.g. 1,3,32,32.")
@force_option
@json_option
@click.pass_context
def decode_command(
    ctx: click.Context,
    bitstream: str,
    output: str,
    arch: str | None,
    arch_kwargs: str | None,
    input_shape: str | None,
    force: bool,
    as_json: bool,
) -> None:
    """Decode a .nnr back into a loadable model (.pt2), from the .nnr alone or with --arch.

    \b
    Examples:
      edgeprune decode model.nnr -o model.pt2
      edgeprune decode nncodec.nnc -o model.pt2 --arch edgeprune.models:lenet5 --arch-kwargs '{"input_size": 8}'
    """
    out = Path(output)
    refuse_existing_file(out, force)
    model, example, decoded = decode_model(bitstream, arch, arch_kwargs, parse_input_shape(input_shape))
    save_model(model, example, out)
    result = {"output": str(out), "tensors": len(decoded.tensors), "input_shape": list(example.shape)}
    emit(ctx, result, as_json, f"wrote {out} ({len(decoded.tensors)} tensors)")


@click.command("inspect")
@click.argument("bitstream", type=click.Path(dir_okay=False))
@json_option
@click.pass_context
def inspect_command(ctx: click.Context, bitstream: str, as_json: bool) -> None:
    """List the units and tensors of a .nnr with their sizes and bits per weight (decodes it to check it)."""
    info = inspect_stream(bitstream)
    lines = [
        f"{bitstream}: {info['size_bytes']} bytes, {info['num_weights']} weights, "
        f"{info['bits_per_weight']:.3f} bits/weight in the NDUs ({info['bits_per_weight_total']:.3f} overall), "
        f"architecture: {info['architecture']}",
        "units: "
        + ", ".join(f"{u['type']}({u['size']} B)" for u in info["units"][:3])
        + (f", {len(info['units']) - 3} more" if len(info["units"]) > 3 else ""),
    ]
    width = max((len(t["name"]) for t in info["tensors"]), default=6)
    for t in info["tensors"]:
        qp = "" if t["qp"] is None else f"qp {t['qp']}"
        lines.append(
            f"  {t['name']:<{width}}  {'x'.join(map(str, t['shape'])):>14}  {t['mode']:<4} {qp:>7}"
            f"  {t['bytes']:>9} B  {t['bits_per_weight']:.3f} bits/weight"
        )
    emit(ctx, info, as_json, "\n".join(lines))


COMMANDS: list[click.Command] = [encode_command, decode_command, inspect_command]
