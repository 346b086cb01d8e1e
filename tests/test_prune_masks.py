"""What a cut zeroes (ChannelMasks), and what that leaves for simplify to do."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from edgeprune.graph import analyze
from edgeprune.metrics import count_macs
from edgeprune.models import VGGCifar, mobilenetv2_like, resnet20
from edgeprune.prune.masks import BIAS_CUTS, ChannelMasks
from edgeprune.prune.pruner import CostModel
from edgeprune.simplify import simplify
from edgeprune.simplify.options import SimplifyOptions


@pytest.fixture
def vgg_with_shifts() -> nn.Module:
    """A VGG-style net whose BatchNorms have positive shifts, so that a channel with a zero BN scale
    still outputs a constant (ReLU of its shift)."""
    torch.manual_seed(0)
    model = VGGCifar((8, 8, "M", 16), 1, 10).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.bias, 0.1, 0.5)
            nn.init.uniform_(m.running_mean, -0.2, 0.2)
            nn.init.uniform_(m.running_var, 0.5, 2.0)
    return model


def _border_convs(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d) and name.endswith("_border")]


@pytest.mark.parametrize("mode", ["none", "all", "padded"])
def test_cut_biases_decides_whether_a_cut_channel_leaves_a_constant(vgg_with_shifts, mode):
    """Three channels of the first conv cut. Keeping biases ("none") leaves their BN shifts, a constant
    that simplify folds into the next, zero-padded conv exactly - with a border-correction conv.
    Cutting biases ("all", and "padded" since a zero-padded conv reads them) zeroes the shifts (not the
    running statistics), the channels output zero, and simplify removes them with no correction conv
    and fewer MACs. Either way simplify's result computes what the pruned model computes."""
    model = copy.deepcopy(vgg_with_shifts)
    x = torch.randn(4, 1, 8, 8)
    graph = analyze(model, x[:1])
    masks = ChannelMasks(model, graph.prunable_groups(), mode, graph.zero_padded_convs())
    cut_biases = mode != "none"
    group = masks.groups[0]
    cut = torch.tensor([0, 1, 2])
    masks.prune(group.id, cut)
    masks.apply()
    shift = model.features[1].bias.detach()
    assert bool((shift[cut] == 0).all()) is cut_biases
    assert (shift[3:] > 0).all() and (model.features[1].running_var > 0).all()
    small = simplify(model, x[:1]).model
    torch.testing.assert_close(small(x), model(x), atol=1e-5, rtol=1e-5)
    assert bool(_border_convs(small)) is not cut_biases
    kept = copy.deepcopy(vgg_with_shifts)
    with torch.no_grad():
        kept.features[0].weight[cut] = 0
        kept.features[1].weight[cut] = 0
    keep_macs = count_macs(simplify(kept, x[:1]).model, x[:1])
    assert (count_macs(small, x[:1]) < keep_macs) is cut_biases


def test_padded_mode_keeps_the_biases_a_linear_reads(vgg_with_shifts):
    """Where no zero-padded conv reads a group (the last conv before the classifier, the hidden Linear),
    its constant folds into the Linear's bias for free, so "padded" keeps its biases and the cut stays
    exact; the groups the next padded conv reads lose theirs."""
    model = copy.deepcopy(vgg_with_shifts)
    x = torch.randn(4, 1, 8, 8)
    graph = analyze(model, x[:1])
    assert graph.zero_padded_convs() == {"features.0.weight", "features.3.weight", "features.7.weight"}
    masks = ChannelMasks(model, graph.prunable_groups(), "padded", graph.zero_padded_convs())
    by_producer = {g.producers[0].name: g for g in masks.groups}
    cuts = {name: masks.cuts_biases[g.id] for name, g in by_producer.items()}
    # conv 0 and conv 3 feed the padded convs 3 and 7; conv 7 feeds the hidden Linear, which feeds the classifier
    assert cuts == {
        "features.0.weight": True,
        "features.3.weight": True,
        "features.7.weight": False,
        "classifier.1.weight": False,
    }
    last = by_producer["features.7.weight"]
    masks.prune(last.id, torch.tensor([0, 1]))
    masks.apply()
    shift = next(s for s in last.biases if isinstance(s.tensor, nn.Parameter)).tensor.detach()
    assert (shift > 0).all()
    small = simplify(model, x[:1]).model
    torch.testing.assert_close(small(x), model(x), atol=1e-5, rtol=1e-5)
    assert not _border_convs(small)


@pytest.mark.parametrize("cut_biases", BIAS_CUTS)
@pytest.mark.parametrize(
    "make",
    [lambda: VGGCifar((8, 8, "M", 16, 16, "M"), 1, 10), lambda: resnet20(1, 10, "B"), lambda: mobilenetv2_like(1, 10)],
    ids=["vgg-bn", "resnet20", "mobilenetv2"],
)
@pytest.mark.parametrize("padded_constants", ["border", "map"])
def test_the_cost_model_counts_the_macs_simplify_leaves(make, cut_biases, padded_constants):
    """What a MAC budget is checked against during training (the CostModel, on the masks) is what the
    simplified model computes, border-correction convs included (none under ``map``): a budget is a
    promise about the result. Half of every group cut at random, BN shifts positive so every cut
    channel leaves a constant."""
    torch.manual_seed(0)
    model = make().eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.bias, 0.1, 0.5)
    x = torch.randn(1, 1, 8, 8)
    graph = analyze(model, x)
    masks = ChannelMasks(model, graph.prunable_groups(), cut_biases, graph.zero_padded_convs())
    cost = CostModel(model, graph, padded_constants)
    assert cost.total_macs == count_macs(model, x)
    for group in masks.groups:
        masks.prune(group.id, torch.randperm(group.size)[: group.size // 2])
    masks.apply()
    _, macs = cost.remaining(masks)
    small = simplify(model, x, options=SimplifyOptions(padded_constants=padded_constants)).model
    assert round(macs * cost.total_macs) == count_macs(small, x)
