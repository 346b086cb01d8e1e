"""One class per operator family: how its arguments are read, how channels flow through it, and
how it is rewritten when channels are removed.

The channel analysis (:func:`analyze_channels`) and the simplify rewriter both dispatch through
the same registry, so the index arithmetic of a channel slice, a split, a channel pad or a
reshape is written once and cannot disagree between "which channels are coupled" and "which
arguments change when some of them go".

Adding an operator is one class in one file::

    from edgeprune.graph.ops import OpFamily, register_op

    class Flip(OpFamily):
        names = frozenset({"flip"})

        def couple(self, ctx, node):
            if 1 in [d % ctx.value(node).dim() for d in node.args[1]]:
                ctx.unknown(node, "flip of the channel axis")
            else:
                ctx.vec[node.name] = ctx.vector_of(node.args[0])

    register_op(Flip())

An op with no family freezes every channel it touches (safe: nothing is pruned through it).
A family whose arguments do not count channels keeps the default :meth:`OpFamily.rewrite`, which
copies the op unchanged.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, TypeVar

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights, fuse_linear_bn_weights

from edgeprune.graph.coupling import (
    ChannelAnalysis,
    ChannelVector,
    CouplingContext,
    LayerInfo,
    module_path,
    op_name,
)
from edgeprune.graph.trace import TracedModel

aten = torch.ops.aten

# Ops whose output does not depend on values (shape queries, assertions): no channel rule needed.
SHAPE_QUERIES = frozenset(
    {
        "sym_size",
        "sym_numel",
        "sym_stride",
        "_assert_scalar",
        "sym_constrain_range_for_size",
        "_assert_tensor_metadata",
        "sym_constrain_range",
    }
)


class SimplifyContext(Protocol):
    """What a family's :meth:`OpFamily.rewrite` may use of the simplify rewriter."""

    ana: ChannelAnalysis
    traced: TracedModel
    env: dict[str, Any]  # traced node name -> node (or tuple of nodes) of the new graph
    removed: set[int]  # class roots of the removed channels

    def kept_positions(self, node_name: str) -> list[int]: ...
    def emit(self, target: Any, args: tuple, source: str | None, kwargs: dict | None = None) -> fx.Node: ...
    def copy(self, node: fx.Node, args: tuple | None = None) -> None: ...
    def call_new_module(self, wanted: str, module: nn.Module, x: fx.Node, source: str) -> fx.Node: ...
    def constant(self, wanted: str, tensor: torch.Tensor, parameter: bool = False) -> fx.Node: ...


class OpFamily:
    """Base class: the aten op names (overload packets) it handles and its two rules."""

    names: ClassVar[frozenset[str]] = frozenset()

    def couple(self, ctx: CouplingContext, node: fx.Node) -> None:
        """Set ``ctx.vec[node.name]`` (the output's channel atoms) and unite/freeze atoms."""
        ctx.unknown(node)

    def rewrite(self, ctx: SimplifyContext, node: fx.Node) -> bool:
        """Emit the op with removed channels accounted for; False copies it unchanged."""
        return False


_REGISTRY: dict[str, OpFamily] = {}
_Family = TypeVar("_Family", bound=OpFamily)


def register_op(family: _Family) -> _Family:
    """Make ``family`` handle each of its ``names`` (replacing an earlier family for a name)."""
    for name in family.names:
        _REGISTRY[name] = family
    return family


def family_of(node: fx.Node) -> OpFamily | None:
    """The family handling a ``call_function`` node, if any."""
    return _REGISTRY.get(op_name(node)) if node.op == "call_function" else None


def analyze_channels(traced: TracedModel) -> ChannelAnalysis:
    """Walk the graph once in topological order, applying each op's channel rule."""
    ctx = CouplingContext(ChannelAnalysis(traced))
    for node in traced.graph.nodes:
        _couple(ctx, node)
    return ctx.ana


