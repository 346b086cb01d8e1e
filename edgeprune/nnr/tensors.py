"""Tensors <-> MPEG-NNR bitstreams (numpy only; models are :mod:`edgeprune.nnr.model`).

What goes where in a stream edgeprune writes:

* ``NNR_STR`` (profile 1) and ``NNR_MPS`` (uniform quantisation, qp density 2, base qp 0), as NNCodec;
* ``NNR_TPL`` with storage format 0 and a text string (``edgeprune-nnr/3:`` and base85 of deflated
  JSON, see :func:`pack_topology`): what the NDU headers have no field for - a tensor's dtype when not
  float32, the shape of 0-dim and empty tensors, INT8 deploy levels' per-channel scales, integers too
  large for CABAC, one CRC-32 of all NDUs, the model's input shape and its architecture as a declarative
  graph of known operators (:mod:`edgeprune.nnr.topology`: data only, so that the .nnr alone rebuilds
  a loadable model and decoding it never runs code named by the file);
* one ``NNR_NDU`` per tensor, in ``state_dict`` order: FLOAT (qp-quantised, CABAC, DQ on by default)
  for float tensors, INT (CABAC-coded integers, no qp) for INT8 deploy levels and integer buffers.

NNCodec 2.1.3 decodes these streams (the tests check that); edgeprune's reader also skips unknown
unit types by size. Tensors are coded on a thread pool: the C coder releases the GIL.
"""

from __future__ import annotations

import base64
import json
import math
import os
import zlib
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeprune.errors import BitstreamError
from edgeprune.nnr import _cabac
from edgeprune.nnr.bitstream import (
    PayloadType,
    UnitType,
    parse_units,
    write_model_parameter_set,
    write_ndu,
    write_start_unit,
    write_topology_unit,
)
from edgeprune.nnr.qp import (
    QP_DENSITY,
    QP_MAX,
    QP_MIN,
    default_qp,
    is_positive_vector,
    positive_qp,
    step_size,
    step_size_at,
)

PROFILE = 1
NUM_GTX_FLAGS = 11  # cabac_unary_length_minus1 = 10, NNCodec's default
TPL_FORMAT = "edgeprune-nnr"
# Version 2 left out defaults (dtype float32, axis 0) and wrote a uniform per-channel scale as one number.
# Version 3 also leaves out what the NDU headers already say (a coded tensor's name, shape, qp and mode
# but INT8), keeps one CRC-32 for all NDUs and deflates the unit: on the example it went from 26 % of
# model.nnr to under 10 %. Version-1 and -2 streams (plain JSON) still decode.
TPL_VERSION = 3
TPL_PREFIX = f"{TPL_FORMAT}/{TPL_VERSION}:"
DEFAULT_DTYPE = "float32"
# Weights a stream may declare (all tensors together): 16 M (64 MiB of float32; decoding holds ~4
# copies next to torch's ~350 MiB) keeps a 1 GiB Raspberry Pi alive whatever the file says - VGG-16
# for CIFAR has 15 M. EDGEPRUNE_MAX_WEIGHTS raises it on bigger hosts.
MAX_TOTAL_ELEMENTS = int(os.environ.get("EDGEPRUNE_MAX_WEIGHTS", str(1 << 24)))
TENSOR_DTYPES = frozenset(
    {"bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float16", "float32", "float64"}
)
BINS_PER_BYTE_LIMIT = 2048  # generous bound on decodable bins per payload byte (see decode_stream)
# Tensors of at least this many weights are written in block scan with entry points, so that decoding
# splits them across threads; a smaller one decodes in under ~40 ms and is not worth the bytes: each block
# row restarts the contexts (64x64 blocks: +0.06 % on VGG-16's 2.4 M-weight convs, +0.4 % on a 30k-row
# embedding, but +1.1 % on a trained 500x200 fc layer).
BLOCK_SCAN_MIN_WEIGHTS = 1 << 20


def layout(shape: tuple[int, ...]) -> tuple[int, int]:
    """(rows, width) as NNC views a tensor: first dimension x the rest; one row when either is 1."""
    n = int(np.prod(shape)) if shape else 1
    rows = int(shape[0]) if len(shape) > 1 else 1
    width = n // rows if rows else 0
    if width == 1 or rows == 1:
        return 1, n
    return rows, width


def coder_layout(shape: tuple[int, ...], scan_order: int) -> tuple[int, int]:
    """(rows, width) the CABAC coder walks: a block scan follows the first dimension exactly (its block
    rows are what the header's entry points count), raster scan :func:`layout`."""
    if scan_order and len(shape) > 1:
        return int(shape[0]), math.prod(shape[1:])
    return layout(shape)


