"""Measurements every stage reports: parameters, MACs, accuracy, loss, output differences."""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn


def count_params(model: nn.Module, nonzero: bool = False) -> int:
    """Number of parameters (or of non-zero parameters) of ``model``."""
    if nonzero:
        return int(sum(int(torch.count_nonzero(p)) for p in model.parameters()))
    return int(sum(p.numel() for p in model.parameters()))


_MAC_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.Linear)


@torch.no_grad()
def count_macs(model: nn.Module, example_input: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass on ``example_input`` (batch of one), from the
    convolutional and linear layers, which dominate the cost of the models edgeprune targets."""
    total = 0

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        per_sample = output[0] if output.dim() > 1 else output
        if isinstance(module, nn.Linear):
            total += module.in_features * per_sample.numel()
        elif isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d)):
            x = inputs[0][0]
            total += x.numel() * module.weight[0].numel()
        else:
            total += per_sample.numel() * module.weight[0].numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, _MAC_LAYERS)]
    try:
        was_training = model.training
        model.eval()
        model(example_input[:1])
        model.train(was_training)
    finally:
        for h in handles:
            h.remove()
    return int(total)


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


@torch.no_grad()
def max_abs_diff(reference: nn.Module, candidate: nn.Module, inputs: torch.Tensor, dtype=torch.float64) -> float:
    """max |reference(x) - candidate(x)| with both models evaluated in ``dtype`` on copies."""
    a = copy.deepcopy(reference).eval().to(dtype)
    b = copy.deepcopy(candidate).eval().to(dtype)
    x = inputs.to(dtype)
    return float((a(x) - b(x)).abs().max())
