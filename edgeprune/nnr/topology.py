"""The model's network as *data*: a declarative topology for ``.nnr`` files.

A ``.nnr`` is a file people download and share, so decoding it must never run code named by the
file. The architecture is therefore stored as a small JSON graph of known operators instead of a
Python factory reference or a pickled ``torch.export`` program:

* the model is ``torch.export``-ed once at encode time (which normalises every module - the zoo,
  simplified graphs with border corrections, residual / concat / depthwise blocks - to a handful of
  aten operators) and each call is written as ``[op, args]`` or ``[op, args, kwargs]``;
* ``op`` is a key of :data:`OPS`, a fixed table in this file: the decoder looks the string up in
  that table and nothing else - no import, no ``getattr`` on a name from the file, no pickle;
* argument values are JSON scalars and lists plus four kinds of tagged string/object:
  ``"#i"`` (the value of node ``i``; node 0 is the model input, forward references are refused),
  ``"@name"`` (a tensor of the stream, by its state_dict name), ``"&i"`` (an inline constant tensor),
  ``"=text"`` (a literal string) and ``{"float": "inf"}`` / ``{"dtype": "float32"}`` / ...;
* the decoder validates the whole record (schema, sizes, names), rebuilds an ``fx.GraphModule`` and
  propagates *meta* tensors through it (shapes only, no memory) with the recorded input shape, so
  a hostile graph that would allocate gigabytes is refused before anything is allocated.

The record contains no temp-file names, node names or object ids, so the same model gives the same
bytes. Record layout::

    {"v": 1, "nodes": [[op, args(, kwargs)], ...], "out": <value>,
     "buffers": [names of non-parameter tensors], "consts": [{"dtype", "shape", "data"}]}
"""

from __future__ import annotations

import base64
import logging
import math
import operator
import re
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from edgeprune.errors import BitstreamError

log = logging.getLogger(__name__)

VERSION = 1
MAX_NODES = 100_000  # ~50x the largest zoo graph
MAX_LIST = 4096  # longest literal list (e.g. cat inputs)
MAX_DEPTH = 4  # nesting of argument lists
MAX_STRING = 64  # literal strings are op modes like "none"/"tanh"
MAX_TENSOR_ELEMENTS = 1 << 24  # per intermediate activation (64 MiB float32): a 1 GiB Pi survives a few alive
MAX_CONST_ELEMENTS = 1 << 20  # inline constants are small (index lists, folded offsets)
_NAME = re.compile(r"^[A-Za-z0-9_]{1,128}(\.[A-Za-z0-9_]{1,128}){0,32}$")
_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int8": torch.int8,
    "int16": torch.int16,
    "int32": torch.int32,
    "int64": torch.int64,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
_NP_DTYPES = {"float32", "float64", "float16", "int8", "int16", "int32", "int64", "uint8", "bool"}
_TAGGED: dict[str, dict[str, Any]] = {
    "float": {"inf": math.inf, "-inf": -math.inf, "nan": math.nan},
    "dtype": _DTYPES,
    "device": {"cpu": torch.device("cpu")},
    "layout": {"strided": torch.strided},
    "memory_format": {
        "contiguous_format": torch.contiguous_format,
        "preserve_format": torch.preserve_format,
        "channels_last": torch.channels_last,
    },
}

# The operators a topology may name. Keys are written to files; values are resolved here, from
# names in this source file only. Python-level ops compute symbolic sizes (e.g. H // 2 + 1).
_ATEN_NAMES = """
conv1d conv2d conv3d conv_transpose1d.input conv_transpose2d.input linear matmul mm addmm bmm
batch_norm _native_batch_norm_legit_no_training layer_norm group_norm instance_norm
relu relu_ relu6 hardtanh hardtanh_ sigmoid sigmoid_ tanh tanh_ gelu silu silu_ hardswish hardswish_
hardsigmoid hardsigmoid_ leaky_relu leaky_relu_ elu elu_ softmax.int log_softmax.int _softmax _log_softmax
clamp clamp_min clamp_max
add.Tensor add_.Tensor add.Scalar sub.Tensor sub.Scalar mul.Tensor mul_.Tensor mul.Scalar div.Tensor div.Scalar
neg exp log sqrt rsqrt abs pow.Tensor_Scalar mean.dim sum.dim_IntList amax amin
max_pool1d max_pool2d max_pool3d max_pool2d_with_indices avg_pool1d avg_pool2d avg_pool3d
adaptive_avg_pool1d adaptive_avg_pool2d adaptive_avg_pool3d adaptive_max_pool1d adaptive_max_pool2d
upsample_nearest2d.vec upsample_bilinear2d.vec
flatten.using_ints view reshape _unsafe_view permute transpose.int t contiguous unsqueeze squeeze.dim
squeeze.dims cat stack slice.Tensor select.int index_select split_with_sizes split.Tensor chunk narrow
pad constant_pad_nd dropout expand clone alias detach new_ones new_zeros sym_size.int
"""
_PY_OPS: dict[str, Any] = {
    "py.getitem": operator.getitem,
    "py.add": operator.add,
    "py.sub": operator.sub,
    "py.mul": operator.mul,
    "py.floordiv": operator.floordiv,
    "py.mod": operator.mod,
    "py.neg": operator.neg,
}