def _couple(ctx: CouplingContext, node: fx.Node) -> None:
    if node.op == "placeholder":
        if node.name == ctx.traced.input_node:
            ctx.vec[node.name] = ctx.fresh_for(node, "model input")
        return
    if node.op == "output":
        ctx.ana.freeze([ctx.vec.get(a.name) for a in node.all_input_nodes], "model output")
        return
    if node.op != "call_function":
        ctx.unknown(node)
        return
    if node.target is operator.getitem:
        src = ctx.vec.get(node.args[0].name)
        if isinstance(src, tuple):
            ctx.vec[node.name] = src[node.args[1]]
        else:
            ctx.unknown(node)
        return
    if op_name(node) in SHAPE_QUERIES or not isinstance(ctx.value(node), (torch.Tensor, tuple, list)):
        return
    family = family_of(node)
    if family is None:
        ctx.unknown(node)
    else:
        family.couple(ctx, node)


def _arg(node: fx.Node, index: int, name: str, default: Any) -> Any:
    """A positional-or-keyword argument of an aten call."""
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


# -- channel-preserving ops --------------------------------------------------------------------


class PassThrough(OpFamily):
    """Same channels out as in; values may change, a channel's identity does not."""

    names = frozenset(
        {
            "relu",
            "relu_",
            "relu6",
            "hardtanh",
            "hardtanh_",
            "leaky_relu",
            "leaky_relu_",
            "sigmoid",
            "silu",
            "silu_",
            "gelu",
            "hardswish",
            "hardswish_",
            "hardsigmoid",
            "tanh",
            "elu",
            "selu",
            "celu",
            "mish",
            "softplus",
            "dropout",
            "feature_dropout",
            "alpha_dropout",
            "clone",
            "contiguous",
            "alias",
            "detach",
            "_to_copy",
            "to",
            "type_as",
            "max_pool1d",
            "max_pool2d",
            "max_pool3d",
            "avg_pool1d",
            "avg_pool2d",
            "avg_pool3d",
            "adaptive_avg_pool1d",
            "adaptive_avg_pool2d",
            "adaptive_avg_pool3d",
            "adaptive_max_pool1d",
            "adaptive_max_pool2d",
            "adaptive_max_pool3d",
            "max_pool2d_with_indices",
            "max_pool3d_with_indices",
            "upsample_nearest1d",
            "upsample_nearest2d",
            "upsample_nearest3d",
            "upsample_bilinear2d",
            "upsample_linear1d",
            "upsample_trilinear3d",
            "abs",
            "neg",
            "exp",
            "log",
            "sqrt",
            "rsqrt",
            "square",
            "pow",
            "clamp",
            "clamp_min",
            "clamp_max",
            "hardshrink",
            "softshrink",
            "log_sigmoid",
            "erf",
        }
    )

    def couple(self, ctx: CouplingContext, node: fx.Node, per_channel: tuple[fx.Node, ...] = ()) -> None:
        """``per_channel`` names tensor operands known to be per-channel (PReLU's weight)."""
        src = ctx.vector_of(node.args[0])
        out = ctx.value(node)
        others = [a for a in node.all_input_nodes if a is not node.args[0] and a not in per_channel]
        if src is None or any(isinstance(ctx.value(a), torch.Tensor) for a in others):
            ctx.unknown(node)  # a second tensor operand (clamp(x, t), pow(x, t)) may mix channels
        elif isinstance(out, tuple):  # max_pool2d_with_indices: values and indices share channels
            ctx.vec[node.name] = tuple(src if isinstance(o, torch.Tensor) and o.dim() >= 2 else None for o in out)
        elif isinstance(out, torch.Tensor) and out.dim() >= 2 and out.shape[1] == len(src):
            ctx.vec[node.name] = src
        else:
            ctx.unknown(node)


PASS_THROUGH = register_op(PassThrough())


class PReLU(OpFamily):
    """Pass-through with a per-channel slope that belongs to the channel."""

    names = frozenset({"prelu", "_prelu_kernel"})

    def couple(self, ctx: CouplingContext, node: fx.Node) -> None:
        PASS_THROUGH.couple(ctx, node, per_channel=(node.args[1],))
        vector = ctx.vec.get(node.name)
        if isinstance(vector, ChannelVector):
            ctx.per_channel_params(node, vector, node.args[1:2], ctx.value(node))


