"""Shared fixtures: small real data, trained example models, a CLI runner in a temp dir."""

from __future__ import annotations

import os

import pytest
import torch
from click.testing import CliRunner

from edgeprune.data import DataBundle, load_data

os.environ.setdefault("MPLBACKEND", "Agg")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def digits() -> DataBundle:
    """scikit-learn's digits split with seed 0 (1,258 train / 180 val / 359 test, 1x8x8), standardised
    as the embedded examples are (``load_data`` itself leaves images in [0, 1])."""
    return load_data("digits", seed=0, normalize="standardize")


@pytest.fixture(scope="session")
def trained_lenet5(digits):
    """The embedded example's LeNet-5, trained once per test session (~6 s)."""
    from edgeprune.examples import build_example

    return build_example("lenet5", seed=0)


@pytest.fixture(scope="session")
def example_normalize() -> str:
    """The ``--normalize`` value that feeds ``--data digits`` to the example models as they were trained
    (the examples standardise with the training split's statistics; the CLI passes data as given)."""
    x = load_data("digits", seed=0).train.tensors[0]
    return f"{float(x.mean()):.9g},{float(x.std(unbiased=False)) + 1e-6:.9g}"


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def cli():
    from edgeprune.cli import cli as group

    return group
