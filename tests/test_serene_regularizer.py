"""The SeReNe update rule, masks on weights and optimizer state, and coupled channel groups."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgeprune.graph import analyze
from edgeprune.models import densenet_like, mobilenetv2_like, resnet20
from edgeprune.prune.masks import ChannelMasks
from edgeprune.prune.regularizer import SereneRegularizer
from edgeprune.prune.sensitivity import neuron_sensitivity
from edgeprune.prune.train import TrainConfig, fit, make_optimizer
from edgeprune.simplify import simplify


def _mlp() -> tuple[nn.Module, list]:
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]))
        model[0].bias.fill_(0.5)
    groups = analyze(model, torch.zeros(1, 2)).prunable_groups()
    assert len(groups) == 1 and groups[0].size == 3  # the classifier's outputs are excluded
    return model, groups


@pytest.mark.parametrize(("shrink_biases", "bias"), [(False, [0.5, 0.5, 0.5]), (True, [0.5, 0.46, 0.45])])
def test_update_rule_on_a_hand_computed_example(shrink_biases, bias):
    model, groups = _mlp()
    head = model[2].weight.detach().clone()
    reg = SereneRegularizer(model, ChannelMasks(model, groups), lmbda=0.1, shrink_biases=shrink_biases)
    # S = 1.5 (more than sensitive enough: no shrink), 0.2 (factor 1 - 0.1*0.8), 0 (factor 0.9)
    reg.sensitivity = {groups[0].id: torch.tensor([1.5, 0.2, 0.0])}
    reg.shrink()
    expected = torch.tensor([[1.0, 2.0], [2.76, 3.68], [4.5, 5.4]])
    torch.testing.assert_close(model[0].weight.detach(), expected)
    torch.testing.assert_close(model[0].bias.detach(), torch.tensor(bias))
    assert torch.equal(model[2].weight.detach(), head)


def test_fading_channels_shrink_by_the_extra_factor_on_top_of_the_sensitivity_rule():
    model, groups = _mlp()
    reg = SereneRegularizer(model, ChannelMasks(model, groups), lmbda=0.1)
    reg.sensitivity = {groups[0].id: torch.tensor([1.5, 0.2, 0.0])}
    reg.fading, reg.fade_rate = {groups[0].id: torch.tensor([True, False, True])}, 0.5
    reg.shrink()
    # a fading channel gets x 0.5 whatever its sensitivity (1.5: no SeReNe shrink); the others the rule alone
    expected = torch.tensor([[0.5, 1.0], [2.76, 3.68], [2.25, 2.7]])
    torch.testing.assert_close(model[0].weight.detach(), expected)


def test_shrink_uses_pre_step_sensitivity_and_leaves_momentum_alone():
    torch.manual_seed(0)
    model, groups = _mlp()
    x, y = torch.randn(16, 2), torch.randint(0, 2, (16,))
    plain = copy.deepcopy(model)
    expected_s = neuron_sensitivity(copy.deepcopy(model), groups, x)[groups[0].id]
    cfg = TrainConfig(lr=0.1, momentum=0.9, weight_decay=1e-3)

    opt_plain = make_optimizer(plain, cfg)
    F.cross_entropy(plain(x), y).backward()
    opt_plain.step()

    opt = make_optimizer(model, cfg)
    reg = SereneRegularizer(model, ChannelMasks(model, groups), lmbda=0.3, optimizer=opt)
    with reg:
        out = model(x)
        reg.observe(out)
        F.cross_entropy(out, y).backward()
        opt.step()
        reg.shrink()
    torch.testing.assert_close(reg.sensitivity[groups[0].id], expected_s)
    factor = 1 - 0.3 * torch.relu(1 - expected_s)
    torch.testing.assert_close(model[0].weight.detach(), plain[0].weight.detach() * factor[:, None])
    torch.testing.assert_close(model[0].bias.detach(), plain[0].bias.detach())
    for p, q in zip(model.parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(opt.state[p]["momentum_buffer"], opt_plain.state[q]["momentum_buffer"])


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_masks_keep_pruned_channels_at_zero_through_optimizer_steps(trained_lenet5, optimizer):
    model = copy.deepcopy(trained_lenet5.model)
    groups = {g.sites[0].module: g for g in analyze(model, trained_lenet5.example_input).prunable_groups()}
    masks = ChannelMasks(model, list(groups.values()))
    masks.prune(groups["conv1"].id, torch.tensor([0, 3]))
    masks.prune(groups["fc1"].id, torch.arange(5, 40))
    cfg = TrainConfig(epochs=2, lr=0.01 if optimizer == "sgd" else 1e-3, optimizer=optimizer)
    opt = make_optimizer(model, cfg)
    masks.apply(opt)
    fit(model, trained_lenet5.data, cfg, optimizer=opt, step_hooks=(lambda: masks.apply(opt),))
    for rows, name in ((torch.tensor([0, 3]), "conv1"), (torch.arange(5, 40), "fc1")):
        weight = model.get_submodule(name).weight
        assert weight[rows].abs().max() == 0
        assert weight[~torch.isin(torch.arange(len(weight)), rows)].abs().min() > 0
        for buffer in opt.state[weight].values():
            if isinstance(buffer, torch.Tensor) and buffer.shape == weight.shape:
                assert buffer[rows].abs().max() == 0
        # biases are left alone: simplify folds the constant a dead channel still emits
        assert model.get_submodule(name).bias[rows].abs().max() > 0
    dead = analyze(model, trained_lenet5.example_input).dead_channels(model)
    assert {name: int(dead[g.id].sum()) for name, g in groups.items()} == {"conv1": 2, "conv2": 0, "fc1": 35}


def _coupled(name: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    factory = {
        "resnet20": lambda: resnet20(in_channels=1),
        "densenet": lambda: densenet_like(in_channels=1),
        "mobilenetv2": lambda: mobilenetv2_like(in_channels=1),
    }[name]
    model = factory()
    x = torch.randn(4, 1, 16, 16)
    model.train()
    with torch.no_grad():  # non-trivial BN statistics
        model(x)
    return model.eval(), x


@pytest.mark.parametrize("name", ["resnet20", "densenet", pytest.param("mobilenetv2", marks=pytest.mark.slow)])
def test_coupled_groups_share_one_shrink_and_simplify_cleanly_once_pruned(name):
    model, x = _coupled(name)
    groups = analyze(model, x[:1]).prunable_groups()
    # residual adds unite producers, concat and depthwise convs give channels several consumers
    assert any(len(g.producers) > 1 or len(g.consumers) > 1 for g in groups), "the model must couple channels"
    masks = ChannelMasks(model, groups)
    reg = SereneRegularizer(model, masks, lmbda=0.5)
    slices = [s for g in masks.groups for s in [*g.weights, *reg.targets[g.id]]]
    assert not any("running" in s.name for s in slices)  # BN statistics are never shrunk
    before = {s.name: s.tensor.detach().clone() for s in slices}
    model.train()
    with reg:
        reg.observe(model(x))
    reg.shrink()
    expected = dict(before)  # a tensor can hold entries of several groups (BN after a concat)
    tensors = {s.name: s.tensor.detach() for s in slices}  # conv rows under a BN must stay as they were
    for g in masks.groups:
        factor = 1 - 0.5 * torch.relu(1 - reg.sensitivity[g.id])
        for s in reg.targets[g.id]:  # under BatchNorm: gamma (the BN output's scale)
            expected[s.name] = expected[s.name] * s.channel_view(factor)
    for name, tensor in tensors.items():
        torch.testing.assert_close(tensor, expected[name])
    # prune the weakest third of every group's channels (at least one stays)
    pruned = 0
    for g in masks.groups:
        scores = g.channel_scores()
        weakest = scores.argsort()[: max(0, min(g.size // 3, g.size - 1))]
        masks.prune(g.id, weakest)
        pruned += len(weakest)
    masks.apply()
    model.eval()
    result = simplify(model, x[:1])
    assert result.report["channels_removed"] == pruned
    assert sum(p.numel() for p in result.model.parameters()) < sum(p.numel() for p in model.parameters())
    torch.testing.assert_close(result.model(x), model(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("cut_biases", ["none", "all"])
def test_bn_shift_shrinks_only_where_the_cut_removes_it(cut_biases):
    """``bn_shrink="auto"`` (the default): under a BatchNorm gamma always shrinks, beta only when a cut
    channel loses it too (``cut_biases``) - kept, it is the constant simplify folds, so shrinking it would
    move the channel away from what the cut leaves. Conv rows and running statistics never shrink."""
    model, x = _coupled("resnet20")
    groups = analyze(model, x[:1]).prunable_groups()
    reg = SereneRegularizer(model, ChannelMasks(model, groups, cut_biases=cut_biases), lmbda=0.5)
    bn_groups = [g for g in reg.masks.groups if g.scales]
    assert bn_groups
    for g in bn_groups:
        names = {s.name for s in reg.targets[g.id]}
        scales = {s.name for s in g.scales}
        shifts = {name.removesuffix(".weight") + ".bias" for name in scales}
        assert names == (scales | shifts if cut_biases == "all" else scales)