def _aten_table() -> dict[str, Any]:
    table: dict[str, Any] = {}
    for key in _ATEN_NAMES.split():
        name, _, overload = key.partition(".")
        packet = getattr(torch.ops.aten, name, None)
        op = getattr(packet, overload or "default", None) if packet is not None else None
        if op is not None:  # an op this torch lacks is simply not describable
            table[key] = op
    return table


OPS: dict[str, Any] = {**_aten_table(), **_PY_OPS}
_KEY_OF: dict[Any, str] = {op: key for key, op in OPS.items()}


class TopologyUnsupported(Exception):
    """The model uses something the declarative topology cannot describe (encode side only)."""


# ------------------------------------------------------------------ encode


def describe(model: nn.Module, example_input: torch.Tensor) -> dict[str, Any]:
    """The topology record of ``model`` (raises :class:`TopologyUnsupported` for exotic graphs)."""
    from edgeprune.checkpoint import export_program

    program = export_program(model, example_input)
    state_names = set(model.state_dict())
    sig = program.graph_signature
    kinds = {spec.arg.name: spec for spec in sig.input_specs}
    user_outputs = {spec.arg.name for spec in sig.output_specs if spec.kind.name == "USER_OUTPUT"}
    if len(user_outputs) != len(sig.output_specs):
        raise TopologyUnsupported("the model mutates its buffers in forward()")
    refs: dict[str, str] = {}
    consts: list[dict[str, Any]] = []
    nodes: list[list[Any]] = []
    parameters = set(sig.inputs_to_parameters.values())
    used_inputs = 0

    def value(v: Any) -> Any:
        if isinstance(v, fx.Node):
            if v.name not in refs:
                raise TopologyUnsupported(f"node {v.name} is used before it is defined")
            return refs[v.name]
        if isinstance(v, bool) or v is None:
            return v
        if isinstance(v, int):
            return int(v)
        if isinstance(v, float):
            if math.isfinite(v):
                return float(v)
            return {"float": "nan" if math.isnan(v) else "inf" if v > 0 else "-inf"}
        if isinstance(v, str):
            return "=" + v
        if isinstance(v, (list, tuple)):
            return [value(x) for x in v]
        for tag, table in _TAGGED.items():
            for key, known in table.items():
                if tag != "float" and v == known and type(v) is type(known):
                    return {tag: key}
        raise TopologyUnsupported(f"argument of type {type(v).__name__}")

    for node in program.graph.nodes:
        if node.op == "placeholder":
            spec = kinds[node.name]
            kind, target = spec.kind.name, spec.target
            if kind == "USER_INPUT":
                if used_inputs:
                    raise TopologyUnsupported("the model takes more than one input")
                used_inputs += 1
                refs[node.name] = "#0"
            elif kind in ("PARAMETER", "BUFFER") and target in state_names:
                refs[node.name] = "@" + target
            elif kind in ("BUFFER", "CONSTANT_TENSOR") and target in program.constants:
                refs[node.name] = f"&{len(consts)}"
                consts.append(_const_record(program.constants[target]))
            else:
                raise TopologyUnsupported(f"input {node.name} of kind {kind}")
        elif node.op == "call_function":
            key = _KEY_OF.get(node.target)
            if key is None:
                raise TopologyUnsupported(f"operator {node.target}")
            entry: list[Any] = [key, value(list(node.args))]
            if node.kwargs:
                entry.append({k: value(v) for k, v in sorted(node.kwargs.items())})
            nodes.append(entry)
            refs[node.name] = f"#{len(nodes)}"
        elif node.op == "output":
            outs = [value(v) for v in node.args[0]]
            record: dict[str, Any] = {"v": VERSION, "nodes": nodes, "out": outs[0] if len(outs) == 1 else outs}
            buffers = sorted(n for n in state_names if n not in parameters)
            if buffers:
                record["buffers"] = buffers
            if consts:
                record["consts"] = consts
            return record
        else:
            raise TopologyUnsupported(f"graph node kind {node.op}")
    raise TopologyUnsupported("the exported graph has no output")