def auto_scan_order(shape: tuple[int, ...]) -> int:
    """Block scan for large tensors of at least two dimensions and width > 1, with the largest blocks that
    still give two block rows (smaller blocks cost more bytes: 8x8 +0.5 % on VGG-16, 64x64 +0.06 %);
    raster scan otherwise."""
    if len(shape) < 2 or math.prod(shape[1:]) == 1 or math.prod(shape) < BLOCK_SCAN_MIN_WEIGHTS:
        return 0  # NNCodec 2.1.3 writes no entry points for a (rows, 1) tensor: keep those raster
    return next((order for order in range(4, 0, -1) if _cabac.block_rows(int(shape[0]), order) >= 2), 0)


def resolve_scan_order(shape: tuple[int, ...], requested: int | None) -> int:
    """The scan order a tensor is written in: ``requested`` (NNCodec's option, for tensors of two or more
    dimensions; 1-D tensors have no scan-order field), or :func:`auto_scan_order` when None."""
    if requested is None:
        return auto_scan_order(shape)
    return requested if len(shape) > 1 else 0


def scan_positions(rows: int, width: int, scan_order: int) -> np.ndarray:
    """Flat positions in coding order: block rows, then blocks left to right, then rows in a block
    (NNCodec's Scan). The DQ trellis must run in this order: its states chain along the coded sequence."""
    grid = np.arange(rows * width, dtype=np.int64).reshape(rows, width)
    if not scan_order:
        return grid.reshape(-1)
    size = 4 << scan_order
    return np.concatenate(
        [
            grid[r0 : r0 + size, c0 : c0 + size].reshape(-1)
            for r0 in range(0, rows, size)
            for c0 in range(0, width, size)
        ]
    )


@dataclass
class TensorStats:
    """What one tensor cost: the numbers `inspect` and the encode stage report."""

    name: str
    shape: list[int]
    mode: str
    qp: int | None
    ndu_bytes: int
    elements: int
    bins: int = 0  # CABAC bins coded (regular + bypass); known to the encoder only, 0 for raw float32

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.ndu_bytes / self.elements if self.elements else 0.0


@dataclass
class EncodedStream:
    data: bytes
    tensors: list[TensorStats]
    topology_bytes: int

    @property
    def weight_bytes(self) -> int:
        return sum(t.ndu_bytes for t in self.tensors)

    @property
    def num_weights(self) -> int:
        return sum(t.elements for t in self.tensors)

    @property
    def bins(self) -> int:
        """CABAC bins in the stream: what decoding costs, whatever the bytes (cycles per bin)."""
        return sum(t.bins for t in self.tensors)


@dataclass
class DecodedStream:
    """Reconstructed tensors (original dtype and shape), the coded integers, and the topology JSON."""

    tensors: dict[str, np.ndarray]
    levels: dict[str, np.ndarray]
    topology: dict[str, Any]
    stats: list[TensorStats] = field(default_factory=list)


@dataclass
class _TensorJob:
    name: str
    index: int
    array: np.ndarray  # float32 (qp/raw) or int32 levels (int/int8)
    mode: str  # "qp", "int8", "int", "raw"
    qp: int | None = None


@dataclass(frozen=True)
class CabacPayload:
    """One tensor's CABAC payload and what its NDU header must say about it."""

    data: bytes
    scan_order: int
    entry_points: tuple[int, ...]  # NNCodec's packed form, one per block row after the first
    bins: int  # regular + bypass bins the payload codes


def cabac_payload(
    levels: np.ndarray,
    shape: tuple[int, ...],
    dq: bool = False,
    row_skip: bool = True,
    estimator_search: bool = False,
    qp_offset: int | None = None,
    scan_order: int | None = None,
) -> CabacPayload:
    """The CABAC payload an NDU carries for integer ``levels`` of a tensor of ``shape`` (edgeprune's
    profile) - the one place the coder is called, so size estimates cost what files do. ``scan_order``
    None picks :func:`auto_scan_order`; a block scan is written without row skipping (see cabac.c)."""
    shape = tuple(shape) or (1,)
    order = resolve_scan_order(shape, scan_order)
    rows, width = coder_layout(shape, order)
    entry_points = np.zeros(max(_cabac.block_rows(rows, order) - 1, 0), dtype=np.uint64)
    data, bins = _cabac.encode(
        np.ascontiguousarray(levels.reshape(-1), dtype=np.int32),
        rows,
        width,
        dq=dq,
        profile=True,
        row_skip=row_skip and not order,
        estimator_search=estimator_search,
        num_gtx_flags=NUM_GTX_FLAGS,
        qp_offset=qp_offset,
        qp_density=QP_DENSITY,
        scan_order=order,
        entry_points=entry_points if entry_points.size else None,
    )
    return CabacPayload(data, order, tuple(int(ep) for ep in entry_points), bins)


