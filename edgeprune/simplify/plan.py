"""What simplify will do, decided before the graph is touched: folds, dead channels, constants.

Everything is computed in float64 from the traced model:

1. BatchNorm that directly follows a Conv/Linear (its only user) is folded into that layer.
2. A group channel is *dead* when every producer row writing it is exactly zero after folding
   (``abs().amax() == 0``; a zero *sum* is not enough). Dead channels of prunable groups are
   candidates for removal; a tensor never loses all of its channels.
3. The constant a dead channel carries into each consumer is *measured* on the real model - it
   has passed through the actual BN, activation, pooling, padding... - on two different inputs
   and at a second resolution where the model allows one. A channel whose value is not the same
   everywhere a consumer needs it to be is refused (kept), never approximated.
4. The constants are folded into each consumer: Linear and unpadded convs get a bias change;
   zero-padded convs get them through a kept "carrier" dead channel, a border-correction
   kernel or a precomputed correction map (see ``SimplifyOptions.padded_constants``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx

from edgeprune.graph import ChannelGraph
from edgeprune.graph.coupling import ChannelVector, LayerInfo
from edgeprune.graph.ops import BATCH_NORM, family_of
from edgeprune.graph.trace import TracedModel, run_graph
from edgeprune.simplify.options import SimplifyOptions

UNIFORM_RTOL = 1e-12
CARRIER_MIN_RATIO = 1e-3  # a carrier's constant must not be tiny next to those it absorbs (float32 weights)


@dataclass
class LayerPlan:
    """The new parameters of one Conv/Linear call site (float64, before slicing)."""

    info: LayerInfo
    weight: torch.Tensor
    bias: torch.Tensor | None
    folded_bn: str | None = None
    delta: torch.Tensor | None = None  # bias change from removed constant inputs
    border: torch.Tensor | None = None  # correction kernel (O, 1, *k) for a zero-padded conv
    border_map: torch.Tensor | None = None  # the same correction at the example's resolution (1, O, *out)


@dataclass
class Plan:
    traced: TracedModel
    graph: ChannelGraph
    layers: dict[str, LayerPlan]
    removed: set[int]
    refused: dict[int, str] = field(default_factory=dict)
    dead: set[int] = field(default_factory=set)
    carriers: set[int] = field(default_factory=set)
    shape_specialised: bool = False  # the trace only runs at the example's resolution

    def kept_positions(self, node_name: str) -> list[int] | None:
        """Channel positions of a tensor that survive (None when it has no channel axis)."""
        vector = self.graph.analysis.vectors.get(node_name)
        if not isinstance(vector, ChannelVector):
            return None
        find = self.graph.analysis.find
        return [i for i, a in enumerate(vector.atoms) if find(a) not in self.removed]

    def removed_positions(self, node_name: str) -> list[int]:
        vector = self.graph.analysis.vectors.get(node_name)
        if not isinstance(vector, ChannelVector):
            return []
        find = self.graph.analysis.find
        return [i for i, a in enumerate(vector.atoms) if find(a) in self.removed]


def make_plan(
    traced: TracedModel, graph: ChannelGraph, options: SimplifyOptions, other_resolution: torch.Tensor | None = None
) -> Plan:
    """Decide folds and removals.

    Constants are measured on the values the trace recorded (its sample batch) and, when the
    model accepts one, on a sample at ``other_resolution``.
    """
    layers = _fold_batchnorm(traced, graph, options)
    plan = Plan(traced, graph, layers, removed=set())
    plan.dead = _dead_classes(plan)
    prunable = {cls for g in graph.groups if g.prunable for cls in g.classes}
    plan.removed = plan.dead & prunable
    _keep_one_channel_per_tensor(plan)
    probes = [traced.values]
    if other_resolution is not None:
        try:
            probes.append(run_graph(traced, other_resolution.double(), dtype=torch.float64))
        except Exception:  # noqa: BLE001 - torch.export specialised the graph to the example's shape
            plan.shape_specialised = True
    constants = _measure_constants(plan, probes, options)
    plan.removed -= set(plan.refused)
    if options.padded_constants == "carrier":
        plan.carriers = _choose_carriers(plan, constants)
        plan.removed -= plan.carriers
    _fold_constants(plan, constants, as_map=options.padded_constants == "map")
    if any(lp.border_map is not None for lp in plan.layers.values()):
        plan.shape_specialised = True
    return plan


def _fold_batchnorm(traced: TracedModel, graph: ChannelGraph, options: SimplifyOptions) -> dict[str, LayerPlan]:
    """Per call site: the (possibly BN-folded) weight and bias in float64."""
    ana = graph.analysis
    sites_per_weight: dict[str, int] = {}
    for info in ana.layers.values():
        sites_per_weight[info.weight] = sites_per_weight.get(info.weight, 0) + 1
    layers = {
        name: LayerPlan(
            info,
            traced.tensors[info.weight].detach().double(),
            None if info.bias is None else traced.tensors[info.bias].detach().double(),
        )
        for name, info in ana.layers.items()
    }
    if not options.fold_batchnorm:
        return layers
    for node in traced.graph.nodes:
        if family_of(node) is not BATCH_NORM:
            continue
        src = node.args[0]
        plan = layers.get(src.name)
        if plan is None or len(src.users) != 1 or sites_per_weight[plan.info.weight] != 1:
            continue
        stats = _bn_stats(traced, node)
        if stats is None:
            continue
        plan.weight, plan.bias = BATCH_NORM.fold(plan.weight, plan.bias, stats, linear=plan.info.kind == "linear")
        plan.folded_bn = node.name
    return layers


def _bn_stats(
    traced: TracedModel, node: fx.Node
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float] | None:
    """(gamma, beta, mean, var, eps) of an eval-mode BN node in float64, or None if not foldable."""
    _, (weight, bias, running_mean, running_var), eps, training = BATCH_NORM.parse(node)
    if training:  # training-mode BN computes batch statistics
        return None
    mean, var = traced.tensor_of(running_mean), traced.tensor_of(running_var)
    if mean is None or var is None:
        return None
    gamma = traced.tensor_of(weight) if weight is not None else torch.ones_like(mean)
    beta = traced.tensor_of(bias) if bias is not None else torch.zeros_like(mean)
    if gamma is None or beta is None:
        return None
    return gamma.double(), beta.double(), mean.double(), var.double(), eps


def _dead_classes(plan: Plan) -> set[int]:
    """Classes whose every producer row (after BN folding) is exactly zero."""
    ana = plan.graph.analysis
    row_alive: dict[str, torch.Tensor] = {}
    for lp in plan.layers.values():
        row_alive[lp.info.weight] = lp.weight.reshape(lp.weight.shape[0], -1).abs().amax(1) != 0
    alive: set[int] = set()
    for e in ana.entries:
        if e.role == "producer" and bool(row_alive[e.name][e.index]):
            alive.add(ana.find(e.atom))
    return {ana.find(a) for a in range(len(ana.parent))} - alive


def _keep_one_channel_per_tensor(plan: Plan) -> None:
    """Zero-channel tensors break exporters and runtimes: keep one channel where all would go."""
    ana = plan.graph.analysis
    for vector in ana.vectors.values():
        for v in vector if isinstance(vector, tuple) else (vector,):
            if isinstance(v, ChannelVector) and v.atoms and all(ana.find(a) in plan.removed for a in v.atoms):
                plan.removed.discard(ana.find(v.atoms[0]))


def _measure_constants(
    plan: Plan, probes: list[dict[str, Any]], options: SimplifyOptions
) -> dict[str, dict[int, float]]:
    """Per consumer call site: input position -> the constant a removed channel delivers there.

    Linear inputs need one value per feature, the same for every input; conv inputs need one
    value per channel, the same at every position, for every input and resolution. Channels that
    fail are recorded in ``plan.refused``.
    """
    ana = plan.graph.analysis
    constants: dict[str, dict[int, float]] = {}
    for name, lp in plan.layers.items():
        if lp.info.depthwise:
            continue
        positions = plan.removed_positions(lp.info.input_node)
        if not positions:
            continue
        vector = ana.vectors[lp.info.input_node]
        per_position: dict[int, float] = {}
        for p in positions:
            cls = ana.find(vector.atoms[p])
            samples = [probe[lp.info.input_node][:, p] for probe in probes if lp.info.input_node in probe]
            value = _constant(samples, spatial=lp.info.kind == "conv")
            if value is None:
                plan.refused.setdefault(cls, f"its value entering {lp.info.module or name} is not constant")
                continue
            if lp.info.pads and float(value) != 0.0 and options.padded_constants == "refuse":
                plan.refused.setdefault(cls, f"non-zero constant into zero-padded {lp.info.module or name}")
                continue
            per_position[p] = value
        constants[name] = per_position
    return constants


def _constant(samples: list[torch.Tensor], spatial: bool) -> float | None:
    """The one value every sample holds (conv: at every position too), or None if they differ."""
    flat = [s.reshape(s.shape[0], -1) if spatial else s.reshape(s.shape[0], 1) for s in samples]
    reference = float(flat[0][0, 0])
    scale = 1.0 + abs(reference)
    for f in flat:
        if float((f - reference).abs().max()) > UNIFORM_RTOL * scale:
            return None
    return reference


def _shared_weights(plan: Plan) -> set[str]:
    """Weights used by more than one call site (a reused module): their columns are not ours to edit."""
    seen: set[str] = set()
    shared: set[str] = set()
    for lp in plan.layers.values():
        (shared if lp.info.weight in seen else seen).add(lp.info.weight)
    return shared


def _padded_needs(plan: Plan, constants: dict[str, dict[int, float]]) -> dict[str, dict[int, float]]:
    """Zero-padded, unshared convs and the non-zero constants of the channels they lose."""
    shared = _shared_weights(plan)
    needs = {}
    for name, per_position in constants.items():
        lp = plan.layers[name]
        if not lp.info.pads or lp.info.weight in shared:
            continue
        nonzero = {p: v for p, v in per_position.items() if v != 0}
        if nonzero:
            needs[name] = nonzero
    return needs


def _choose_carriers(plan: Plan, constants: dict[str, dict[int, float]]) -> set[int]:
    """Keep a few dead channels as carriers of the removed constants into zero-padded convs.

    A removed channel of constant v reaches a zero-padded conv as v inside the image and 0 in the
    padding: exactly v/u times a kept channel of constant u. Adding its weights, scaled by v/u, to
    that channel's column is exact at every resolution and costs no extra op, where a border
    correction costs a conv and an add per layer. One carrier serves every padded conv whose input
    holds it with a usable constant; carriers are picked greedily, most convs served first.
    """
    ana = plan.graph.analysis
    candidates: dict[str, set[int]] = {}
    for name, nonzero in _padded_needs(plan, constants).items():
        vector = ana.vectors[plan.layers[name].info.input_node]
        largest = max(abs(v) for v in nonzero.values())
        candidates[name] = {
            ana.find(vector.atoms[p])
            for p, v in nonzero.items()
            if abs(v) >= CARRIER_MIN_RATIO * largest and ana.find(vector.atoms[p]) in plan.removed
        }
    carriers: set[int] = set()
    while True:
        votes = Counter(c for classes in candidates.values() for c in classes)
        if not votes:
            return carriers
        best = votes.most_common(1)[0][0]
        carriers.add(best)
        candidates = {n: classes for n, classes in candidates.items() if best not in classes}


def _fold_constants(plan: Plan, constants: dict[str, dict[int, float]], as_map: bool = False) -> None:
    """Turn each consumer's removed constant inputs into a bias change, a carrier column, a border
    kernel or (``as_map``) a precomputed correction map."""
    ana = plan.graph.analysis
    shared = _shared_weights(plan)
    for name, per_position in constants.items():
        lp = plan.layers[name]
        removed = [p for p in plan.removed_positions(lp.info.input_node) if p in per_position]
        if not removed:
            continue
        values = torch.tensor([per_position[p] for p in removed], dtype=torch.float64)
        columns = lp.weight[:, removed]  # (O, R, *k)
        contribution = (columns * values.reshape((1, -1) + (1,) * (columns.dim() - 2))).sum(1)
        if not lp.info.pads:
            lp.delta = contribution.reshape(contribution.shape[0], -1).sum(1)
        elif bool(values.ne(0).any()):
            vector = ana.vectors[lp.info.input_node]
            largest = float(values.abs().max())
            carrier = next(
                (
                    q
                    for q, v in per_position.items()
                    if ana.find(vector.atoms[q]) in plan.carriers and abs(v) >= CARRIER_MIN_RATIO * largest
                ),
                None,
            )
            if carrier is not None and lp.info.weight not in shared:
                weight = lp.weight.clone()
                weight[:, carrier] += contribution / per_position[carrier]
                lp.weight = weight
            elif as_map:
                lp.border_map = _correction_map(plan.traced, lp.info, contribution)
            else:
                lp.border = contribution.unsqueeze(1)


def _correction_map(traced: TracedModel, info: LayerInfo, contribution: torch.Tensor) -> torch.Tensor:
    """What removed constant inputs add to a zero-padded conv's output at the traced resolution:
    the conv of a ones map - full inside, partial where the kernel overlaps the padding. Exact only
    at that resolution, which is why the plan is then marked shape-specialised."""
    spatial = traced.values[info.input_node].shape[2:]
    ones = torch.ones((1, 1, *spatial), dtype=torch.float64)
    convolve = (torch.nn.functional.conv1d, torch.nn.functional.conv2d, torch.nn.functional.conv3d)[len(spatial) - 1]
    kernel = contribution.unsqueeze(1).to(torch.float64)
    return convolve(ones, kernel, None, info.stride, info.padding, info.dilation)