def _const_record(tensor: torch.Tensor) -> dict[str, Any]:
    t = tensor.detach().cpu().contiguous()
    dtype = str(t.dtype).removeprefix("torch.")
    if dtype not in _NP_DTYPES or t.numel() > MAX_CONST_ELEMENTS:
        raise TopologyUnsupported(f"constant tensor of dtype {dtype} with {t.numel()} elements")
    raw = t.numpy().astype(t.numpy().dtype.newbyteorder("<")).tobytes()
    return {"dtype": dtype, "shape": list(t.shape), "data": base64.b64encode(zlib.compress(raw, 9)).decode()}


# ------------------------------------------------------------------ decode


def _bad(what: str) -> BitstreamError:
    return BitstreamError(
        f"the model topology in the .nnr is invalid: {what}",
        "the file is damaged or was not written by edgeprune; re-encode it or pass --arch",
    )


def _shape(value: Any, limit: int, what: str) -> tuple[int, ...]:
    if not (
        isinstance(value, list)
        and len(value) <= 8
        and all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= limit for d in value)
    ):
        raise _bad(f"{what} has an invalid shape")
    if math.prod(value) > limit:
        raise _bad(f"{what} has {math.prod(value)} elements (limit {limit})")
    return tuple(value)


def _decode_const(record: Any, index: int) -> torch.Tensor:
    if not (isinstance(record, dict) and record.get("dtype") in _NP_DTYPES and isinstance(record.get("data"), str)):
        raise _bad(f"constant {index} is malformed")
    shape = _shape(record.get("shape"), MAX_CONST_ELEMENTS, f"constant {index}")
    dtype = np.dtype(record["dtype"]).newbyteorder("<")
    expected = math.prod(shape) * dtype.itemsize
    try:
        packed = base64.b64decode(record["data"], validate=True)
        inflater = zlib.decompressobj()
        raw = inflater.decompress(packed, expected + 1)  # never inflate more than the shape needs
    except (ValueError, zlib.error):
        raise _bad(f"constant {index} is not valid compressed data") from None
    if len(raw) != expected:
        raise _bad(f"constant {index} holds {len(raw)} bytes, its shape needs {expected}")
    return torch.from_numpy(np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("=")).reshape(shape).copy())


def _install(module: nn.Module, name: str, tensor: torch.Tensor, parameter: bool) -> None:
    """Register ``tensor`` at dotted path ``name``, creating plain container modules on the way."""
    *path, leaf = name.split(".")
    for part in path:
        child = module._modules.get(part)
        if child is None:
            if hasattr(module, part):
                raise _bad(f"tensor name {name!r} collides with a module attribute")
            child = nn.Module()
            module.add_module(part, child)
        module = child
    if leaf in module._parameters or leaf in module._buffers:
        return
    if hasattr(module, leaf):
        raise _bad(f"tensor name {name!r} collides with a module attribute")
    if parameter and tensor.is_floating_point():
        module.register_parameter(leaf, tensor if isinstance(tensor, nn.Parameter) else nn.Parameter(tensor))
    else:
        module.register_buffer(leaf, tensor)