class AlongDim(OpFamily):
    """Ops normalising along one axis: channel-mixing on dim 1, pass-through elsewhere."""

    names = frozenset({"softmax", "_softmax", "log_softmax", "_log_softmax"})

    def couple(self, ctx: CouplingContext, node: fx.Node) -> None:
        if node.args[1] % ctx.value(node).dim() == 1:
            ctx.unknown(node, f"{op_name(node)} across channels")
        else:
            PASS_THROUGH.couple(ctx, node)


class Reduction(OpFamily):
    """Reductions over spatial axes keep the channels; over the channel or batch axis they mix."""

    names = frozenset({"mean", "sum", "amax", "amin"})

    def couple(self, ctx: CouplingContext, node: fx.Node) -> None:
        src = ctx.vector_of(node.args[0])
        xv, out = ctx.value(node.args[0]), ctx.value(node)
        dims = _arg(node, 1, "dim", None)
        keepdim = _arg(node, 2, "keepdim", False)
        if src is None or dims is None or not isinstance(out, torch.Tensor):
            ctx.unknown(node, "reduction over all axes")
            return
        dims = [d % xv.dim() for d in (dims if isinstance(dims, (list, tuple)) else [dims])]
        if 1 in dims or 0 in dims and not keepdim:
            ctx.unknown(node, "reduction over the channel or batch axis")
            return
        ctx.vec[node.name] = src if out.dim() >= 2 else None


# -- per-channel parameters and element-wise combinations -----------------------------------------


