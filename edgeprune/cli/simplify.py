"""CLI for the simplify stage (see edgeprune.cli for the COMMANDS / STAGES contract)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgeprune.checkpoint import save_model
from edgeprune.cli.common import (
    data_options,
    emit,
    force_option,
    json_option,
    load_artifact,
    model_options,
    refuse_existing_file,
)
from edgeprune.cli.declared import StageCli
from edgeprune.metrics import count_macs, count_params
from edgeprune.options import COMMAND
from edgeprune.simplify import simplify
from edgeprune.simplify.options import SimplifyOptions

STAGE = StageCli("simplify", SimplifyOptions, prefix="simplify-")
STAGES = (STAGE,)


@click.command("simplify")
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False))
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False),
    help="Where to write the simplified model (a torch.export .pt2 file).",
)
@model_options
@data_options
@STAGE.command_options
@json_option
@force_option
@click.pass_context
def simplify_command(
    ctx: click.Context, model_path: str, output: str, as_json: bool, force: bool, **kwargs: Any
) -> None:
    """Remove dead (all-zero) channels from a pruned model without changing what it computes.

    Every run ends with a float64 equivalence proof; a model that fails it is not written.
    --data adds real samples to the proof.

    \b
    Examples:
      edgeprune simplify pruned.pt2 -o small.pt2
      edgeprune simplify weights.pt --arch edgeprune.models:resnet20 --input-shape 1,3,32,32 -o small.pt2
    """
    out = Path(output)
    refuse_existing_file(out, force)
    art = load_artifact(kwargs, model_path)
    options = STAGE.build(kwargs, COMMAND)
    real = art.data.calibration_batch(3) if art.data is not None else None
    before = count_params(art.model), count_macs(art.model, art.example_input)
    result = simplify(art.model, art.example_input, real, options, seed=kwargs.get("seed", 0))
    save_model(result.model, art.example_input, out)
    after = count_params(result.model), count_macs(result.model, art.example_input)
    report = result.report
    summary = (
        f"wrote {out}: {report['channels_removed']} channels removed, "
        f"params {before[0]:,} -> {after[0]:,}, MACs {before[1]:,} -> {after[1]:,}; "
        f"max |delta| {report['max_abs_diff_float64']:.2g} (float64), {report['max_abs_diff_float32']:.2g} (float32)"
    )
    result_json = {
        "output": str(out),
        "params_before": before[0],
        "params_after": after[0],
        "macs_before": before[1],
        "macs_after": after[1],
        **report,
    }
    emit(ctx, result_json, as_json, summary)


COMMANDS: list[click.Command] = [simplify_command]
