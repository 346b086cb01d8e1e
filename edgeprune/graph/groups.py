"""The public view of the channel analysis: groups of coupled channels and where their tensors live.

A :class:`ChannelGroup` is what pruning masks, SeReNe shrinks and simplify removes as one unit.
Channel ``c`` of a group is a set of channels that must live or die together - one output row of
every producer that writes it, one input column (or H*W columns after a Flatten) of every
consumer that reads it, one entry of every BN/bias on the way. Most members cover every channel
of their group; a member can cover only some (``channels``): in a ResNet with zero-padding
shortcuts, the stage-1 convs write only the middle channels of the stage-3 residual stream.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch import fx, nn

from edgeprune.graph.coupling import ChannelAnalysis, ChannelVector, classes_by_group


@dataclass(frozen=True, eq=False)
class ParamSlice:
    """A slice of one tensor of ``model.state_dict()``.

    Row ``r`` of ``index`` lists the entries along ``dim`` that belong to group channel
    ``channels[r]`` (k = 1 usually, k = H*W for Linear columns after a Flatten). ``channels`` is
    ``arange(group.size)`` unless the member covers only part of the group.
    """

    name: str
    dim: int
    index: torch.Tensor  # LongTensor (len(channels), k)
    channels: torch.Tensor  # LongTensor (len(channels),): group channel ids, one per row of index

    def select(self, tensor: torch.Tensor) -> torch.Tensor:
        """The entries of ``tensor`` this slice covers, shaped (len(channels), k, *rest)."""
        picked = tensor.movedim(self.dim, 0).index_select(0, self.index.flatten())
        return picked.reshape(*self.index.shape, *picked.shape[1:])


@dataclass(frozen=True, eq=False)
class TensorSite:
    """Where a group's pre-activation tensor can be observed at run time.

    ``node`` names a node of ``ChannelGraph.graph_module``; ``module`` is the leaf Conv/Linear
    whose forward output this is (hook it on ``nn.Module`` models). Channel ``channels[r]`` of the
    group is entry ``index[r]`` along ``dim``.
    """

    node: str
    module: str | None
    dim: int
    index: torch.Tensor  # LongTensor (len(channels),)
    channels: torch.Tensor


@dataclass
class ChannelGroup:
    """Coupled channels: producers' rows, consumers' columns, BN/bias entries and observation sites."""

    id: int
    size: int
    producers: list[ParamSlice]
    biases: list[ParamSlice]
    consumers: list[ParamSlice]
    sites: list[TensorSite]
    prunable: bool
    reason: str | None
    classes: list[int] = field(default_factory=list, repr=False)

    def producer_norms(self, state: dict[str, torch.Tensor]) -> torch.Tensor:
        """Squared L2 norm of all producer entries of each channel (float64, shape (size,))."""
        total = torch.zeros(self.size, dtype=torch.float64)
        for ps in self.producers:
            rows = ps.select(state[ps.name].detach()).double()
            total.index_add_(0, ps.channels, rows.reshape(rows.shape[0], -1).pow(2).sum(1))
        return total

    def dead(self, state: dict[str, torch.Tensor]) -> torch.Tensor:
        """BoolTensor(size): channels whose producer entries are all exactly zero (not merely sum to 0)."""
        alive = torch.zeros(self.size, dtype=torch.bool)
        for ps in self.producers:
            rows = ps.select(state[ps.name].detach())
            alive[ps.channels] |= rows.reshape(rows.shape[0], -1).abs().amax(1) != 0
        return ~alive


@dataclass
class ChannelGraph:
    """All channel groups of a traced model, and the traced graph their sites refer to."""

    groups: list[ChannelGroup]
    graph_module: fx.GraphModule
    analysis: ChannelAnalysis = field(repr=False)

    def prunable_groups(self) -> list[ChannelGroup]:
        return [g for g in self.groups if g.prunable]

    def zero_padded_convs(self) -> set[str]:
        """Weight names of the conv call sites that pad their input (``LayerInfo.pads``)."""
        return {layer.weight for layer in self.analysis.layers.values() if layer.pads}

    def dead_channels(self, model: nn.Module) -> dict[int, torch.Tensor]:
        """Group id -> BoolTensor(size) of channels whose producer rows are all exactly zero."""
        state = model.state_dict()
        return {g.id: g.dead(state) for g in self.groups}

    def group_of_class(self) -> dict[int, tuple[int, int]]:
        """Class root -> (group id, channel index in that group)."""
        return {cls: (g.id, c) for g in self.groups for c, cls in enumerate(g.classes)}


def build_groups(ana: ChannelAnalysis) -> list[ChannelGroup]:
    """Turn the atom-level analysis into ChannelGroups with index tensors."""
    frozen, gated = ana.class_frozen(), ana.class_gated()
    bundles = [_in_producer_order(ana, classes) for classes in classes_by_group(ana)]
    where = {cls: (gid, c) for gid, classes in enumerate(bundles) for c, cls in enumerate(classes)}
    members: list[dict[str, dict[tuple[str, int], dict[int, list[int]]]]] = [
        {role: defaultdict(lambda: defaultdict(list)) for role in ("producer", "bias", "consumer")} for _ in bundles
    ]
    for e in ana.entries:
        gid, c = where[ana.find(e.atom)]
        members[gid][e.role][(e.name, e.dim)][c].append(e.index)
    groups: list[ChannelGroup] = []
    for gid, classes in enumerate(bundles):
        reason = next((frozen[c] for c in classes if c in frozen), None)
        if reason is None and any(c in gated for c in classes):
            reason = "multiplicative gate (e.g. squeeze-and-excitation): a removed channel would not be constant"
        by_role = members[gid]
        groups.append(
            ChannelGroup(
                id=gid,
                size=len(classes),
                producers=_slices(by_role["producer"]),
                biases=_slices(by_role["bias"]),
                consumers=_slices(by_role["consumer"]),
                sites=_sites(ana, where, gid),
                prunable=reason is None,
                reason=reason,
                classes=list(classes),
            )
        )
    return groups


def _in_producer_order(ana: ChannelAnalysis, classes: list[int]) -> list[int]:
    """Order a group's channels like the output of a producer that writes all of them, if any.

    Then channel c of the group is output channel c of that layer (in a ResNet with padding
    shortcuts, of the last stage's convs), which is what a reader of a report expects.
    """
    wanted = set(classes)
    for node_name in ana.layers:
        vector = ana.vectors.get(node_name)
        if isinstance(vector, ChannelVector) and len(vector) == len(wanted):
            order = [ana.find(a) for a in vector.atoms]
            if set(order) == wanted:
                return order
    return classes


def _slices(members: dict[tuple[str, int], dict[int, list[int]]]) -> list[ParamSlice]:
    """One ParamSlice per (tensor, axis, entries-per-channel); a member split only if k varies."""
    out = []
    for (name, dim), per_channel in members.items():
        by_k: dict[int, list[int]] = defaultdict(list)
        for c, idx in per_channel.items():
            by_k[len(idx)].append(c)
        for _, channels in sorted(by_k.items()):
            channels.sort()
            index = torch.tensor([sorted(per_channel[c]) for c in channels], dtype=torch.long)
            out.append(ParamSlice(name, dim, index, torch.tensor(channels, dtype=torch.long)))
    return out


def _sites(ana: ChannelAnalysis, where: dict[int, tuple[int, int]], gid: int) -> list[TensorSite]:
    """The output tensors of the group's producers (pre-BN, pre-activation)."""
    sites = []
    for node_name, layer in ana.layers.items():
        vector = ana.vectors.get(node_name)
        if not isinstance(vector, ChannelVector):
            continue
        located = [(where[ana.find(a)], i) for i, a in enumerate(vector.atoms)]
        pairs = [(c, i) for (g, c), i in located if g == gid]
        if not pairs or len({c for c, _ in pairs}) != len(pairs):
            continue
        pairs.sort()
        sites.append(
            TensorSite(
                node=node_name,
                module=layer.module,
                dim=1,
                index=torch.tensor([i for _, i in pairs], dtype=torch.long),
                channels=torch.tensor([c for c, _ in pairs], dtype=torch.long),
            )
        )
    return sites