class BatchNorm(OpFamily):
    """Eval-mode BN: its four vectors belong to the channels; unfolded BN survives as a module."""

    names = frozenset({"batch_norm", "_native_batch_norm_legit_no_training"})
    _MODULES: ClassVar[dict[int, type[nn.Module]]] = {
        2: nn.BatchNorm1d,
        3: nn.BatchNorm1d,
        4: nn.BatchNorm2d,
        5: nn.BatchNorm3d,
    }

    @staticmethod
    def parse(node: fx.Node) -> tuple[fx.Node, list[Any], float, bool]:
        """(input, [weight, bias, running_mean, running_var], eps, training) for both aten forms."""
        native = op_name(node) != "batch_norm"
        eps = node.args[6] if native else node.args[7]
        training = False if native else bool(node.args[5])
        source = node.args[0]
        assert isinstance(source, fx.Node), "aten batch norm's first argument is its input"
        return source, list(node.args[1:5]), float(eps), training

    @staticmethod
    def fold(
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        stats: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float],
        linear: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Weight and bias of the Conv (``linear`` False) or Linear before an eval-mode BN with that BN
        folded in; ``stats`` = (gamma, beta, running mean, running var, eps). The one BN fold of
        edgeprune (simplify in float64, the quantize stage in float32), with torch's own arithmetic:
        the exporters fold with the same functions, so the quantised weights exist in their files."""
        gamma, beta, mean, var, eps = stats
        fuse = fuse_linear_bn_weights if linear else fuse_conv_bn_weights
        folded_weight, folded_bias = fuse(weight, bias, mean, var, eps, gamma, beta)
        return folded_weight.detach(), folded_bias.detach()

    @staticmethod
    def returns_tuple(node: fx.Node) -> bool:
        """The native form returns (out, save_mean, save_invstd); callers read ``[0]``."""
        return op_name(node) != "batch_norm"

    def couple(self, ctx: CouplingContext, node: fx.Node) -> None:
        x, params, _, _ = self.parse(node)
        src = ctx.vector_of(x)
        if src is None:
            ctx.unknown(node)
            return
        ctx.vec[node.name] = (src, None, None) if isinstance(ctx.value(node), tuple) else src
        ctx.per_channel_params(node, src, params, ctx.value(x))

    def rewrite(self, ctx: SimplifyContext, node: fx.Node) -> bool:
        """A BN that was not folded into a layer becomes an ``nn.BatchNorm*d`` over the kept channels."""
        x, params, eps, training = self.parse(node)
        names = [ctx.traced.name_of(a) for a in params]
        xv = ctx.traced.values[x.name]
        if any(n is None for n in names) or xv.dim() not in self._MODULES or training:
            return False
        keep = ctx.kept_positions(x.name)
        module = self._MODULES[xv.dim()](len(keep), eps=eps, dtype=torch.float64).eval()
        for attr, name in zip(("weight", "bias", "running_mean", "running_var"), names, strict=True):
            getattr(module, attr).data.copy_(ctx.traced.tensors[name].detach().double()[keep])
        prefix = names[0].rpartition(".")[0] or node.name
        out = ctx.call_new_module(prefix, module, ctx.env[x.name], node.name)
        ctx.env[node.name] = (out, None, None) if self.returns_tuple(node) else out
        return True


BATCH_NORM = register_op(BatchNorm())


class ElementwiseBinary(OpFamily):
    """``a ∘ b``: two channelled operands unite position by position (the residual add); a constant
    operand is a per-channel parameter of the channels it meets."""

    names = frozenset({"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "maximum", "minimum"})
    multiplicative = frozenset({"mul", "mul_", "div", "div_"})

    def couple(self, ctx: CouplingContext, node: fx.Node) -> None:
        a, b = node.args[0], node.args[1] if len(node.args) > 1 else None
        va, vb = ctx.vector_of(a), ctx.vector_of(b)
        out = ctx.value(node)
        if not isinstance(out, torch.Tensor) or out.dim() < 2:
            ctx.unknown(node)
            return
        if va is not None and vb is not None:
            if len(va) != len(vb) or len(va) != out.shape[1]:
                ctx.unknown(node, f"{node.target} broadcasts over the channel axis")
                return
            for x, y in zip(va.atoms, vb.atoms, strict=True):
                ctx.ana.union(x, y)
            if op_name(node) in self.multiplicative:
                ctx.ana.gated.update(va.atoms)
            ctx.vec[node.name] = va
            return
        vector, other = (va, b) if va is not None else (vb, a)
        if vector is None or len(vector) != out.shape[1]:
            ctx.unknown(node)
            return
        ctx.vec[node.name] = vector
        if isinstance(other, fx.Node) and ctx.traced.name_of(other) is None:
            ctx.unknown(node, f"{node.target} combines a channel with a computed tensor")
            return
        ctx.per_channel_params(node, vector, [other], out, broadcast=True)


# -- layers ----------------------------------------------------------------------------------------
# Conv/Linear call sites are rewritten by simplify from their layer plan (folded BN, constant
# deltas, border corrections), not by the families: only their coupling lives here.


class Convolution(OpFamily):
    """Dense and depthwise convolutions; other grouped convolutions freeze their channels."""

    names = frozenset({"conv1d", "conv2d", "conv3d"})

    def couple(self, ctx: CouplingContext, node: fx.Node) -> None:
        x, w = node.args[0], node.args[1]
        bias = _arg(node, 2, "bias", None)
        groups = _arg(node, 6, "groups", 1)
        padding = _arg(node, 4, "padding", 0)
        src, wname, weight = ctx.vector_of(x), ctx.traced.name_of(w), ctx.traced.tensor_of(w)
        if src is None or wname is None or weight is None or isinstance(padding, str):
            ctx.unknown(node, f"convolution {node.name} has computed weights or string padding")
            return
        spatial = weight.dim() - 2
        layer = LayerInfo(
            node.name,
            "conv",
            wname,
            ctx.traced.name_of(bias),
            x.name,
            groups=groups,
            stride=_tuple(_arg(node, 3, "stride", 1), spatial),
            padding=_tuple(padding, spatial),
            dilation=_tuple(_arg(node, 5, "dilation", 1), spatial),
            module=module_path(node, wname),
        )
        cout, cin = weight.shape[0], len(src)
        if groups == 1:
            ctx.produce(node, layer, cout)
            for i, atom in enumerate(src.atoms):
                ctx.ana.add_entry("consumer", wname, 1, i, atom)
        elif groups == cin == cout:
            layer.depthwise = True
            out = ctx.produce(node, layer, cout)
            for a, b in zip(out.atoms, src.atoms, strict=True):
                ctx.ana.union(a, b)
        else:
            ctx.unknown(node, f"grouped convolution {layer.module or node.name} (groups={groups})")
            return
        ctx.ana.layers[node.name] = layer


class Linear(OpFamily):
    """A Linear on a 2-D input: its columns are consumer entries of the input's channels."""

    names = frozenset({"linear"})

    def couple(self, ctx: CouplingContext, node: fx.Node) -> None:
        x, w = node.args[0], node.args[1]
        bias = _arg(node, 2, "bias", None)
        src, wname = ctx.vector_of(x), ctx.traced.name_of(w)
        xv = ctx.value(x)
        if src is None or wname is None or not isinstance(xv, torch.Tensor) or xv.dim() != 2:
            ctx.unknown(node, f"linear {node.name} on a non-2-D input or with computed weights")
            return
        layer = LayerInfo(node.name, "linear", wname, ctx.traced.name_of(bias), x.name, module=module_path(node, wname))
        ctx.produce(node, layer, ctx.traced.tensors[wname].shape[0])
        for i, atom in enumerate(src.atoms):
            ctx.ana.add_entry("consumer", wname, 1, i, atom)
        ctx.ana.layers[node.name] = layer


