"""When to prune and how much: the plateau detector (PWE) and the threshold search (TWT).

The plateau detector follows LOBSTER/SeReNe: after every epoch it is given the validation loss;
"improvement" means loss < best * (1 + rel_tol) (1 % by default), and a loss strictly below the best
also snapshots the weights. When the loss has not improved for ``patience`` (PWE) epochs - with
PWE = 0, after every epoch - it restores the best snapshot, resets itself and fires. The
regulariser makes the loss creep up, so "fires" reads "the shrink has cost more than 1 % for PWE
epochs: time to cut what it has shrunk".

The threshold search (TWT) then removes channels while the validation loss stays
<= (1 + TWT) * current loss (and the accuracy floor holds). Channels, not parameters, are
removed, so everything pruned is removable by simplify. Candidates are ranked by score (by
default the largest |w| of the channel relative to its group) per cost (the MACs or parameters -
what the budget counts, both without one - the channel carries in every layer it spans), and a
greedy walk with galloping and bisection accepts the longest acceptable runs, closing a group
whose next channel breaks the bound and moving on with the others (see :func:`threshold_search`);
the number of evaluations is capped by ``max_evaluations`` (when not given, sized by the candidate
count: :func:`default_evaluations`). Only measured states are ever
accepted, so the bound holds even where the loss is not monotone. At least one channel of every
group is always kept.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from edgeprune.errors import EdgepruneError
from edgeprune.prune.masks import ChannelMasks

SCORES = ("maxabs", "maxabs_relative", "l1", "l1_relative")


class PlateauDetector:
    """Validation-loss plateau detector with patience PWE that restores the best weights when it fires."""

    def __init__(self, patience: int, rel_tol: float = 0.01) -> None:
        self.patience = patience
        self.rel_tol = rel_tol
        self.reset()

    def reset(self) -> None:
        self.best = math.inf
        self.bad_epochs = 0
        self.snapshot: dict[str, torch.Tensor] | None = None

    def update(self, loss: float, model: nn.Module) -> bool:
        """Feed one epoch's validation loss; True when the plateau fired (weights then restored)."""
        if not math.isfinite(loss):
            self.bad_epochs = self.patience
        elif loss < self.best * (1 + self.rel_tol):
            self.bad_epochs = 0
            if loss < self.best:
                self.best = loss
                self.snapshot = copy.deepcopy(model.state_dict())
        else:
            self.bad_epochs += 1
        if self.bad_epochs < self.patience:
            return False
        if self.snapshot is not None:
            model.load_state_dict(self.snapshot)
        self.reset()
        return True

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad_epochs": self.bad_epochs, "snapshot": self.snapshot}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.bad_epochs, self.snapshot = state["best"], state["bad_epochs"], state["snapshot"]


@dataclass
class ThresholdResult:
    threshold: float
    loss_before: float
    loss_after: float
    bound: float
    evaluations: int
    pruned: dict[Any, torch.Tensor] = field(default_factory=dict)

    @property
    def channels(self) -> int:
        return sum(int(v.numel()) for v in self.pruned.values())


Cut = tuple[float, Any, tuple[int, ...]]
"""One unit the searches may remove: (score, group id, channels). One channel, or with ``round_to`` > 1
the channels that take the group's width down to the next multiple of it (``score``: their mean)."""


def channel_candidates(masks: ChannelMasks, score: str, round_to: int = 1) -> list[Cut]:
    """The cuts that may remove live channels, ascending by score; one channel each by default.

    ``score`` is ``maxabs`` (the largest |w| of the channel's producer entries) or ``l1`` (their
    summed |w|), compared across groups as they are or, with the ``_relative`` suffix, divided by
    the mean over the group's live channels so that layers with different fan-in and weight scale
    compete fairly. The strongest live channel of each width segment (:meth:`GroupTensors.width_segments`:
    the whole group, unless it spans layers of different widths) is never a candidate, so no layer is
    ever emptied - a zero-padded residual stream's stage-1 layers included.

    ``round_to`` > 1 keeps every group's width a multiple of it: a group's weakest channels are
    bundled, weakest first, into cuts that each end on the next lower multiple, and its strongest
    ``round_to`` channels never go (a group no wider than that is left whole). Why: CPU kernels
    compute channels in SIMD blocks - onnxruntime's NCHWc convolutions in blocks of 16 floats with
    AVX-512, 8 with AVX2 - so a conv with 12 or 9 output channels costs what one with 16 costs, and
    MACs removed inside a block never show up as latency (BENCHMARKS.md, Pruning, widths rounded to
    the SIMD block). Torch-Pruning calls the same option ``round_to``. A group that spans layers of
    different widths - a residual stream that zero-pads into the wider stages, ResNet's shortcut
    option A - is rounded per width segment, so its narrower layers keep multiples too.
    """
    if score not in SCORES:
        raise EdgepruneError(f"unknown channel score {score!r}", f"choose one of {', '.join(SCORES)}")
    out: list[Cut] = []
    for g in masks.groups:
        keep = masks.keep[g.id]
        if int(keep.sum()) <= 1:
            continue
        values = g.channel_scores(score.removesuffix("_relative")).double()
        if score.endswith("_relative"):
            values = values / values[keep].mean().clamp_min(1e-30)
        for part in g.width_segments():
            live = part[keep[part]]
            if len(live) <= round_to:
                continue
            # weakest first; at equal scores the lower index is kept (as argmax keeps the first maximum)
            ranked = sorted(((float(values[c]), int(c)) for c in live), key=lambda vc: (vc[0], -vc[1]))
            ranked = ranked[: len(live) - round_to]
            first = (len(live) - 1) % round_to + 1  # down to the multiple below the current width
            while ranked:
                block, ranked, first = ranked[:first], ranked[first:], round_to
                out.append((sum(v for v, _ in block) / len(block), g.id, tuple(c for _, c in block)))
    out.sort(key=lambda t: (t[0], str(t[1]), t[2]))
    return out


