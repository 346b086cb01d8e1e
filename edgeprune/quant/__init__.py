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
* **activations**: per-tensor ranges calibrated on real data (``minmax``, ``percentile``, ``entropy``,
  ``mse``). They are recorded for the report and for coders; the exporters calibrate their activation quantisers with
  the same samples and method (onnxruntime) or MinMax observers (PT2E), so activation scales are
  equivalent but computed by each toolchain.

Modules: :mod:`~edgeprune.quant.levels` (the levels and their container), :mod:`~edgeprune.quant.deploy`
(BN folding), :mod:`~edgeprune.quant.calibrate` (activation ranges), :mod:`~edgeprune.quant.stage`
(the pipeline stage and its options).
"""

from edgeprune.quant.calibrate import (
    CALIBRATION_CHOICES,
    CALIBRATION_METHODS,
    HISTOGRAM_BINS,
    calibrate_activations,
    calibration_inputs,
    mse_range,
)
from edgeprune.quant.deploy import to_deploy_graph, trace
from edgeprune.quant.levels import (
    QMAX,
    WEIGHT_BITS,
    QuantizedTensor,
    QuantizedWeights,
    load_quantized,
    quantize_tensor,
    quantize_weights,
    quantized_weight_names,
    save_quantized,
    weight_sqnr_db,
    with_quantized_weights,
)
from edgeprune.quant.stage import WEIGHT_MODES, QuantOptions

__all__ = [
    "CALIBRATION_CHOICES",
    "CALIBRATION_METHODS",
    "HISTOGRAM_BINS",
    "QMAX",
    "WEIGHT_BITS",
    "WEIGHT_MODES",
    "QuantOptions",
    "QuantizedTensor",
    "QuantizedWeights",
    "calibrate_activations",
    "calibration_inputs",
    "load_quantized",
    "mse_range",
    "quantize_tensor",
    "quantize_weights",
    "quantized_weight_names",
    "save_quantized",
    "to_deploy_graph",
    "trace",
    "weight_sqnr_db",
    "with_quantized_weights",
]