# -- ops whose arguments count channels -------------------------------------------------------------


class Concat(OpFamily):
    """Concatenation on the channel axis joins atom lists; on another axis it unites them."""

    names = frozenset({"cat"})

    def couple(self, ctx: CouplingContext, node: fx.Node) -> None:
        parts = [ctx.vector_of(t) for t in node.args[0]]
        out = ctx.value(node)
        if any(p is None for p in parts) or not isinstance(out, torch.Tensor):
            ctx.unknown(node)
            return
        if _arg(node, 1, "dim", 0) % out.dim() == 1:
            ctx.vec[node.name] = ChannelVector(tuple(a for p in parts for a in p.atoms))
            return
        first = parts[0]
        for p in parts[1:]:
            if len(p) != len(first):
                ctx.unknown(node)
                return
            for x, y in zip(first.atoms, p.atoms, strict=True):
                ctx.ana.union(x, y)
        ctx.vec[node.name] = first


@dataclass(frozen=True)
class SliceArgs:
    """``aten.slice(x, dim, start, end, step)``; bounds may be symbolic (then not ints)."""

    dim: int
    start: Any
    end: Any
    step: Any

    @classmethod
    def of(cls, node: fx.Node, ndim: int) -> SliceArgs:
        return cls(
            _arg(node, 1, "dim", 0) % ndim,
            _arg(node, 2, "start", None),
            _arg(node, 3, "end", None),
            _arg(node, 4, "step", 1),
        )

    @property
    def concrete(self) -> bool:
        return all(v is None or isinstance(v, int) for v in (self.start, self.end, self.step))

    def select(self, items: Any) -> Any:
        return items[slice(self.start, self.end, self.step)]


class ChannelSlice(OpFamily):
    """A slice of the channel axis keeps the selected atoms; a slice elsewhere keeps them all."""

    names = frozenset({"slice"})

    def couple(self, ctx: CouplingContext, node: fx.Node) -> None:
        src = ctx.vector_of(node.args[0])
        out = ctx.value(node)
        if src is None or not isinstance(out, torch.Tensor):
            ctx.unknown(node)
            return
        args = SliceArgs.of(node, out.dim())
        if args.dim != 1:
            if out.shape[1] == len(src):
                ctx.vec[node.name] = src
            else:
                ctx.unknown(node)
        elif not args.concrete:
            ctx.unknown(node, "channel slice with symbolic bounds")
        else:
            ctx.vec[node.name] = ChannelVector(args.select(src.atoms))

    def rewrite(self, ctx: SimplifyContext, node: fx.Node) -> bool:
        x = node.args[0]
        vector = ctx.ana.vectors.get(x.name)
        args = SliceArgs.of(node, ctx.traced.values[x.name].dim())
        if not isinstance(vector, ChannelVector) or args.dim != 1 or not args.concrete:
            return False  # symbolic bounds: the analysis froze these channels
        selected = args.select(list(range(len(vector))))
        new_position = {old: new for new, old in enumerate(ctx.kept_positions(x.name))}
        wanted = [new_position[selected[j]] for j in ctx.kept_positions(node.name)]
        ctx.env[node.name] = select_channels(ctx, ctx.env[x.name], wanted, len(new_position), node.name)
        return True


