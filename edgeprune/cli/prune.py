"""``edgeprune prune`` and the prune options of ``edgeprune compress``.

Every option is declared once in ``_OPTIONS``; ``edgeprune prune`` shows it under its plain name
(``--epochs``), ``compress`` prefixes the generic ones (``--prune-epochs``) so they cannot clash
with other stages'. Unset options fall back to the defaults of
:class:`edgeprune.prune.pruner.PruneOptions`, which live in one place only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import click

from edgeprune.cli.common import (
    FiniteFloatRange,
    compose,
    data_options,
    emit,
    force_option,
    json_option,
    load_artifact,
    model_options,
    progress_for,
    refuse_existing_file,
)
from edgeprune.prune.pruner import METHODS, PruneOptions
from edgeprune.prune.schedule import SCORES
from edgeprune.prune.sensitivity import NORMALIZE, SPATIAL, VARIANTS
from edgeprune.prune.stage import prune_artifact
from edgeprune.prune.train import DEVICES, LR_SCHEDULES, OPTIMIZERS, is_main_process

_DEFAULTS = PruneOptions()

# (PruneOptions field, prefix with "prune-" in compress?, click keyword arguments)
_OPTIONS: list[tuple[str, bool, dict[str, Any]]] = [
    (
        "method",
        True,
        {
            "type": click.Choice(METHODS),
            "help": "serene (sensitivity-driven), l1 (magnitude + fine-tuning) or none.",
        },
    ),
    ("epochs", True, {"type": click.IntRange(1), "help": "Training epochs in all (pruning + fine-tuning)."}),
    ("lr", True, {"type": FiniteFloatRange(min=0, min_open=True), "help": "Learning rate."}),
    (
        "optimizer",
        True,
        {"type": click.Choice(OPTIMIZERS), "help": "Optimizer (SGD with Nesterov momentum, or Adam)."},
    ),
    ("lr_schedule", True, {"type": click.Choice(LR_SCHEDULES), "help": "Learning-rate schedule."}),
    (
        "batch_size",
        True,
        {"type": click.IntRange(1), "help": "Global batch size (split over torchrun processes)."},
    ),
    ("weight_decay", True, {"type": FiniteFloatRange(min=0), "help": "Optimizer weight decay."}),
    ("lmbda", False, {"type": FiniteFloatRange(min=0), "help": "SeReNe: shrink per epoch (0..1)."}),
    (
        "twt",
        False,
        {"type": FiniteFloatRange(min=0), "help": "Threshold search: allowed relative loss increase."},
    ),
    (
        "pwe",
        False,
        {"type": click.IntRange(0), "help": "Plateau patience in epochs before each pruning step."},
    ),
    ("sensitivity", True, {"type": click.Choice(VARIANTS), "help": "SeReNe sensitivity estimator."}),
    (
        "spatial",
        True,
        {"type": click.Choice(SPATIAL), "help": "Reduction of conv sensitivities over positions."},
    ),
    (
        "normalize",
        True,
        {
            "type": click.Choice(NORMALIZE),
            "help": "Per-group normalisation of sensitivities.",
            "flag": "sensitivity-norm",  # --normalize is the data's (MEAN,STD)
        },
    ),
    (
        "score",
        True,
        {
            "type": click.Choice(SCORES),
            "help": "Channel score of the threshold search [default: maxabs_relative for serene, l1_relative for l1].",
        },
    ),
    (
        "target_sparsity",
        False,
        {
            "type": FiniteFloatRange(0, 1, min_open=True, max_open=True),
            "help": "Remove this fraction of the parameters by the last pruning epoch (cuts beyond TWT if needed).",
        },
    ),
    (
        "target_macs",
        False,
        {
            "type": FiniteFloatRange(0, min_open=True),
            "help": "Prune to this fraction (< 1) or count (>= 1, e.g. 2e6) of MACs by the last pruning epoch.",
        },
    ),
    (
        "target_params",
        False,
        {
            "type": FiniteFloatRange(0, min_open=True),
            "help": "Prune to this fraction (< 1) or count (>= 1) of parameters by the last pruning epoch.",
        },
    ),
    ("warmup_epochs", True, {"type": click.IntRange(0), "help": "Epochs before pruning; sets the floor."}),
    ("device", True, {"type": click.Choice(DEVICES), "help": "Train on: auto (a GPU when present), cpu or cuda."}),
    (
        "max_accuracy_drop",
        True,
        {"type": FiniteFloatRange(min=0), "help": "Largest validation accuracy drop allowed, in points."},
    ),
    ("finetune_epochs", True, {"type": click.IntRange(0), "help": "Final epochs that only fine-tune."}),
    (
        "checkpoint",
        True,
        {
            "type": click.Path(dir_okay=False, path_type=Path),
            "help": "Write the training/pruning state here after every epoch.",
        },
    ),
    ("resume", True, {"is_flag": True, "default": None, "help": "Resume from the checkpoint if present."}),
]
_FIELDS = {f.name for f in fields(PruneOptions)}


def _decorators(prefixed: bool) -> Callable:
    options = []
    for name, generic, declared in _OPTIONS:
        kwargs = dict(declared)
        flag = "--" + ("prune-" if prefixed and generic else "") + kwargs.pop("flag", name.replace("_", "-"))
        default = getattr(_DEFAULTS, name)
        text = kwargs["help"]
        if default is not None and "default:" not in text:
            text = f"{text} [default: {default}]"
        options.append(click.option(flag, f"prune_{name}", **{**kwargs, "help": text}))
    return compose(*options)


compress_options = _decorators(prefixed=True)


def options_from(kwargs: dict[str, Any]) -> tuple[str, PruneOptions]:
    """Pop the prune options from ``kwargs``; return ("prune", PruneOptions) with unset ones defaulted."""
    given = {}
    for key in [k for k in kwargs if k.startswith("prune_")]:
        value = kwargs.pop(key)
        if value is not None and key[len("prune_") :] in _FIELDS:
            given[key[len("prune_") :]] = value
    return "prune", PruneOptions(**given)


@click.command("prune", context_settings={"show_default": True})
@click.argument("model", type=click.Path(dir_okay=False))
@model_options
@data_options
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("pruned.pt2"),
    help="Pruned model (a torch.export program).",
)
@force_option
@json_option
@_decorators(prefixed=False)
@click.pass_context
def prune(ctx: click.Context, model: str, output: Path, force: bool, as_json: bool, **kwargs: Any) -> None:
    """Prune MODEL's channels with SeReNe (or the L1 baseline) while training on --data.

    \b
    Examples:
      edgeprune prune model.pt --arch edgeprune.models:lenet5 --arch-kwargs '{"input_size": 8}' \\
          --data digits -o pruned.pt2
      edgeprune prune model.pt2 --data /usr/share/datasets/fashion-mnist --method l1 --epochs 20 -o l1.pt2
      torchrun --nproc-per-node 2 -m edgeprune prune model.pt2 --data digits -o pruned.pt2
    """
    refuse_existing_file(output, force)
    _, options = options_from(kwargs)
    options.seed = kwargs.get("seed", 0)
    art = load_artifact(kwargs, model)
    result = prune_artifact(art, options, output, progress_for(ctx))
    if not is_main_process():
        return
    result["output"] = str(output)
    summary = f"wrote {output} (method none: the model is unchanged)"
    if options.method != "none":
        summary = (
            f"wrote {output}: {result['channels_kept']}/{result['channels_total']} channels kept, "
            f"validation accuracy {100 * result['val_accuracy_before']:.2f} % -> "
            f"{100 * result['val_accuracy_after']:.2f} %"
            + (" (ROLLED BACK: the accuracy bound was not met, see the warning)" if result["rolled_back"] else "")
        )
    emit(ctx, result, as_json, summary)


COMMANDS: list[click.Command] = [prune]
