"""INT8 weight levels: symmetric per-channel quantisation, the container every later stage reads,
its file format (``quant.npz``) and the float model that carries exactly those levels."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from edgeprune.errors import VerificationError
from edgeprune.fileio import atomic_path
from edgeprune.nnr import step_size

QMAX = 127
# 7-bit weights (|level| <= 63) for x86 CPUs without VNNI: their INT8 kernels add two u8 x s8 products
# in 16 bits, which cannot overflow when |level| <= 63 (2 * 255 * 63 < 32767); onnxruntime's reduce_range.
WEIGHT_BITS = (8, 7)

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


def int8_scales(weight: np.ndarray, step: float | None, max_level: int = 127) -> np.ndarray:
    """Per-output-channel scales: ``max(step, max|w_c|/max_level)`` (``step`` None: max-abs INT8;
    ``max_level`` 63 for 7-bit weights, see :class:`edgeprune.quant.stage.QuantOptions`)."""
    w = np.asarray(weight, dtype=np.float32)
    absmax = np.abs(w.reshape(w.shape[0], -1)).max(axis=1)
    scale = (absmax / np.float32(max_level)).astype(np.float32)
    if step is not None:
        scale = np.maximum(scale, np.float32(step)).astype(np.float32)
    scale[absmax / np.float32(max_level) < np.finfo(np.float32).tiny] = 1.0  # zero rows: levels 0 with any scale
    return scale


def quantize_tensor(
    weight: np.ndarray | torch.Tensor, step: float | None = None, max_level: int = QMAX
) -> QuantizedTensor:
    """Symmetric per-output-channel INT8 quantisation of one weight (see the module docstring).

    ``step`` (from the rate allocation) sets the grid: ``scale_c = max(step, max|w_c|/max_level)``, so no
    level leaves -max_level..max_level; None is max-abs INT8.
    """
    w = weight.detach().cpu().numpy() if isinstance(weight, torch.Tensor) else np.asarray(weight)
    w = w.astype(np.float32, copy=False)
    # Zero (or denormal-only) rows get scale 1.0: their levels are 0 with any scale, and 1.0 matches ORT.
    scale = int8_scales(w, step, max_level)
    per_row = scale.reshape(-1, *([1] * (w.ndim - 1)))
    levels = np.clip(np.rint(w / per_row), -max_level, max_level).astype(np.int8)
    return QuantizedTensor(levels=levels, scale=scale, axis=0)


def is_weight_layer(node: fx.Node) -> bool:
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
            dict.fromkeys(n.args[1].target for n in model.graph.nodes if is_weight_layer(n) and n.args[0] in dependent)
        )
    return [f"{name}.weight" for name, m in model.named_modules() if isinstance(m, _PLAIN_WEIGHT_LAYERS)]


def quantize_weights(model: nn.Module, qps: dict[str, int] | None = None, max_level: int = QMAX) -> QuantizedWeights:
    """Quantise every conv/linear weight of ``model`` (fold BatchNorm first: see :func:`to_deploy_graph`).

    ``qps`` (NNC qp per tensor, from :func:`edgeprune.quant.allocate.allocate_int8`) gives each tensor's
    step; tensors without one, or ``qps`` None, get max-abs INT8 (within ``max_level``).
    """
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


def weight_sqnr_db(model: nn.Module, quant: QuantizedWeights) -> float:
    """Signal-to-quantisation-noise ratio of all quantised weights together, in dB."""
    state = model.state_dict()
    signal = noise = 0.0
    for name, qt in quant.tensors.items():
        w = state[name].detach().double().numpy()
        signal += float((w**2).sum())
        noise += float(((w - qt.dequantize()) ** 2).sum())
    return float("inf") if noise == 0 else 10.0 * float(np.log10(signal / noise))
