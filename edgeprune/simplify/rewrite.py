"""Build the simplified model: a plain ``fx.GraphModule`` rewritten from the traced aten graph.

Conv/Linear call sites become ordinary ``nn.Conv*d``/``nn.Linear`` submodules (named after the
original modules, so hooks, MAC counters and readers recognise them), unfoldable BN becomes an
``nn.BatchNorm*d``; every other op is copied, with the arguments that encode a channel count
rewritten - channel slices, split sizes, channel padding amounts, reshape targets. Every tensor
shrinks at the same positions, so residual streams narrow for real and no scatter/expand module
is needed. The result depends only on torch: it saves with ``torch.save``/``torch.export`` and
exports to ONNX without edgeprune installed.
"""

from __future__ import annotations

import operator
from collections import defaultdict
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import fx, nn
from torch.nn.utils import skip_init

from edgeprune.graph.ops import family_of
from edgeprune.simplify.plan import LayerPlan, Plan

SOURCE_KEY = "edgeprune_source"  # node.meta key: the traced node whose (kept channels of the) value this is

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
aten = torch.ops.aten


class _ParamRef:
    """A traced parameter/buffer, materialised (sliced) only where a copied op uses it."""

    def __init__(self, name: str) -> None:
        self.name = name


def build_model(plan: Plan) -> fx.GraphModule:
    """The simplified model in float64 (callers cast it to float32 once it has been verified)."""
    return _Builder(plan).build()


