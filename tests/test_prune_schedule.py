"""The plateau detector (PWE) and the group-level threshold search (TWT)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from edgeprune import models
from edgeprune.errors import EdgepruneError
from edgeprune.graph import analyze
from edgeprune.metrics import evaluate
from edgeprune.prune.masks import ChannelMasks
from edgeprune.prune.schedule import (
    PlateauDetector,
    budget_cut,
    channel_candidates,
    default_evaluations,
    threshold_search,
    uniform_width_order,
)
from edgeprune.simplify import simplify


def _weight(model: nn.Linear, value: float) -> None:
    with torch.no_grad():
        model.weight.fill_(value)


def test_plateau_fires_after_patience_epochs_without_improvement_and_restores_the_best():
    model = nn.Linear(1, 1)
    detector = PlateauDetector(patience=2)
    steps = [(1.0, 1.0, False), (2.0, 1.005, False), (3.0, 1.2, False), (4.0, 1.3, True)]
    for value, loss, fires in steps:
        _weight(model, value)
        assert detector.update(loss, model) is fires
    assert model.weight.item() == 1.0  # the best epoch (1.005 was within 1 % but not better)
    assert detector.best == math.inf and detector.snapshot is None  # reset after firing


def test_plateau_counter_resets_on_improvement_within_tolerance():
    model = nn.Linear(1, 1)
    detector = PlateauDetector(patience=2)
    fired = [detector.update(loss, model) for loss in (1.0, 1.2, 1.009, 1.2, 1.009)]
    assert fired == [False, False, False, False, False]


def test_plateau_with_zero_patience_fires_every_epoch_and_nan_fires_at_once():
    model = nn.Linear(1, 1)
    assert all(PlateauDetector(0).update(loss, model) for loss in (1.0, 0.5, 2.0))
    detector = PlateauDetector(patience=5)
    _weight(model, 1.0)
    detector.update(1.0, model)
    _weight(model, 9.0)
    assert detector.update(float("nan"), model)
    assert model.weight.item() == 1.0


@pytest.fixture
def lenet(trained_lenet5):
    model = copy.deepcopy(trained_lenet5.model)
    masks = ChannelMasks(model, analyze(model, trained_lenet5.example_input).prunable_groups())
    return model, masks, trained_lenet5.data


def _dead_count(masks: ChannelMasks) -> int:
    return sum(int((g.channel_scores() == 0).sum()) for g in masks.groups)


def test_search_finds_the_largest_count_within_the_bound(lenet):
    """With loss = 1 + 0.01 * (#zeroed channels), TWT = 5 % admits exactly five channels."""
    _, masks, _ = lenet
    candidates = channel_candidates(masks, "l1_relative")
    expected = candidates[:5]
    result = threshold_search(
        masks, lambda: {"loss": 1 + 0.01 * _dead_count(masks), "accuracy": 1.0}, 0.05, "l1_relative"
    )
    assert result.channels == 5 and result.loss_after == pytest.approx(1.05) and result.bound == pytest.approx(1.05)
    # galloping + bisection to the blocker, then one failed try per other group
    assert result.evaluations <= 2 * math.ceil(math.log2(masks.total_channels())) + len(masks.groups)
    assert sorted((gid, int(c)) for gid, cs in result.pruned.items() for c in cs) == sorted(
        (gid, c) for _, gid, (c,) in expected
    )
    assert _dead_count(masks) == 0  # the search leaves the weights as it found them
    masks.apply()
    assert _dead_count(masks) == 5
    assert result.threshold == candidates[4][0]  # the largest score accepted


def test_one_channel_that_hurts_does_not_block_the_other_groups(lenet):
    """Root cause of 'nothing pruned' on ResNet-20: the first-ranked channel (a residual-stream
    channel) alone broke the bound and the old search stopped there. The search must skip its
    group and keep pruning the others."""
    _, masks, _ = lenet
    candidates = channel_candidates(masks, "l1_relative")
    _, blocker_group, (blocker,) = candidates[0]
    group = next(g for g in masks.groups if g.id == blocker_group)

    def measure():
        hurt = bool((group.channel_scores("l1")[blocker] == 0).item())
        return {"loss": 10.0 if hurt else 1 + 5e-5 * _dead_count(masks), "accuracy": 1.0}

    result = threshold_search(masks, measure, 0.05, "l1_relative", max_evaluations=64)
    others = [g for g in masks.groups if g.id != blocker_group]
    assert blocker_group not in result.pruned  # its group closed at the blocker ...
    # ... and every other group loses all but its strongest channel (5e-5 per channel fits 5 %)
    assert all(masks.kept(g.id) == 1 for g in others)


def test_a_larger_evaluation_cap_walks_past_a_blocker_deep_in_the_ranking(trained_lenet5):
    """What ``--prune-search-evaluations`` buys: with a blocker ranked ~100th, 16 evaluations run out while
    bisecting to it and nothing after it is pruned; 64 - or the cap sized by the candidate count, two
    rounds of the walk - close the blocker's group and take every other group's free channels, as an
    unlimited search does."""
    model = copy.deepcopy(trained_lenet5.model)
    groups = analyze(model, trained_lenet5.example_input).prunable_groups()
    candidates = channel_candidates(ChannelMasks(model, groups), "l1_relative")
    _, blocker_group, (blocker,) = candidates[100]

    def search(cap: int | None) -> tuple[dict, int]:
        masks = ChannelMasks(model, groups)
        group = next(g for g in masks.groups if g.id == blocker_group)

        def measure():
            hurt = bool((group.channel_scores("l1")[blocker] == 0).item())
            return {"loss": 10.0 if hurt else 1.0, "accuracy": 1.0}

        result = threshold_search(masks, measure, 0.05, "l1_relative", max_evaluations=cap)
        return {gid: sorted(c.tolist()) for gid, c in result.pruned.items()}, result.evaluations

    unlimited, needed = search(10_000)
    assert 16 < needed <= 64 and blocker not in unlimited[blocker_group]
    assert search(64)[0] == unlimited
    assert default_evaluations(len(candidates)) == 4 * math.ceil(math.log2(len(candidates))) >= needed
    assert search(None)[0] == unlimited
    short, spent = search(16)
    assert spent == 16 and sum(map(len, short.values())) < sum(map(len, unlimited.values()))


def test_cost_ranks_channels_that_carry_more_first(lenet):
    """Equal scores: the channel of the costlier group goes first (score per cost)."""
    _, masks, _ = lenet
    ids = [g.id for g in masks.groups]
    cost = {gid: float(i + 1) for i, gid in enumerate(ids)}

    def measure():  # admits exactly one zeroed channel
        return {"loss": 1.0 + 0.1 * _dead_count(masks), "accuracy": 1.0}

    with torch.no_grad():
        for g in masks.groups:
            for s in g.producers:
                s.tensor.fill_(1.0)
    result = threshold_search(masks, measure, 0.1, "l1_relative", max_evaluations=8, cost=cost)
    assert list(result.pruned) == [ids[-1]] and result.channels == 1


def test_search_respects_an_accuracy_floor_too(lenet):
    _, masks, _ = lenet

    def measure():
        dead = _dead_count(masks)
        return {"loss": 1.0, "accuracy": 1 - 0.01 * dead}

    result = threshold_search(masks, measure, twt=1.0, min_accuracy=0.975)
    assert result.channels == 2


def test_search_always_keeps_one_channel_per_group(lenet):
    _, masks, _ = lenet
    threshold_search(masks, lambda: {"loss": 1.0, "accuracy": 1.0}, twt=0.0)
    assert [masks.kept(g.id) for g in masks.groups] == [1, 1, 1]


def test_real_search_keeps_validation_loss_within_twt(lenet):
    model, masks, data = lenet

    def measure():
        return evaluate(model, data.loader("val", 512))

    before = measure()["loss"]
    result = threshold_search(masks, measure, twt=0.02, score="maxabs_relative")
    masks.apply()
    after = measure()["loss"]
    assert result.channels > 0
    assert after == pytest.approx(result.loss_after) and after <= 1.02 * before + 1e-9


def test_unknown_score_is_refused(lenet):
    with pytest.raises(EdgepruneError, match="unknown channel score 'l2'"):
        channel_candidates(lenet[1], "l2")


def test_budget_cut_takes_the_shortest_ranked_prefix_that_meets_the_budget(lenet):
    _, masks, _ = lenet
    candidates = channel_candidates(masks, "maxabs_relative")
    total = masks.total_channels()
    cut = budget_cut(masks, candidates, lambda m: m.total_kept() <= total - 25)
    assert cut == 25 and masks.total_kept() == total - 25
    dead = {(str(g), int(c)) for g in masks.keep for c in torch.nonzero(~masks.keep[g]).flatten()}
    assert dead == {(str(gid), c) for _, gid, (c,) in candidates[:25]}  # exactly the best-ranked 25
    assert budget_cut(masks, channel_candidates(masks, "maxabs_relative"), lambda m: True) == 0
    # an unreachable budget cuts every candidate and still keeps one channel per group
    budget_cut(masks, channel_candidates(masks, "maxabs_relative"), lambda m: False)
    assert all(masks.kept(g.id) == 1 for g in masks.groups)


def test_uniform_width_order_levels_the_groups_before_it_narrows_one_further(lenet):
    _, masks, _ = lenet
    narrowed = masks.groups[0]  # a group TWT has already cut to half its width
    masks.prune(narrowed.id, torch.arange(narrowed.size // 2))
    candidates = channel_candidates(masks, "maxabs_relative")
    order = uniform_width_order(masks, candidates)
    assert sorted(order) == sorted(candidates)
    for gid in {g for _, g, _ in candidates}:  # weakest first inside each group
        scores = [score for score, g, _ in order if g == gid]
        assert scores == sorted(scores)
    kept = {g.id: masks.kept(g.id) for g in masks.groups}
    left = {gid: sum(1 for _, g, _ in candidates if g == gid) for gid in kept}
    sizes = {g.id: g.size for g in masks.groups}
    for _, gid, _ in order:  # every cut comes from a widest group (relative to its size) that can still lose one
        widest = max(kept[g] / sizes[g] for g in kept if left[g])
        assert kept[gid] / sizes[gid] == pytest.approx(widest)
        kept[gid] -= 1
        left[gid] -= 1
    first_narrowed = next(i for i, (_, g, _) in enumerate(order) if g == narrowed.id)
    assert first_narrowed > 0 and all(g != narrowed.id for _, g, _ in order[:first_narrowed])


def test_round_to_cuts_whole_blocks_that_keep_every_width_a_multiple(lenet):
    """``round_to`` = 4 on LeNet-5 (6, 16 and 120 channels): a group's first cut takes it to the
    multiple below its width, every further cut removes four channels, weakest first, its strongest
    four never go - so every prefix of the (budget-ordered) list leaves each width a multiple of 4 or
    whole, and a budget that cannot be met stops at four channels per group."""
    _, masks, _ = lenet
    sizes = {g.id: g.size for g in masks.groups}
    cuts = channel_candidates(masks, "maxabs_relative", round_to=4)
    singles = channel_candidates(masks, "maxabs_relative")
    for gid, size in sizes.items():
        blocks = [channels for _, g, channels in sorted(cuts, key=lambda t: t[0]) if g == gid]
        assert [len(b) for b in blocks] == [(size - 1) % 4 + 1] + [4] * ((size - 1) // 4 - 1)
        weakest = [c for _, g, (c,) in singles if g == gid]  # ascending by score
        assert [c for b in blocks for c in b] == weakest[: size - 4]
    order = uniform_width_order(masks, cuts)
    kept = dict(sizes)
    for _, gid, channels in order:
        kept[gid] -= len(channels)
        assert all(k % 4 == 0 or k == sizes[g] for g, k in kept.items())
    assert budget_cut(masks, order, lambda m: False) == sum(sizes.values()) - 4 * len(sizes)
    assert all(masks.kept(g.id) == 4 for g in masks.groups)


@pytest.mark.parametrize("round_to", [1, 8])
def test_no_layer_of_a_zero_padded_stream_is_emptied_and_each_keeps_multiples(round_to):
    """ResNet-20 with option-A shortcuts: the residual stream is one 64-channel group whose stage-1
    layers hold 16 of its channels and stage-2 layers 32. Cut per width segment, every prefix of the
    budget order keeps every layer's width a multiple of ``round_to``, and cutting everything leaves
    ``round_to`` channels per segment - no emptied stage-1 layer (cut as one group, the stream could
    lose all 16 of them) - and a simplified model with those widths."""
    model = models.resnet20(shortcut="A").eval()
    x = torch.randn(1, 3, 32, 32)
    masks = ChannelMasks(model, analyze(model, x).prunable_groups())
    stream = next(g for g in masks.groups if len(g.width_segments()) > 1)
    assert sorted(len(s) for s in stream.width_segments()) == [16, 16, 32]

    def layer_widths() -> list[int]:
        keep = masks.keep
        return [int(keep[g.id][s.channel_of.unique()].sum()) for g in masks.groups for s in g.producers]

    for _, gid, channels in uniform_width_order(masks, channel_candidates(masks, "maxabs_relative", round_to)):
        masks.prune(gid, torch.tensor(channels))
        assert all(w % round_to == 0 for w in layer_widths())
    assert sorted(set(layer_widths())) == [round_to, 2 * round_to, 3 * round_to]  # stream: stages 1, 2, 3
    masks.apply()
    small = simplify(model, x).model
    convs = [m for name, m in small.named_modules() if isinstance(m, nn.Conv2d) and name != "conv1"]
    assert len(convs) == 18 and all(m.out_channels % round_to == 0 and m.in_channels % round_to == 0 for m in convs)
    assert min(m.in_channels for m in convs) == round_to


def test_round_to_search_accepts_whole_blocks_only(lenet):
    """A bound that admits five dead channels accepts whole cuts only: at most five channels, and
    every width still a multiple of four or whole."""
    _, masks, _ = lenet
    result = threshold_search(
        masks, lambda: {"loss": 1 + 0.01 * _dead_count(masks), "accuracy": 1.0}, 0.05, "l1_relative", round_to=4
    )
    assert 0 < result.channels <= 5
    assert all(masks.kept(g.id) % 4 == 0 or masks.kept(g.id) == g.size for g in masks.groups)
