"""CLI of the bench stage: ``edgeprune bench``, ``edgeprune devices`` and the ``compress --bench-*`` options.

The options are declared once, on :class:`edgeprune.devices.bench.BenchOptions`, and added twice:
unprefixed to ``edgeprune bench`` (``--threads``) and with a ``bench-`` prefix to ``edgeprune
compress`` (``--bench-threads``), where ``--threads`` would be ambiguous between stages.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgeprune.cli.common import FiniteFloatRange, emit, force_option, json_option, refuse_existing_file
from edgeprune.cli.declared import StageCli
from edgeprune.devices.bench import BenchOptions, ModelFile, benchmark_files
from edgeprune.devices.profiles import list_profiles, load_profile, search_paths
from edgeprune.devices.stage import headline_latency
from edgeprune.devices.transport import check_reachable
from edgeprune.fileio import write_json
from edgeprune.options import COMMAND

STAGE = StageCli("bench", BenchOptions, prefix="bench-")
STAGES = (STAGE,)


def _table(rows: list[dict[str, Any]]) -> str:
    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    lines = [f"{'model':<16} {'runtime':<22} {'median ms':>10} {'p90 ms':>9} {'mean ms':>9} {'init ms':>9}"]
    for r in rows:
        if r.get("skipped"):
            lines.append(f"{r['model']:<16} skipped: {r['skipped']}")
            continue
        runtime = f"{r.get('runtime')} {r.get('runtime_version') or ''}".strip()
        lines.append(
            f"{r['model']:<16} {runtime:<22} {ms(r.get('median_ms')):>10} {ms(r.get('p90_ms')):>9} "
            f"{ms(r.get('mean_ms')):>9} {ms(r.get('init_ms')):>9}"
        )
    return "\n".join(lines)


@click.command("bench", context_settings={"show_default": True})
@click.argument("models", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--target", default="host", help="Device profile name or .toml path (see `edgeprune devices`).")
@STAGE.command_options
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Also write the results as JSON here.")
@force_option
@json_option
@click.pass_context
def bench(
    ctx: click.Context,
    models: tuple[str, ...],
    target: str,
    output: str | None,
    force: bool,
    as_json: bool,
    **kwargs: Any,
) -> None:
    """Time .tflite / .onnx models on a device (the host, a Pi over SSH, a phone over ADB).

    \b
    Examples:
      edgeprune bench out/model_int8.tflite out/model_int8.onnx
      edgeprune bench model_int8.tflite --target rpi3 --threads 4 --runs 100
      edgeprune bench model_int8.tflite --target xiaomi-mi9 --benchmark-binary ./benchmark_model
      edgeprune bench model.tflite --target ./my-pi.toml --json
    """
    if output:
        refuse_existing_file(Path(output), force)
    profile = load_profile(target)
    options = STAGE.build(kwargs, COMMAND)
    names = [Path(m).name for m in models]
    files = [ModelFile(name if names.count(name) == 1 else m, Path(m)) for name, m in zip(names, models, strict=True)]
    rows = benchmark_files(profile, files, options)
    result = {
        "target": profile.name,
        "device": profile.description,
        "results": rows,
        "latency_ms": headline_latency(rows, profile),
    }
    if output:
        write_json(output, result)
    emit(ctx, result, as_json, f"{profile.name} ({profile.description}):\n{_table(rows)}")


@click.command("devices")
@click.argument("names", nargs=-1)
@click.option(
    "--check/--no-check", default=True, show_default=True, help="Try to reach each target (connect and run `uname -m`)."
)
@click.option(
    "--timeout",
    type=FiniteFloatRange(min=0, min_open=True),
    default=5.0,
    show_default=True,
    help="Seconds to wait for each target when checking.",
)
@json_option
@click.pass_context
def devices(ctx: click.Context, names: tuple[str, ...], check: bool, timeout: float, as_json: bool) -> None:
    """List the device profiles (or only NAMES) and check which targets are reachable.

    Built-in profiles are in the package; add your own .toml files to ~/.config/edgeprune/devices
    or to a directory named in $EDGEPRUNE_DEVICES (a profile may `extends = "rpi3"` and change only
    [ssh] host).

    \b
    Examples:
      edgeprune devices
      edgeprune devices rpi3 xiaomi-mi9 --timeout 2
      edgeprune devices --no-check --json
    """
    profiles = [load_profile(n) for n in names] if names else list_profiles()
    rows: list[dict[str, Any]] = []
    for p in profiles:
        row = {
            "name": p.name,
            "transport": p.transport,
            "address": p.address,
            "runtimes": list(p.runtimes),
            "threads": p.threads,
            "description": p.description,
            "source": p.source,
        }
        if check:
            status = check_reachable(p, timeout)
            row.update(reachable=status.reachable, detail=status.detail)
        rows.append(row)
    lines = [f"{'name':<20} {'transport':<9} {'address':<28} {'runtimes':<26} status"]
    for r in rows:
        state = ("reachable" if r["reachable"] else f"unreachable: {r['detail']}") if check else "-"
        runtimes = ",".join(r["runtimes"])
        lines.append(f"{r['name']:<20} {r['transport']:<9} {r['address']:<28} {runtimes:<26} {state}")
    lines.append("profiles are read from: " + ", ".join(str(p) for p in search_paths()))
    emit(ctx, {"devices": rows}, as_json, "\n".join(lines))


COMMANDS: list[click.Command] = [bench, devices]
