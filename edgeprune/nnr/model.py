"""The torch adapter: models <-> .nnr files (the only part of edgeprune.nnr that imports torch).

``encode_model`` codes a model's state_dict plus its declarative architecture
(:mod:`edgeprune.nnr.topology`); ``decode_model`` rebuilds the model from the file alone, running
no code the file names."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

import numpy as np
import torch
from torch import nn

from edgeprune.errors import BitstreamError
from edgeprune.nnr import topology
from edgeprune.nnr.qp import default_qp
from edgeprune.nnr.tensors import DecodedStream, EncodedStream, decode_stream, encode_tensors

log = logging.getLogger(__name__)

# ------------------------------------------------------------------ models


def model_tensors(model: nn.Module) -> dict[str, np.ndarray]:
    """The model's state_dict as numpy arrays (what the NDUs carry)."""
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


def architecture_record(model: nn.Module, example_input: torch.Tensor) -> dict[str, Any]:
    """How the decoder rebuilds the module: a declarative graph of known operators
    (:mod:`edgeprune.nnr.topology`), never a Python name or a pickle, so that decoding a downloaded
    .nnr cannot run code. A model the graph cannot describe is stored without an architecture
    (``decode`` then asks for ``--arch``)."""
    try:
        return {"graph": topology.describe(model, example_input)}
    except topology.TopologyUnsupported as exc:
        log.warning("the .nnr will not carry the architecture (%s); decode it with --arch", exc)
        return {}


@dataclass
class ModelEncodeOptions:
    """How `encode_model` codes a model (see the CLI options of `edgeprune encode` for the meaning)."""

    qp: int | None = None  # one qp for all >= 2-D float tensors; None: per-tensor default
    qps: dict[str, int] | None = None  # per-tensor qps (from the allocator); overrides qp
    int8: bool = False  # code the quantize stage's INT8 levels where available
    dq: bool = True
    row_skip: bool = True
    estimator_search: bool = False
    rdoq: float = 0.0  # lambda scale of RDOQ (uniform quantisation only); 0: off
    embed_architecture: bool = True
    threads: int | None = None


def encode_model(
    model: nn.Module,
    example_input: torch.Tensor,
    options: ModelEncodeOptions | None = None,
    quant: Any = None,
    architecture: Mapping[str, Any] | None = None,
) -> EncodedStream:
    """Encode ``model``'s state_dict (plus what rebuilds it) into an NNR bitstream.

    ``architecture`` (``{"architecture": architecture_record(...)}``) lets callers that write several
    streams of one model export its graph once."""
    options = options or ModelEncodeOptions()
    tensors = model_tensors(model)
    int8 = {}
    if options.int8:
        if quant is None:
            raise BitstreamError(
                "--int8 needs the INT8 levels of the quantize stage",
                "run `edgeprune compress` (quantize runs before encode) or drop --int8",
            )
        int8 = {k: v for k, v in getattr(quant, "tensors", quant).items() if k in tensors}
    qps: dict[str, int] | int | None = options.qps
    if qps is None and options.qp is not None:
        qps = {
            k: (options.qp if v.ndim >= 2 else default_qp(v))
            for k, v in tensors.items()
            if np.issubdtype(v.dtype, np.floating)
        }
    extra: dict[str, Any] = {"input_shape": list(example_input.shape)}
    if architecture is not None:
        extra.update(architecture)
    elif options.embed_architecture:
        extra["architecture"] = architecture_record(model, example_input)
    return encode_tensors(
        tensors,
        qps=qps,
        int8=int8,
        dq=options.dq,
        row_skip=options.row_skip,
        estimator_search=options.estimator_search,
        rdoq=options.rdoq,
        extra_topology=extra,
        threads=options.threads,
    )