def quantize_levels(weights: np.ndarray, step: float, dq: bool, rdoq: float, scan_order: int) -> np.ndarray:
    """Reconstruction indices of ``weights`` at ``step``; with DQ the trellis follows the coding order."""
    flat = np.ascontiguousarray(weights.reshape(-1), dtype=np.float32)
    levels = np.empty(flat.size, dtype=np.int32)
    if not (dq and scan_order):
        _cabac.quantize(flat, levels, step, dq=dq, rdoq=rdoq, num_gtx_flags=NUM_GTX_FLAGS)
        return levels
    order = scan_positions(*coder_layout(tuple(weights.shape), scan_order), scan_order)
    in_order = np.empty_like(levels)
    _cabac.quantize(np.ascontiguousarray(flat[order]), in_order, step, dq=True, rdoq=rdoq, num_gtx_flags=NUM_GTX_FLAGS)
    levels[order] = in_order
    return levels


def _encode_job(
    job: _TensorJob, dq: bool, row_skip: bool, estimator_search: bool, rdoq: float, scan_order: int | None
) -> tuple[bytes, int]:
    """One tensor's NDU and the CABAC bins it codes (0 for a raw float32 payload)."""
    shape = tuple(job.array.shape) or (1,)
    flat = np.ascontiguousarray(job.array.reshape(-1))
    if job.mode == "raw":
        payload = flat.astype("<f4").tobytes()
        return write_ndu(
            PROFILE, job.name, job.index, PayloadType.RAW_FLOAT, list(shape), False, NUM_GTX_FLAGS, payload
        ), 0
    order = resolve_scan_order(shape, scan_order)
    if job.mode == "qp":
        assert job.qp is not None, "qp-mode jobs carry their qp"
        try:
            levels = quantize_levels(job.array.reshape(shape), step_size(job.qp), dq, rdoq, order)
        except _cabac.CabacError as exc:
            raise BitstreamError(f"cannot quantise {job.name} at qp {job.qp}: {exc}", "use a coarser qp") from None
        payload_type, use_dq, qp_offset = PayloadType.FLOAT, dq, job.qp
    else:
        levels = flat.astype(np.int32)
        payload_type, use_dq, qp_offset = PayloadType.INT, False, None
    try:
        coded = cabac_payload(levels, shape, use_dq, row_skip, estimator_search, qp_offset, order)
    except _cabac.CabacError as exc:
        raise BitstreamError(f"cannot encode {job.name}: {exc}", "use a coarser qp") from None
    unit = write_ndu(
        PROFILE,
        job.name,
        job.index,
        payload_type,
        list(shape),
        use_dq,
        NUM_GTX_FLAGS,
        coded.data,
        coded.scan_order,
        coded.entry_points,
    )
    return unit, coded.bins


def encode_tensors(
    tensors: Mapping[str, np.ndarray],
    qps: Mapping[str, int] | int | None = None,
    int8: Mapping[str, Any] | None = None,
    dq: bool = True,
    row_skip: bool = True,
    estimator_search: bool = False,
    raw: set[str] | frozenset[str] = frozenset(),
    rdoq: float = 0.0,
    extra_topology: Mapping[str, Any] | None = None,
    threads: int | None = None,
    scan_order: int | None = None,
) -> EncodedStream:
    """Encode a dict of arrays into one NNR bitstream.

    ``qps`` gives the qp of float tensors (one int for all, a dict per name, or None for
    :func:`default_qp`); names in ``int8`` (objects with ``.levels``, ``.scale``, ``.axis``) are coded as
    exactly those INT8 levels; integer arrays are coded losslessly; names in ``raw`` as float32.
    ``estimator_search`` reproduces NNCodec's per-context estimator choice (about 0.5-1 % smaller,
    several times slower to encode); with it on and the same qp the bytes equal NNCodec's. ``rdoq`` > 0
    (uniform quantisation only) trades distortion for rate with NNCodec's lambda scale. ``scan_order``
    (0 raster, 1..4 block scan, as NNCodec's option) applies to every tensor of two or more dimensions;
    None writes large tensors in block scan so that decoders can split them across threads.
    """
    if rdoq > 0 and dq:
        raise BitstreamError("RDOQ is implemented for uniform quantisation only", "pass --no-dq with --rdoq")
    int8 = int8 or {}
    jobs: list[_TensorJob] = []
    entries: list[dict[str, Any]] = []
    for name, value in tensors.items():
        arr = np.asarray(value)
        if arr.dtype.name not in TENSOR_DTYPES:
            raise BitstreamError(
                f"tensor {name} has dtype {arr.dtype.name}, which edgeprune cannot code",
                "convert the model to float32 first",
            )
        # A tensor with an NDU takes its name, shape and (but for INT8) mode from the NDU header.
        entry: dict[str, Any] = {} if arr.shape else {"shape": []}  # the NDU codes a 0-dim tensor as [1]
        if arr.dtype.name != DEFAULT_DTYPE:
            entry["dtype"] = arr.dtype.name
        entries.append(entry)
        if arr.size == 0:
            entry.update(name=name, shape=list(arr.shape), mode="empty")
            continue
        if name in int8:
            q = int8[name]
            levels = np.asarray(q.levels)
            if levels.shape != arr.shape:
                raise BitstreamError(
                    f"INT8 levels of {name} have shape {list(levels.shape)}, the tensor {list(arr.shape)}",
                    "re-run the quantize stage on this model",
                )
            entry.update(mode="int8", scale=_scale_record(q.scale))
            if int(q.axis):
                entry["axis"] = int(q.axis)
            job = _TensorJob(name, len(jobs), levels.astype(np.int32), "int8")
        elif np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_:
            if arr.size and (int(arr.max()) > _cabac.MAX_ABS_LEVEL or int(arr.min()) < -_cabac.MAX_ABS_LEVEL):
                data = base64.b64encode(arr.astype("<i8").tobytes()).decode()
                entry.update(name=name, shape=list(arr.shape), mode="raw_int", data=data)
                continue
            job = _TensorJob(name, len(jobs), arr.astype(np.int32), "int")
        elif name in raw:
            job = _TensorJob(name, len(jobs), arr.astype(np.float32), "raw")
        else:
            job = _float_job(name, len(jobs), arr, qps)
        jobs.append(job)
    workers = threads or min(len(jobs), os.cpu_count() or 1) or 1
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        coded = list(pool.map(lambda j: _encode_job(j, dq, row_skip, estimator_search, rdoq, scan_order), jobs))
    units = [unit for unit, _ in coded]
    topology = {"tensors": entries, "crc32": zlib.crc32(b"".join(units)), **(extra_topology or {})}
    tpl = write_topology_unit(pack_topology(topology))
    head = write_start_unit(PROFILE) + write_model_parameter_set(PROFILE, QP_DENSITY) + tpl
    stats = [
        TensorStats(j.name, list(j.array.shape), j.mode, j.qp, len(unit), int(j.array.size), bins)
        for j, (unit, bins) in zip(jobs, coded, strict=True)
    ]
    return EncodedStream(head + b"".join(units), stats, len(tpl))


