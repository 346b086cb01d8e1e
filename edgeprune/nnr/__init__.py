"""MPEG-NNR bitstreams with a DeepCABAC-style CABAC coder (C core in cabac.c, bit-exact with NNCodec 2.1.3).

Public API: :func:`encode_model` / :func:`decode_model` (models <-> .nnr), :func:`encode_tensors` /
:func:`decode_stream` (dicts of arrays), :func:`read_int8_levels` (the INT8 deploy levels of a .nnr),
:func:`inspect_stream`; the rate model other stages plan with - :func:`step_size` / :func:`qp_for_step`
(NNC's qp grid), :func:`coded_bytes` (what levels cost as model.nnr codes them),
:func:`fisher_sensitivity` and :func:`allocate_qps`; :class:`NnrOptions`, the encode stage's options.
The pipeline stage is ``edgeprune.nnr.stage:run``.

Layers, as NNCodec layers its code: ``_cabac`` (the C core: ``cabac.c`` arithmetic coding, level syntax
and RDOQ, ``quantize.c`` the qp grid and the DQ trellis), :mod:`~edgeprune.nnr.bitstream` (unit syntax,
one description for writer and reader), :mod:`~edgeprune.nnr.qp` (the quantisation grid and qp
policy), :mod:`~edgeprune.nnr.tensors` (dicts of arrays <-> streams; numpy only),
:mod:`~edgeprune.nnr.topology` (the declarative architecture schema), :mod:`~edgeprune.nnr.model`
(the torch adapter), :mod:`~edgeprune.nnr.allocate` (per-tensor rate allocation).
"""

from edgeprune.nnr.allocate import allocate_qps, coded_bytes, fisher_sensitivity
from edgeprune.nnr.model import ModelEncodeOptions, decode_model, encode_model
from edgeprune.nnr.qp import QP_MAX, QP_MIN, WEIGHT_STEP_PER_STD, qp_for_step, step_size
from edgeprune.nnr.stage import NnrOptions
from edgeprune.nnr.tensors import (
    DecodedStream,
    EncodedStream,
    decode_stream,
    encode_tensors,
    inspect_stream,
    read_int8_levels,
)

__all__ = [
    "QP_MAX",
    "QP_MIN",
    "WEIGHT_STEP_PER_STD",
    "DecodedStream",
    "EncodedStream",
    "ModelEncodeOptions",
    "NnrOptions",
    "allocate_qps",
    "coded_bytes",
    "decode_model",
    "decode_stream",
    "encode_model",
    "encode_tensors",
    "fisher_sensitivity",
    "inspect_stream",
    "qp_for_step",
    "read_int8_levels",
    "step_size",
]
