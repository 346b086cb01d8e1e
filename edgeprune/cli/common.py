"""Options and helpers shared by every command (model loading, data, output, result printing)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from edgeprune.artifact import StageContext
from edgeprune.errors import OutputExistsError
from edgeprune.load import LoadOptions
from edgeprune.progress import Progress


class FiniteFloatRange(click.FloatRange):
    """A click float range that also refuses nan and +-inf (which every comparison lets through)."""

    def convert(self, value, param, ctx):  # noqa: ANN001, ANN201 - click's signature
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


def compose(*decorators: Callable) -> Callable:
    """Apply click option decorators in the order written."""

    def apply(f: Callable) -> Callable:
        for d in reversed(decorators):
            f = d(f)
        return f

    return apply


model_options = compose(
    click.option(
        "--arch",
        help="Architecture for a state_dict checkpoint, as package.module:factory "
        "(imports and runs that code - your own; never taken from a file).",
    ),
    click.option("--arch-kwargs", help="JSON keyword arguments for --arch, e.g. '{\"num_classes\": 10}'."),
    click.option(
        "--trust-checkpoint",
        is_flag=True,
        help="Allow pickled models and .pt2 files that fail inspection (loading them can run code).",
    ),
    click.option("--input-shape", help="Model input shape, e.g. 1,3,32,32 (needed for TorchScript and state_dicts)."),
)

data_options = compose(
    click.option(
        "--data",
        help="Dataset: 'digits' (built in), an .npz, or a directory (MNIST IDX, CIFAR pickle, ImageFolder).",
    ),
    click.option("--seed", type=int, default=0, show_default=True, help="Seed for data splits, training and sampling."),
    click.option(
        "--normalize",
        "data_normalize",
        metavar="MEAN,STD",
        help="Normalise inputs as the model was trained: (x - MEAN) / STD, per channel values separated by '/' "
        "(e.g. 0.1307,0.3081). Default: .npz as stored, images scaled to [0, 1].",
    ),
)

json_option = click.option("--json", "as_json", is_flag=True, help="Print the machine-readable result on stdout.")
force_option = click.option("--force", is_flag=True, help="Overwrite existing output.")


def load_options_from(kwargs: dict[str, Any], model_path: str | None, example: str | None = None) -> LoadOptions:
    """Pop the model options from ``kwargs`` (``--data`` and ``--seed`` stay: other stages read them too)."""
    return LoadOptions(
        model=model_path,
        example=example,
        arch=kwargs.pop("arch", None),
        arch_kwargs=kwargs.pop("arch_kwargs", None),
        trust_checkpoint=kwargs.pop("trust_checkpoint", False),
        input_shape=kwargs.pop("input_shape", None),
        data=kwargs.get("data"),
        normalize=kwargs.pop("data_normalize", None),
        seed=kwargs.get("seed", 0),
    )


def progress_for(ctx: click.Context) -> Progress:
    obj = ctx.find_root().obj or {}
    return Progress(enabled=not obj.get("quiet", False))


def make_context(
    ctx: click.Context, out_dir: Path, seed: int, options: dict[str, Any] | None = None, target: str = "host"
) -> StageContext:
    return StageContext(out_dir=out_dir, options=options or {}, target=target, seed=seed, progress=progress_for(ctx))


def refuse_existing_file(path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise OutputExistsError(f"{path} already exists", "pass --force to overwrite, or choose another -o")


def emit(ctx: click.Context, result: dict[str, Any], as_json: bool, summary: str) -> None:
    """Print ``result`` as JSON on stdout (--json) or a one-paragraph human summary."""
    if as_json:
        click.echo(json.dumps(result, indent=2, default=str))
    elif not (ctx.find_root().obj or {}).get("quiet"):
        click.echo(summary)
