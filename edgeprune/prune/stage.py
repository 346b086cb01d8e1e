"""The ``prune`` pipeline stage (``edgeprune prune`` and ``compress`` both run it through the pipeline).

``run(art, ctx)`` prunes ``art.model`` in place with the method of the stage's
:class:`~edgeprune.prune.pruner.PruneOptions`, writes ``pruned.pt2`` into the output directory
(``art.files["pruned"]``) and returns, for the report: the channels kept per group (a table), the
pruning events (a table), test accuracy before, validation accuracy before/after, the estimated
parameter and MAC fractions that survive simplification, and the lambda/TWT/PWE and epochs used.
The pipeline itself measures parameters, MACs and test accuracy after the stage.

SeReNe and the L1 baseline train, so they need data: without it the stage refuses with a
one-line error instead of guessing (``--method none`` passes the model through untouched).
Under ``torchrun`` every process trains; only rank 0 writes files.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

from edgeprune.artifact import Artifact, StageContext
from edgeprune.checkpoint import save_model
from edgeprune.errors import DataError
from edgeprune.metrics import evaluate
from edgeprune.progress import QUIET, Progress
from edgeprune.prune.pruner import PruneOptions, prune_model
from edgeprune.prune.train import is_main_process
from edgeprune.simplify import SimplifyOptions

METHOD_NAMES = {"serene": "SeReNe", "l1": "L1-magnitude pruning"}


def prune_artifact(art: Artifact, options: PruneOptions, dest: Path, progress: Progress = QUIET) -> dict[str, Any]:
    """Prune ``art.model`` in place, save it to ``dest`` (rank 0) and return the stage's numbers."""
    if options.method == "none":
        return {"method": "none", **_save(art, dest)}
    if art.data is None:
        raise DataError(
            f"{METHOD_NAMES[options.method]} needs data to train and validate while pruning",
            "pass --data (e.g. --data digits or a dataset directory) or --method none",
        )
    # The starting model's test accuracy is only reported: score a copy once training is over, so that the
    # first training step is not kept waiting (10k Fashion-MNIST images through ResNet-20: 12 s on 2 cores).
    dense = art.dense_model if art.dense_model is not None else copy.deepcopy(art.model)
    result = prune_model(art.model, art.example_input, art.data, options, progress, starting_model=dense)
    test_before = evaluate(dense, art.data.loader("test", 512))["accuracy"]
    art.dense_test_accuracy = test_before
    out: dict[str, Any] = {
        "method": options.method,
        "lambda": options.lmbda if options.method == "serene" else 0.0,
        "twt": options.twt,
        "pwe": options.pwe,
        "sensitivity": options.sensitivity if options.method == "serene" else None,
        "cut_biases": options.cut_biases,
        "round_to": options.round_to,
        "padded_constants": options.padded_constants,  # what the MAC estimate assumed simplify will build
        "epochs": result.epochs,
        "finetune_epochs": result.finetune_epochs,
        "epochs_auto": options.epochs is None,
        "epochs_run": result.epochs_run,
        "prune_seconds": round(result.seconds, 2),
        "accuracy_before": test_before,
        "val_accuracy_before": result.val_before["accuracy"],
        "val_accuracy_after": result.val_after["accuracy"],
        "val_accuracy_reference": result.val_reference,
        "accuracy_floor": result.floor,
        "rolled_back": result.rolled_back,
        "restored_epoch": result.restored_epoch,
        "preprocessing": art.data.preprocessing,
        "channels_total": sum(row["channels"] for row in result.groups),
        "channels_kept": sum(row["kept"] for row in result.groups),
        "params_remaining_estimate": round(result.params_remaining, 4),
        "macs_remaining_estimate": round(result.macs_remaining, 4),
        "channels": result.groups,
        "events": [
            {
                "epoch": e.epoch,
                "threshold": e.threshold,
                "pruned": e.channels_pruned,
                "forced": e.channels_forced,
                "evaluations": e.evaluations,
                "kept": e.channels_kept,
                "val_loss": round(e.val_loss_after, 5),
                "bound": round(e.loss_bound, 5),
            }
            for e in result.events
            if e.channels_pruned
        ],
    }
    return {**out, **_save(art, dest)}


def _save(art: Artifact, dest: Path) -> dict[str, Any]:
    """Write the model (rank 0 only); the report's size entry."""
    if not is_main_process():
        return {}
    save_model(art.model, art.example_input, dest)
    art.files["pruned"] = dest
    return {"size_bytes": dest.stat().st_size}


def run(art: Artifact, ctx: StageContext) -> dict[str, Any]:
    """Pipeline entry point (see the module docstring)."""
    # a MAC budget pays for what simplify will build from the cut channels' constants
    simplify = ctx.options_for("simplify", SimplifyOptions)
    options = dataclasses.replace(
        ctx.options_for("prune", PruneOptions), seed=ctx.seed, padded_constants=simplify.padded_constants
    )
    return prune_artifact(art, options, ctx.out_dir / "pruned.pt2", ctx.progress or QUIET)
