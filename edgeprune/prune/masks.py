"""One keep-mask per coupled channel group, applied to weights *and* optimizer state.

Pruning decisions are made per :class:`edgeprune.graph.ChannelGroup`: every channel of a group
owns entries of several parameters (the producer rows of every conv/linear writing into the
coupled tensor, BN scales, ...). Zeroing all of them together is what makes the sparsity
removable by ``edgeprune.simplify``; zeroing only some of them (as a global per-parameter
threshold does) leaves a channel that still computes something and cannot be cut.

``ChannelMasks`` resolves each group's :class:`ParamSlice` entries to the model's tensors once
(flat index lists), so that the per-step operations - scaling channels, zeroing pruned ones in
the weights and in the momentum / Adam moment buffers - are a handful of ``index_fill_`` /
broadcast multiplies rather than Python loops over channels.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class ResolvedSlice:
    """A ParamSlice bound to the model tensor it names.

    ``flat_index`` lists the positions along ``dim`` owned by the group's channels, and
    ``channel_of`` the channel owning each of them (both length size*k), so per-channel vectors
    can be expanded to per-position vectors with one gather.
    """

    name: str
    tensor: torch.Tensor
    dim: int
    flat_index: torch.Tensor
    channel_of: torch.Tensor

    def channel_view(self, values: torch.Tensor) -> torch.Tensor:
        """Expand a per-channel vector to a tensor broadcastable against ``self.tensor``
        (1 at positions along ``dim`` the group does not own)."""
        along = torch.ones(self.tensor.shape[self.dim], dtype=self.tensor.dtype, device=self.tensor.device)
        along[self.flat_index.to(along.device)] = values.to(along)[self.channel_of.to(along.device)]
        shape = [1] * self.tensor.dim()
        shape[self.dim] = -1
        return along.view(shape)

    def per_position_reduce(self, reduce: str) -> torch.Tensor:
        """max |w| ("maxabs") or sum |w| ("l1") over everything but ``dim``, per owned position."""
        dims = [d for d in range(self.tensor.dim()) if d != self.dim]
        magnitude = self.tensor.detach().abs()
        if not dims:  # a 1-D tensor (BN scale): reducing over no dims would reduce over all
            return magnitude[self.flat_index.to(magnitude.device)].cpu()
        along = magnitude.amax(dim=dims) if reduce == "maxabs" else magnitude.sum(dim=dims)
        return along[self.flat_index.to(along.device)].cpu()

    def zero_channels(self, channels: torch.Tensor, extra: Iterable[torch.Tensor] = ()) -> None:
        """Zero the positions owned by ``channels`` in the tensor and in every same-shaped ``extra``."""
        positions = self.flat_index[torch.isin(self.channel_of, channels.cpu())].to(self.tensor.device)
        if positions.numel() == 0:
            return
        with torch.no_grad():
            self.tensor.index_fill_(self.dim, positions, 0)
            for buffer in extra:
                if buffer.shape == self.tensor.shape:
                    buffer.index_fill_(self.dim, positions, 0)


def named_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and buffers by their state_dict key (the names ParamSlice uses)."""
    return {**dict(model.named_buffers()), **dict(model.named_parameters())}


def resolve(model_tensors: dict[str, torch.Tensor], param_slice: Any) -> ResolvedSlice:
    """Bind a ParamSlice (row r of ``index`` belongs to group channel ``channels[r]``) to its tensor."""
    index = param_slice.index.long()
    if index.dim() == 1:
        index = index[:, None]
    k = index.shape[1]
    return ResolvedSlice(
        name=param_slice.name,
        tensor=model_tensors[param_slice.name],
        dim=param_slice.dim,
        flat_index=index.reshape(-1),
        channel_of=param_slice.channels.long().repeat_interleave(k),
    )


def is_scale(param_slice: Any, tensors: dict[str, torch.Tensor]) -> bool:
    """A per-channel multiplicative parameter (a BatchNorm weight) among a group's bias entries.

    Under a training-mode BatchNorm, shrinking the conv rows alone is undone by the
    normalisation, so the SeReNe shrink and the masks act on the BN scale as well.
    """
    tensor = tensors[param_slice.name]
    return param_slice.name.endswith("weight") and isinstance(tensor, nn.Parameter) and tensor.dim() == 1


