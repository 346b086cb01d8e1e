"""SeReNe sensitivities against a brute-force per-sample, per-output Jacobian reference."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.autograd.functional import jacobian

from edgeprune.checkpoint import load_model, save_model
from edgeprune.errors import EdgepruneError
from edgeprune.graph import analyze
from edgeprune.prune.sensitivity import TAP_PREFIX, SensitivityConfig, SensitivityProbe, neuron_sensitivity


class TinyNet(nn.Module):
    """conv(3) -> in-place ReLU -> fc(6) -> ReLU -> fc(4): two prunable groups, one of them spatial."""

    def __init__(self, inplace: bool = True) -> None:
        super().__init__()
        self.inplace = inplace
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.fc1 = nn.Linear(3 * 4 * 4, 6)
        self.fc2 = nn.Linear(6, 4)

    def after_conv(self, z: torch.Tensor, inplace: bool = True) -> torch.Tensor:
        a = torch.relu_(z) if inplace else torch.relu(z)
        return self.after_fc1(self.fc1(a.flatten(1)))

    def after_fc1(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(z))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.after_conv(self.conv(x), self.inplace)


@pytest.fixture(params=[True, False], ids=["inplace-relu", "plain-relu"])
def tiny(request):
    """With the in-place ReLU the probe must differentiate through the parameters; without it, it
    asks for the outputs' gradients directly (see SensitivityProbe._gradient_targets)."""
    torch.manual_seed(0)
    model = TinyNet(inplace=request.param)
    x = torch.randn(5, 2, 4, 4)
    groups = {g.sites[0].module: g for g in analyze(model, x[:1]).prunable_groups()}
    assert sorted(groups) == ["conv", "fc1"]
    return model, x, groups


def brute_force(model: TinyNet, x: torch.Tensor, layer: str, variant: str, spatial: str = "mean") -> torch.Tensor:
    """Per sample b: J = dy/dz (C x channels x positions), reduced by the definition, averaged over b."""
    per_sample = []
    for b in range(len(x)):
        xb = x[b : b + 1]
        if layer == "conv":
            z, rest = model.conv(xb), lambda z: model.after_conv(z, inplace=False)
        else:
            z, rest = model.fc1(torch.relu(model.conv(xb)).flatten(1)), model.after_fc1
        jac = jacobian(rest, z.detach())[0, :, 0]  # (C, channels, *positions)
        jac = jac.reshape(jac.shape[0], jac.shape[1], -1)
        per_element = jac.abs().sum(0) if variant == "full" else jac.sum(0).abs()
        reduced = per_element.mean(1) if spatial == "mean" else per_element.sum(1)
        per_sample.append(reduced / jac.shape[0])
    return torch.stack(per_sample).mean(0)


@pytest.mark.parametrize("variant", ["full", "lower_bound"])
@pytest.mark.parametrize("spatial", ["mean", "sum"])
def test_matches_the_per_sample_definition_despite_inplace_relu(tiny, variant, spatial):
    model, x, groups = tiny
    config = SensitivityConfig(variant=variant, spatial=spatial, normalize="none")
    measured = neuron_sensitivity(model, list(groups.values()), x, config)
    for layer, group in groups.items():
        torch.testing.assert_close(measured[group.id], brute_force(model, x, layer, variant, spatial))


def test_lower_bound_never_exceeds_full(tiny):
    model, x, groups = tiny
    full = neuron_sensitivity(model, list(groups.values()), x, SensitivityConfig("full", normalize="none"))
    lower = neuron_sensitivity(model, list(groups.values()), x, SensitivityConfig("lower_bound", normalize="none"))
    for gid in full:
        assert (lower[gid] <= full[gid] + 1e-7).all()
        assert (lower[gid] < full[gid] - 1e-6).any()  # the bound is not trivially tight on this net


