"""BatchNorm folding on the aten graph (plain modules and torch.export GraphModules alike): the
quantised weights are those of the folded model, because both exporters fold BN before quantising."""

from __future__ import annotations

from typing import Any

import torch
from torch import fx, nn

from edgeprune.checkpoint import as_graph_module
from edgeprune.graph.ops import BATCH_NORM
from edgeprune.graph.trace import TRACE_BATCH, export_program
from edgeprune.quant.levels import BATCHNORM_OPS, LINEAR_OPS, is_weight_layer

_aten = torch.ops.aten


def to_deploy_graph(model: nn.Module, example_input: torch.Tensor) -> tuple[fx.GraphModule, int]:
    """``torch.export`` the model and fold every BatchNorm into the conv/linear before it.

    Returns the folded ``fx.GraphModule`` (dynamic batch, parameter names kept from the model) and the
    number of BatchNorms folded. A conv without bias gains one named ``<layer>.bias``.
    """
    gm = trace(model, example_input)
    folded = sum(_fold_one(gm, node) for node in list(gm.graph.nodes))
    if folded:
        gm.graph.eliminate_dead_code()
        _drop_unused_attributes(gm)
        gm.recompile()
    return gm, folded


def trace(model: nn.Module, example_input: torch.Tensor) -> fx.GraphModule:
    """The model as an aten-level GraphModule with a symbolic batch (and the resolution it was given),
    or a GraphError naming why."""
    program = export_program(
        model, example_input, TRACE_BATCH, spatial=False, purpose="trace the model for quantisation/export"
    )
    return as_graph_module(program).eval()


def _tensor_attr(gm: fx.GraphModule, node: Any) -> torch.Tensor | None:
    if node is None:
        return None
    if not (isinstance(node, fx.Node) and node.op == "get_attr"):
        raise _NotFoldable
    try:
        return gm.get_parameter(node.target)
    except AttributeError:
        return gm.get_buffer(node.target)


class _NotFoldable(Exception):
    """Internal: this BatchNorm's statistics are computed, not constants, so it stays in the graph."""


def _fold_one(gm: fx.GraphModule, bn: fx.Node) -> int:
    if bn.op != "call_function" or bn.target not in BATCHNORM_OPS:
        return 0
    layer = bn.args[0]
    if not (
        isinstance(layer, fx.Node)
        and is_weight_layer(layer)
        and len(layer.users) == 1
        and len(layer.args[1].users) == 1
    ):
        return 0
    returns_tuple = bn.target is not _aten.batch_norm.default
    if returns_tuple and any(user.args[1] != 0 and user.users for user in bn.users):
        return 0  # the batch mean/var outputs are used: this is not an inference-form BatchNorm
    eps = bn.args[6] if returns_tuple else bn.args[7]
    try:
        weight = _tensor_attr(gm, layer.args[1])
        bias_node = layer.args[2] if len(layer.args) > 2 else None
        bias = _tensor_attr(gm, bias_node)
        gamma, beta, mean, var = (_tensor_attr(gm, a) for a in bn.args[1:5])
    except _NotFoldable:
        return 0
    if mean is None or var is None:
        return 0
    gamma = torch.ones_like(mean) if gamma is None else gamma
    beta = torch.zeros_like(mean) if beta is None else beta
    new_weight, new_bias = BATCH_NORM.fold(weight, bias, (gamma, beta, mean, var, eps), layer.target in LINEAR_OPS)
    weight_name = layer.args[1].target
    _set_attr(gm, weight_name, new_weight)
    if bias_node is not None:
        _set_attr(gm, bias_node.target, new_bias)
    else:
        bias_name = _free_bias_name(gm, weight_name)
        _set_attr(gm, bias_name, new_bias)
        with gm.graph.inserting_before(layer):
            bias_node = gm.graph.get_attr(bias_name)
        args = list(layer.args) + [None] * max(0, 3 - len(layer.args))
        args[2] = bias_node
        layer.args = tuple(args)
    if not returns_tuple:
        bn.replace_all_uses_with(layer)
    else:
        for user in list(bn.users):
            user.replace_all_uses_with(layer)
            gm.graph.erase_node(user)
    gm.graph.erase_node(bn)
    return 1


def _free_bias_name(gm: fx.GraphModule, weight_name: str) -> str:
    existing = set(gm.state_dict())
    base = weight_name[: -len("weight")] + "bias" if weight_name.endswith("weight") else weight_name + "_bias"
    name, i = base, 1
    while name in existing:
        name, i = f"{base}_{i}", i + 1
    return name


def _set_attr(gm: fx.GraphModule, dotted: str, value: torch.Tensor) -> None:
    owner_path, _, leaf = dotted.rpartition(".")
    owner = _ensure_submodule(gm, owner_path)
    owner._buffers.pop(leaf, None)
    owner._parameters.pop(leaf, None)
    owner.register_parameter(leaf, nn.Parameter(value.detach().clone(), requires_grad=False))


def _ensure_submodule(gm: fx.GraphModule, path: str) -> nn.Module:
    module: nn.Module = gm
    for part in [p for p in path.split(".") if p]:
        if not hasattr(module, part):
            module.add_module(part, nn.Module())
        module = getattr(module, part)
    return module


def _drop_unused_attributes(gm: fx.GraphModule) -> None:
    """Delete parameters/buffers no node reads any more, so the state_dict holds only what runs."""
    used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    for name in [*dict(gm.named_parameters()), *dict(gm.named_buffers())]:
        if name not in used:
            owner_path, _, leaf = name.rpartition(".")
            delattr(gm.get_submodule(owner_path) if owner_path else gm, leaf)
