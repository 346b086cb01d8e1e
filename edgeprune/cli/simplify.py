"""CLI for the simplify stage (see edgeprune.cli for the COMMANDS / STAGES contract)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

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
from edgeprune.fileio import move_into_place, scratch_directory
from edgeprune.options import COMMAND
from edgeprune.pipeline import run_pipeline
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
    options = {"simplify": STAGE.build(kwargs, COMMAND)}
    source = load_options_from(kwargs, model_path)
    with scratch_directory(out) as work:
        art, run = run_pipeline(
            source, make_context(ctx, work, source.seed, options), ["load", "simplify"], headers=False
        )
        move_into_place(art.files["simplified"], out)
    loaded, simplified = run.stages
    report = simplified.metrics
    summary = (
        f"wrote {out}: {report['channels_removed']} channels removed, "
        f"params {loaded.params:,} -> {simplified.params:,}, MACs {loaded.macs:,} -> {simplified.macs:,}; "
        f"max |delta| {report['max_abs_diff_float64']:.2g} (float64), {report['max_abs_diff_float32']:.2g} (float32)"
    )
    result_json = {
        "output": str(out),
        "params_before": loaded.params,
        "params_after": simplified.params,
        "macs_before": loaded.macs,
        "macs_after": simplified.macs,
        **report,
    }
    emit(ctx, result_json, as_json, summary)


COMMANDS: list[click.Command] = [simplify_command]