def load_decoded(model: nn.Module, decoded: DecodedStream) -> nn.Module:
    """Copy the decoded tensors into ``model`` (names and shapes must match exactly)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in decoded.tensors]
    extra = [k for k in decoded.tensors if k not in expected]
    if missing or extra:
        problem = f"missing {missing[0]!r}" if missing else f"unexpected {extra[0]!r}"
        raise BitstreamError(
            f"the .nnr tensors do not match the architecture ({problem})", "check --arch / --arch-kwargs"
        )
    state = {}
    for k, ref in expected.items():
        array = np.array(decoded.tensors[k], copy=True, order="C")  # ascontiguousarray would make 0-dim 1-D
        if array.size == 1 and ref.dim() == 0:
            array = array.reshape(())  # an NDU has at least one dimension; streams without a topology say [1]
        value = torch.from_numpy(array).to(ref.dtype)
        if tuple(value.shape) != tuple(ref.shape):
            raise BitstreamError(
                f"{k}: the .nnr has shape {list(value.shape)}, the architecture {list(ref.shape)}",
                "check --arch / --arch-kwargs",
            )
        state[k] = value
    model.load_state_dict(state)
    return model.eval()


def decode_model(
    source: str | os.PathLike | bytes | bytearray,
    arch: str | None = None,
    arch_kwargs: str | dict | None = None,
    input_shape: tuple[int, ...] | None = None,
) -> tuple[nn.Module, torch.Tensor, DecodedStream]:
    """Rebuild (model, example_input, decoded stream) from a .nnr alone, or with ``arch`` (and
    ``input_shape``) overriding what it carries."""
    from edgeprune.checkpoint import build_arch

    decoded = decode_stream(source)
    topo = decoded.topology
    shape = list(input_shape) if input_shape else topo.get("input_shape")
    record = topo.get("architecture") or {}
    if not isinstance(record, dict):
        raise BitstreamError("the architecture in the .nnr is not an object", "the file is damaged; pass --arch")
    if arch:  # the user's own code, named on the command line
        model = build_arch(arch, arch_kwargs)
    elif "graph" in record:
        if not _valid_input_shape(shape):
            raise BitstreamError("the .nnr records an invalid input shape", "pass --input-shape")
        model = topology.build_module(record["graph"], decoded.tensors, (1, *shape[1:]))
    elif "factory" in record or "exported_program_xz" in record:
        raise BitstreamError(
            "this .nnr names Python code to build its model (an older edgeprune format), "
            "which decode never runs from a file",
            "pass --arch package.module:factory if you trust it, or re-encode the model",
        )
    else:
        raise BitstreamError(
            "this .nnr carries no architecture (e.g. written by NNCodec)",
            "pass --arch package.module:factory (and --input-shape)",
        )
    model = load_decoded(model.float(), decoded)
    if not _valid_input_shape(shape):
        shape = list(getattr(model, "input_shape", []) or [])
    if not _valid_input_shape(shape):
        raise BitstreamError("the .nnr does not record a valid input shape for the model", "pass --input-shape")
    example = torch.zeros(1, *shape[1:])
    try:
        with torch.no_grad():
            model(example)
    except Exception as exc:  # noqa: BLE001 - the rebuilt graph comes from a file; any failure is the file's
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise BitstreamError(
            f"the model rebuilt from the .nnr does not run on inputs of shape {list(example.shape)}: {first}",
            "check --arch / --input-shape, or re-encode the model",
        ) from None
    return model, example, decoded


MAX_INPUT_ELEMENTS = 1 << 22  # one input sample (16 MiB float32; 3x1024x1024 fits): far above edge inputs


def _valid_input_shape(shape: Any) -> TypeGuard[list[int] | tuple[int, ...]]:
    """A list of 2..8 positive ints whose single-sample size stays under :data:`MAX_INPUT_ELEMENTS`."""
    return (
        isinstance(shape, (list, tuple))
        and 2 <= len(shape) <= 8
        and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)
        and math.prod(shape[1:]) <= MAX_INPUT_ELEMENTS
    )