def select_channels(ctx: SimplifyContext, x: fx.Node, wanted: list[int], available: int, source: str) -> fx.Node:
    """Channels ``wanted`` of ``x``: itself, a strided slice, or an index_select."""
    if wanted == list(range(available)):
        return x
    steps = {b - a for a, b in zip(wanted, wanted[1:], strict=False)}
    if len(wanted) == 1 or (len(steps) == 1 and min(steps) > 0):
        step = steps.pop() if steps else 1
        return ctx.emit(aten.slice.Tensor, (x, 1, wanted[0], wanted[-1] + 1, step), source)
    index = ctx.constant(f"{source}_index", torch.tensor(wanted, dtype=torch.long))
    return ctx.emit(aten.index_select.default, (x, 1, index), source)


class Split(OpFamily):
    """split/split_with_sizes/chunk on the channel axis cut the atom list into the pieces' ranges."""

    names = frozenset({"split", "split_with_sizes", "chunk"})

    @staticmethod
    def dim(node: fx.Node, ndim: int) -> int:
        return _arg(node, 2, "dim", 0) % ndim

    def couple(self, ctx: CouplingContext, node: fx.Node) -> None:
        src = ctx.vector_of(node.args[0])
        out = ctx.value(node)
        if src is None or not isinstance(out, (tuple, list)):
            ctx.unknown(node)
            return
        if self.dim(node, out[0].dim()) != 1:
            ctx.vec[node.name] = tuple(src for _ in out)
            return
        pieces, start = [], 0
        for o in out:
            pieces.append(ChannelVector(src.atoms[start : start + o.shape[1]]))
            start += o.shape[1]
        ctx.vec[node.name] = tuple(pieces)

    def rewrite(self, ctx: SimplifyContext, node: fx.Node) -> bool:
        pieces = ctx.ana.vectors.get(node.name)
        if not isinstance(pieces, tuple) or self.dim(node, ctx.traced.values[node.args[0].name].dim()) != 1:
            return False
        sizes = [sum(ctx.ana.find(a) not in ctx.removed for a in p.atoms) for p in pieces]
        ctx.env[node.name] = ctx.emit(aten.split_with_sizes.default, (ctx.env[node.args[0].name], sizes, 1), node.name)
        return True


class ChannelPad(OpFamily):
    """Spatial padding keeps channels; constant padding of the channel axis inserts new channels."""

    names = frozenset({"pad", "constant_pad_nd"})

    @staticmethod
    def parse(node: fx.Node, ndim: int) -> tuple[list[Any], int, str]:
        """(amounts, index of the channel axis' "before" entry in amounts, mode).

        ``amounts`` runs from the last axis backwards in (before, after) pairs, so the channel
        axis (dim 1) is pair number ``ndim - 2``.
        """
        mode = "constant" if op_name(node) == "constant_pad_nd" else _arg(node, 2, "mode", "constant")
        return list(node.args[1]), 2 * (ndim - 2), mode

    def couple(self, ctx: CouplingContext, node: fx.Node) -> None:
        src = ctx.vector_of(node.args[0])
        out = ctx.value(node)
        if src is None or not isinstance(out, torch.Tensor):
            ctx.unknown(node)
            return
        amounts, pair, mode = self.parse(node, out.dim())
        before, after = (amounts[pair], amounts[pair + 1]) if len(amounts) > pair + 1 else (0, 0)
        if before == after == 0:
            ctx.vec[node.name] = src
            return
        if mode != "constant" or not all(isinstance(v, int) and v >= 0 for v in (before, after)):
            ctx.unknown(node, "padding of the channel axis that is not constant")
            return
        front, back = ctx.ana.new_atoms(before), ctx.ana.new_atoms(after)
        ctx.vec[node.name] = ChannelVector(tuple(front) + src.atoms + tuple(back))

    def rewrite(self, ctx: SimplifyContext, node: fx.Node) -> bool:
        vector = ctx.ana.vectors.get(node.name)
        src = ctx.ana.vectors.get(node.args[0].name)
        if not isinstance(vector, ChannelVector) or not isinstance(src, ChannelVector) or len(vector) == len(src):
            return False
        amounts, pair, _ = self.parse(node, ctx.traced.values[node.name].dim())
        before, after = amounts[pair], amounts[pair + 1]
        kept = set(ctx.kept_positions(node.name))
        amounts[pair] = sum(1 for i in range(before) if i in kept)
        amounts[pair + 1] = sum(1 for i in range(len(vector) - after, len(vector)) if i in kept)
        ctx.copy(node, (node.args[0], amounts, *node.args[2:]))
        return True


