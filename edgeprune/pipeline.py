"""The compress pipeline: stage order, timing, common measurements, report assembly.

Python API::

    from edgeprune.load import LoadOptions
    from edgeprune.pipeline import run_pipeline
    art, report = run_pipeline(LoadOptions(model="model.pt2", data="digits"), ctx)  # all stages
    art, report = run_pipeline(artifact, ctx, ["load", "simplify", "export"])  # an Artifact in memory

The load stage builds the Artifact from :class:`~edgeprune.load.LoadOptions` (or takes the one
given); every other stage is ``run(artifact, ctx) -> dict`` in its own module (see ``STAGE_RUNNERS``). The
pipeline measures what every stage would otherwise repeat - wall time, parameters, non-zero
parameters, MACs and test accuracy of the float model - and stores the stage's own numbers beside
them. Standard keys a stage may return: ``accuracy`` (of the artefact it produced, when that is not
the float model), ``size_bytes`` (its main file), ``files`` are taken from ``artifact.files``.
"""

from __future__ import annotations

import copy
import importlib
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from edgeprune.artifact import Artifact, StageContext
from edgeprune.errors import EdgepruneError
from edgeprune.load import LoadOptions, load
from edgeprune.metrics import count_macs, count_params, evaluate
from edgeprune.report import Report, StageRecord

STAGE_ORDER: tuple[str, ...] = ("load", "prune", "simplify", "quantize", "encode", "export", "bench")

STAGE_RUNNERS: dict[str, str] = {
    "prune": "edgeprune.prune.stage:run",
    "simplify": "edgeprune.simplify.stage:run",
    "quantize": "edgeprune.quant.stage:run",
    "encode": "edgeprune.nnr.stage:run",
    "export": "edgeprune.export.stage:run",
    "bench": "edgeprune.devices.stage:run",
}

# Stages whose output is a new float model: the pipeline re-measures size and accuracy after them.
MODEL_CHANGING = {"load", "prune", "simplify"}


def select_stages(stages: str | None, skip: str | None) -> list[str]:
    """Resolve ``--stages a,b`` / ``--skip c`` into an ordered list (load always runs)."""
    chosen = list(STAGE_ORDER) if not stages else [s.strip() for s in stages.split(",") if s.strip()]
    skipped = {s.strip() for s in (skip or "").split(",") if s.strip()}
    unknown = [s for s in [*chosen, *skipped] if s not in STAGE_ORDER]
    if unknown:
        raise EdgepruneError(f"unknown stage {unknown[0]!r}", f"choose from {', '.join(STAGE_ORDER)}")
    if "load" in skipped:
        raise EdgepruneError("the load stage cannot be skipped", "remove 'load' from --skip")
    return [s for s in STAGE_ORDER if (s in chosen or s == "load") and s not in skipped]


def stage_runner(name: str) -> Callable[[Artifact, StageContext], dict[str, Any]]:
    module_name, _, attr = STAGE_RUNNERS[name].partition(":")
    return getattr(importlib.import_module(module_name), attr)


def with_prerequisites(stages: Sequence[str], ctx: StageContext) -> list[str]:
    """``stages`` plus what they cannot run without: INT8 exports carry the quantize stage's levels,
    so an export that writes INT8 files brings the quantize stage along (quantisation has one
    entry point, and ``--stages export`` still gives INT8 files)."""
    chosen = list(stages)
    if "export" in chosen and "quantize" not in chosen:
        from edgeprune.export import ExportOptions

        if ctx.options_for("export", ExportOptions).int8:
            chosen.append("quantize")
    return [s for s in STAGE_ORDER if s in chosen]


def run_pipeline(
    source: Artifact | LoadOptions,
    ctx: StageContext,
    stages: Sequence[str] = STAGE_ORDER,
    headers: bool = True,
) -> tuple[Artifact, Report]:
    """Load ``source`` (or take the Artifact given) and run ``stages`` on it in order.

    Returns the final Artifact (its model, files and quantisation results) and the report.
    ``headers``: print each stage's name as it starts (``compress``; the single-stage commands,
    which print only their result, turn it off).
    """
    if "load" not in stages:
        raise EdgepruneError("the load stage cannot be skipped", "keep 'load' in the stage list")
    stages = with_prerequisites(stages, ctx)
    announce = ctx.progress if headers else None
    if announce:
        announce.print("[bold]load[/bold] ...")
    start = time.perf_counter()
    art = load(source, ctx.progress) if isinstance(source, LoadOptions) else source
    load_seconds = time.perf_counter() - start
    report = Report(meta={**art.meta, "target": ctx.target, "seed": ctx.seed, "stages": list(stages)})
    if MODEL_CHANGING.intersection(stages) - {"load"}:
        # The model as loaded, for dense-vs-compressed comparisons (the export stage exports it too).
        art.dense_model = copy.deepcopy(art.model)
    for name in stages:
        start = time.perf_counter()
        if announce and name != "load":
            announce.print(f"[bold]{name}[/bold] ...")
        stage_metrics = {} if name == "load" else dict(stage_runner(name)(art, ctx) or {})
        if name == "export":
            # The INT8 files must carry model.nnr's levels exactly: one check, a gate (export.verify).
            from edgeprune.export import verify_exported_levels

            verify_exported_levels(art, stage_metrics)
        seconds = load_seconds if name == "load" else time.perf_counter() - start
        record = StageRecord(name=name, seconds=seconds, metrics=stage_metrics)
        if name in MODEL_CHANGING:
            record.params = count_params(art.model)
            record.nonzero_params = count_params(art.model, nonzero=True)
            record.macs = count_macs(art.model, art.example_input)
            record.size_bytes = stage_metrics.pop("size_bytes", 4 * record.params)
            # The loaded model's test accuracy waits until the end when a copy is kept, so that a long prune
            # stage starts training at once (10k images through a ResNet-20 take 12 s on 2 cores).
            if art.data is not None and not (name == "load" and art.dense_model is not None):
                record.accuracy = evaluate(art.model, art.data.loader("test", 256))["accuracy"]
        else:
            record.size_bytes = stage_metrics.pop("size_bytes", None)
            record.accuracy = stage_metrics.pop("accuracy", None)
        # Relative names: the run writes into a work directory that is renamed into place at the end.
        record.files = {k: os.path.relpath(v, ctx.out_dir) for k, v in art.files.items() if k not in report.all_files()}
        report.add(record)
        ctx.log.info("%s done in %.2fs: %s", name, seconds, stage_metrics)
    loaded = report.stage("load")
    if loaded is not None and loaded.accuracy is None and art.data is not None and art.dense_model is not None:
        if art.dense_test_accuracy is None:  # the prune stage scores the same model
            art.dense_test_accuracy = evaluate(art.dense_model, art.data.loader("test", 256))["accuracy"]
        loaded.accuracy = art.dense_test_accuracy
    return art, report
