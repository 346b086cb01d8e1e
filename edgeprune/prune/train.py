"""Supervised training loop shared by the example models, fine-tuning and the pruners.

``fit`` runs plain epochs of SGD/Adam with a cosine learning-rate schedule and reports the
validation loss/accuracy per epoch. ``step_hooks`` are called after every optimizer step (the
pruners use them to apply the SeReNe shrink and re-apply masks); ``epoch_hooks`` after every
epoch with the validation metrics.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from edgeprune.data import DataBundle
from edgeprune.metrics import evaluate
from edgeprune.progress import QUIET, Progress


@dataclass
class TrainConfig:
    epochs: int = 10
    lr: float = 0.05
    optimizer: str = "sgd"  # "sgd" (momentum 0.9, nesterov) or "adam"
    weight_decay: float = 5e-4
    batch_size: int = 64
    seed: int = 0


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}")


def fit(
    model: nn.Module,
    data: DataBundle,
    cfg: TrainConfig,
    progress: Progress = QUIET,
    step_hooks: tuple[Callable[[], None], ...] = (),
    epoch_hooks: tuple[Callable[[int, dict[str, float]], None], ...] = (),
) -> list[dict[str, float]]:
    """Train ``model`` in place; return per-epoch validation metrics."""
    torch.manual_seed(cfg.seed)
    optimizer = make_optimizer(model, cfg)
    steps = max(1, cfg.epochs * len(data.loader("train", cfg.batch_size)))
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    history = []
    for epoch in range(cfg.epochs):
        model.train()
        loader = data.loader("train", cfg.batch_size, shuffle=True, seed=cfg.seed + epoch)
        for x, y in progress.track(loader, f"epoch {epoch + 1}/{cfg.epochs}"):
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
            schedule.step()
            for hook in step_hooks:
                hook()
        metrics = evaluate(model, data.loader("val", 256))
        history.append(metrics)
        for hook in epoch_hooks:
            hook(epoch, metrics)
    model.eval()
    return history
