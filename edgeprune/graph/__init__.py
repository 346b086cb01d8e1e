"""Channel-coupling analysis of traced models.

``analyze(model, example_input)`` traces the model with ``torch.export`` and returns a
:class:`ChannelGraph`: the groups of channels that must be pruned, masked or removed together
(residual streams, concat offsets, split/chunk ranges, Flatten->Linear blocks, depthwise convs),
each with the ``state_dict`` slices of its producers, biases/BN entries and consumers. Pruning,
masking and simplification all use this one analysis - never ad-hoc module pairs.

Example::

    graph = analyze(model, x)
    for group in graph.prunable_groups():
        norms = group.producer_norms(model.state_dict())
"""

from __future__ import annotations

import torch
from torch import nn

from edgeprune.graph.groups import ChannelGraph, ChannelGroup, ParamSlice, TensorSite, build_groups
from edgeprune.graph.ops import OpFamily, analyze_channels, register_op
from edgeprune.graph.trace import TracedModel, trace


def analyze(model: nn.Module, example_input: torch.Tensor) -> ChannelGraph:
    """Trace ``model`` and group its coupled channels (raises GraphError when untraceable)."""
    return analyze_traced(trace(model, example_input))


def analyze_traced(traced: TracedModel) -> ChannelGraph:
    """The channel graph of an already traced model (simplify reuses the trace)."""
    analysis = analyze_channels(traced)
    return ChannelGraph(groups=build_groups(analysis), graph_module=traced.program.module(), analysis=analysis)


__all__ = [
    "ChannelGraph",
    "ChannelGroup",
    "OpFamily",
    "ParamSlice",
    "TensorSite",
    "analyze",
    "analyze_traced",
    "register_op",
]