def _float_job(name: str, index: int, arr: np.ndarray, qps: Mapping[str, int] | int | None) -> _TensorJob:
    """A float tensor's coding: at its qp, or raw float32 when it is a positive vector (BN variances)
    that no qp codes exactly enough."""
    f32 = arr.astype(np.float32)
    if not np.all(np.isfinite(f32)):
        raise BitstreamError(f"tensor {name} contains NaN or infinity", "fix the model before encoding it")
    qp = default_qp(f32) if qps is None else (qps if isinstance(qps, int) else qps.get(name, default_qp(f32)))
    if is_positive_vector(f32):
        tight = positive_qp(f32)
        if tight is None:
            return _TensorJob(name, index, f32, "raw")
        qp = min(int(qp), tight)
    if not QP_MIN <= int(qp) <= QP_MAX:
        raise BitstreamError(f"qp {qp} for {name} is outside {QP_MIN}..{QP_MAX}", "choose a qp in that range")
    return _TensorJob(name, index, f32, "qp", int(qp))


def pack_topology(topology: Mapping[str, Any]) -> str:
    """The TPL unit's text: ``edgeprune-nnr/3:`` and base85 of the raw-deflated JSON.

    Deflate takes the unit to ~40 % (graph node names, keys and operator names repeat). Base85 because
    NNCodec reads ``topology_data`` as a NUL-terminated UTF-8 string, so the unit must stay text for
    NNCodec to decode edgeprune's streams; the RFC 1924 alphabet has no NUL, quote or backslash.
    """
    return pack_topology_text(json.dumps(topology, separators=(",", ":")))


def pack_topology_text(text: str) -> str:
    """:func:`pack_topology` for JSON text already written (or, in the reader's tests, any text)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    packed = compressor.compress(text.encode("utf-8", "surrogatepass")) + compressor.flush()
    return TPL_PREFIX + base64.b85encode(packed).decode("ascii")


def topology_json(text: str) -> str:
    """The JSON text of a TPL unit's ``topology_data``: inflated when packed (version 3), else as is."""
    return _inflate_topology(text[len(TPL_PREFIX) :]) if text.startswith(TPL_PREFIX) else text


def _inflate_topology(text: str) -> str:
    """The JSON inside a packed TPL unit, never inflated past MAX_TOPOLOGY_BYTES (a deflate bomb stops there)."""
    damaged = "the file is damaged; re-encode the model"
    try:
        packed = base64.b85decode(text)
    except ValueError:
        raise BitstreamError("the topology unit is not valid base85", damaged) from None
    inflater = zlib.decompressobj(-15)
    try:
        raw = inflater.decompress(packed, MAX_TOPOLOGY_BYTES + 1)
    except zlib.error:
        raise BitstreamError("the topology unit does not inflate (bad deflate data)", damaged) from None
    if len(raw) > MAX_TOPOLOGY_BYTES:
        raise BitstreamError(
            f"the topology unit inflates past {MAX_TOPOLOGY_BYTES} bytes, more than an edgeprune stream", damaged
        )
    if not inflater.eof:
        raise BitstreamError("the topology unit's deflate data is cut short", damaged)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BitstreamError("the topology unit is not UTF-8", damaged) from None