@dataclass
class GroupTensors:
    """A ChannelGroup with its producer, bias and consumer slices resolved against one model."""

    id: Any
    size: int
    producers: list[ResolvedSlice]
    scales: list[ResolvedSlice]
    biases: list[ResolvedSlice]
    consumers: list[ResolvedSlice]
    sites: list[Any]

    @property
    def weights(self) -> list[ResolvedSlice]:
        """What the shrink scales and the masks zero: producer rows and BN scales."""
        return [*self.producers, *self.scales]

    def width_segments(self) -> list[torch.Tensor]:
        """The group's channels partitioned by which producer layers write them, in first-channel order.

        One segment - every channel - in the usual group, where every producer writes every channel.
        A residual stream that zero-pads into wider stages (ResNet's shortcut option A) writes its
        16-channel stage-1 part in every stage, the next 16 from stage 2 on, the last 32 in stage 3
        only: three segments. A layer's width is the sum of the kept counts of the segments it holds,
        so keeping each segment's count a multiple of N keeps every layer's width one."""
        holders = torch.zeros(len(self.producers), self.size, dtype=torch.bool)
        for row, s in enumerate(self.producers):
            holders[row, s.channel_of.unique()] = True
        by_signature: dict[tuple[bool, ...], list[int]] = {}
        for channel, signature in enumerate(holders.T.tolist()):
            by_signature.setdefault(tuple(signature), []).append(channel)
        return [torch.tensor(channels) for channels in by_signature.values()]

    def channel_scores(self, reduce: str = "maxabs") -> torch.Tensor:
        """Per-channel magnitude: the largest |w| over all producer rows ("maxabs", so a channel is
        below T only when *every* producer entry is) or their summed |w| ("l1"), times the largest
        |BN scale| of the channel when it has one (its effective gain under a BatchNorm); with
        "maxabs", a channel under BatchNorm is scored by its largest |BN scale| alone."""
        if self.scales and reduce == "maxabs":
            # Under a BatchNorm the conv row's scale is normalised away: the channel's output
            # varies by gamma * x_hat around its shift, and the shift is what simplify folds when
            # the channel goes - so |gamma| alone is the size of what pruning removes.
            return self._reduce(self.scales, "maxabs")
        scores = self._reduce(self.producers, reduce)
        if self.scales:
            scores = scores * self._reduce(self.scales, "maxabs")
        return scores

    def _reduce(self, slices: list[ResolvedSlice], reduce: str) -> torch.Tensor:
        per_slice = []
        for s in slices:
            values = s.per_position_reduce(reduce)
            ch = torch.zeros(self.size, dtype=values.dtype)
            if reduce == "maxabs":
                ch.scatter_reduce_(0, s.channel_of, values, reduce="amax")
            else:
                ch.scatter_add_(0, s.channel_of, values)
            per_slice.append(ch)
        stacked = torch.stack(per_slice)
        return stacked.amax(0) if reduce == "maxabs" else stacked.sum(0)


def bind_groups(model: nn.Module, groups: Sequence[Any]) -> list[GroupTensors]:
    tensors = named_tensors(model)
    return [
        GroupTensors(
            id=g.id,
            size=g.size,
            producers=[resolve(tensors, s) for s in g.producers],
            scales=[resolve(tensors, s) for s in g.biases if is_scale(s, tensors)],
            biases=[resolve(tensors, s) for s in g.biases if not is_scale(s, tensors)],
            consumers=[resolve(tensors, s) for s in g.consumers],
            sites=list(g.sites),
        )
        for g in groups
    ]


def _learnable(slices: Iterable[ResolvedSlice]) -> list[ResolvedSlice]:
    """The slices of learnable parameters (not running statistics)."""
    return [s for s in slices if isinstance(s.tensor, nn.Parameter)]


# Which cut channels lose their learnable biases too (--cut-biases): none, those read by a zero-padded
# conv, or every one
BIAS_CUTS = ("none", "padded", "all")


