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
    data_options,
    emit,
    force_option,
    json_option,
    load_options_from,
    make_context,
    model_options,
    refuse_existing_file,
)
from edgeprune.cli.declared import StageCli
from edgeprune.errors import EdgepruneError
from edgeprune.fileio import move_into_place, scratch_directory
from edgeprune.nnr.model import decode_model
from edgeprune.nnr.stage import NnrOptions
from edgeprune.nnr.tensors import inspect_stream
from edgeprune.options import COMMAND
from edgeprune.pipeline import run_pipeline
from edgeprune.quant import QuantOptions

STAGE = StageCli("nnr", NnrOptions, prefix="nnr-")
STAGES = (STAGE,)


@click.command("encode", context_settings={"show_default": True})
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="The .nnr file to write.")
@STAGE.command_options
@model_options
@data_options
@force_option
@json_option
@click.pass_context
def encode_command(ctx: click.Context, model: str, output: str, force: bool, as_json: bool, **kwargs: Any) -> None:
    """Encode a model's weights into an MPEG-NNR bitstream (.nnr) that NNCodec can decode too.

    \b
    Examples:
      edgeprune encode model.pt2 -o model.nnr
      edgeprune encode model.pt2 -o model.nnr --target-accuracy-drop 0.5 --data digits
      edgeprune encode model.pt --arch edgeprune.models:lenet5 --arch-kwargs '{"input_size": 8}' --int8 -o m.nnr
    """
    out = Path(output)
    refuse_existing_file(out, force)
    options = STAGE.build(kwargs, COMMAND, qp_stream=False)
    budget = options.bits_per_weight is not None or options.target_accuracy_drop is not None
    if options.int8 and (options.qp is not None or budget):
        raise EdgepruneError("--int8 codes fixed INT8 levels; --qp and the budgets do not apply", "drop one of them")
    source = load_options_from(kwargs, model)
    # --int8 codes the max-abs levels of the quantize stage (BN folded first), as the INT8 exports carry
    stages = ["load", "quantize", "encode"] if options.int8 else ["load", "encode"]
    stage_options = {"nnr": options, "quantize": QuantOptions(weights="maxabs")}
    with scratch_directory(out) as work:
        art, run = run_pipeline(source, make_context(ctx, work, source.seed, stage_options), stages, headers=False)
        move_into_place(art.files["nnr"], out)
    result = {"output": str(out), **run.result_of("encode")}
    bpw = result["bits_per_weight"]
    emit(
        ctx,
        result,
        as_json,
        f"wrote {out}: {result['size_bytes']} bytes, {result['num_weights']} weights, {bpw:.3f} bits/weight",
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