def _read_bytes(source: str | os.PathLike | bytes | bytearray) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    path = Path(source)
    if not path.is_file():
        raise BitstreamError(f"{path} does not exist or is not a file", "check the path to the .nnr file")
    limit = 4 * MAX_TOTAL_ELEMENTS + MAX_TOPOLOGY_BYTES  # raw float32 of every weight plus the topology
    if path.stat().st_size > limit:
        raise BitstreamError(
            f"{path} is {path.stat().st_size} bytes, more than a stream of {MAX_TOTAL_ELEMENTS} weights can be",
            "set EDGEPRUNE_MAX_WEIGHTS if it is real",
        )
    return path.read_bytes()


def _topology_of(units: list) -> dict[str, Any]:
    tpls = [u for u in units if u.unit_type == UnitType.TPL]
    if not tpls or not tpls[0].fields.get("topology_data"):
        return {}
    packed = tpls[0].fields["topology_data"].startswith(TPL_PREFIX)
    text = topology_json(tpls[0].fields["topology_data"])
    if len(text) > MAX_TOPOLOGY_BYTES or _json_depth_exceeds(text, MAX_JSON_DEPTH):
        raise BitstreamError(
            f"the topology unit is larger or more deeply nested than an edgeprune stream "
            f"({len(text)} bytes, limits {MAX_TOPOLOGY_BYTES} bytes / depth {MAX_JSON_DEPTH})",
            "the file is damaged or hostile",
        )
    try:
        topology = json.loads(text)
    except (ValueError, RecursionError):  # ValueError: also a number past Python's int-digit limit
        if packed:
            raise BitstreamError("the topology unit is not valid JSON", "the file is damaged; re-encode") from None
        return {}
    if packed:
        if not isinstance(topology, dict):
            raise BitstreamError("the topology unit is not a JSON object", "the file is damaged; re-encode")
        return {**topology, "format": TPL_FORMAT, "version": TPL_VERSION}
    return topology if isinstance(topology, dict) and topology.get("format") == TPL_FORMAT else {}


MAX_TOPOLOGY_BYTES = 16 << 20  # JSON of the TPL unit: ~100x the largest zoo model's
MAX_JSON_DEPTH = 32  # the deepest edgeprune topology nests 7 levels


def _json_depth_exceeds(text: str, limit: int) -> bool:
    """Whether brackets nest deeper than ``limit`` (checked before json.loads, which recurses)."""
    depth = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return True
        elif ch in "]}":
            depth -= 1
    return False


def _scale_record(scale: Any) -> float | list[float]:
    """Per-channel INT8 scales for the topology JSON: one number when every channel has the same (the
    rate-allocated grid usually gives every channel the tensor's step), else the list."""
    values = [float(v) for v in np.asarray(scale, dtype=np.float32).reshape(-1)]
    return values[0] if values and all(v == values[0] for v in values) else values


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_entry(entry: Any) -> dict[str, Any]:
    ok = (
        isinstance(entry, dict)
        and isinstance(entry.get("name"), str)
        and isinstance(entry.get("shape"), list)
        and all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 1 << 31 for d in entry["shape"])
        and len(entry["shape"]) <= 8
        and isinstance(entry.get("dtype", DEFAULT_DTYPE), str)
        and isinstance(entry.get("mode"), str)
    )
    if not ok:
        raise BitstreamError("the topology unit describes a tensor incompletely", "the file is damaged; re-encode")
    entry = {"dtype": DEFAULT_DTYPE, **entry}
    if entry["dtype"] not in TENSOR_DTYPES:  # never let numpy parse an arbitrary string as a dtype
        raise BitstreamError(f"unsupported dtype {entry['dtype']!r} in the topology unit", "the file is damaged")
    if math.prod(entry["shape"]) > MAX_TOTAL_ELEMENTS:
        raise BitstreamError(
            f"tensor {entry['name'][:60]!r} declares {math.prod(entry['shape'])} elements, "
            f"more than the limit of {MAX_TOTAL_ELEMENTS}",
            "the file is damaged",
        )
    if entry["mode"] == "empty" and math.prod(entry["shape"]) != 0:
        raise BitstreamError(
            f"tensor {entry['name']!r} is marked empty but has shape {entry['shape']}", "the file is damaged"
        )
    return entry


