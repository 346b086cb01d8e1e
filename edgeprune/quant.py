"""INT8 quantisation: one set of weight levels shared by the NNR bitstream and every exported file.

Why one place: the .nnr "int8 deploy" bitstream, the INT8 ONNX and the INT8 TFLite must hold the same
integers, otherwise a device runs a model that differs from the one that was coded and measured. So the
levels are computed here, once, and the exporters only *carry* them (``edgeprune.export.verify`` reads
them back out of the files and counts mismatches).

The scheme is the one both runtimes execute natively:

* **weights**: symmetric, per output channel (axis 0 of every conv/linear weight),
  ``scale = max|w_row| / 127`` (float32) and ``level = clip(rint(w / scale), -127, 127)``. ``rint``
  rounds half to even, as ``torch.round`` and numpy do (the rounding of onnxruntime's and PT2E's
  quantisers), and -128 is never used, so the grid is symmetric. A row that is entirely zero (a
  pruned channel) would give scale 0; it gets scale 1.0 instead - its levels are 0 whatever the
  scale, and 1.0 is what onnxruntime uses too, which keeps its int32 bias (``b / (s_in * s_w)``)
  in range.
* **BatchNorm is folded first** (:func:`to_deploy_graph`): both exporters fold BN into the preceding
  conv before quantising, so quantising unfolded weights would produce levels that exist in no file.
  The quantize stage therefore replaces the pipeline's model by the folded graph (same outputs up to
  float rounding) and its parameter names are the keys of :class:`QuantizedWeights`.
* **activations**: per-tensor ranges calibrated on real data (``minmax`` or ``percentile``). They are
  recorded for the report and for coders; the exporters calibrate their activation quantisers with
  the same samples and method (onnxruntime) or MinMax observers (PT2E), so activation scales are
  equivalent but computed by each toolchain.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights, fuse_linear_bn_weights

from edgeprune.artifact import Artifact, StageContext
from edgeprune.checkpoint import as_graph_module
from edgeprune.errors import DataError, GraphError, VerificationError, first_line
from edgeprune.fileio import atomic_path
from edgeprune.metrics import evaluate

QMAX = 127
# 7-bit weights (|level| <= 63) for x86 CPUs without VNNI: their INT8 kernels add two u8 x s8 products
# in 16 bits, which cannot overflow when |level| <= 63 (2 * 255 * 63 < 32767); onnxruntime's reduce_range.
WEIGHT_BITS = (8, 7)
CALIBRATION_METHODS = ("minmax", "percentile")

_aten = torch.ops.aten
CONV_OPS = {
    _aten.conv1d.default,
    _aten.conv2d.default,
    _aten.conv3d.default,
    _aten.conv1d.padding,
    _aten.conv2d.padding,
    _aten.conv3d.padding,
    _aten.convolution.default,
}
LINEAR_OPS = {_aten.linear.default}
BATCHNORM_OPS = {_aten.batch_norm.default, _aten._native_batch_norm_legit_no_training.default}
_PLAIN_WEIGHT_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass
class QuantizedTensor:
    """INT8 levels of one weight tensor and its per-channel scales: ``w ~ levels * scale`` along ``axis``."""

    levels: np.ndarray
    scale: np.ndarray
    axis: int = 0

    def dequantize(self) -> np.ndarray:
        """The float32 weight these levels stand for (what every INT8 runtime multiplies with)."""
        shape = [1] * self.levels.ndim
        shape[self.axis] = -1
        return (self.levels.astype(np.float32) * self.scale.reshape(shape)).astype(np.float32)


@dataclass
class QuantizedWeights:
    """All quantised weights of a model, keyed by ``state_dict`` name, plus calibrated activation ranges.

    ``activation_ranges`` maps a graph value name ("input", FX node names) to ``(low, high)``;
    ``calibration`` records how they were obtained (method and sample count).
    """

    tensors: dict[str, QuantizedTensor] = field(default_factory=dict)
    activation_ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)

    @property
    def num_values(self) -> int:
        return int(sum(t.levels.size for t in self.tensors.values()))


WEIGHT_MODES = ("allocated", "maxabs")


@dataclass
class QuantOptions:
    """Options of the quantize stage (``edgeprune quantize`` / ``compress --calibration ...``).

    ``weights``: ``allocated`` (default) picks each tensor's step from its sensitivity for the
    smallest model.nnr within ``target_accuracy_drop`` points (or at ``bits_per_weight``);
    ``maxabs`` is classic INT8 (``max|w_c|/127`` per channel, the full -127..127 range).
    """

    calibration: str = "minmax"
    calibration_samples: int = 128
    percentile: float = 99.99
    weights: str = "allocated"
    target_accuracy_drop: float | None = 0.5
    bits_per_weight: float | None = None
    weight_bits: int = 8

    def __post_init__(self) -> None:
        if self.weight_bits not in WEIGHT_BITS:
            raise DataError(
                f"weight bits must be one of {', '.join(map(str, WEIGHT_BITS))} (got {self.weight_bits})",
                "use --weight-bits 8 (default) or 7",
            )

    @property
    def max_level(self) -> int:
        """The largest |level|: 127 for 8-bit weights, 63 for 7-bit ones."""
        return 2 ** (self.weight_bits - 1) - 1


def quantize_tensor(
    weight: np.ndarray | torch.Tensor, step: float | None = None, max_level: int = QMAX
) -> QuantizedTensor:
    """Symmetric per-output-channel INT8 quantisation of one weight (see the module docstring).

    ``step`` (from the rate allocation) sets the grid: ``scale_c = max(step, max|w_c|/max_level)``, so no
    level leaves -max_level..max_level; None is max-abs INT8.
    """
    from edgeprune.nnr.allocate import int8_scales

    w = weight.detach().cpu().numpy() if isinstance(weight, torch.Tensor) else np.asarray(weight)
    w = w.astype(np.float32, copy=False)
    # Zero (or denormal-only) rows get scale 1.0: their levels are 0 with any scale, and 1.0 matches ORT.
    scale = int8_scales(w, step, max_level)
    per_row = scale.reshape(-1, *([1] * (w.ndim - 1)))
    levels = np.clip(np.rint(w / per_row), -max_level, max_level).astype(np.int8)
    return QuantizedTensor(levels=levels, scale=scale, axis=0)


def _is_weight_layer(node: fx.Node) -> bool:
    """A conv (not transposed: its weight is (in, out, ...)) or linear call reading a constant weight."""
    if node.op != "call_function" or node.target not in CONV_OPS | LINEAR_OPS:
        return False
    transposed = node.target is _aten.convolution.default and bool(node.args[6])
    return not transposed and isinstance(node.args[1], fx.Node) and node.args[1].op == "get_attr"


# Tensor factories that take an input only for its dtype/device/shape: their values are constants.
_VALUE_FREE_OPS = {
    _aten.new_ones.default,
    _aten.new_zeros.default,
    _aten.new_full.default,
    _aten.ones_like.default,
    _aten.zeros_like.default,
    _aten.full_like.default,
}


def _input_dependent(graph: fx.Graph) -> set[fx.Node]:
    """Nodes whose values depend on a model input (placeholders); the rest is constant computation."""
    dependent: set[fx.Node] = set()
    for node in graph.nodes:
        if node.op == "placeholder" or (
            node.target not in _VALUE_FREE_OPS and any(arg in dependent for arg in node.all_input_nodes)
        ):
            dependent.add(node)
    return dependent


def quantized_weight_names(model: nn.Module) -> list[str]:
    """``state_dict`` names of the conv/linear weights that get INT8 levels, in execution order.

    Only layers applied to activations count. A layer applied to a constant - e.g. the simplify stage's
    border-correction conv over a map of ones - is constant-folded by the exporters into a float bias
    map, so it never exists as INT8 weights in a deployed file and must not be quantised.
    """
    if isinstance(model, fx.GraphModule):
        dependent = _input_dependent(model.graph)
        return list(
            dict.fromkeys(n.args[1].target for n in model.graph.nodes if _is_weight_layer(n) and n.args[0] in dependent)
        )
    return [f"{name}.weight" for name, m in model.named_modules() if isinstance(m, _PLAIN_WEIGHT_LAYERS)]


def quantize_weights(model: nn.Module, qps: dict[str, int] | None = None, max_level: int = QMAX) -> QuantizedWeights:
    """Quantise every conv/linear weight of ``model`` (fold BatchNorm first: see :func:`to_deploy_graph`).

    ``qps`` (NNC qp per tensor, from :func:`edgeprune.nnr.allocate.allocate_int8`) gives each tensor's
    step; tensors without one, or ``qps`` None, get max-abs INT8 (within ``max_level``).
    """
    from edgeprune.nnr.codec import step_size

    state = model.state_dict()
    qps = qps or {}
    return QuantizedWeights(
        tensors={
            name: quantize_tensor(state[name], step_size(qps[name]) if name in qps else None, max_level)
            for name in quantized_weight_names(model)
        }
    )


def with_quantized_weights(model: nn.Module, quant: QuantizedWeights) -> nn.Module:
    """A copy of ``model`` whose quantised weights are replaced by ``levels * scale``.

    This is the float model an INT8 runtime computes with (weights-wise). Exporting it instead of the
    original makes every quantiser that uses ``max|w|/127`` land on exactly our levels: each weight is
    then an integer multiple of its scale, far from any rounding boundary.
    """
    snapped = copy.deepcopy(model)
    params = dict(snapped.named_parameters())
    buffers = dict(snapped.named_buffers())
    with torch.no_grad():
        for name, qt in quant.tensors.items():
            target = params.get(name, buffers.get(name))
            if target is None:
                raise VerificationError(
                    f"quantised weight {name!r} is not a parameter of the model",
                    "re-run the quantize stage on this model",
                )
            target.copy_(torch.from_numpy(qt.dequantize()))
    return snapped


# --------------------------------------------------------------------------------------------------
# BatchNorm folding on the aten graph (works for plain modules and torch.export GraphModules alike)


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
    """The model as an aten-level GraphModule with a dynamic batch dimension, or a GraphError naming why."""
    example = example_input[:1].expand(2, *example_input.shape[1:]).contiguous()
    try:  # DYNAMIC: the batch must stay symbolic, with whatever bounds a loaded program already carries
        program = torch.export.export(model.eval(), (example,), dynamic_shapes=({0: torch.export.Dim.DYNAMIC},))
    except Exception as exc:  # torch.export raises many unrelated types for untraceable code
        raise GraphError(
            f"cannot trace the model for quantisation/export: {first_line(exc)}",
            "remove data-dependent Python control flow and unsupported ops from forward()",
        ) from None
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
        and _is_weight_layer(layer)
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
    fuse = fuse_linear_bn_weights if layer.target in LINEAR_OPS else fuse_conv_bn_weights
    new_weight, new_bias = fuse(weight, bias, mean, var, eps, gamma, beta)
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


# --------------------------------------------------------------------------------------------------
# Activation calibration


class _RangeRecorder(fx.Interpreter):
    """Runs the graph and reduces every floating-point intermediate to ``(low, high)`` on the spot.

    Reducing immediately keeps memory flat (no activation is kept) and reads each value before a later
    in-place op (``relu_``, ``hardtanh_``) could overwrite it.
    """

    def __init__(self, gm: fx.GraphModule, reduce: Any) -> None:
        super().__init__(gm)
        self.reduce = reduce
        self.ranges: dict[str, list[tuple[float, float]]] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        if n.op in ("placeholder", "call_function") and isinstance(out, torch.Tensor) and out.is_floating_point():
            self.ranges.setdefault("input" if n.op == "placeholder" else n.name, []).append(self.reduce(out))
        return out


@torch.no_grad()
def calibrate_activations(
    model: fx.GraphModule, batch: torch.Tensor, method: str = "minmax", percentile: float = 99.99, chunk: int = 32
) -> dict[str, tuple[float, float]]:
    """Per-tensor ``(low, high)`` of every activation of ``model`` (an aten GraphModule) on ``batch``.

    ``minmax`` takes the extremes over the whole batch; ``percentile`` the ``100-p`` and ``p``
    percentiles (averaged over chunks of ``chunk`` samples), which ignores the few outliers that would
    otherwise stretch an 8-bit grid.
    """
    if method not in CALIBRATION_METHODS:
        raise DataError(f"unknown calibration method {method!r}", f"choose one of {', '.join(CALIBRATION_METHODS)}")

    def reduce(value: torch.Tensor) -> tuple[float, float]:
        if method == "minmax":
            return float(value.min()), float(value.max())
        low, high = np.percentile(value.detach().reshape(-1).numpy(), [100.0 - percentile, percentile])
        return float(low), float(high)

    recorder = _RangeRecorder(model, reduce)
    for part in batch.split(chunk):
        recorder.run(part)
    ranges: dict[str, tuple[float, float]] = {}
    for name, per_chunk in recorder.ranges.items():
        lows, highs = np.asarray(per_chunk).T
        combined = (lows.min(), highs.max()) if method == "minmax" else (lows.mean(), highs.mean())
        ranges[name] = (float(combined[0]), float(combined[1]))
    return ranges


def calibration_inputs(art: Artifact, samples: int) -> torch.Tensor:
    """Real calibration samples from the artifact's dataset, checked against the model's input shape."""
    if art.data is None:
        raise DataError("INT8 calibration needs real data", "pass --data (e.g. --data digits or a dataset directory)")
    batch = art.data.calibration_batch(samples)
    expected = tuple(art.example_input.shape[1:])
    if tuple(batch.shape[1:]) != expected:
        raise DataError(
            f"calibration data has samples of shape {list(batch.shape[1:])} but the model expects {list(expected)}",
            "pass --data whose samples match the model's input shape",
        )
    if len(batch) == 0:
        raise DataError("the dataset has no training samples to calibrate on", "use a larger dataset")
    return batch


# --------------------------------------------------------------------------------------------------
# Persistence and the pipeline stage


def save_quantized(quant: QuantizedWeights, dest: str | Path) -> Path:
    """Write levels and scales to an .npz (``<name>.levels`` / ``<name>.scale``), atomically."""
    arrays: dict[str, np.ndarray] = {}
    for name, qt in quant.tensors.items():
        arrays[f"{name}.levels"] = qt.levels
        arrays[f"{name}.scale"] = qt.scale
    with atomic_path(dest) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    return Path(dest)


def load_quantized(path: str | Path) -> QuantizedWeights:
    """Read back what :func:`save_quantized` wrote (activation ranges are not stored there)."""
    with np.load(path, allow_pickle=False) as f:
        names = [k[: -len(".levels")] for k in f.files if k.endswith(".levels")]
        return QuantizedWeights(tensors={n: QuantizedTensor(f[f"{n}.levels"], f[f"{n}.scale"]) for n in names})


def run_stage(art: Artifact, ctx: StageContext) -> dict[str, Any]:
    """The quantize stage: fold BN, quantise the weights, calibrate activations on real data.

    Replaces ``art.model`` by the BN-folded graph (the model every later stage codes and exports),
    stores the :class:`QuantizedWeights` in ``art.quant`` and writes ``quant.npz``.
    """
    opts: QuantOptions = ctx.options_for("quantize", QuantOptions)
    batch = calibration_inputs(art, opts.calibration_samples)
    original = art.model.eval()
    deploy, folded = to_deploy_graph(original, art.example_input)
    with torch.no_grad():
        fold_diff = float((original(batch) - deploy(batch)).abs().max())
    allocation = None
    if opts.weights == "allocated":
        from edgeprune.nnr.allocate import allocate_int8

        drop, bits = _budget(opts, ctx)
        quantize = functools.partial(quantize_weights, max_level=opts.max_level)
        allocation = allocate_int8(deploy, quantized_weight_names(deploy), art.data, drop, bits, quantize)
        quant = quantize(deploy, allocation.qps)
    elif opts.weights == "maxabs":
        quant = quantize_weights(deploy, max_level=opts.max_level)
    else:
        raise DataError(f"unknown weight quantisation {opts.weights!r}", f"choose one of {', '.join(WEIGHT_MODES)}")
    quant.activation_ranges = calibrate_activations(deploy, batch, opts.calibration, opts.percentile)
    quant.calibration = {"method": opts.calibration, "samples": len(batch), "percentile": opts.percentile}
    art.model = deploy
    art.quant = quant
    art.files["quant"] = save_quantized(quant, ctx.out_dir / "quant.npz")
    result: dict[str, Any] = {
        "quantized_tensors": len(quant.tensors),
        "quantized_values": quant.num_values,
        "batchnorms_folded": folded,
        "fold_max_abs_diff": fold_diff,
        "weight_sqnr_db": weight_sqnr_db(deploy, quant),
        "calibration": quant.calibration,
        "size_bytes": art.files["quant"].stat().st_size,
    }
    result["weight_quantisation"] = opts.weights
    result["weight_bits"] = opts.weight_bits
    if allocation is not None:
        result.update(
            allocation_bits_per_weight=round(allocation.bits_per_weight, 4),
            allocation_sensitivity=allocation.sensitivity,
            allocation_trials=allocation.trials,
            allocation_budget_met=allocation.budget_met,
            allocation_agreement=allocation.agreement,
            max_abs_level=int(max((int(np.abs(t.levels).max()) for t in quant.tensors.values()), default=0)),
        )
    if art.data is not None:
        # Accuracy with INT8 weights and float activations: the share of the INT8 loss due to weights.
        result["accuracy"] = evaluate(with_quantized_weights(deploy, quant), art.data.loader("test", 256))["accuracy"]
    return result


def _budget(opts: QuantOptions, ctx: StageContext) -> tuple[float | None, float | None]:
    """The one rate knob: the encode stage's budget when the user gave one there (``compress
    --target-accuracy-drop/--bits-per-weight`` set it), else the quantize options' (0.5 point)."""
    from edgeprune.nnr.stage import NnrOptions

    nnr = ctx.options_for("nnr", NnrOptions)
    if nnr.bits_per_weight is not None:
        return None, nnr.bits_per_weight
    if nnr.target_accuracy_drop is not None:
        return nnr.target_accuracy_drop, None
    if opts.bits_per_weight is not None:
        return None, opts.bits_per_weight
    return opts.target_accuracy_drop, None


def weight_sqnr_db(model: nn.Module, quant: QuantizedWeights) -> float:
    """Signal-to-quantisation-noise ratio of all quantised weights together, in dB."""
    state = model.state_dict()
    signal = noise = 0.0
    for name, qt in quant.tensors.items():
        w = state[name].detach().double().numpy()
        signal += float((w**2).sum())
        noise += float(((w - qt.dequantize()) ** 2).sum())
    return float("inf") if noise == 0 else 10.0 * float(np.log10(signal / noise))
