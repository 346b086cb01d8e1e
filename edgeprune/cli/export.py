"""CLI for the quantize and export stages (see edgeprune.cli for the COMMANDS / compress_options / options_from
contract). ``options_from`` returns the export options; ``quantize_options_from`` the quantize options."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from edgeprune.checkpoint import save_model
from edgeprune.cli.common import (
    compose,
    data_options,
    emit,
    force_option,
    json_option,
    load_artifact,
    make_context,
    model_options,
)
from edgeprune.export import stage as export_stage
from edgeprune.fileio import atomic_directory, write_json
from edgeprune.quant import CALIBRATION_METHODS, WEIGHT_BITS, WEIGHT_MODES, QuantOptions, run_stage

calibration_options = compose(
    click.option(
        "--calibration",
        type=click.Choice(CALIBRATION_METHODS),
        default="minmax",
        show_default=True,
        help="How activation ranges are calibrated: extremes, or percentiles that ignore outliers.",
    ),
    click.option(
        "--calibration-samples",
        type=click.IntRange(1),
        default=128,
        show_default=True,
        help="Training samples used to calibrate INT8 activations.",
    ),
    click.option(
        "--weight-quant",
        type=click.Choice(WEIGHT_MODES),
        default="allocated",
        show_default=True,
        help="INT8 weight levels: 'allocated' picks each tensor's step from its sensitivity (smallest "
        "model.nnr within --target-accuracy-drop, default 0.5 point); 'maxabs' uses max|w|/127.",
    ),
    click.option(
        "--weight-bits",
        type=click.Choice([str(b) for b in WEIGHT_BITS]),
        default="8",
        show_default=True,
        help="7 keeps every weight level within -63..63, for x86 CPUs without VNNI, whose INT8 kernels "
        "saturate on full-range weights (export warns when it measures this).",
    ),
)

_export_file_options = compose(
    click.option(
        "--opset",
        type=click.IntRange(18),
        default=export_stage.ExportOptions.opset,
        show_default=True,
        help="ONNX opset (18 is the lowest the exporter supports).",
    ),
    click.option("--static-batch", is_flag=True, help="Fix the ONNX batch dimension to 1 instead of dynamic."),
    click.option("--nhwc", is_flag=True, help="TFLite files take NHWC images (channels last), as phone cameras give."),
)


def quantize_options_from(kwargs: dict[str, Any]) -> tuple[str, QuantOptions]:
    """Pop the quantize stage's options from ``kwargs``."""
    return "quantize", QuantOptions(
        calibration=kwargs.pop("calibration", "minmax"),
        calibration_samples=kwargs.pop("calibration_samples", 128),
        weights=kwargs.pop("weight_quant", "allocated"),
        weight_bits=int(kwargs.pop("weight_bits", "8")),
    )


def _export_options(kwargs: dict[str, Any], formats: str | None, int8: bool) -> export_stage.ExportOptions:
    return export_stage.ExportOptions(
        formats=export_stage.parse_formats(formats),
        int8=int8,
        opset=kwargs.pop("opset", export_stage.ExportOptions.opset),
        dynamic_batch=not kwargs.pop("static_batch", False),
        nhwc=kwargs.pop("nhwc", False),
    )


def compress_options(f: Callable) -> Callable:
    """Options the quantize and export stages add to `edgeprune compress`."""
    return compose(
        calibration_options,
        click.option(
            "--export-format",
            default="onnx,tflite",
            show_default=True,
            help="Comma-separated export formats: onnx, tflite.",
        ),
        click.option("--export-fp32-only", is_flag=True, help="Export only fp32 files (no INT8 ONNX/TFLite)."),
        _export_file_options,
    )(f)


def options_from(kwargs: dict[str, Any]) -> tuple[str, export_stage.ExportOptions]:
    """Pop the export stage's options from the compress kwargs."""
    formats = kwargs.pop("export_format", None)
    return "export", _export_options(kwargs, formats, int8=not kwargs.pop("export_fp32_only", False))


@click.command("quantize")
@click.argument("model", type=click.Path(dir_okay=False))
@model_options
@data_options
@calibration_options
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
    options = dict([quantize_options_from(kwargs)])
    art = load_artifact(kwargs, model)
    out = Path(out_dir)
    with atomic_directory(out, force) as work_dir:
        result = run_stage(art, make_context(ctx, work_dir, kwargs.get("seed", 0), options))
        art.files["deploy_model"] = save_model(art.model, art.example_input, work_dir / "model_deploy.pt2")
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
@click.option(
    "--format", "formats", default="onnx,tflite", show_default=True, help="Comma-separated formats: onnx, tflite."
)
@click.option("--int8", is_flag=True, help="Also write INT8 files (calibrated on --data).")
@calibration_options
@_export_file_options
@click.option("-o", "--output", "out_dir", type=click.Path(file_okay=False), required=True, help="Output directory.")
@force_option
@json_option
@click.pass_context
def export(
    ctx: click.Context, model: str, formats: str, int8: bool, out_dir: str, force: bool, as_json: bool, **kwargs: Any
) -> None:
    """Export MODEL to ONNX and/or TFLite (fp32, and INT8 with --int8), verified in each runtime.

    \b
    Writes model.onnx, model_int8.onnx, model.tflite, model_int8.tflite and export.json to OUT.
    Examples:
      edgeprune export model.pt2 --data digits --int8 -o out/
      edgeprune export model.pt2 --format onnx --input-shape 1,3,32,32 -o out/
    """
    options = dict([quantize_options_from(kwargs), ("export", _export_options(kwargs, formats, int8))])
    art = load_artifact(kwargs, model)
    out = Path(out_dir)
    with atomic_directory(out, force) as work_dir:
        result = export_stage.run(art, make_context(ctx, work_dir, kwargs.get("seed", 0), options))
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
