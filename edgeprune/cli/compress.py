"""``edgeprune compress``: the whole pipeline in one command."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgeprune.cli import bench, export, nnr, prune, simplify
from edgeprune.cli.common import (
    compose,
    data_options,
    emit,
    force_option,
    json_option,
    load_options_from,
    make_context,
    model_options,
)
from edgeprune.devices.profiles import load_profile
from edgeprune.devices.transport import check_reachable
from edgeprune.errors import DeviceError
from edgeprune.examples import EXAMPLES
from edgeprune.fileio import atomic_directory
from edgeprune.pipeline import STAGE_ORDER, run_pipeline, select_stages

_STAGE_CLI = (prune, simplify, export, nnr, bench)
_STAGES = tuple(stage for module in _STAGE_CLI for stage in module.STAGES)


@click.command(context_settings={"show_default": True})
@click.argument("model", required=False, type=click.Path(dir_okay=False))
@click.option(
    "--example", type=click.Choice(sorted(EXAMPLES)), help="Use an embedded example model and dataset instead of MODEL."
)
@model_options
@data_options
@click.option("-o", "--output", "out_dir", type=click.Path(file_okay=False), default="out", help="Output directory.")
@force_option
@click.option("--target", default="host", help="Device profile to benchmark on (see `edgeprune devices`).")
@click.option("--stages", help=f"Comma-separated stages to run (default: all of {', '.join(STAGE_ORDER)}).")
@click.option("--skip", help="Comma-separated stages to skip.")
@json_option
@compose(*(stage.compress_options for stage in _STAGES))
@click.pass_context
def compress(
    ctx: click.Context,
    model: str | None,
    example: str | None,
    out_dir: str,
    force: bool,
    target: str,
    stages: str | None,
    skip: str | None,
    as_json: bool,
    **kwargs: Any,
) -> None:
    """Run load -> prune -> simplify -> quantize -> encode -> export -> bench and write a report.

    \b
    Examples:
      edgeprune compress --example lenet5 -o out/
      edgeprune compress model.pt --arch edgeprune.models:lenet5 --arch-kwargs '{"input_size": 8}' \\
          --data digits --target rpi3 -o out/
      edgeprune compress model.pt2 --data ./fashion-mnist --skip bench --json -o out/
    """
    chosen = select_stages(stages, skip)
    options = dict(stage.options_from(kwargs) for stage in _STAGES)
    source = load_options_from(kwargs, model, example)
    source.check()
    if "bench" in chosen:
        _check_target(target)
    out = Path(out_dir)
    with atomic_directory(out, force) as work_dir:
        stage_ctx = make_context(ctx, work_dir, source.seed, options, target)
        _, report = run_pipeline(source, stage_ctx, chosen)
        files = report.write(work_dir)
    result = report.to_dict()
    result["output_dir"] = str(out)
    result["report_files"] = sorted(p.name for p in files.values())
    emit(ctx, result, as_json, _summary(report, out))


def _check_target(target: str) -> None:
    """Fail before any work when the bench target is unknown or unreachable, not after minutes of pruning."""
    profile = load_profile(target)
    if profile.transport == "local":
        return
    state = check_reachable(profile)
    if not state.reachable:
        raise DeviceError(
            f"target {target!r} is unreachable: {state.detail}",
            "or pass --skip bench to compress without benchmarking",
        )


def _summary(report, out: Path) -> str:  # noqa: ANN001 - Report
    from edgeprune.report import stage_summary_cells

    lines = [f"wrote {out}/ :", f"  {'stage':<9} {'weights':>11} {'file':>11} {'accuracy':>9}"]
    for s in report.stages:
        weights, file, acc = stage_summary_cells(report, s)
        lines.append(f"  {s.name:<9} {weights:>11} {file:>11} {acc:>9}  ({s.seconds:.1f} s)")
    lines.append(f"report: {out / 'report.md'} (and report.html)")
    return "\n".join(lines)