class _DecodePlan:
    """One NDU being decoded: its checked header, the output arrays, and the block-row ranges that
    threads decode into them (each range also dequantises its own rows)."""

    def __init__(self, unit: Any, base_qp: int, qp_density: int) -> None:
        f = unit.fields
        self.unit, self.name, self.base_qp, self.qp_density = unit, f["topology_elem_id"], base_qp, qp_density
        self.dims = tuple(f["tensor_dimensions"])
        self.ptype = f["nnr_compressed_data_unit_payload_type"]
        self.scan_order = int(f.get("scan_order", 0)) if len(self.dims) > 1 else 0
        self.rows, self.width = coder_layout(self.dims, self.scan_order)
        self.block_rows = _cabac.block_rows(self.rows, self.scan_order)
        self.block_height = 4 << self.scan_order if self.scan_order else self.rows
        self.qp_offset: int | None = None
        n = math.prod(self.dims)
        self.values: np.ndarray | None = None
        if self.ptype == PayloadType.RAW_FLOAT:
            if len(unit.payload) != 4 * n:
                raise BitstreamError(
                    f"raw tensor {self.name!r} has {len(unit.payload)} bytes, expected {4 * n}", "the file is damaged"
                )
            self.levels = np.frombuffer(unit.payload, dtype="<f4").astype(np.float32)
            if not np.isfinite(self.levels).all():
                raise BitstreamError(
                    f"raw tensor {self.name!r} holds NaN or infinity", "the file is damaged; re-encode"
                )
            return
        self.ngtx = f.get("cabac_unary_length_minus1", NUM_GTX_FLAGS - 1) + 1
        if self.ngtx > _cabac.MAX_GTX_FLAGS:
            raise BitstreamError(
                f"cabac_unary_length_minus1 {self.ngtx - 1} is not supported", "re-encode with the default"
            )
        self.entry_points = None
        if self.block_rows > 1:
            eps = f.get("cabac_entry_point_list", [])
            if sum(ep >> 11 for ep in eps) > 8 * len(unit.payload):
                raise BitstreamError(
                    f"tensor {self.name!r}: entry points lie beyond its payload", "the file is damaged"
                )
            self.entry_points = np.array(eps, dtype=np.uint64)
        self.levels = np.empty(n, dtype=np.int32)
        if self.ptype == PayloadType.FLOAT:
            self.values = np.empty(n, dtype=np.float32)

    def parts(self, workers: int) -> list[tuple[int, int]]:
        """Block-row ranges: one per worker (at most one per block row); none for raw payloads."""
        if self.ptype == PayloadType.RAW_FLOAT:
            return []
        count = min(self.block_rows, workers)
        cuts = [round(i * self.block_rows / count) for i in range(count + 1)]
        return list(zip(cuts, cuts[1:], strict=False))

    def decode(self, first: int, end: int) -> None:
        f = self.unit.fields
        try:
            qp_offset, _ = _cabac.decode(
                self.unit.payload,
                self.levels,
                self.rows,
                self.width,
                dq=bool(f.get("dq_flag")),
                profile=bool(f["general_profile_idc"]),
                num_gtx_flags=self.ngtx,
                has_qp_offset=self.ptype == PayloadType.FLOAT,
                qp_density=self.qp_density,
                scan_order=self.scan_order,
                entry_points=self.entry_points,
                block_rows=(first, end) if self.block_rows > 1 else None,
            )
        except _cabac.CabacError as exc:
            raise BitstreamError(f"tensor {self.name!r}: {exc}", "the file is damaged; re-encode the model") from None
        self.qp_offset = qp_offset
        if self.values is not None:
            assert qp_offset is not None, "FLOAT payloads start with their qp offset"
            qp = self.base_qp + qp_offset
            rows = slice(first * self.block_height * self.width, min(self.rows, end * self.block_height) * self.width)
            with np.errstate(over="ignore", invalid="ignore"):
                step = np.float32(step_size_at(qp, self.qp_density))
                np.multiply(self.levels[rows], step, out=self.values[rows], dtype=np.float32)
            if not np.isfinite(self.values[rows]).all():  # a qp far outside any encoder's range: inf steps, inf * 0
                raise BitstreamError(
                    f"tensor {self.name!r}: qp {qp} gives weights that are not finite", "the file is damaged; re-encode"
                )

    def result(self) -> tuple[np.ndarray, np.ndarray | None, int | None]:
        """(levels or raw values, dequantised values or None, qp or None), shaped as the tensor."""
        qp = None if self.qp_offset is None or self.ptype != PayloadType.FLOAT else self.base_qp + self.qp_offset
        values = None if self.values is None else self.values.reshape(self.dims)
        return self.levels.reshape(self.dims), values, qp