def test_sampled_estimate_is_exact_with_all_classes_and_unbiased_with_few(tiny):
    model, x, groups = tiny
    group_list = list(groups.values())
    full = neuron_sensitivity(model, group_list, x, SensitivityConfig("full", normalize="none"))
    every = neuron_sensitivity(model, group_list, x, SensitivityConfig("sampled", sampled_classes=4, normalize="none"))
    for gid in full:
        torch.testing.assert_close(every[gid], full[gid])
    probe = SensitivityProbe(model, group_list, SensitivityConfig("sampled", sampled_classes=1, normalize="none"))
    draws = []
    for _ in range(400):
        with probe:
            outputs = model(x)
        draws.append(probe.group_sensitivity(*probe.measure(outputs)))
    for gid in full:
        mean = torch.stack([d[gid] for d in draws]).mean(0)
        torch.testing.assert_close(mean, full[gid], rtol=0.15, atol=1e-6)


def test_group_max_normalisation_puts_the_top_channel_at_one(tiny):
    model, x, groups = tiny
    raw = neuron_sensitivity(model, list(groups.values()), x, SensitivityConfig(normalize="none"))
    normalised = neuron_sensitivity(model, list(groups.values()), x)
    for gid, values in normalised.items():
        assert values.max() == pytest.approx(1.0)
        torch.testing.assert_close(values, raw[gid] / raw[gid].max())


def test_group_mean_normalisation_divides_by_the_mean_of_the_live_channels(tiny):
    model, x, groups = tiny
    raw = neuron_sensitivity(model, list(groups.values()), x, SensitivityConfig(normalize="none"))
    by_mean = neuron_sensitivity(model, list(groups.values()), x, SensitivityConfig(normalize="group_mean"))
    for gid, values in by_mean.items():
        live = raw[gid][raw[gid] > 0]
        torch.testing.assert_close(values, raw[gid] / live.mean())
        # channels above the group's mean sensitivity get S > 1: the shrink max(0, 1 - S) spares them
        assert (values > 1).any() and values[raw[gid] > 0].mean() == pytest.approx(1.0)


def test_traced_pt2_model_gets_the_same_sensitivities_and_keeps_no_taps(tiny, tmp_path):
    model, x, groups = tiny
    save_model(model, x[:1], tmp_path / "tiny.pt2")
    traced = load_model(tmp_path / "tiny.pt2").model
    before = traced(x)
    traced_groups = analyze(traced, x[:1]).prunable_groups()
    expected = neuron_sensitivity(model, list(groups.values()), x)
    measured = neuron_sensitivity(traced, traced_groups, x)
    by_size = {len(v): v for v in expected.values()}
    for values in measured.values():
        torch.testing.assert_close(values, by_size[len(values)])
    assert not any(TAP_PREFIX in n.name or TAP_PREFIX in str(n.target) for n in traced.graph.nodes)
    torch.testing.assert_close(traced(x), before)


def test_bad_settings_are_refused():
    with pytest.raises(EdgepruneError, match="unknown sensitivity setting 'exact'"):
        SensitivityConfig(variant="exact")
    with pytest.raises(EdgepruneError, match="unknown spatial setting"):
        SensitivityConfig(spatial="max")


class ConvBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def test_batchnorm_channels_are_measured_after_the_normalisation():
    """Under a training-mode BN, scaling a conv's weights changes nothing downstream, so neither may
    the sensitivity (measured at the conv output it would shrink by the same factor)."""
    torch.manual_seed(0)
    model = ConvBN().train()
    x = torch.randn(8, 2, 4, 4)
    groups = analyze(model, x[:1]).prunable_groups()
    probe = SensitivityProbe(model, groups, SensitivityConfig(normalize="none"))
    assert probe.modules == ["bn"]
    before = neuron_sensitivity(model, groups, x, SensitivityConfig(normalize="none"))
    with torch.no_grad():
        model.conv.weight.mul_(0.1)
    after = neuron_sensitivity(model, groups, x, SensitivityConfig(normalize="none"))
    for gid in before:
        torch.testing.assert_close(after[gid], before[gid], rtol=1e-3, atol=1e-7)
