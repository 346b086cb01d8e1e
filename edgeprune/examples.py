"""Embedded examples: a small real model trained on real data that ships with a package.

``edgeprune compress --example lenet5`` needs no files: it trains a Caffe-style LeNet-5 on
scikit-learn's 8x8 digits (1,797 real handwritten digits; ~10 s on 2 cores) and hands it to the
pipeline, so every number in the resulting report (test accuracy on held-out digits, sizes,
latencies) is real.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from edgeprune.artifact import Artifact
from edgeprune.data import load_data
from edgeprune.metrics import evaluate
from edgeprune.models import LeNet5, LeNet300
from edgeprune.progress import QUIET, Progress
from edgeprune.prune import TrainConfig, fit


@dataclass(frozen=True)
class Example:
    factory: Callable[[], nn.Module]
    data: str
    train: TrainConfig
    description: str


EXAMPLES: dict[str, Example] = {
    "lenet5": Example(
        factory=lambda: LeNet5(in_channels=1, num_classes=10, input_size=8),
        data="digits",
        train=TrainConfig(epochs=15, lr=0.05, batch_size=64),
        description="LeNet-5 (20/50 conv, 500 fc) on scikit-learn digits, 8x8 grey",
    ),
    "lenet300": Example(
        factory=lambda: LeNet300(in_features=64, num_classes=10),
        data="digits",
        train=TrainConfig(epochs=15, lr=0.05, batch_size=64),
        description="LeNet-300-100 on scikit-learn digits",
    ),
}


def build_example(name: str, seed: int = 0, data_spec: str | None = None, progress: Progress | None = None) -> Artifact:
    """Train example ``name`` (deterministically from ``seed``) and wrap it as an Artifact."""
    example = EXAMPLES[name]
    # The examples were trained on standardised inputs and keep that normalisation.
    data = load_data(data_spec or example.data, seed=seed, normalize="standardize")
    torch.manual_seed(seed)
    model = example.factory()
    cfg = TrainConfig(**{**example.train.__dict__, "seed": seed})
    fit(model, data, cfg, progress or QUIET)
    example_input = data.test.tensors[0][:1].clone()
    data.check_fits(tuple(example_input.shape))
    baseline = evaluate(model, data.loader("test", 256))
    meta = {
        "example": name,
        "description": example.description,
        "input_shape": list(example_input.shape),
        "trained_test_accuracy": baseline["accuracy"],
    }
    return Artifact(model=model.eval(), example_input=example_input, data=data, meta=meta)
