"""``edgeprune prune`` and the prune options of ``edgeprune compress``.

Every option is declared once, on :class:`edgeprune.prune.pruner.PruneOptions`; ``edgeprune prune``
shows it under its plain name (``--epochs``), ``compress`` prefixes the generic ones
(``--prune-epochs``) so they cannot clash with other stages'.
"""

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
from edgeprune.prune.pruner import PruneOptions
from edgeprune.prune.train import is_main_process

STAGE = StageCli("prune", PruneOptions, prefix="prune-")
STAGES = (STAGE,)


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
@STAGE.command_options
@click.pass_context
def prune(ctx: click.Context, model: str, output: Path, force: bool, as_json: bool, **kwargs: Any) -> None:
    """Prune MODEL's channels with SeReNe (or the L1 baseline) while training on --data.

    \b
    Examples:
      edgeprune prune model.pt --arch edgeprune.models:lenet5 --arch-kwargs '{"input_size": 8}' \\
          --data digits -o pruned.pt2
      edgeprune prune model.pt2 --data /usr/share/datasets/fashion-mnist --method l1 --epochs 20 -o l1.pt2
      edgeprune prune model.pt2 --data digits --target-macs 0.2 --round-to 16 -o fast-on-avx512.pt2
      torchrun --nproc-per-node 2 -m edgeprune prune model.pt2 --data digits -o pruned.pt2
    """
    refuse_existing_file(output, force)
    options = STAGE.build(kwargs, COMMAND)
    source = load_options_from(kwargs, model)
    with scratch_directory(output) as work:
        stage_ctx = make_context(ctx, work, source.seed, {"prune": options})
        art, run = run_pipeline(source, stage_ctx, ["load", "prune"], headers=False)
        if not is_main_process():  # under torchrun only rank 0 writes
            return
        move_into_place(art.files["pruned"], output)
    result = {**run.result_of("prune"), "output": str(output)}
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
