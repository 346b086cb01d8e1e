"""The SeReNe update: shrink the incoming weights of insensitive neurons, decoupled from the optimizer.

Per step (the order the paper's rule implies, and the one that does not crash):

1. forward with the sensitivity hooks attached;
2. :meth:`SereneRegularizer.observe` - sensitivity S at the pre-step weights w^t (all-reduced over
   data-parallel processes, so every process shrinks identically);
3. ``loss.backward()`` and ``optimizer.step()`` - momentum, Adam moments and weight decay see only
   the loss gradient;
4. :meth:`SereneRegularizer.shrink` - for every channel c of every group, all its producer entries
   w <- w - lambda * w * max(0, 1 - S_c), then the masks (weights and optimizer state).

Under a budget, the channels the next prune event will cut (``fading``) are shrunk by a further
factor ``1 - fade_rate`` per step, so that they fade out before the cut instead of vanishing at it
(the pruner sets both; see ``PruneOptions.fade_to`` for why and what it measured).

Biases are not shrunk by default (as in the reference): a channel's bias is what simplify folds
into the next layer once the channel's weights are gone, so shrinking it buys no removability.

Under a BatchNorm the shrink acts on the BN output gamma * x_hat + beta, where the sensitivity is
measured, and leaves the conv row alone: shrinking the conv row there is useless in training mode
(the normalisation undoes it) and harmful at evaluation - the running variance lags behind the
shrinking row, so the eval output of every shrunk channel collapses (on digits/ResNet-20 the
validation loss went from 0.08 to 2.0 within one epoch at lambda 0.03/step). Whether beta shrinks
with gamma follows the rule for biases above (``bn_shrink="auto"``, the default): the shift is
shrunk only in groups whose cut removes it (``--cut-biases``); elsewhere the cut keeps it and
simplify folds the constant it leaves, so the shrink moves the channel towards exactly what the cut
leaves - a constant - and shrinking beta too would only change the function for nothing. Measured
(BENCHMARKS.md, Pruning, eleventh round; seeds 0-2, same dense models): against shrinking gamma and
beta everywhere, +0.02 points on average over 20 comparisons - level, the seed spread is larger -
with Fashion-MNIST's larger test splits in favour (+0.09 and +0.05 at 8 and 6.5 % of a VGG-BN's
MACs, +0.84 at 25 % of a ResNet-20's) and the 24-epoch digits VGG-BN against (-0.33 over four
budgets). Chosen for the reason above, not for a measured gain.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from edgeprune.errors import EdgepruneError
from edgeprune.prune.masks import ChannelMasks
from edgeprune.prune.sensitivity import SensitivityConfig, SensitivityProbe
from edgeprune.prune.train import all_reduce_sum

BN_SHRINK = ("auto", "gamma_beta", "gamma", "conv_gamma")


class SereneRegularizer:
    """Owns the sensitivity probe; call :meth:`observe` before backward and :meth:`shrink` after the step."""

    def __init__(
        self,
        model: nn.Module,
        masks: ChannelMasks,
        lmbda: float,
        config: SensitivityConfig | None = None,
        shrink_biases: bool = False,
        optimizer: torch.optim.Optimizer | None = None,
        bn_shrink: str = "auto",
    ) -> None:
        self.masks = masks
        self.lmbda = lmbda
        self.shrink_biases = shrink_biases
        self.optimizer = optimizer
        if bn_shrink not in BN_SHRINK:
            raise EdgepruneError(f"unknown BatchNorm shrink {bn_shrink!r}", f"choose one of {', '.join(BN_SHRINK)}")
        self.targets = {g.id: self._targets(g, bn_shrink) for g in masks.groups}
        self.probe = SensitivityProbe(model, masks.groups, config)
        self.sensitivity: dict[Any, torch.Tensor] = {}
        # the channels the next budget cut will remove (group id -> bool mask) and their extra per-step
        # shrink (set by the pruner's schedule, see PruneOptions.fade_to)
        self.fading: dict[Any, torch.Tensor] = {}
        self.fade_rate = 0.0

    def _targets(self, group: Any, bn_shrink: str) -> list[Any]:
        """The slices the shrink scales: producer rows (and biases with ``shrink_biases``); under a
        BatchNorm, per ``bn_shrink``: its scale and shift (``gamma_beta``), its scale only (``gamma``),
        the shift too only where the cut removes it (``auto``, the default), or conv rows and scale
        (``conv_gamma``, the earliest behaviour)."""
        if bn_shrink == "auto":
            bn_shrink = "gamma_beta" if self.masks.cuts_biases[group.id] else "gamma"
        if group.scales and bn_shrink != "conv_gamma":
            modules = {s.name.rpartition(".")[0] for s in group.scales}
            # the BN shift only: the group's bias slices also list the running statistics
            shifts = [b for b in group.biases if b.name.endswith(".bias") and b.name.rpartition(".")[0] in modules]
            return [*group.scales, *(shifts if bn_shrink == "gamma_beta" else [])]
        return [*group.weights, *(group.biases if self.shrink_biases else [])]

    def __enter__(self) -> SereneRegularizer:
        self.probe.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.probe.__exit__(*exc)

    def observe(self, outputs: torch.Tensor) -> None:
        """Measure S on this batch (an ``output_hooks`` entry of :func:`edgeprune.prune.train.fit`)."""
        if self.lmbda == 0:
            self.probe.discard()
            return
        site_sums, count = self.probe.measure(outputs)
        names = sorted(site_sums)
        # One all-reduce for all sites and the sample count: sums over the global batch.
        device = site_sums[names[0]].device if names else torch.device("cpu")
        flat = torch.cat([site_sums[n] for n in names] + [torch.tensor([float(count)], device=device)])
        flat = all_reduce_sum(flat)
        sizes = [site_sums[n].numel() for n in names]
        parts = flat[:-1].split(sizes)
        self.sensitivity = self.probe.group_sensitivity(dict(zip(names, parts, strict=True)), int(flat[-1].item()))

    @torch.no_grad()
    def shrink(self) -> None:
        """Apply the decoupled shrink with the last observed S, then the masks (a ``step_hooks`` entry)."""
        if self.lmbda != 0 and self.sensitivity:
            for g in self.masks.groups:
                factor = 1.0 - self.lmbda * torch.relu(1.0 - self.sensitivity[g.id])
                if g.id in self.fading:
                    factor = torch.where(self.fading[g.id], factor * (1.0 - self.fade_rate), factor)
                for s in self.targets[g.id]:
                    s.tensor.mul_(s.channel_view(factor))
        self.masks.apply(self.optimizer)
