"""Tracing a model into an aten graph whose tensors are tied back to ``state_dict`` names.

``torch.export`` works for ordinary ``nn.Module`` s and for the ``fx.GraphModule`` s that
``edgeprune.checkpoint`` loads from ``.pt2``/TorchScript files, and it records which placeholder
of the graph is which parameter or buffer (``graph_signature``), so every weight the channel
analysis talks about is addressable as ``model.state_dict()[name]`` - no name guessing.

Every ``torch.export`` call of edgeprune goes through :func:`export_program`, which holds the one
export policy: eval mode, a two-sample example so the batch is never specialised to 1, the batch
dimension given by the caller's purpose, and spatial sizes ``Dim.AUTO`` (dynamic where the model
allows it, e.g. global pooling, specialised where it does not, e.g. Flatten -> Linear). The
analysis exports with automatic batch and spatial sizes: the simplified model is rebuilt from this
very graph, and a graph specialised to one resolution would silently lock it to that resolution.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn
from torch.export import Dim

from edgeprune.errors import EdgepruneError, GraphError, first_line

# A saved or exported file's batch: named, from 1 to 65,536 (a bound every later re-export accepts).
FILE_BATCH = Dim("batch", min=1, max=1 << 16)
# An in-memory re-trace (quantisation): the batch stays symbolic with whatever bounds a loaded
# program already carries, which a named Dim with its own bounds would contradict.
TRACE_BATCH = Dim.DYNAMIC


def export_shapes(example: torch.Tensor, batch: Any, spatial: bool = True) -> tuple[dict[int, Any]]:  # noqa: ANN401
    """``dynamic_shapes`` for a single-input model: ``batch`` for dim 0, ``Dim.AUTO`` for the spatial
    dims (2 and up) when ``spatial``; the channel dim is always static."""
    shapes: dict[int, Any] = {0: batch}
    if spatial:
        shapes.update({d: Dim.AUTO for d in range(2, example.dim())})
    return (shapes,)


def two_samples(example_input: torch.Tensor) -> torch.Tensor:
    """The example as a batch of two: torch specialises a batch of 1 to a constant."""
    return example_input[:1].expand(2, *example_input.shape[1:]).contiguous()


def export_program(
    model: nn.Module,
    example_input: torch.Tensor,
    batch: Any = FILE_BATCH,  # noqa: ANN401 - a torch.export Dim
    spatial: bool = True,
    purpose: str = "trace the model",
    error: type[EdgepruneError] = GraphError,
) -> torch.export.ExportedProgram:
    """``torch.export`` ``model`` (in eval mode) under the one policy of the module docstring.

    Raises ``error`` ("cannot <purpose>: <why>") when the model cannot be traced.
    """
    example = two_samples(example_input)
    try:
        return torch.export.export(model.eval(), (example,), dynamic_shapes=export_shapes(example, batch, spatial))
    except Exception as exc:  # torch.export raises many unrelated types for untraceable code
        raise error(
            f"cannot {purpose}: {first_line(exc)}",
            "remove data-dependent Python control flow and unsupported ops from forward() "
            "(use torch.where / torch.cond)",
        ) from None


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
    """The analysis' export: batch and spatial sizes automatic (dynamic where the model allows it).

    Falls back to a static export of the single example (then the rewritten model only accepts
    that shape, which the equivalence check reports); :class:`GraphError` when neither traces.
    """
    try:
        return export_program(model, example_input, batch=Dim.AUTO, purpose="trace the model with torch.export")
    except GraphError:
        pass
    try:
        return torch.export.export(model.eval(), (example_input[:1],))
    except Exception as exc:  # torch.export raises many unrelated types for untraceable code
        raise GraphError(
            f"cannot trace the model with torch.export: {first_line(exc)}",
            "remove data-dependent Python control flow from forward() (use torch.where / torch.cond)",
        ) from None


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
