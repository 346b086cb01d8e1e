"""Union-find over channels: which channels of which tensors must be removed together.

Every channel that comes into existence in the graph - an output channel of a Conv/Linear, a
channel of the model input, a zero channel inserted by ``F.pad`` on the channel axis, an output
channel of an operation we cannot reason about - is an *atom*. Each tensor carries the list of
atoms along its channel axis (``ChannelAnalysis.vectors``): pass-through ops (activations, BN,
pooling) keep the list, ``cat`` concatenates lists, channel slices/splits cut them, ``flatten``
before a Linear repeats each atom over its H*W features. Element-wise binary ops (the residual
``add``) *unite* the atoms they combine position by position; a parameter entry used at two call
sites (a reused module) unites the atoms it serves. The resulting classes are the channels that
live or die together.

Classes are bundled into groups (one per "channel space": all channels of one producer, plus
everything united with them), because that is the granularity pruning reasons about - a residual
stream, the output of one conv. Unknown ops and reshapes that move the channel axis *freeze*
the atoms they touch; so do the model input and output.
"""

from __future__ import annotations

import math
import operator
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx

from edgeprune.graph.trace import TracedModel

# Ops that keep the channel axis and act on every channel independently (values may change, the
# channel's identity does not). Constant-preservation is not assumed: simplify measures it.
PASS_THROUGH = frozenset({
    "relu", "relu_", "relu6", "hardtanh", "hardtanh_", "leaky_relu", "leaky_relu_", "sigmoid", "silu",
    "silu_", "gelu", "hardswish", "hardswish_", "hardsigmoid", "tanh", "elu", "selu", "celu", "mish",
    "softplus", "dropout", "feature_dropout", "alpha_dropout", "clone", "contiguous", "alias", "detach",
    "_to_copy", "to", "type_as", "max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d",
    "avg_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d",
    "adaptive_max_pool2d", "adaptive_max_pool3d", "max_pool2d_with_indices", "max_pool3d_with_indices",
    "upsample_nearest1d", "upsample_nearest2d", "upsample_nearest3d", "upsample_bilinear2d",
    "upsample_linear1d", "upsample_trilinear3d", "abs", "neg", "exp", "log", "sqrt", "rsqrt", "square",
    "pow", "clamp", "clamp_min", "clamp_max", "hardshrink", "softshrink", "log_sigmoid", "erf",
})
ELEMENTWISE_BINARY = frozenset({"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "maximum", "minimum"})
MULTIPLICATIVE = frozenset({"mul", "mul_", "div", "div_"})
CONV = frozenset({"conv1d", "conv2d", "conv3d"})
BATCH_NORM = frozenset({"batch_norm", "_native_batch_norm_legit_no_training"})
REDUCTIONS = frozenset({"mean", "sum", "amax", "amin"})
SHAPE_QUERIES = frozenset({"sym_size", "sym_numel", "sym_stride", "_assert_scalar", "sym_constrain_range_for_size",
                           "_assert_tensor_metadata", "sym_constrain_range"})


def op_name(node: fx.Node) -> str:
    """``aten.relu.default`` -> ``relu``; Python callables by their ``__name__``."""
    target = node.target
    packet = getattr(target, "_overloadpacket", None)
    if packet is not None:
        return packet.__name__
    return getattr(target, "__name__", str(target))


@dataclass
class LayerInfo:
    """A Conv/Linear call site: which parameters it uses and how its channels relate."""

    node: str
    kind: str  # "conv" or "linear"
    weight: str
    bias: str | None
    input_node: str
    depthwise: bool = False
    groups: int = 1
    stride: tuple[int, ...] = (1,)
    padding: tuple[int, ...] = (0,)
    dilation: tuple[int, ...] = (1,)
    module: str | None = None


@dataclass
class Entry:
    """One tensor entry (a row, a column, a BN value) owned by an atom."""

    role: str  # "producer", "bias" or "consumer"
    name: str
    dim: int
    index: int
    atom: int


@dataclass
class ChannelAnalysis:
    """The raw result: atoms, their classes, tensor channel vectors, parameter entries."""

    traced: TracedModel
    parent: list[int] = field(default_factory=list)
    space: list[int] = field(default_factory=list)
    frozen: dict[int, str] = field(default_factory=dict)
    gated: set[int] = field(default_factory=set)
    vectors: dict[str, Any] = field(default_factory=dict)
    entries: list[Entry] = field(default_factory=list)
    layers: dict[str, LayerInfo] = field(default_factory=dict)
    _owner: dict[tuple[str, int, int], int] = field(default_factory=dict)
    _spaces: int = 0

    # -- union-find -------------------------------------------------------------------------
    def new_atoms(self, n: int) -> list[int]:
        """``n`` fresh atoms forming one new channel space."""
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        self.space.extend([self._spaces] * n)
        self._spaces += 1
        return list(range(start, start + n))

    def find(self, a: int) -> int:
        root = a
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[a] != root:
            self.parent[a], a = root, self.parent[a]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def freeze(self, vector: Any, reason: str) -> None:
        for a in flat_atoms(vector):
            self.frozen.setdefault(a, reason)

    def add_entry(self, role: str, name: str, dim: int, index: int, atom: int) -> None:
        """Attach a tensor entry to an atom; an entry already owned elsewhere unites the two."""
        key = (name, dim, index)
        if key in self._owner:
            self.union(self._owner[key], atom)
            return
        self._owner[key] = atom
        self.entries.append(Entry(role, name, dim, index, atom))

    # -- class views ------------------------------------------------------------------------
    def class_frozen(self) -> dict[int, str]:
        reasons: dict[int, str] = {}
        for a, why in sorted(self.frozen.items()):
            reasons.setdefault(self.find(a), why)
        return reasons

    def class_gated(self) -> set[int]:
        return {self.find(a) for a in self.gated}


def flat_atoms(vector: Any) -> list[int]:
    """All atoms in a (possibly nested tuple/list of) channel vector(s)."""
    if vector is None:
        return []
    if isinstance(vector, ChannelVector):
        return list(vector.atoms)
    if isinstance(vector, (tuple, list)):
        return [a for v in vector for a in flat_atoms(v)]
    return []


@dataclass(frozen=True)
class ChannelVector:
    """The atoms along the channel axis (dim 1) of one tensor."""

    atoms: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.atoms)


def analyze_channels(traced: TracedModel) -> ChannelAnalysis:
    """Walk the graph once in topological order, applying each op's channel rule."""
    ana = ChannelAnalysis(traced)
    rules = _Rules(ana)
    for node in traced.graph.nodes:
        rules.visit(node)
    return ana


class _Rules:
    """The per-op channel rules (one method per family of ops)."""

    def __init__(self, ana: ChannelAnalysis) -> None:
        self.ana = ana
        self.traced = ana.traced
        self.vec = ana.vectors

    # -- helpers ----------------------------------------------------------------------------
    def value(self, node: fx.Node) -> Any:
        return self.traced.values.get(node.name)

    def vector_of(self, arg: Any) -> ChannelVector | None:
        if isinstance(arg, fx.Node):
            v = self.vec.get(arg.name)
            return v if isinstance(v, ChannelVector) else None
        return None

    def fresh_for(self, node: fx.Node, frozen_reason: str | None = None) -> Any:
        """Fresh atoms for every channelled tensor in ``node``'s output (tuples handled)."""
        out = self.value(node)

        def make(v: Any) -> Any:
            if isinstance(v, torch.Tensor):
                if v.dim() < 2:
                    return None
                vector = ChannelVector(tuple(self.ana.new_atoms(v.shape[1])))
                if frozen_reason:
                    self.ana.freeze(vector, frozen_reason)
                return vector
            if isinstance(v, (tuple, list)):
                return tuple(make(x) for x in v)
            return None

        return make(out)

    def freeze_inputs(self, node: fx.Node, reason: str) -> None:
        for arg in node.all_input_nodes:
            self.ana.freeze(self.vec.get(arg.name), reason)

    def unknown(self, node: fx.Node, reason: str | None = None) -> None:
        why = reason or f"unsupported operation {node.target}"
        self.freeze_inputs(node, why)
        self.vec[node.name] = self.fresh_for(node, why)

    # -- dispatch ---------------------------------------------------------------------------
    def visit(self, node: fx.Node) -> None:
        if node.op == "placeholder":
            if node.name == self.traced.input_node:
                self.vec[node.name] = self.fresh_for(node, "model input")
            return
        if node.op == "output":
            self.ana.freeze([self.vec.get(a.name) for a in node.all_input_nodes], "model output")
            return
        if node.op != "call_function":
            self.unknown(node)
            return
        if node.target is operator.getitem:
            src = self.vec.get(node.args[0].name)
            self.vec[node.name] = src[node.args[1]] if isinstance(src, tuple) else None
            if not isinstance(src, tuple):
                self.unknown(node)
            return
        name = op_name(node)
        if name in SHAPE_QUERIES or not isinstance(self.value(node), (torch.Tensor, tuple, list)):
            return
        handler = getattr(self, f"op_{name}", None)
        if handler is not None:
            handler(node)
        elif name in PASS_THROUGH:
            self.pass_through(node)
        elif name in ELEMENTWISE_BINARY:
            self.binary(node, name)
        elif name in CONV:
            self.conv(node)
        elif name in BATCH_NORM:
            self.batch_norm(node)
        elif name in REDUCTIONS:
            self.reduction(node)
        else:
            self.unknown(node)

    # -- rules ------------------------------------------------------------------------------
    def pass_through(self, node: fx.Node, per_channel: tuple[fx.Node, ...] = ()) -> None:
        """Same channels out as in; ``per_channel`` names tensor operands known to be per-channel."""
        src = self.vector_of(node.args[0])
        out = self.value(node)
        others = [a for a in node.all_input_nodes if a is not node.args[0] and a not in per_channel]
        if src is None or any(isinstance(self.value(a), torch.Tensor) for a in others):
            self.unknown(node)  # a second tensor operand (clamp(x, t), pow(x, t)) may mix channels
        elif isinstance(out, tuple):  # max_pool2d_with_indices: values and indices share channels
            self.vec[node.name] = tuple(src if isinstance(o, torch.Tensor) and o.dim() >= 2 else None for o in out)
        elif isinstance(out, torch.Tensor) and out.dim() >= 2 and out.shape[1] == len(src):
            self.vec[node.name] = src
        else:
            self.unknown(node)

    def op_prelu(self, node: fx.Node) -> None:
        self.pass_through(node, per_channel=(node.args[1],))
        vector = self.vec.get(node.name)
        if isinstance(vector, ChannelVector):
            self.per_channel_params(node, vector, node.args[1:2], self.value(node))

    def per_channel_params(self, node: fx.Node, vector: ChannelVector, args: Any, activation: torch.Tensor) -> bool:
        """Attach per-channel parameters (BN, PReLU, affine constants) to the atoms they scale.

        Returns False (after freezing) when a parameter is neither per-channel nor a scalar.
        """
        for arg in args:
            name, t = self.traced.name_of(arg), self.traced.tensor_of(arg)
            if name is None or t is None or t.numel() == 1:
                continue
            dim = channel_dim_of_param(t, activation, broadcast=op_name(node) in ELEMENTWISE_BINARY)
            if dim is None or t.shape[dim] != len(vector):
                self.unknown(node, f"parameter {name} of {node.target} is not per-channel")
                return False
            for i, atom in enumerate(vector.atoms):
                self.ana.add_entry("bias", name, dim, i, atom)
        return True

    def batch_norm(self, node: fx.Node) -> None:
        src = self.vector_of(node.args[0])
        if src is None:
            self.unknown(node)
            return
        out = self.value(node)
        self.vec[node.name] = (src, None, None) if isinstance(out, tuple) else src
        self.per_channel_params(node, src, node.args[1:5], self.value(node.args[0]))

    def binary(self, node: fx.Node, name: str) -> None:
        a, b = node.args[0], node.args[1] if len(node.args) > 1 else None
        va, vb = self.vector_of(a), self.vector_of(b)
        out = self.value(node)
        if not isinstance(out, torch.Tensor) or out.dim() < 2:
            self.unknown(node)
            return
        if va is not None and vb is not None:
            if len(va) != len(vb) or len(va) != out.shape[1]:
                self.unknown(node, f"{node.target} broadcasts over the channel axis")
                return
            for x, y in zip(va.atoms, vb.atoms, strict=True):
                self.ana.union(x, y)
            if name in MULTIPLICATIVE:
                self.ana.gated.update(va.atoms)
            self.vec[node.name] = va
            return
        vector, other = (va, b) if va is not None else (vb, a)
        if vector is None or len(vector) != out.shape[1]:
            self.unknown(node)
            return
        self.vec[node.name] = vector
        if isinstance(other, fx.Node) and self.traced.name_of(other) is None:
            self.unknown(node, f"{node.target} combines a channel with a computed tensor")
            return
        self.per_channel_params(node, vector, [other], out)

    def conv(self, node: fx.Node) -> None:
        x, w = node.args[0], node.args[1]
        bias = node.args[2] if len(node.args) > 2 else None
        groups = node.args[6] if len(node.args) > 6 else node.kwargs.get("groups", 1)
        src, wname, weight = self.vector_of(x), self.traced.name_of(w), self.traced.tensor_of(w)
        padding = node.args[4] if len(node.args) > 4 else 0
        if src is None or wname is None or weight is None or isinstance(padding, str):
            self.unknown(node, f"convolution {node.name} has computed weights or string padding")
            return
        spatial = weight.dim() - 2
        layer = LayerInfo(
            node.name, "conv", wname, self.traced.name_of(bias), x.name, groups=groups,
            stride=_tuple(node.args[3] if len(node.args) > 3 else 1, spatial),
            padding=_tuple(padding, spatial),
            dilation=_tuple(node.args[5] if len(node.args) > 5 else 1, spatial),
            module=module_path(node, wname),
        )
        cout, cin = weight.shape[0], len(src)
        if groups == 1:
            out = self.produce(node, layer, cout)
            for i, atom in enumerate(src.atoms):
                self.ana.add_entry("consumer", wname, 1, i, atom)
        elif groups == cin == cout:
            layer.depthwise = True
            out = self.produce(node, layer, cout)
            for a, b in zip(out.atoms, src.atoms, strict=True):
                self.ana.union(a, b)
        else:
            self.unknown(node, f"grouped convolution {layer.module or node.name} (groups={groups})")
            return
        self.ana.layers[node.name] = layer

    def produce(self, node: fx.Node, layer: LayerInfo, n: int) -> ChannelVector:
        out = ChannelVector(tuple(self.ana.new_atoms(n)))
        self.vec[node.name] = out
        for j, atom in enumerate(out.atoms):
            self.ana.add_entry("producer", layer.weight, 0, j, atom)
            if layer.bias:
                self.ana.add_entry("bias", layer.bias, 0, j, atom)
        return out

    def op_linear(self, node: fx.Node) -> None:
        x, w = node.args[0], node.args[1]
        bias = node.args[2] if len(node.args) > 2 else None
        src, wname = self.vector_of(x), self.traced.name_of(w)
        xv = self.value(x)
        if src is None or wname is None or not isinstance(xv, torch.Tensor) or xv.dim() != 2:
            self.unknown(node, f"linear {node.name} on a non-2-D input or with computed weights")
            return
        layer = LayerInfo(
            node.name, "linear", wname, self.traced.name_of(bias), x.name, module=module_path(node, wname)
        )
        self.produce(node, layer, self.traced.tensors[wname].shape[0])
        for i, atom in enumerate(src.atoms):
            self.ana.add_entry("consumer", wname, 1, i, atom)
        self.ana.layers[node.name] = layer

    def op_cat(self, node: fx.Node) -> None:
        parts = [self.vector_of(t) for t in node.args[0]]
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        out = self.value(node)
        if any(p is None for p in parts) or not isinstance(out, torch.Tensor):
            self.unknown(node)
            return
        dim = dim % out.dim()
        if dim == 1:
            self.vec[node.name] = ChannelVector(tuple(a for p in parts for a in p.atoms))
            return
        first = parts[0]
        for p in parts[1:]:
            if len(p) != len(first):
                self.unknown(node)
                return
            for x, y in zip(first.atoms, p.atoms, strict=True):
                self.ana.union(x, y)
        self.vec[node.name] = first

    def op_slice(self, node: fx.Node) -> None:
        src = self.vector_of(node.args[0])
        out = self.value(node)
        if src is None or not isinstance(out, torch.Tensor):
            self.unknown(node)
            return
        dim = (node.args[1] if len(node.args) > 1 else 0) % out.dim()
        if dim != 1:
            self.vec[node.name] = src if out.shape[1] == len(src) else None
            if out.shape[1] != len(src):
                self.unknown(node)
            return
        start = node.args[2] if len(node.args) > 2 else None
        end = node.args[3] if len(node.args) > 3 else None
        step = node.args[4] if len(node.args) > 4 else 1
        if not all(v is None or isinstance(v, int) for v in (start, end, step)):
            self.unknown(node, "channel slice with symbolic bounds")
            return
        self.vec[node.name] = ChannelVector(src.atoms[slice(start, end, step)])

    def op_split(self, node: fx.Node) -> None:
        self.split(node)

    def op_split_with_sizes(self, node: fx.Node) -> None:
        self.split(node)

    def op_chunk(self, node: fx.Node) -> None:
        self.split(node)

    def split(self, node: fx.Node) -> None:
        src = self.vector_of(node.args[0])
        out = self.value(node)
        dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
        if src is None or not isinstance(out, (tuple, list)):
            self.unknown(node)
            return
        if dim % out[0].dim() != 1:
            self.vec[node.name] = tuple(src for _ in out)
            return
        pieces, start = [], 0
        for o in out:
            pieces.append(ChannelVector(src.atoms[start:start + o.shape[1]]))
            start += o.shape[1]
        self.vec[node.name] = tuple(pieces)

    def op_pad(self, node: fx.Node) -> None:
        self.pad(node, node.args[1], node.args[2] if len(node.args) > 2 else "constant")

    def op_constant_pad_nd(self, node: fx.Node) -> None:
        self.pad(node, node.args[1], "constant")

    def pad(self, node: fx.Node, amounts: list[int], mode: str) -> None:
        """Spatial padding keeps channels; padding the channel axis inserts constant channels."""
        src = self.vector_of(node.args[0])
        out = self.value(node)
        if src is None or not isinstance(out, torch.Tensor):
            self.unknown(node)
            return
        pair = 2 * (out.dim() - 2)  # amounts list from the last dim backwards; dim 1 is pair (ndim-2)
        before, after = (amounts[pair], amounts[pair + 1]) if len(amounts) > pair + 1 else (0, 0)
        if before == after == 0:
            self.vec[node.name] = src
            return
        if mode != "constant" or not all(isinstance(v, int) and v >= 0 for v in (before, after)):
            self.unknown(node, "padding of the channel axis that is not constant")
            return
        front = self.ana.new_atoms(before)
        back = self.ana.new_atoms(after)
        self.vec[node.name] = ChannelVector(tuple(front) + src.atoms + tuple(back))

    def op_flatten(self, node: fx.Node) -> None:
        src = self.vector_of(node.args[0])
        xv, out = self.value(node.args[0]), self.value(node)
        start = node.args[1] if len(node.args) > 1 else 0
        end = node.args[2] if len(node.args) > 2 else -1
        if src is None or not isinstance(out, torch.Tensor):
            self.unknown(node)
            return
        start, end = start % xv.dim(), end % xv.dim()
        if start >= 2:
            self.vec[node.name] = src
        elif start == 1 and end == xv.dim() - 1:
            self.vec[node.name] = self.flattened(src, xv)
        else:
            self.unknown(node, "flatten that merges the batch and channel axes")

    def flattened(self, src: ChannelVector, xv: torch.Tensor) -> ChannelVector:
        """Flatten (N, C, *S) -> (N, C*prod(S)): channel c owns features [c*prod(S), (c+1)*prod(S))."""
        block = math.prod(xv.shape[2:])
        return ChannelVector(tuple(a for a in src.atoms for _ in range(block)))

    def op_view(self, node: fx.Node) -> None:
        self.reshape(node)

    def op_reshape(self, node: fx.Node) -> None:
        self.reshape(node)

    def op__unsafe_view(self, node: fx.Node) -> None:
        self.reshape(node)

    def reshape(self, node: fx.Node) -> None:
        src = self.vector_of(node.args[0])
        xv, out = self.value(node.args[0]), self.value(node)
        if src is None or not isinstance(out, torch.Tensor) or out.dim() < 2 or out.shape[0] != xv.shape[0]:
            self.unknown(node, "reshape that moves the channel axis")
        elif out.dim() == 2 and xv.dim() > 2:
            self.vec[node.name] = self.flattened(src, xv)
        elif out.dim() >= 2 and out.shape[1] == xv.shape[1] and xv.dim() >= 2:
            self.vec[node.name] = src
        else:
            self.unknown(node, "reshape that moves the channel axis")

    def reduction(self, node: fx.Node) -> None:
        src = self.vector_of(node.args[0])
        xv, out = self.value(node.args[0]), self.value(node)
        dims = node.args[1] if len(node.args) > 1 else None
        keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
        if src is None or dims is None or not isinstance(out, torch.Tensor):
            self.unknown(node, "reduction over all axes")
            return
        dims = [d % xv.dim() for d in (dims if isinstance(dims, (list, tuple)) else [dims])]
        if 1 in dims or 0 in dims and not keepdim:
            self.unknown(node, "reduction over the channel or batch axis")
            return
        self.vec[node.name] = src if out.dim() >= 2 else None

    def op_softmax(self, node: fx.Node) -> None:
        self.along_dim(node)

    def op__softmax(self, node: fx.Node) -> None:
        self.along_dim(node)

    def op_log_softmax(self, node: fx.Node) -> None:
        self.along_dim(node)

    def op__log_softmax(self, node: fx.Node) -> None:
        self.along_dim(node)

    def along_dim(self, node: fx.Node) -> None:
        """Ops normalising along one axis: channel-mixing on dim 1, pass-through elsewhere."""
        out = self.value(node)
        dim = node.args[1] % out.dim()
        if dim == 1:
            self.unknown(node, f"{op_name(node)} across channels")
        else:
            self.pass_through(node)


def _tuple(v: Any, n: int) -> tuple[int, ...]:
    if isinstance(v, (list, tuple)):
        return tuple(int(x) for x in v) if len(v) == n else tuple(int(v[0]) for _ in range(n))
    return tuple(int(v) for _ in range(n))


def channel_dim_of_param(t: torch.Tensor, activation: Any, broadcast: bool) -> int | None:
    """Which axis of a parameter runs along the activation's channel axis (dim 1).

    BN/PReLU take a 1-D per-channel vector; an operand of a broadcasting op (``x * scale``) is
    aligned from the last axis, so a 1-D tensor there only meets the channels of a (N, F) input.
    """
    if t.dim() == 1 and not broadcast:
        return 0
    if isinstance(activation, torch.Tensor) and t.dim() <= activation.dim():
        dim = 1 - (activation.dim() - t.dim())
        if dim >= 0 and all(s == 1 for i, s in enumerate(t.shape) if i != dim):
            return dim
    return None


def module_path(node: fx.Node, weight_name: str) -> str | None:
    """The leaf module that owns the call (from ``nn_module_stack``), else the weight's prefix."""
    stack = node.meta.get("nn_module_stack")
    if stack:
        path = list(stack.values())[-1][0]
        if path:
            return path
    prefix, _, leaf = weight_name.rpartition(".")
    return prefix if leaf == "weight" and prefix else None


def classes_by_group(ana: ChannelAnalysis) -> list[list[int]]:
    """Class roots bundled into groups: one channel space and everything united with it."""
    parent = list(range(len(ana.parent)))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    first_of_space: dict[int, int] = {}
    for atom in range(len(ana.parent)):
        for other in (ana.find(atom), first_of_space.setdefault(ana.space[atom], atom)):
            ra, rb = find(atom), find(other)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = defaultdict(list)
    seen: set[int] = set()
    for atom in range(len(ana.parent)):
        root = ana.find(atom)
        if root not in seen:
            seen.add(root)
            groups[find(atom)].append(root)
    return [groups[k] for k in sorted(groups)]
