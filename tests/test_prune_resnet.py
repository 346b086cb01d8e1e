"""Regression for 'nothing pruned on BatchNorm ResNets': a short real run on ResNet-20 (projection
shortcuts, so residual-stream channels span many convs and BNs) must remove channels within the
accuracy bound."""

from __future__ import annotations

import copy

import pytest
import torch

from edgeprune.metrics import evaluate
from edgeprune.models import resnet20
from edgeprune.prune.pruner import PruneOptions, prune_model
from edgeprune.prune.train import TrainConfig, fit


@pytest.fixture(scope="module")
def trained_resnet(digits):
    torch.manual_seed(0)
    model = resnet20(in_channels=1, shortcut="B")
    fit(model, digits, TrainConfig(epochs=4, lr=0.05, batch_size=64))
    return model


@pytest.mark.slow
def test_short_run_on_a_bn_resnet_removes_channels_within_the_bound(trained_resnet, digits):
    model = copy.deepcopy(trained_resnet)
    options = PruneOptions(method="serene", epochs=4, finetune_epochs=1, twt=0.1, max_accuracy_drop=1.0)
    result = prune_model(model, torch.zeros(1, 1, 8, 8), digits, options)
    # Before the group search, the first candidate (a residual-stream channel) blocked every cut: 0 removed.
    assert sum(row["removed"] for row in result.groups) > 0
    assert result.params_remaining < 1.0
    assert result.floor is not None and result.val_after["accuracy"] >= result.floor
    assert not result.rolled_back
    # the pruned channels really are off: zeroing them again changes nothing
    before = evaluate(model, digits.loader("val", 512))["accuracy"]
    assert before == result.val_after["accuracy"]
    # the residual stream (the group spanning the most layers) was not what blocked the search
    assert any(row["removed"] for row in result.groups if row["layers"].count(",") >= 2)
