"""The pipeline's load stage: a checkpoint (or an embedded example) and its data as an Artifact.

Every command starts here - ``compress`` through :func:`edgeprune.pipeline.run_pipeline`, the
single-stage commands through the same call - so a model is read, checked against its data and
described in ``artifact.meta`` the same way everywhere. Checkpoints are loaded by
:mod:`edgeprune.checkpoint`, which refuses anything that could run code unless the user trusts it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from edgeprune.artifact import Artifact
from edgeprune.checkpoint import load_model, parse_input_shape
from edgeprune.data import DataBundle, load_data, parse_normalize
from edgeprune.errors import EdgepruneError
from edgeprune.progress import Progress


@dataclass
class LoadOptions:
    """Where the model and data come from: ``model`` (a checkpoint path) or ``example`` (an embedded
    example, trained on the spot from ``seed``), never both. ``arch`` is the user's own
    ``package.module:factory`` for a state_dict; ``input_shape`` is "1,3,32,32" or a tuple."""

    model: str | None = None
    example: str | None = None
    arch: str | None = None
    arch_kwargs: str | dict[str, Any] | None = None
    trust_checkpoint: bool = False
    input_shape: str | tuple[int, ...] | None = None
    data: str | None = None
    normalize: str | None = None
    seed: int = 0

    def check(self) -> None:
        """Refuse a source that is not exactly one of a model and an example (before any work)."""
        if self.example and self.model:
            raise EdgepruneError("give either MODEL or --example, not both", "drop one of them")
        if not (self.example or self.model):
            raise EdgepruneError("no model given", "pass a checkpoint path or --example lenet5")


def load(options: LoadOptions, progress: Progress | None = None) -> Artifact:
    """Build the Artifact a run starts from; refuse a model whose outputs do not fit the data."""
    options.check()
    if options.example:
        from edgeprune.examples import build_example

        art = build_example(options.example, seed=options.seed, data_spec=options.data, progress=progress)
    else:
        assert options.model is not None, "check() refuses a source without a model"
        art = _load_checkpoint(options.model, options)
    if art.data is not None:
        art.meta["data"] = art.data.name
        art.meta["test_samples"] = len(art.data.test)
        art.meta["preprocessing"] = art.data.preprocessing
    return art


def load_dataset(spec: str | None, seed: int, normalize: str | None = None) -> DataBundle | None:
    """The ``--data``/``--normalize`` dataset, or None when no data was given."""
    if spec is None:
        return None
    return load_data(spec, seed=seed, normalize=parse_normalize(normalize))


def _load_checkpoint(path: str, options: LoadOptions) -> Artifact:
    shape = options.input_shape
    loaded = load_model(
        path,
        arch=options.arch,
        arch_kwargs=options.arch_kwargs,
        trust=options.trust_checkpoint,
        input_shape=parse_input_shape(shape) if isinstance(shape, str) or shape is None else tuple(shape),
    )
    data = load_dataset(options.data, options.seed, options.normalize)
    if data is not None:
        data.check_fits(tuple(loaded.example_input.shape))
        with torch.no_grad():
            outputs = loaded.model(loaded.example_input)
        if isinstance(outputs, torch.Tensor) and outputs.ndim == 2:
            data.check_labels(int(outputs.shape[1]))
    return Artifact(model=loaded.model, example_input=loaded.example_input, data=data, meta=loaded.meta)