def _by_group(cuts: list[Cut]) -> dict[Any, list[int]]:
    by_group: dict[Any, list[int]] = {}
    for _, gid, channels in cuts:
        by_group.setdefault(gid, []).extend(channels)
    return by_group


def default_evaluations(candidates: int) -> int:
    """An evaluation cap for ``candidates`` channels: two full rounds of the walk, at least 16.

    One round gallops to the first run that breaks the bound and bisects back, about 2 log2(n)
    evaluations over n candidates, so a fixed cap of 16 cannot finish even one round on a layer 500
    wide; two let the walk close the first blocker's group and go on with the others.
    """
    return max(16, 4 * math.ceil(math.log2(max(candidates, 2))))


def threshold_search(
    masks: ChannelMasks,
    measure: Callable[[], dict[str, float]],
    twt: float,
    score: str = "maxabs",
    max_evaluations: int | None = None,
    min_accuracy: float | None = None,
    cost: dict[Any, float] | None = None,
    round_to: int = 1,
) -> ThresholdResult:
    """Find and mark (in ``masks``) a large set of low-score channels within the loss bound.

    ``measure()`` returns the validation {"loss", "accuracy"} of the model as it currently is;
    candidate prunings are tried in place and undone. With ``min_accuracy`` a candidate must also
    keep the validation accuracy at or above it - or, when the regulariser has already pushed the
    model below it, at or above the current accuracy (pruning may then remove only what costs
    nothing; fine-tuning is what recovers the rest). Weights are left as found: the caller applies
    the masks (to weights and optimizer state) afterwards.

    The search is a greedy walk over the candidates ranked by score per cost (``cost``: what one
    channel of a group carries over every layer it spans, see ``CostModel.channel_cost``; without it
    every channel costs 1). Each round gallops (1, 2, 4, ... more candidates on top of what is already
    accepted) and bisects to the longest acceptable run; the candidate that broke the bound is
    the "blocker": its group is closed (its remaining channels score higher still) and the walk
    moves on with the other groups. One channel that hurts - say, of a residual stream shared by
    eight layers - therefore costs one round instead of stopping the search, which is what the
    earlier "first k of one global list" search did. Only measured states are ever accepted.
    """
    base = measure()
    bound = base["loss"] * (1 + twt)
    if min_accuracy is not None:
        min_accuracy = min(min_accuracy, base["accuracy"])
    candidates = channel_candidates(masks, score, round_to)
    if max_evaluations is None:
        max_evaluations = default_evaluations(len(candidates))
    if cost is not None:
        candidates.sort(key=lambda t: (t[0] / max(cost.get(t[1], 1.0), 1e-12), str(t[1]), t[2]))
    backups = {s.name: s.tensor.detach().clone() for g in masks.groups for s in masks.zeroed(g)}
    tensors = {s.name: s.tensor for g in masks.groups for s in masks.zeroed(g)}
    groups = {g.id: g for g in masks.groups}
    evaluations = 0
    accepted: list[Cut] = []
    loss_after = base["loss"]

    def trial(extra: list[Cut]) -> tuple[bool, float]:
        nonlocal evaluations
        for gid, channels in _by_group([*accepted, *extra]).items():
            for s in masks.zeroed(groups[gid]):
                s.zero_channels(torch.tensor(channels))
        result = measure()
        with torch.no_grad():
            for name, saved in backups.items():
                tensors[name].copy_(saved)
        evaluations += 1
        ok = result["loss"] <= bound and (min_accuracy is None or result["accuracy"] >= min_accuracy)
        return ok, result["loss"]

    remaining = candidates
    while remaining and evaluations < max_evaluations:
        # Gallop: the longest prefix of `remaining` known to be acceptable (lo) and one known not (hi).
        lo, hi, lo_loss, step = 0, None, loss_after, 1
        while evaluations < max_evaluations:
            k = min(step, len(remaining))
            ok, loss = trial(remaining[:k])
            if not ok:
                hi = k
                break
            lo, lo_loss = k, loss
            if k == len(remaining):
                break
            step *= 2
        while hi is not None and hi - lo > 1 and evaluations < max_evaluations:
            mid = (lo + hi) // 2
            ok, loss = trial(remaining[:mid])
            if ok:
                lo, lo_loss = mid, loss
            else:
                hi = mid
        accepted += remaining[:lo]
        loss_after = lo_loss
        if hi is None or hi - lo > 1:  # everything fitted, or out of evaluations mid-bisection
            break
        blocked = remaining[lo][1]
        remaining = [t for t in remaining[lo + 1 :] if t[1] != blocked]
    pruned = _by_group(accepted)
    for gid, channels in pruned.items():
        masks.prune(gid, torch.tensor(channels))
    return ThresholdResult(
        threshold=max((t[0] for t in accepted), default=0.0),
        loss_before=base["loss"],
        loss_after=loss_after,
        bound=bound,
        evaluations=evaluations,
        pruned={k: torch.tensor(v) for k, v in pruned.items()},
    )


