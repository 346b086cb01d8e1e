"""CLI for the quantize and export stages (see edgeprune.cli for the COMMANDS / STAGES contract)."""

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
)
from edgeprune.cli.declared import StageCli
from edgeprune.export import stage as export_stage
from edgeprune.fileio import atomic_directory, write_json
from edgeprune.options import COMMAND
from edgeprune.pipeline import run_pipeline
from edgeprune.quant import QuantOptions

QUANTIZE = StageCli("quantize", QuantOptions, prefix="quantize-")
EXPORT = StageCli("export", export_stage.ExportOptions, prefix="export-")
STAGES = (QUANTIZE, EXPORT)


@click.command("quantize")
@click.argument("model", type=click.Path(dir_okay=False))
@model_options
@data_options
@QUANTIZE.command_options
@click.option("-o", "--output", "out_dir", type=click.Path(file_okay=False), required=True, help="Output directory.")
@force_option
@json_option
@click.pass_context
def quantize(ctx: click.Context, model: str, out_dir: str, force: bool, as_json: bool, **kwargs: Any) -> None:
    """Quantise MODEL's weights to INT8 (per output channel) and calibrate activations on --data.

    \b
    Writes to OUT: model_deploy.pt2 (BatchNorm folded: the float model whose weights were quantised),
    quant.npz (levels and scales per weight) and quant.json (summary and activation ranges).
    Example:
      edgeprune quantize model.pt2 --data digits -o q/
    """
    options = {"quantize": QUANTIZE.build(kwargs, COMMAND, save_deploy_model=True)}
    source = load_options_from(kwargs, model)
    out = Path(out_dir)
    with atomic_directory(out, force) as work_dir:
        art, run = run_pipeline(
            source, make_context(ctx, work_dir, source.seed, options), ["load", "quantize"], headers=False
        )
        result = run.result_of("quantize")
        quant = art.quant
        assert quant is not None, "the quantize stage sets artifact.quant"
        result["activation_ranges"] = {k: list(v) for k, v in quant.activation_ranges.items()}
        result["files"] = {k: v.name for k, v in art.files.items()}
        write_json(work_dir / "quant.json", result)
    accuracy = f", test accuracy with INT8 weights {100 * result['accuracy']:.2f} %" if "accuracy" in result else ""
    emit(
        ctx,
        result,
        as_json,
        f"quantised {result['quantized_tensors']} tensors "
        f"({result['quantized_values']} values, SQNR {result['weight_sqnr_db']:.1f} dB)"
        f"{accuracy}; wrote {out}/",
    )


@click.command("export")
@click.argument("model", type=click.Path(dir_okay=False))
@model_options
@data_options
@EXPORT.command_options
@QUANTIZE.command_options
@click.option("-o", "--output", "out_dir", type=click.Path(file_okay=False), required=True, help="Output directory.")
@force_option
@json_option
@click.pass_context
def export(ctx: click.Context, model: str, out_dir: str, force: bool, as_json: bool, **kwargs: Any) -> None:
    """Export MODEL to ONNX and/or TFLite (fp32, and INT8 with --int8), verified in each runtime.

    \b
    Writes model.onnx, model_int8.onnx, model.tflite, model_int8.tflite and export.json to OUT.
    Examples:
      edgeprune export model.pt2 --data digits --int8 -o out/
      edgeprune export model.pt2 --format onnx --input-shape 1,3,32,32 -o out/
    """
    options = {"quantize": QUANTIZE.build(kwargs, COMMAND), "export": EXPORT.build(kwargs, COMMAND)}
    source = load_options_from(kwargs, model)
    out = Path(out_dir)
    with atomic_directory(out, force) as work_dir:
        # INT8 files bring the quantize stage along (pipeline.with_prerequisites)
        art, run = run_pipeline(
            source, make_context(ctx, work_dir, source.seed, options), ["load", "export"], headers=False
        )
        result = run.result_of("export")
        result["files"] = {k: v.name for k, v in art.files.items()}
        write_json(work_dir / "export.json", result)
    emit(ctx, result, as_json, _summary(result, out))


def _summary(result: dict[str, Any], out: Path) -> str:
    lines = [f"wrote {out}/ :"]
    for row in result["exports"]:
        accuracy = "" if row["accuracy"] is None else f"acc {100 * row['accuracy']:.2f} %"
        mismatches = f"  weight mismatches {row['weight_mismatches']}" if "weight_mismatches" in row else ""
        lines.append(
            f"  {row['file']:<18} {row['size_bytes'] / 1024:>8.1f} KiB  {accuracy:>12}  "
            f"max|Δ| {row['max_abs_diff']:.2e}{mismatches}"
        )
    return "\n".join(lines)


COMMANDS: list[click.Command] = [quantize, export]
