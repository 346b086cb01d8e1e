"""Tracing a model into an aten graph whose tensors are tied back to ``state_dict`` names.

``torch.export`` works for ordinary ``nn.Module`` s and for the ``fx.GraphModule`` s that
``edgeprune.checkpoint`` loads from ``.pt2``/TorchScript files, and it records which placeholder
of the graph is which parameter or buffer (``graph_signature``), so every weight the channel
analysis talks about is addressable as ``model.state_dict()[name]`` - no name guessing.

We export with automatic dynamic batch and spatial sizes where the model allows it: the
simplified model is rebuilt from this very graph, and a graph specialised to one resolution
would silently lock the simplified model to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn
from torch.export import Dim

from edgeprune.errors import GraphError


@dataclass
class TracedModel:
    """An exported program plus the look-ups the analysis and the rewriter need.

    ``param_names`` maps a placeholder node name of ``graph`` to the ``state_dict`` name of the
    tensor it stands for; ``values`` holds every node's output on ``example_input`` (float64), so
    shapes are concrete even where the export kept them symbolic.
    """

    program: torch.export.ExportedProgram
    example_input: torch.Tensor
    param_names: dict[str, str]
    tensors: dict[str, torch.Tensor]
    input_node: str
    values: dict[str, Any]

    @property
    def graph(self) -> fx.Graph:
        return self.program.graph

    def tensor_of(self, arg: Any) -> torch.Tensor | None:
        """The parameter/buffer a graph argument stands for, if it is one."""
        if isinstance(arg, fx.Node) and arg.name in self.param_names:
            return self.tensors[self.param_names[arg.name]]
        return None

    def name_of(self, arg: Any) -> str | None:
        """The ``state_dict`` name of a parameter/buffer argument, if it is one."""
        if isinstance(arg, fx.Node):
            return self.param_names.get(arg.name)
        return None


def export(model: nn.Module, example_input: torch.Tensor) -> torch.export.ExportedProgram:
    """``torch.export`` the model in eval mode, batch and spatial sizes dynamic where possible.

    Falls back to a static export (then the rewritten model will only accept that shape, which
    the equivalence check reports) and raises :class:`GraphError` when the model cannot be traced.
    """
    model.eval()
    example = example_input[:1].expand(2, *example_input.shape[1:]).contiguous()
    dynamic = ({d: Dim.AUTO for d in range(example.dim()) if d != 1},)
    errors = []
    for args, shapes in (((example,), dynamic), ((example_input[:1],), None)):
        try:
            return torch.export.export(model, args, dynamic_shapes=shapes)
        except Exception as exc:  # torch.export raises many unrelated types for untraceable code
            errors.append(exc)
    first = str(errors[-1]).strip().splitlines()
    raise GraphError(
        f"cannot trace the model with torch.export: {(first[0] if first else type(errors[-1]).__name__)[:200]}",
        "remove data-dependent Python control flow from forward() (use torch.where / torch.cond)",
    )


def trace(model: nn.Module, example_input: torch.Tensor, sample_batch: torch.Tensor | None = None) -> TracedModel:
    """Export ``model`` and run the graph once in float64 to record every intermediate value.

    The values are taken on ``sample_batch`` when given (simplify measures dead-channel constants
    on them), else on the example input.
    """
    program = export(model, example_input)
    signature = program.graph_signature
    param_names = {**signature.inputs_to_parameters, **signature.inputs_to_buffers}
    param_names.update(getattr(signature, "inputs_to_lifted_tensor_constants", {}))
    tensors: dict[str, torch.Tensor] = {**program.state_dict, **program.constants}
    user_inputs = [s.arg.name for s in signature.input_specs if s.kind.name == "USER_INPUT"]
    if len(user_inputs) != 1:
        raise GraphError(
            f"the model takes {len(user_inputs)} inputs", "edgeprune handles models with exactly one input tensor"
        )
    traced = TracedModel(program, example_input[:1], param_names, tensors, user_inputs[0], {})
    samples = sample_batch if sample_batch is not None else example_input[:1]
    traced.values = run_graph(traced, samples.double(), dtype=torch.float64)
    return traced


def graph_inputs(traced: TracedModel, x: torch.Tensor, dtype: torch.dtype | None = None) -> list[torch.Tensor]:
    """Positional arguments of the lifted graph: parameters/buffers in signature order, then ``x``."""
    args = []
    for spec in traced.program.graph_signature.input_specs:
        if spec.kind.name == "USER_INPUT":
            args.append(x)
            continue
        t = traced.tensors[spec.target]
        args.append(t.to(dtype) if dtype is not None and t.is_floating_point() else t)
    return args


class _Recorder(fx.Interpreter):
    """An interpreter that keeps every node's output (the graph is small; values are detached)."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.values: dict[str, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        self.values[n.name] = out
        return out


@torch.no_grad()
def run_graph(traced: TracedModel, x: torch.Tensor, dtype: torch.dtype | None = None) -> dict[str, Any]:
    """Every node's output of the lifted graph on ``x`` (parameters cast to ``dtype`` if given)."""
    recorder = _Recorder(traced.program.graph_module)
    recorder.run(*graph_inputs(traced, x, dtype))
    return recorder.values
