"""Channel-coupling analysis: the groups pruning, masking and simplify all rely on."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgeprune import models
from edgeprune.checkpoint import load_model, save_model
from edgeprune.errors import GraphError
from edgeprune.graph import ChannelGraph, ChannelGroup, analyze

torch.manual_seed(0)


def group_with(graph: ChannelGraph, name: str, role: str = "producers") -> ChannelGroup:
    matches = [g for g in graph.groups if any(ps.name == name for ps in getattr(g, role))]
    assert len(matches) == 1, f"{name} is a {role} member of {len(matches)} groups"
    return matches[0]


def slice_of(group: ChannelGroup, name: str, role: str = "producers"):
    (ps,) = [ps for ps in getattr(group, role) if ps.name == name]
    return ps


def test_residual_stream_with_zero_padding_shortcuts_is_one_group_with_partial_members():
    model = models.resnet20(shortcut="A").eval()
    graph = analyze(model, torch.randn(1, 3, 32, 32))
    stream = group_with(graph, "conv1.weight")
    assert stream.size == 64 and stream.prunable
    producers = {ps.name for ps in stream.producers}
    assert producers == {"conv1.weight"} | {f"layers.{i}.conv2.weight" for i in range(9)}
    # stage-1 writers cover 16 of the 64 stream channels, stage 2 covers 32, stage 3 all of them
    assert len(slice_of(stream, "conv1.weight").channels) == 16
    assert len(slice_of(stream, "layers.4.conv2.weight").channels) == 32
    assert len(slice_of(stream, "layers.8.conv2.weight").channels) == 64
    # the stage-1 channels sit in the middle of the stage-3 stream (zero padding on both sides)
    assert slice_of(stream, "conv1.weight").channels.tolist() == list(range(24, 40))
    # every consumer of the stream reads it: the first conv of each block and the classifier
    consumers = {ps.name for ps in stream.consumers}
    assert consumers == {f"layers.{i}.conv1.weight" for i in range(9)} | {"fc.weight"}
    assert {ps.name for ps in stream.biases} >= {"bn1.weight", "layers.8.bn2.running_var"}


def test_projection_shortcuts_join_the_stream_of_their_stage():
    graph = analyze(models.resnet20(shortcut="B").eval(), torch.randn(1, 3, 32, 32))
    stage2 = group_with(graph, "layers.3.proj.0.weight")
    assert stage2.size == 32
    assert {ps.name for ps in stage2.producers} == {"layers.3.proj.0.weight"} | {
        f"layers.{i}.conv2.weight" for i in (3, 4, 5)
    }
    assert "layers.6.proj.0.weight" in {ps.name for ps in stage2.consumers}
    assert all(len(ps.channels) == 32 for ps in stage2.producers)


def test_concat_maps_each_producer_to_its_offset_in_every_consumer():
    graph = analyze(models.densenet_like().eval(), torch.randn(1, 3, 32, 32))
    stem = group_with(graph, "stem.weight")
    assert stem.size == 24
    assert slice_of(stem, "dense.3.conv.weight", "consumers").index.flatten().tolist() == list(range(24))
    first = group_with(graph, "dense.0.conv.weight")
    assert first.size == 12
    # dense.0's output follows the 24 stem channels in the input of every later layer
    assert slice_of(first, "dense.1.conv.weight", "consumers").index.flatten().tolist() == list(range(24, 36))
    assert slice_of(first, "transition.2.weight", "consumers").index.flatten().tolist() == list(range(24, 36))
    assert slice_of(first, "dense.2.bn.weight", "biases").index.flatten().tolist() == list(range(24, 36))


def test_flatten_before_linear_gives_each_channel_a_block_of_columns():
    graph = analyze(models.lenet5(input_size=28).eval(), torch.randn(1, 1, 28, 28))
    conv2 = group_with(graph, "conv2.weight")
    cols = slice_of(conv2, "fc1.weight", "consumers")
    assert cols.index.shape == (50, 16)
    assert cols.index[3].tolist() == list(range(48, 64))


def test_depthwise_conv_shares_the_group_of_its_input():
    graph = analyze(models.mobilenetv2_like().eval(), torch.randn(1, 3, 32, 32))
    expand = group_with(graph, "features.4.block.0.weight")
    assert {ps.name for ps in expand.producers} == {"features.4.block.0.weight", "features.4.block.3.weight"}
    assert expand.prunable and expand.size == 16 * 6
    assert len(expand.sites) == 2


def test_gates_model_boundaries_and_unknown_ops_are_not_prunable():
    graph = analyze(models.se_net().eval(), torch.randn(1, 3, 32, 32))
    gated = group_with(graph, "conv1.weight")
    assert not gated.prunable and "gate" in gated.reason
    classifier = group_with(graph, "head.2.weight")
    assert not classifier.prunable and classifier.reason == "model output"
    assert group_with(graph, "se.fc1.weight").prunable  # the SE bottleneck itself is an ordinary chain

    class ChannelMixing(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)
            self.head = nn.Conv2d(8, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(F.group_norm(self.conv(x), 2))

    mixed = group_with(analyze(ChannelMixing().eval(), torch.randn(1, 3, 8, 8)), "conv.weight")
    assert not mixed.prunable and "group_norm" in mixed.reason


def test_reused_module_couples_both_call_sites():
    class Reused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 1)
            self.shared = nn.Conv2d(8, 8, 1)
            self.head = nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = F.relu(self.shared(F.relu(self.shared(F.relu(self.stem(x))))))
            return self.head(x.mean((2, 3)))

    graph = analyze(Reused().eval(), torch.randn(1, 3, 8, 8))
    group = group_with(graph, "stem.weight")
    assert {ps.name for ps in group.producers} == {"stem.weight", "shared.weight"}
    assert group.size == 8 and group.prunable
    assert len([s for s in group.sites if s.module == "shared"]) == 2


def test_dead_channels_require_exact_zeros_not_a_zero_sum():
    model = models.lenet5(input_size=8).eval()
    with torch.no_grad():
        model.conv2.weight[3] = 0
        model.conv2.weight[7] = 0
        model.conv2.weight[9].zero_()[0, 0, 0] = 1.0
        model.conv2.weight[9][1, 0, 0] = -1.0  # sums to zero but is alive
    graph = analyze(model, torch.randn(1, 1, 8, 8))
    group = group_with(graph, "conv2.weight")
    dead = graph.dead_channels(model)[group.id]
    assert dead.nonzero().flatten().tolist() == [3, 7]
    norms = group.producer_norms(model.state_dict())
    assert norms[9] == 2.0 and (norms == 0).nonzero().flatten().tolist() == [3, 7]
    torch.testing.assert_close(norms[0], model.conv2.weight[0].double().pow(2).sum())


def test_sites_locate_the_producer_output_by_hook_and_by_graph_node():
    model = models.resnet20(shortcut="B").eval()
    x = torch.randn(2, 3, 32, 32)
    graph = analyze(model, x[:1])
    site = next(s for s in group_with(graph, "layers.3.proj.0.weight").sites if s.module == "layers.3.proj.0")
    seen = {}
    handle = model.get_submodule(site.module).register_forward_hook(lambda m, i, o: seen.setdefault("out", o))
    model(x)
    handle.remove()
    node_values = {}

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n):
            node_values[n.name] = super().run_node(n)
            return node_values[n.name]

    Recorder(graph.graph_module).run(x)
    torch.testing.assert_close(node_values[site.node], seen["out"])
    assert site.index.tolist() == list(range(32))


def test_graph_modules_loaded_from_pt2_keep_the_state_dict_names(tmp_path):
    model = models.resnet20(shortcut="A").eval()
    x = torch.randn(1, 3, 32, 32)
    save_model(model, x, tmp_path / "m.pt2")
    loaded = load_model(tmp_path / "m.pt2").model
    a, b = analyze(model, x), analyze(loaded, x)
    assert [(g.size, g.prunable, sorted(p.name for p in g.producers)) for g in a.groups] == [
        (g.size, g.prunable, sorted(p.name for p in g.producers)) for g in b.groups
    ]
    assert set(loaded.state_dict()) >= {ps.name for g in b.groups for ps in g.producers + g.consumers + g.biases}


def test_untraceable_model_raises_a_one_line_graph_error():
    class DataDependent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x) if x.sum() > 0 else -self.fc(x)

    with pytest.raises(GraphError, match="cannot trace the model") as info:
        analyze(DataDependent(), torch.randn(1, 4))
    assert "\n" not in str(info.value) and info.value.hint