def uniform_width_order(masks: ChannelMasks, candidates: list[Cut]) -> list[Cut]:
    """``candidates`` ordered so that every prefix levels the groups towards one kept fraction of their
    original width: the next cut always comes from the group that is widest relative to its original
    size (weakest channel first inside a group, the weaker channel first at equal widths). A group the
    TWT search has already narrowed below that level is left alone until the others reach it.

    Why for the cuts a budget forces: a global ranking can empty whole layers down to their last
    channel, which fine-tuning cannot recover (digits/ResNet-20 at 25 % of the parameters: 90.8 % test
    accuracy globally ranked). Removing the same fraction of what each group had *left* (the previous
    order) still compounded TWT's cuts: the first convs, which TWT narrows most, ended at 4-8 of 32
    channels while the fc layer kept 29-36 %. Levelling the widths - the uniform ratio magnitude pruners
    use, reached from wherever TWT left the groups - scored +0.33 and +0.32 points on Fashion-MNIST
    14x14 / VGG-BN at 8 and 6.5 % of the MACs (3 seeds); digits / MobileNetV2 lost 0.56, the one part
    where it looked worse (BENCHMARKS.md, Pruning, ninth round). Why one level and not one weighted by
    what a channel costs (under a MAC budget a channel of a 14x14 layer carries up to 8x the MACs of one at
    3x3): kept fractions proportional to that cost to the power -0.5, -0.25, 0.25 or 0.5 all lost 0.2-0.9
    points at equal MACs on the same part at 5 and 4 % (5 seeds; sixteenth round)."""
    kept = {g.id: masks.kept(g.id) for g in masks.groups}
    width = {g.id: max(g.size, 1) for g in masks.groups}
    keyed: list[tuple[float, Cut]] = []
    for cut in sorted(candidates, key=lambda t: (t[0], str(t[1]), t[2])):  # weakest first inside a group
        gid = cut[1]
        keyed.append((-kept[gid] / width[gid], cut))  # the group's width before this cut: widest first
        kept[gid] -= len(cut[2])
    keyed.sort(key=lambda kc: (kc[0], kc[1][0], str(kc[1][1]), kc[1][2]))
    return [c for _, c in keyed]


def budget_cut(
    masks: ChannelMasks,
    candidates: list[Cut],
    within_budget: Callable[[ChannelMasks], bool],
) -> int:
    """Mark the shortest prefix of ``candidates`` (best-to-cut first) that makes ``within_budget``
    true, found by bisection over the prefix length; returns how many channels it cut.

    Why: a budget (``--target-params`` / ``--target-macs``) is a promise about the result, and the TWT
    search alone only cuts what costs nothing before fine-tuning - in a short run, far less than a
    user asks for. The prune events therefore follow a schedule towards the budget and cut the
    next-ranked channels where TWT stops short, leaving the loss to the fine-tuning that follows
    (what magnitude pruners do at every step). All candidates still leave one channel per width segment
    (``round_to`` channels with that option; see :func:`channel_candidates`).
    """
    if not candidates or within_budget(masks):
        return 0
    saved = masks.state_dict()

    def cut(k: int) -> None:
        masks.load_state_dict(saved)
        for gid, channels in _by_group(candidates[:k]).items():
            masks.prune(gid, torch.tensor(channels))

    def channels_in(k: int) -> int:
        return sum(len(channels) for _, _, channels in candidates[:k])

    lo, hi = 0, len(candidates)  # within_budget fails at lo; at hi it may still fail (all cut)
    cut(hi)
    if not within_budget(masks):
        return channels_in(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        cut(mid)
        lo, hi = (lo, mid) if within_budget(masks) else (mid, hi)
    cut(hi)
    return channels_in(hi)
