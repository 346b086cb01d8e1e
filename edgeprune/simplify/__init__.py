"""Function-preserving simplification of pruned models: BN folding, constant folding, channel removal.

``simplify(model, example_input)`` returns a new, smaller model that computes the same function:
channels whose producer rows are all exactly zero are removed from every tensor of their
coupled group (see :mod:`edgeprune.graph`), after the constant they still carry (their bias
through BN and the real activation) has been folded into every consumer. The input model is not
modified. Every run ends with a float64 equivalence proof (:mod:`edgeprune.verify`); a model that
fails it is never returned.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from edgeprune.graph import analyze_traced
from edgeprune.graph.coupling import ChannelVector
from edgeprune.graph.trace import run_graph, trace
from edgeprune.simplify.options import SimplifyOptions
from edgeprune.simplify.plan import Plan, make_plan
from edgeprune.simplify.rewrite import SOURCE_KEY, build_model
from edgeprune.verify import accepted_shapes, assert_equivalent, verification_inputs, worst_abs_diff

MAX_REFUSALS_LISTED = 20

__all__ = ["SimplifyOptions", "SimplifyResult", "simplify"]


@dataclass
class SimplifyResult:
    """The simplified float32 model and what was done to get it (JSON-serialisable report)."""

    model: nn.Module
    report: dict[str, Any] = field(default_factory=dict)


def simplify(
    model: nn.Module,
    example_input: torch.Tensor,
    data_batch: torch.Tensor | None = None,
    options: SimplifyOptions | None = None,
    seed: int = 0,
) -> SimplifyResult:
    """Remove dead channels from ``model`` exactly; ``data_batch`` (real samples) joins the proof."""
    options = options or SimplifyOptions()
    clock = _PhaseClock()
    model.eval()
    shapes = accepted_shapes(model, example_input)
    inputs = verification_inputs(shapes, data_batch, seed)
    # constants are measured on the example plus random, zero and large samples, and at the second
    # resolution (inputs[2]) when there is one: a value that changes between them is not a constant
    traced = trace(model, example_input, sample_batch=torch.cat([example_input[:1], inputs[1]]))
    graph = analyze_traced(traced)
    clock.lap("trace")
    plan = make_plan(traced, graph, options, inputs[2] if len(shapes) > 1 else None)
    if plan.shape_specialised:  # the rewritten graph inherits the trace's fixed shape: prove what it supports
        shapes = shapes[:1]
        inputs = verification_inputs(shapes, data_batch, seed)
    clock.lap("plan")
    candidate = build_model(plan)
    clock.lap("rewrite")
    worst64 = assert_equivalent(
        model, candidate, inputs, options.tolerance, locate=lambda x: _first_divergence(plan, candidate, x)
    )
    simplified = candidate.float()
    ordinary = [inputs[0], example_input[:1]] + ([data_batch[:3]] if data_batch is not None else [])
    worst32, _ = worst_abs_diff(model, simplified, ordinary, dtype=torch.float32)
    clock.lap("proof")
    report = _report(plan, simplified, shapes)
    report.update(
        max_abs_diff_float64=worst64,
        max_abs_diff_float32=worst32,
        tolerance=options.tolerance,
        resolutions=", ".join("x".join(map(str, s[1:])) for s in shapes),
        batch_sizes="1, 3",
        verification_inputs=len(inputs),
        fixed_resolution=plan.shape_specialised,
        seconds=round(clock.total(), 3),
        **{f"seconds_{phase}": t for phase, t in clock.phases.items()},
    )
    return SimplifyResult(simplified, report)


class _PhaseClock:
    """Wall time per phase (trace, plan, rewrite, proof), so a slow run says where it went."""

    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()
        self.phases: dict[str, float] = {}

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.phases[phase] = round(now - self.last, 3)
        self.last = now

    def total(self) -> float:
        return time.perf_counter() - self.start


def _report(plan: Plan, simplified: nn.Module, shapes: list[tuple[int, ...]]) -> dict[str, Any]:
    """Channels removed per group and per layer, refusals, folds."""
    groups = []
    for g in plan.graph.groups:
        removed = sum(c in plan.removed for c in g.classes)
        dead = sum(c in plan.dead for c in g.classes)
        if not g.producers:
            continue
        groups.append(
            {
                "group": g.id,
                "first_producer": g.producers[0].name.rpartition(".")[0],
                "channels": g.size,
                "dead": dead,
                "removed": removed,
                "kept": g.size - removed,
                "note": g.reason or _kept_note(dead - removed, sum(c in plan.carriers for c in g.classes)),
            }
        )
    layers = []
    for name, lp in plan.layers.items():
        w = lp.weight
        cin = w.shape[1] * (w.shape[0] if lp.info.depthwise else 1)
        new_in = len(plan.kept_positions(lp.info.input_node) or [])
        new_out = len(plan.kept_positions(name) or [])
        layers.append(
            {
                "layer": lp.info.module or name,
                "kind": "depthwise conv" if lp.info.depthwise else lp.info.kind,
                "in": f"{cin} -> {new_in}",
                "out": f"{w.shape[0]} -> {new_out}",
                "bn_folded": lp.folded_bn is not None,
                "border_correction": lp.border is not None,
            }
        )
    refusals = []
    where = plan.graph.group_of_class()
    for cls, reason in sorted(plan.refused.items()):
        if cls in plan.dead:
            gid, channel = where[cls]
            refusals.append({"group": gid, "channel": channel, "reason": reason})
    return {
        "channels_removed": len(plan.removed),
        "dead_channels": len(plan.dead & {c for g in plan.graph.groups if g.producers for c in g.classes}),
        "refused_channels": len(refusals),
        "refusals": refusals[:MAX_REFUSALS_LISTED],
        "batchnorm_folded": sum(lp.folded_bn is not None for lp in plan.layers.values()),
        "carrier_channels": len(plan.carriers),
        "border_corrections": sum(lp.border is not None for lp in plan.layers.values()),
        "groups": groups,
        "layers": layers,
    }


def _kept_note(kept_dead: int, carriers: int) -> str:
    if not kept_dead:
        return ""
    note = f"{kept_dead} dead channel(s) kept"
    return f"{note} ({carriers} as constant carrier)" if carriers else note


@torch.no_grad()
def _first_divergence(plan: Plan, candidate: fx.GraphModule, x: torch.Tensor) -> str | None:
    """The first rewritten node whose kept channels differ from the original's (float64)."""
    reference = run_graph(plan.traced, x.double(), dtype=torch.float64)
    values: dict[str, Any] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            values[n.name] = out = super().run_node(n)
            return out

    Recorder(candidate).run(x.double())
    tolerance = 1e-9
    for node in candidate.graph.nodes:
        source = node.meta.get(SOURCE_KEY)
        new, old = values.get(node.name), reference.get(source)
        if not isinstance(new, torch.Tensor) or not isinstance(old, torch.Tensor):
            continue
        if isinstance(plan.graph.analysis.vectors.get(source), ChannelVector):
            old = old[:, plan.kept_positions(source)]
        if old.shape != new.shape or float((old - new).abs().max()) > tolerance * (1 + float(old.abs().max())):
            layer = next((lp.info.module for n, lp in plan.layers.items() if source in (n, lp.folded_bn)), None)
            return f"{source} ({layer})" if layer else source
    return None