def flattened(src: ChannelVector, xv: torch.Tensor) -> ChannelVector:
    """Flatten (N, C, *S) -> (N, C*prod(S)): channel c owns features [c*prod(S), (c+1)*prod(S))."""
    block = math.prod(xv.shape[2:])
    return ChannelVector(tuple(a for a in src.atoms for _ in range(block)))


class Flatten(OpFamily):
    """``flatten(x, 1)`` before a Linear: each channel becomes a block of features."""

    names = frozenset({"flatten"})

    def couple(self, ctx: CouplingContext, node: fx.Node) -> None:
        src = ctx.vector_of(node.args[0])
        xv, out = ctx.value(node.args[0]), ctx.value(node)
        if src is None or not isinstance(out, torch.Tensor):
            ctx.unknown(node)
            return
        start, end = _arg(node, 1, "start_dim", 0) % xv.dim(), _arg(node, 2, "end_dim", -1) % xv.dim()
        if start >= 2:
            ctx.vec[node.name] = src
        elif start == 1 and end == xv.dim() - 1:
            ctx.vec[node.name] = flattened(src, xv)
        else:
            ctx.unknown(node, "flatten that merges the batch and channel axes")


class Reshape(OpFamily):
    """view/reshape that flattens the channel and spatial axes, or keeps the channel axis."""

    names = frozenset({"view", "reshape", "_unsafe_view"})

    @staticmethod
    def kind(xv: torch.Tensor, out: torch.Tensor) -> str | None:
        """ "flatten" (N, C, *S) -> (N, F), "keep" (channel axis unchanged), or None (moves it)."""
        if out.dim() < 2 or out.shape[0] != xv.shape[0]:
            return None
        if out.dim() == 2 and xv.dim() > 2:
            return "flatten"
        if xv.dim() >= 2 and out.shape[1] == xv.shape[1]:
            return "keep"
        return None

    def couple(self, ctx: CouplingContext, node: fx.Node) -> None:
        src = ctx.vector_of(node.args[0])
        xv, out = ctx.value(node.args[0]), ctx.value(node)
        kind = self.kind(xv, out) if src is not None and isinstance(out, torch.Tensor) else None
        if kind == "flatten":
            ctx.vec[node.name] = flattened(src, xv)
        elif kind == "keep":
            ctx.vec[node.name] = src
        else:
            ctx.unknown(node, "reshape that moves the channel axis")

    def rewrite(self, ctx: SimplifyContext, node: fx.Node) -> bool:
        source = ctx.ana.vectors.get(node.args[0].name)
        if not isinstance(source, ChannelVector) or len(ctx.kept_positions(node.args[0].name)) == len(source):
            return False  # nothing removed from the input (always so for reshapes the analysis froze)
        kind = self.kind(ctx.traced.values[node.args[0].name], ctx.traced.values[node.name])
        shape = list(node.args[1])
        if kind == "flatten":
            features = len(ctx.kept_positions(node.name))
            shape = [shape[0], -1] if shape[0] != -1 else [-1, features]
        elif kind == "keep" and isinstance(shape[1], int) and shape[1] == ctx.traced.values[node.args[0].name].shape[1]:
            shape[1] = len(ctx.kept_positions(node.name))
        else:
            return False
        ctx.copy(node, (node.args[0], shape, *node.args[2:]))
        return True


for _family in (
    PReLU(),
    AlongDim(),
    Reduction(),
    ElementwiseBinary(),
    Convolution(),
    Linear(),
    Concat(),
    ChannelSlice(),
    Split(),
    ChannelPad(),
    Flatten(),
    Reshape(),
):
    register_op(_family)


def _tuple(v: Any, n: int) -> tuple[int, ...]:
    if isinstance(v, (list, tuple)):
        return tuple(int(x) for x in v) if len(v) == n else tuple(int(v[0]) for _ in range(n))
    return tuple(int(v) for _ in range(n))


__all__ = [
    "BATCH_NORM",
    "OpFamily",
    "SimplifyContext",
    "analyze_channels",
    "family_of",
    "register_op",
    "select_channels",
]