def decode_stream(
    source: str | os.PathLike | bytes | bytearray, max_elements: int = MAX_TOTAL_ELEMENTS, threads: int | None = None
) -> DecodedStream:
    """Decode every NDU; verify the CRC and apply the topology JSON when present (NNCodec streams have none)."""
    data = _read_bytes(source)
    units = parse_units(data)
    if not units or units[0].unit_type != UnitType.STR:
        raise BitstreamError(
            "the stream does not start with an NNR start unit", "give a .nnr file (MPEG-NNR bitstream)"
        )
    mps = [u for u in units if u.unit_type == UnitType.MPS]
    base_qp = mps[0].fields.get("mps_quantization_parameter", 0) if mps else 0
    qp_density = mps[0].fields.get("mps_qp_density", QP_DENSITY) if mps else QP_DENSITY
    ndus = [u for u in units if u.unit_type == UnitType.NDU]
    total = 0
    for u in ndus:
        n = math.prod(u.fields["tensor_dimensions"])  # Python ints: a crafted product cannot wrap around
        if n <= 0 or n > max_elements:
            raise BitstreamError(
                f"tensor {u.fields['topology_elem_id']!r} declares {n} elements", "the file is damaged"
            )
        # Every coded level (or skipped row) costs at least one bin, and a bin at least ~0.01 bit (the
        # estimator saturates at p_LPS ~ 0.007): a payload cannot hold more than ~800 bins per byte.
        rows, width = layout(tuple(u.fields["tensor_dimensions"]))
        coded = rows if u.fields.get("general_profile_idc") == 1 and rows > 1 and width > 1 else n
        if u.fields[
            "nnr_compressed_data_unit_payload_type"
        ] != PayloadType.RAW_FLOAT and coded > BINS_PER_BYTE_LIMIT * (len(u.payload) + 4):
            raise BitstreamError(
                f"tensor {u.fields['topology_elem_id']!r} declares {n} elements, more than its "
                f"{len(u.payload)}-byte payload can hold",
                "the file is damaged",
            )
        total += n
    if total > max_elements:
        raise BitstreamError(
            f"the stream declares {total} weights, more than the limit of {max_elements}",
            "set EDGEPRUNE_MAX_WEIGHTS if this host has the memory",
        )

    plans = [_DecodePlan(u, base_qp, qp_density) for u in ndus]
    workers = max(1, threads or min(len(ndus), os.cpu_count() or 1) or 1)
    # Largest parts first, so that the pool does not end waiting on one big tensor.
    parts = [(plan, first, end) for plan in plans for first, end in plan.parts(workers)]
    parts.sort(key=lambda part: -part[0].width * (part[2] - part[1]) * part[0].block_height)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(lambda part: part[0].decode(part[1], part[2]), parts))
    decoded = [plan.result() for plan in plans]

    topology = _topology_of(units)
    tensors: dict[str, np.ndarray] = {}
    levels_out: dict[str, np.ndarray] = {}
    stats: list[TensorStats] = []
    by_name: dict[str, tuple[Any, np.ndarray, int | None]] = {}
    for u, (arr, values, qp) in zip(ndus, decoded, strict=True):
        name = u.fields["topology_elem_id"]
        by_name[name] = (u, arr, qp)
        ptype = u.fields["nnr_compressed_data_unit_payload_type"]
        mode = "raw" if ptype == PayloadType.RAW_FLOAT else "qp" if ptype == PayloadType.FLOAT else "int"
        stats.append(TensorStats(name, list(arr.shape), mode, qp, u.size, arr.size))
        if ptype == PayloadType.RAW_FLOAT:
            tensors[name] = arr
        else:
            levels_out[name] = arr
            tensors[name] = values if values is not None else arr
    if topology:
        tensors = _apply_topology(topology, ndus, by_name, tensors, levels_out, data, stats)
    return DecodedStream(tensors, levels_out, topology, stats)


_PAYLOAD_MODES = {PayloadType.FLOAT: "qp", PayloadType.INT: "int", PayloadType.RAW_FLOAT: "raw"}
_MODES_WITHOUT_NDU = ("empty", "raw_int")


def _tensor_entries(topology: dict[str, Any], ndus: list, data: bytes) -> list[dict[str, Any]]:
    """Every tensor's checked entry, with name, shape and mode filled in from its NDU (version 3 leaves
    them out: the k-th entry that has an NDU is the k-th NDU) after the CRC-32 of all NDUs matched."""
    entries = topology.get("tensors")
    if not isinstance(entries, list):
        raise BitstreamError("the topology unit has no tensor list", "the file is damaged; re-encode")
    if topology.get("version") != TPL_VERSION:
        return [_check_entry(entry) for entry in entries]
    crc = topology.get("crc32")
    if not isinstance(crc, int) or zlib.crc32(b"".join(data[u.offset : u.offset + u.size] for u in ndus)) != crc:
        raise BitstreamError("checksum mismatch in the tensor data (NDUs)", "the file is damaged; copy it again")
    remaining = iter(ndus)
    out = []
    for entry in entries:
        if not isinstance(entry, dict):
            raise BitstreamError("the topology unit describes a tensor incompletely", "the file is damaged")
        if entry.get("mode") not in _MODES_WITHOUT_NDU:
            unit = next(remaining, None)
            if unit is None:
                raise BitstreamError(
                    "the topology unit lists more tensors than the stream codes", "the file is damaged"
                )
            f = unit.fields
            mode = _PAYLOAD_MODES[f["nnr_compressed_data_unit_payload_type"]]
            entry = {"name": f["topology_elem_id"], "shape": list(f["tensor_dimensions"]), "mode": mode, **entry}
        out.append(_check_entry(entry))
    if next(remaining, None) is not None:
        raise BitstreamError("the stream codes tensors its topology unit does not list", "the file is damaged")
    return out