class _Builder:
    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.traced = plan.traced
        self.ana = plan.graph.analysis
        self.graph = fx.Graph()
        self.root: dict[str, Any] = {}
        self.env: dict[str, Any] = {}
        self.attr_nodes: dict[str, fx.Node] = {}
        self.is_parameter = set(self.traced.program.graph_signature.inputs_to_parameters.values())
        self.entries: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
        for e in self.ana.entries:
            self.entries[e.name].append((e.dim, e.index, e.atom))
        self.sites_per_weight: dict[str, int] = defaultdict(int)
        for lp in plan.layers.values():
            self.sites_per_weight[lp.info.weight] += 1
        self.shared_targets: dict[str, str] = {}
        self.folded = {lp.folded_bn: lp for lp in plan.layers.values() if lp.folded_bn}
        self.removed = plan.removed

    # -- graph assembly ---------------------------------------------------------------------
    def build(self) -> fx.GraphModule:
        for node in self.traced.graph.nodes:
            self.visit(node)
        gm = fx.GraphModule(self.root, self.graph)
        gm.graph.eliminate_dead_code()
        gm.graph.lint()
        gm.recompile()
        return gm.eval()

    def arg(self, value: Any) -> Any:
        """Map an argument of a traced node to the new graph (parameters sliced on demand)."""

        def one(n: fx.Node) -> Any:
            v = self.env[n.name]
            return self.param_node(v.name) if isinstance(v, _ParamRef) else v

        return fx.map_arg(value, one)

    def unique_target(self, wanted: str) -> str:
        target, k = wanted, 1
        while target in self.root:
            k += 1
            target = f"{wanted}_{k}"
        return target

    def add_module(self, wanted: str, module: nn.Module) -> str:
        target = self.unique_target(wanted)
        self.root[target] = module
        return target

    def constant(self, wanted: str, tensor: torch.Tensor, parameter: bool = False) -> fx.Node:
        target = self.unique_target(wanted.replace(".", "_"))
        self.root[target] = nn.Parameter(tensor, requires_grad=False) if parameter else tensor
        return self.graph.get_attr(target)

    def param_node(self, name: str) -> fx.Node:
        """A get_attr for a traced tensor with its removed channels sliced away."""
        if name not in self.attr_nodes:
            tensor = self.traced.tensors[name].detach()
            tensor = tensor.double() if tensor.is_floating_point() else tensor
            for dim, keep in self.kept_entries(name).items():
                tensor = tensor.index_select(dim, torch.tensor(keep, dtype=torch.long))
            self.attr_nodes[name] = self.constant(name, tensor.clone(), parameter=name in self.is_parameter)
        return self.attr_nodes[name]

    def kept_entries(self, name: str) -> dict[int, list[int]]:
        """For each channel axis of a tensor: the indices whose channel survives."""
        by_dim: dict[int, list[tuple[int, int]]] = defaultdict(list)
        for dim, index, atom in self.entries.get(name, ()):
            by_dim[dim].append((index, atom))
        size = self.traced.tensors[name].shape
        kept = {}
        for dim, pairs in by_dim.items():
            removed = {i for i, atom in pairs if self.ana.find(atom) in self.plan.removed}
            if removed:
                kept[dim] = [i for i in range(size[dim]) if i not in removed]
        return kept

    def kept_positions(self, node_name: str) -> list[int]:
        """Positions along the channel axis of a traced node's output that survive."""
        positions = self.plan.kept_positions(node_name)
        assert positions is not None, f"{node_name} has no channel axis; only channel-carrying nodes are asked"
        return positions

    def call_new_module(self, wanted: str, module: nn.Module, x: fx.Node, source: str) -> fx.Node:
        """Add ``module`` under a unique name near ``wanted`` and call it on ``x``."""
        out = self.graph.call_module(self.add_module(wanted, module), (x,))
        out.meta[SOURCE_KEY] = source
        return out

    def emit(self, target: Any, args: tuple, source: str | None, kwargs: dict | None = None) -> fx.Node:
        node = self.graph.call_function(target, args, kwargs or {})
        if source:
            node.meta[SOURCE_KEY] = source
        return node

    # -- dispatch ---------------------------------------------------------------------------
    def visit(self, node: fx.Node) -> None:
        if node.op == "placeholder":
            if node.name == self.traced.input_node:
                self.env[node.name] = self.graph.placeholder(node.name)
            else:
                self.env[node.name] = _ParamRef(self.traced.param_names[node.name])
            return
        if node.op == "output":  # the export graph returns a flat tuple; restore the model's own structure
            flat = list(self.arg(node.args[0]))
            self.graph.output(pytree.tree_unflatten(flat, self.traced.program.call_spec.out_spec))
            return
        if node.name in self.folded:
            return  # the layer before it already produced its output
        if node.name in self.plan.layers:
            self.layer(node, self.plan.layers[node.name])
            return
        if node.target is operator.getitem and isinstance(self.env[node.args[0].name], tuple):
            self.env[node.name] = self.env[node.args[0].name][node.args[1]]
            return
        family = family_of(node)
        if family is None or not family.rewrite(self, node):
            self.copy(node)

    def copy(self, node: fx.Node, args: tuple | None = None) -> None:
        new = (
            self.graph.node_copy(node, self.arg)
            if args is None
            else self.emit(node.target, self.arg(args), None, self.arg(node.kwargs))
        )
        new.meta = {SOURCE_KEY: node.name}
        self.env[node.name] = new

    # -- layers -----------------------------------------------------------------------------
    def layer(self, node: fx.Node, lp: LayerPlan) -> None:
        info = lp.info
        out_keep = self.plan.kept_positions(node.name)
        in_keep = self.plan.kept_positions(info.input_node)
        weight = lp.weight[out_keep]
        if not info.depthwise:
            weight = weight[:, in_keep]
        bias = None if lp.bias is None else lp.bias[out_keep]
        delta = None if lp.delta is None else lp.delta[out_keep]
        shared = self.sites_per_weight[info.weight] > 1
        if delta is not None and not shared:
            bias = delta if bias is None else bias + delta
            delta = None
        target = self.shared_targets.get(info.weight) if shared else None
        if target is None:
            target = self.add_module(info.module or node.name, _make_layer(lp, weight, bias))
            if shared:
                self.shared_targets[info.weight] = target
        x = self.env[info.input_node]
        out = self.graph.call_module(target, (x,))
        if lp.border is not None:
            kernel = lp.border[out_keep]
            border = self.add_module(f"{target}_border", _make_conv(kernel, None, lp, groups=1))
            correction = self.graph.call_module(border, (self.ones_map(x, kernel.dim() - 2),))
            out = self.emit(aten.add.Tensor, (out, correction), None)
        if lp.border_map is not None:
            correction = self.constant(f"{target}_border_map", lp.border_map[:, out_keep])
            out = self.emit(aten.add.Tensor, (out, correction), None)
        if delta is not None:
            shape = (-1,) + (1,) * (weight.dim() - 2)
            out = self.emit(aten.add.Tensor, (out, self.constant(f"{target}_constant", delta.reshape(shape))), None)
        source = lp.folded_bn or node.name
        out.meta[SOURCE_KEY] = source
        self.env[node.name] = out
        if lp.folded_bn:
            bn = self.ana.vectors.get(lp.folded_bn)
            self.env[lp.folded_bn] = (out, None, None) if isinstance(bn, tuple) else out

    def ones_map(self, x: fx.Node, spatial_dims: int) -> fx.Node:
        """A (1, 1, *spatial) ones tensor with ``x``'s spatial size, dtype and device.

        Built from ``x``'s size at run time, so the model keeps accepting any resolution; an export
        with static shapes sees a constant and converters can fold the whole correction into one.
        """
        spatial = [self.emit(aten.sym_size.int, (x, d), None) for d in range(2, 2 + spatial_dims)]
        return self.emit(aten.new_ones.default, (x, [1, 1, *spatial]), None)


def _make_layer(lp: LayerPlan, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    if lp.info.kind == "linear":
        layer = skip_init(nn.Linear, weight.shape[1], weight.shape[0], bias=bias is not None, dtype=torch.float64)
        layer.weight = nn.Parameter(weight.clone())
        if bias is not None:
            layer.bias = nn.Parameter(bias.clone())
        return layer
    return _make_conv(weight, bias, lp, groups=weight.shape[0] if lp.info.depthwise else 1)


def _make_conv(weight: torch.Tensor, bias: torch.Tensor | None, lp: LayerPlan, groups: int) -> nn.Module:
    info = lp.info
    conv = skip_init(
        _CONV[weight.dim() - 2],
        weight.shape[1] * groups,
        weight.shape[0],
        tuple(weight.shape[2:]),
        stride=info.stride,
        padding=info.padding,
        dilation=info.dilation,
        groups=groups,
        bias=bias is not None,
        dtype=torch.float64,
    )
    conv.weight = nn.Parameter(weight.clone())
    if bias is not None:
        conv.bias = nn.Parameter(bias.clone())
    return conv