def build_module(
    record: Any, state: Mapping[str, np.ndarray], input_shape: tuple[int, ...], max_elements: int = MAX_TENSOR_ELEMENTS
) -> fx.GraphModule:
    """Rebuild the model from a topology record and the decoded tensors, validating everything.

    ``state`` supplies the tensors named by ``"@name"`` (the decoded NDUs); every one of them is
    registered so that the result's ``state_dict`` has exactly the stream's tensors. Raises
    :class:`BitstreamError` for any record that is malformed or would compute something too large.
    """
    if not isinstance(record, dict) or record.get("v") != VERSION:
        raise _bad("unknown record version")
    unknown = set(record) - {"v", "nodes", "out", "buffers", "consts"}
    if unknown:
        raise _bad(f"unknown field {sorted(unknown)[0]!r}")
    nodes, buffers, consts = record.get("nodes"), record.get("buffers", []), record.get("consts", [])
    if not (isinstance(nodes, list) and 0 < len(nodes) <= MAX_NODES):
        raise _bad("it has no operator list")
    if not (isinstance(buffers, list) and all(isinstance(b, str) for b in buffers)):
        raise _bad("the buffer list is malformed")
    if not (isinstance(consts, list) and len(consts) <= MAX_LIST):
        raise _bad("the constant list is malformed")
    for name in state:
        if not isinstance(name, str) or not _NAME.match(name) or any(p.startswith("__") for p in name.split(".")):
            raise _bad(f"tensor name {name!r} is not a dotted identifier")

    root = nn.Module()
    buffer_set = set(buffers)
    for name, array in state.items():
        _install(root, name, torch.from_numpy(np.array(array, copy=True, order="C")), parameter=name not in buffer_set)
    const_values = [_decode_const(c, i) for i, c in enumerate(consts)]
    for i, tensor in enumerate(const_values):
        root.register_buffer(f"_nnr_const{i}", tensor, persistent=False)

    graph = fx.Graph()
    values: list[fx.Node] = [graph.placeholder("x")]
    attrs: dict[str, fx.Node] = {}

    def arg(v: Any, depth: int = 0) -> Any:
        if depth > MAX_DEPTH:
            raise _bad("arguments are nested too deeply")
        if v is None or isinstance(v, (bool, int)):
            return v
        if isinstance(v, float):
            return v
        if isinstance(v, str):
            tag, body = v[:1], v[1:]
            if tag == "#":
                if not body.isdigit() or int(body) >= len(values):
                    raise _bad(f"reference {v!r} points at no earlier node")
                return values[int(body)]
            if tag == "@":
                if body not in state:
                    raise _bad(f"it uses tensor {body!r}, which the stream does not contain")
                if body not in attrs:
                    attrs[body] = graph.get_attr(body)
                return attrs[body]
            if tag == "&":
                if not body.isdigit() or int(body) >= len(const_values):
                    raise _bad(f"constant {v!r} does not exist")
                key = f"_nnr_const{int(body)}"
                if key not in attrs:
                    attrs[key] = graph.get_attr(key)
                return attrs[key]
            if tag == "=" and len(body) <= MAX_STRING:
                return body
            raise _bad(f"unknown value {v[:20]!r}")
        if isinstance(v, list):
            if len(v) > MAX_LIST:
                raise _bad("an argument list is too long")
            return [arg(x, depth + 1) for x in v]
        if isinstance(v, dict) and len(v) == 1:
            ((tag, key),) = v.items()
            table = _TAGGED.get(tag)
            if table is not None and isinstance(key, str) and key in table:
                return table[key]
        raise _bad(f"unsupported argument {str(v)[:40]}")

    for i, entry in enumerate(nodes, start=1):
        if not (
            isinstance(entry, list)
            and len(entry) in (2, 3)
            and isinstance(entry[0], str)
            and isinstance(entry[1], list)
        ):
            raise _bad(f"node {i} is malformed")
        op = OPS.get(entry[0])
        if op is None:
            raise _bad(f"node {i} uses unknown operator {entry[0][:40]!r}")
        args = arg(entry[1])
        kwargs: dict[str, Any] = {}
        if len(entry) == 3:
            if not (
                isinstance(entry[2], dict)
                and all(isinstance(k, str) and k.isidentifier() and len(k) <= 64 for k in entry[2])
            ):
                raise _bad(f"node {i} has malformed keyword arguments")
            kwargs = {k: arg(v) for k, v in entry[2].items()}
        values.append(graph.call_function(op, tuple(args), kwargs))
    out = arg(record.get("out"))
    graph.output(tuple(out) if isinstance(out, list) else out)
    try:
        gm = fx.GraphModule(root, graph)
    except (RuntimeError, AttributeError, TypeError, KeyError) as exc:
        raise _bad(f"it cannot be assembled ({type(exc).__name__})") from None
    for name in state:  # GraphModule copies only the referenced tensors: keep unused ones (BN counters)
        tensor = _lookup(root, name)
        _install(gm, name, tensor, parameter=isinstance(tensor, nn.Parameter))
    _check_shapes(gm, input_shape, max_elements)
    return gm.eval()


def _lookup(root: nn.Module, name: str) -> torch.Tensor:
    *path, leaf = name.split(".")
    module = root.get_submodule(".".join(path)) if path else root
    found = module._parameters[leaf] if leaf in module._parameters else module._buffers[leaf]
    assert found is not None, "every name in the decoded state was installed into the module tree"
    return found


class _MetaShapes(fx.Interpreter):
    """Runs the graph on meta tensors: every shape is computed, no memory is allocated."""

    def __init__(self, gm: fx.GraphModule, max_elements: int) -> None:
        super().__init__(gm)
        self.max_elements = max_elements

    def get_attr(self, target: Any, args: Any, kwargs: Any) -> Any:
        return super().get_attr(target, args, kwargs).to("meta")

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        for t in result if isinstance(result, (list, tuple)) else (result,):
            if isinstance(t, torch.Tensor) and t.numel() > self.max_elements:
                raise _bad(f"operator {n.target} would produce {t.numel()} elements (limit {self.max_elements})")
        return result


def _check_shapes(gm: fx.GraphModule, input_shape: tuple[int, ...], max_elements: int) -> None:
    """Refuse a graph that does not run on its input shape or whose activations exceed the cap."""
    x = torch.empty(input_shape, device="meta")
    try:
        _MetaShapes(gm, max_elements).run(x)
    except BitstreamError:
        raise
    except Exception as exc:  # noqa: BLE001 - the graph is untrusted data; torch raises many types on bad args
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise _bad(f"it does not run on inputs of shape {list(input_shape)}: {first}") from None


__all__ = ["OPS", "VERSION", "TopologyUnsupported", "build_module", "describe"]