class ChannelMasks:
    """The keep-mask of every prunable group, and its enforcement.

    A pruned channel's producer entries (and BN scales) are zeroed and kept at zero; its consumers'
    columns are left alone (they carry what the channel still outputs until simplify). Its biases
    decide what that is (``cut_biases``, per group):

    * kept: the channel outputs a constant that simplify folds into the consumers, so removing it is
      exact. Behind a zero-padded conv the fold needs a border-correction conv per consumer to stay
      exact - at 1 % of VGG-BN's MACs those convs were 17 % of the simplified model's MACs, which a MAC
      budget pays for (``CostModel`` counts them);
    * cut (zeroed with the scales, as a magnitude pruner that deletes the channel does): the channel
      outputs zero and simplify has nothing to fold - at the price of a cut that also drops the
      constant, which the next BatchNorm's recalibration and fine-tuning absorb.

    ``padded`` cuts exactly where keeping would cost a correction conv: for the groups a zero-padded
    conv reads (``padded_convs``, weight names). The default stays ``none`` (every cut exact): now that a
    MAC budget counts the corrections, both modes end at the same real MACs, and there cutting scored
    -0.17 and +0.33 points (SeReNe, Fashion-MNIST 14x14 at 8 and 6.5 % of the MACs) - no consistent
    gain to trade exactness for (BENCHMARKS.md, Pruning, seventh round).
    """

    def __init__(
        self,
        model: nn.Module,
        groups: Sequence[Any],
        cut_biases: str = "none",
        padded_convs: Collection[str] = (),
    ) -> None:
        self.groups = bind_groups(model, groups)
        self.keep: dict[Any, torch.Tensor] = {g.id: torch.ones(g.size, dtype=torch.bool) for g in self.groups}
        self.cuts_biases = {
            g.id: cut_biases == "all" or (cut_biases == "padded" and any(s.name in padded_convs for s in g.consumers))
            for g in self.groups
        }

    def zeroed(self, group: GroupTensors) -> list[ResolvedSlice]:
        """What cutting a channel of ``group`` zeroes: its producer entries and BN scales, plus its
        learnable biases where it cuts them (running statistics are left to BN recalibration)."""
        if not self.cuts_biases[group.id]:
            return group.weights
        return [*group.weights, *_learnable(group.biases)]

    def leaves_constant(self, group: GroupTensors) -> bool:
        """Whether a cut channel of ``group`` may still output a non-zero constant (a learnable bias
        it keeps) - what simplify folds, with a border correction behind a zero-padded conv."""
        return not self.cuts_biases[group.id] and bool(_learnable(group.biases))

    def mark_dead(self) -> None:
        """Adopt channels whose producer entries are already exactly zero as pruned."""
        for g in self.groups:
            self.keep[g.id] &= g.channel_scores("maxabs") > 0

    def prune(self, group_id: Any, channels: torch.Tensor) -> None:
        self.keep[group_id][channels] = False

    def apply(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Zero what a cut zeroes (:meth:`zeroed`) of pruned channels in the weights and the optimizer state."""
        for g in self.groups:
            dead = torch.nonzero(~self.keep[g.id]).flatten()
            if dead.numel() == 0:
                continue
            for s in self.zeroed(g):
                state = optimizer.state.get(s.tensor, {}) if optimizer is not None else {}
                s.zero_channels(dead, [v for v in state.values() if isinstance(v, torch.Tensor)])

    def kept(self, group_id: Any) -> int:
        return int(self.keep[group_id].sum())

    def total_channels(self) -> int:
        return sum(g.size for g in self.groups)

    def total_kept(self) -> int:
        return sum(self.kept(g.id) for g in self.groups)

    def removable_entries(self) -> dict[str, torch.Tensor]:
        """Per parameter tensor, a bool mask of the entries simplification will delete: producer
        entries of pruned channels and consumer entries reading them."""
        removed: dict[str, torch.Tensor] = {}
        for g in self.groups:
            dead = torch.nonzero(~self.keep[g.id]).flatten()
            if dead.numel() == 0:
                continue
            for s in [*g.weights, *g.biases, *g.consumers]:
                mask = removed.setdefault(s.name, torch.zeros(s.tensor.shape, dtype=torch.bool))
                positions = s.flat_index[torch.isin(s.channel_of, dead)]
                mask.index_fill_(s.dim, positions, True)
        return removed

    def state_dict(self) -> dict[str, Any]:
        return {"keep": {str(k): v.clone() for k, v in self.keep.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for g in self.groups:
            self.keep[g.id] = state["keep"][str(g.id)].clone()