def _apply_topology(
    topology: dict[str, Any],
    ndus: list,
    by_name: dict,
    tensors: dict[str, np.ndarray],
    levels: dict[str, np.ndarray],
    data: bytes,
    stats: list[TensorStats],
) -> dict[str, np.ndarray]:
    entries = _tensor_entries(topology, ndus, data)
    topology["tensors"] = entries
    out: dict[str, np.ndarray] = {}
    mode_of = {s.name: s for s in stats}
    for entry in entries:
        name, shape, dtype, mode = entry["name"], tuple(entry["shape"]), np.dtype(entry["dtype"]), entry["mode"]
        if mode == "empty":
            out[name] = np.zeros(shape, dtype=dtype)
            continue
        if mode == "raw_int":
            try:
                values = np.frombuffer(base64.b64decode(entry.get("data", ""), validate=True), dtype="<i8")
                out[name] = values.astype(dtype).reshape(shape)
            except (ValueError, TypeError):
                raise BitstreamError(f"integer tensor {name!r} in the topology unit is damaged", "re-encode") from None
            continue
        if name not in by_name:
            raise BitstreamError(
                f"tensor {name!r} listed in the topology unit has no NDU", "the file is truncated or damaged"
            )
        unit, arr, _ = by_name[name]
        if "crc32" in entry and zlib.crc32(data[unit.offset : unit.offset + unit.size]) != entry["crc32"]:
            raise BitstreamError(
                f"checksum mismatch in the NDU of {name!r}", "the file is damaged; copy it again or re-encode"
            )
        if int(np.prod(shape or (1,))) != arr.size:
            raise BitstreamError(
                f"tensor {name!r}: topology shape {list(shape)} does not match the NDU's {list(arr.shape)}",
                "the file is damaged",
            )
        value = tensors[name]
        if mode == "int8":
            raw_scale = entry.get("scale", [])
            axis = entry.get("axis", 0)
            axis_ok = isinstance(axis, int) and not isinstance(axis, bool) and 0 <= axis < max(1, len(shape))
            channels = shape[axis] if shape and axis_ok else 1
            if _is_number(raw_scale):  # one scale for every channel
                raw_scale = [raw_scale] * channels
            if not (isinstance(raw_scale, list) and all(_is_number(v) for v in raw_scale)):
                raise BitstreamError(f"INT8 tensor {name!r} has malformed scales", "the file is damaged")
            scale = np.asarray(raw_scale, dtype=np.float32)
            if not axis_ok or scale.size != channels:
                raise BitstreamError(
                    f"INT8 tensor {name!r} has {scale.size} scales for shape {list(shape)}", "the file is damaged"
                )
            if np.any(np.abs(arr) > 127):
                raise BitstreamError(f"INT8 tensor {name!r} holds levels outside -127..127", "the file is damaged")
            levels[name] = arr.astype(np.int8).reshape(shape)
            bshape = [1] * len(shape)
            bshape[axis] = -1
            value = levels[name].astype(np.float32) * scale.reshape(bshape)
            mode_of[name].mode = "int8"
        out[name] = np.asarray(value).astype(dtype, copy=False).reshape(shape)
    return out


def read_int8_levels(source: str | os.PathLike | bytes | bytearray) -> dict[str, np.ndarray]:
    """The INT8 deploy levels of every int8-mode tensor of a .nnr (for export's weight-equality check)."""
    decoded = decode_stream(source)
    names = [e["name"] for e in decoded.topology.get("tensors", []) if e.get("mode") == "int8"]
    if not names:
        raise BitstreamError(
            "this .nnr holds no INT8 deploy levels", "encode it with --int8 (after the quantize stage)"
        )
    return {name: decoded.levels[name] for name in names}


def inspect_stream(source: str | os.PathLike | bytes | bytearray) -> dict[str, Any]:
    """Units, tensors and bits per weight of a .nnr (decodes it, so damage is reported too)."""
    data = _read_bytes(source)
    units = parse_units(data)
    decoded = decode_stream(data)
    weights = sum(s.elements for s in decoded.stats)
    ndu_bytes = sum(s.ndu_bytes for s in decoded.stats)
    return {
        "size_bytes": len(data),
        "units": [
            {
                "type": UnitType(u.unit_type).name if u.unit_type <= 6 else f"unknown({u.unit_type})",
                "offset": u.offset,
                "size": u.size,
            }
            for u in units
        ],
        "tensors": [
            {
                "name": s.name,
                "shape": s.shape,
                "mode": s.mode,
                "qp": s.qp,
                "bytes": s.ndu_bytes,
                "bits_per_weight": round(s.bits_per_weight, 4),
            }
            for s in decoded.stats
        ],
        "num_weights": weights,
        "weight_bytes": ndu_bytes,
        "bits_per_weight": 8.0 * ndu_bytes / weights if weights else 0.0,
        "bits_per_weight_total": 8.0 * len(data) / weights if weights else 0.0,
        "architecture": (
            "factory"
            if "factory" in (decoded.topology.get("architecture") or {})
            else "embedded"
            if decoded.topology.get("architecture")
            else "none"
        ),
    }
