"""Measurements every stage reports: parameters, MACs, accuracy, loss, output differences."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module, nonzero: bool = False) -> int:
    """Number of parameters (or of non-zero parameters) of ``model``."""
    if nonzero:
        return int(sum(int(torch.count_nonzero(p)) for p in model.parameters()))
    return int(sum(p.numel() for p in model.parameters()))


@torch.no_grad()
def count_macs(model: nn.Module, example_input: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass on one sample of ``example_input``.

    Counted on the aten ops actually executed (torch's FlopCounterMode: convolutions, matrix
    products), so it works the same for ordinary modules and for the fx GraphModules loaded from
    .pt2 files, which have no Conv/Linear modules to hook. FLOPs / 2 = MACs for these ops.
    """
    was_training = model.training
    model.eval()
    with FlopCounterMode(display=False) as counter:
        model(example_input[:1])
    model.train(was_training)
    return int(counter.get_total_flops() // 2)


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
    """Top-1 accuracy and mean cross-entropy of ``model`` over ``batches`` (model put in eval mode)."""
    was_training = model.training
    model.eval()
    correct, loss_sum, n = 0, 0.0, 0
    for x, y in batches:
        out = model(x)
        loss_sum += float(F.cross_entropy(out, y, reduction="sum"))
        correct += int((out.argmax(1) == y).sum())
        n += len(y)
    model.train(was_training)
    if n == 0:
        return {"accuracy": float("nan"), "loss": float("nan")}
    return {"accuracy": correct / n, "loss": loss_sum / n}
