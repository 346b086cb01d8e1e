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

This module holds the data model and the shared state of one walk (:class:`CouplingContext`);
the rule of each operator lives with its family in :mod:`edgeprune.graph.ops`.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx

from edgeprune.graph.trace import TracedModel


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

    @property
    def pads(self) -> bool:
        """A conv that pads its input: a constant input channel is not constant at its output's border
        (what simplify's border corrections repair, and what ``--cut-biases padded`` avoids)."""
        return self.kind == "conv" and any(self.padding)


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


class CouplingContext:
    """The state one walk of the graph shares between the operator families' channel rules.

    ``vec`` maps a node name to the channel atoms of its output (a :class:`ChannelVector`, a tuple
    of them for multi-output ops, or None for tensors without a channel axis).
    """

    def __init__(self, ana: ChannelAnalysis) -> None:
        self.ana = ana
        self.traced = ana.traced
        self.vec = ana.vectors

    def value(self, node: fx.Node) -> Any:
        """The node's output on the example input (shapes are concrete here)."""
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

    def per_channel_params(
        self, node: fx.Node, vector: ChannelVector, args: Any, activation: torch.Tensor, broadcast: bool = False
    ) -> bool:
        """Attach per-channel parameters (BN, PReLU, affine constants) to the atoms they scale.

        Returns False (after freezing) when a parameter is neither per-channel nor a scalar.
        """
        for arg in args:
            name, t = self.traced.name_of(arg), self.traced.tensor_of(arg)
            if name is None or t is None or t.numel() == 1:
                continue
            dim = channel_dim_of_param(t, activation, broadcast=broadcast)
            if dim is None or t.shape[dim] != len(vector):
                self.unknown(node, f"parameter {name} of {node.target} is not per-channel")
                return False
            for i, atom in enumerate(vector.atoms):
                self.ana.add_entry("bias", name, dim, i, atom)
        return True

    def produce(self, node: fx.Node, layer: LayerInfo, n: int) -> ChannelVector:
        """``n`` fresh output channels of a Conv/Linear call site, owning its weight rows and bias."""
        out = ChannelVector(tuple(self.ana.new_atoms(n)))
        self.vec[node.name] = out
        for j, atom in enumerate(out.atoms):
            self.ana.add_entry("producer", layer.weight, 0, j, atom)
            if layer.bias:
                self.ana.add_entry("bias", layer.bias, 0, j, atom)
        return out


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
