"""Options and helpers shared by every command (model loading, data, output, result printing)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import torch

from edgeprune.artifact import Artifact, StageContext
from edgeprune.checkpoint import load_model, parse_input_shape
from edgeprune.data import DataBundle, load_data, parse_normalize
from edgeprune.errors import OutputExistsError
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


def load_artifact(kwargs: dict[str, Any], model_path: str | None) -> Artifact:
    """Pop the model and data options from ``kwargs`` and build the pipeline's Artifact."""
    loaded = load_model(
        model_path,
        arch=kwargs.pop("arch", None),
        arch_kwargs=kwargs.pop("arch_kwargs", None),
        trust=kwargs.pop("trust_checkpoint", False),
        input_shape=parse_input_shape(kwargs.pop("input_shape", None)),
    )
    data = load_data_option(kwargs.get("data"), kwargs.get("seed", 0), kwargs.pop("data_normalize", None))
    if data is not None:
        data.check_fits(tuple(loaded.example_input.shape))
        with torch.no_grad():
            outputs = loaded.model(loaded.example_input)
        if isinstance(outputs, torch.Tensor) and outputs.ndim == 2:
            data.check_labels(int(outputs.shape[1]))
    return Artifact(model=loaded.model, example_input=loaded.example_input, data=data, meta=loaded.meta)


def load_data_option(spec: str | None, seed: int, normalize: str | None = None) -> DataBundle | None:
    if spec is None:
        return None
    return load_data(spec, seed=seed, normalize=parse_normalize(normalize))


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
