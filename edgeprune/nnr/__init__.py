"""MPEG-NNR bitstreams with a DeepCABAC-style CABAC coder (C core in cabac.c, bit-exact with NNCodec 2.1.3).

Public API: :func:`encode_model` / :func:`decode_model` (models <-> .nnr), :func:`encode_tensors` /
:func:`decode_stream` (dicts of arrays), :func:`read_int8_levels` (the INT8 deploy levels of a .nnr),
:func:`inspect_stream`. The pipeline stage is ``edgeprune.nnr.stage:run``.
"""

from edgeprune.nnr.codec import (
    DecodedStream,
    EncodedStream,
    ModelEncodeOptions,
    decode_model,
    decode_stream,
    encode_model,
    encode_tensors,
    inspect_stream,
    read_int8_levels,
)

__all__ = [
    "DecodedStream",
    "EncodedStream",
    "ModelEncodeOptions",
    "decode_model",
    "decode_stream",
    "encode_model",
    "encode_tensors",
    "inspect_stream",
    "read_int8_levels",
]
