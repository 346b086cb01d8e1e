"""MPEG-NNR (ISO/IEC 15938-17) high-level syntax: NNR units, their headers, and a paranoid reader.

An NNR bitstream is a concatenation of size-prefixed units (ISO/IEC 15938-17). The syntax of
each header is written once, as functions over a :class:`SyntaxCoder` that either writes the
values of a dict or reads them into it, so the writer and the reader cannot drift apart (NNCodec
does the same). Only the subset edgeprune produces is implemented: STR, MPS (uniform quantisation),
TPL with storage format 0 (a NUL-terminated UTF-8 string: JSON, packed as text by edgeprune), and NDUs
of payload type INT, FLOAT and RAW_FLOAT holding one tensor each with raster scan. Everything else is
rejected with a :class:`BitstreamError` naming the feature; unknown unit types are skipped by size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from edgeprune.errors import BitstreamError

MAX_STRING_BYTES = 1 << 26  # a topology JSON larger than 64 MiB is certainly not ours
MAX_DIMS = 8
MAX_SCAN_ORDER = 4  # block scans of 8x8 .. 64x64 (scan_order 1..4); 0 is raster


class UnitType(IntEnum):
    STR = 0
    MPS = 1
    LPS = 2
    TPL = 3
    QNT = 4
    NDU = 5
    AGG = 6


class PayloadType(IntEnum):
    INT = 0
    FLOAT = 1
    RAW_FLOAT = 2
    BLOCK = 3


class BitWriter:
    def __init__(self) -> None:
        self.data = bytearray()
        self.nbits = 0

    def u(self, n: int, value: int) -> None:
        if value < 0 or value >= (1 << n):
            raise BitstreamError(f"value {value} does not fit {n} bits", "this is a bug in the NNR writer")
        for i in range(n - 1, -1, -1):
            if self.nbits % 8 == 0:
                self.data.append(0)
            if (value >> i) & 1:
                self.data[-1] |= 0x80 >> (self.nbits % 8)
            self.nbits += 1

    def raw(self, data: bytes) -> None:
        assert self.nbits % 8 == 0
        self.data.extend(data)
        self.nbits += 8 * len(data)


class BitReader:
    """Reads bits from ``data[start:end]``; every read past ``end`` is a BitstreamError."""

    def __init__(self, data: bytes, start: int, end: int, what: str) -> None:
        self.data, self.pos, self.end, self.what = data, start * 8, end * 8, what

    def u(self, n: int) -> int:
        if self.pos + n > self.end:
            raise BitstreamError(f"{self.what} is truncated", "the file is damaged or incomplete; re-encode the model")
        value = 0
        for _ in range(n):
            value = (value << 1) | ((self.data[self.pos >> 3] >> (7 - (self.pos & 7))) & 1)
            self.pos += 1
        return value

    def raw_until_nul(self) -> bytes:
        start = self.pos >> 3
        stop = self.data.find(b"\x00", start, min(self.end >> 3, start + MAX_STRING_BYTES))
        if stop < 0:
            raise BitstreamError(f"{self.what}: a string has no terminating NUL", "the file is damaged")
        self.pos = (stop + 1) * 8
        return bytes(self.data[start:stop])


class SyntaxCoder:
    """One description of the syntax for both directions: ``process`` writes ``fields[name]`` when
    writing and stores the value read into ``fields[name]`` when reading."""

    def __init__(self, io: BitWriter | BitReader, fields: dict[str, Any]) -> None:
        # Any, not the union: which of the two interfaces is used follows ``self.reading``.
        self.io: Any = io
        self.fields = fields
        self.reading = isinstance(io, BitReader)

    def get(self, name: str, default: Any = 0) -> Any:
        return self.fields.get(name, default)

    def u(self, name: str, n: int) -> int:
        if self.reading:
            self.fields[name] = self.io.u(n)
        else:
            self.io.u(n, int(self.fields[name]))
        return self.fields[name]

    def i(self, name: str, n: int) -> int:
        if self.reading:
            raw = self.io.u(n)
            self.fields[name] = raw - (1 << n) if raw >> (n - 1) else raw
        else:
            value = int(self.fields[name])
            self.io.u(n, value + (1 << n) if value < 0 else value)
        return self.fields[name]

    def ue(self, name: str, k: int) -> int:
        if self.reading:
            self.fields[name] = self._read_ue(k)
        else:
            self._write_ue(k, int(self.fields[name]))
        return self.fields[name]

    def ue_item(self, name: str, index: int, k: int) -> int:
        """ue(k) of element ``index`` of the list ``fields[name]`` (grown while reading)."""
        items = self.fields.setdefault(name, [])
        if self.reading:
            items.append(self._read_ue(k))
        else:
            self._write_ue(k, int(items[index]))
        return items[index]

    def entry_point_list(self, name: str, count: int, dq: bool) -> list[int]:
        """``cabac_entry_point_list``: per block row after the first, 8 bits of the decoder's value, the DQ
        state and the bit offset from the previous entry point (ue(11) for the first, then ie(7) of the
        change). Kept in NNCodec's packed form: offset delta << 11 | value << 3 | DQ state."""
        if not self.reading:
            items = [int(ep) for ep in self.fields[name]]
            previous = 0
            for j, ep in enumerate(items):
                self.io.u(8, (ep >> 3) & 255)
                if dq:
                    self.io.u(3, ep & 7)
                delta = ep >> 11
                if j == 0:
                    self._write_ue(11, delta)
                else:
                    change = delta - previous
                    self._write_ue(7, -2 * change if change <= 0 else 2 * change - 1)
                previous = delta
            return items
        if count * (9 + 3 * dq) > self.io.end - self.io.pos:
            raise BitstreamError(
                f"{self.io.what} declares {count} entry points, more than its header holds", "the file is damaged"
            )
        items, previous = [], 0
        for j in range(count):
            value = self.io.u(8)
            state = self.io.u(3) if dq else 0
            if j == 0:
                delta = self._read_ue(11)
            else:
                change = self._read_ue(7)
                delta = previous + ((change + 1) >> 1 if change & 1 else -(change >> 1))
            if delta < 0:
                raise BitstreamError(
                    f"{self.io.what}: entry point {j} lies before the one preceding it", "the file is damaged"
                )
            items.append((delta << 11) | (value << 3) | state)
            previous = delta
        self.fields[name] = items
        return items

    def _read_ue(self, k: int) -> int:
        value = 0
        while self.io.u(1) == 0:
            value += 1 << k
            k += 1
            if k > 40:
                raise BitstreamError(f"{self.io.what}: Exp-Golomb code longer than 40 bits", "the file is damaged")
        return value + (self.io.u(k) if k else 0)

    def _write_ue(self, k: int, value: int) -> None:
        while value >= (1 << k):
            self.io.u(1, 0)
            value -= 1 << k
            k += 1
        self.io.u(1, 1)
        if k:
            self.io.u(k, value)

    def st(self, name: str) -> str:
        if self.reading:
            self._require_aligned()
            try:
                self.fields[name] = self.io.raw_until_nul().decode("utf-8")
            except UnicodeDecodeError:
                raise BitstreamError(f"{self.io.what}: string is not valid UTF-8", "the file is damaged") from None
        else:
            self._require_aligned()
            text = str(self.fields[name]).encode("utf-8")
            if b"\x00" in text:
                raise BitstreamError(f"{name} contains a NUL character", "rename the tensor")
            self.io.raw(text + b"\x00")
        return self.fields[name]

    def byte_alignment(self) -> None:
        if self.reading:
            if self.io.u(1) != 1:
                raise BitstreamError(f"{self.io.what}: byte_alignment() does not start with 1", "the file is damaged")
            while self.io.pos % 8:
                if self.io.u(1) != 0:
                    raise BitstreamError(f"{self.io.what}: non-zero alignment bits", "the file is damaged")
        else:
            self.io.u(1, 1)
            while self.io.nbits % 8:
                self.io.u(1, 0)

    def _require_aligned(self) -> None:
        position = self.io.pos if self.reading else self.io.nbits
        if position % 8:
            raise BitstreamError(
                f"{getattr(self.io, 'what', 'NNR unit')}: string not byte aligned", "the file is damaged"
            )


# ------------------------------------------------------------------ the syntax (shared by writer and reader)


def _str_header(c: SyntaxCoder) -> None:
    c.u("general_profile_idc", 8)


def _mps_payload(c: SyntaxCoder) -> None:
    for flag in (
        "topology_carriage_flag",
        "mps_sparsification_flag",
        "mps_pruning_flag",
        "mps_unification_flag",
        "mps_decomposition_performance_map_flag",
    ):
        c.u(flag, 1)
    c.u("mps_quantization_method_flags", 3)
    c.u("mps_topology_indexed_reference_flag", 1)
    if c.get("general_profile_idc") == 1:
        for flag in (
            "base_model_id_present_flag",
            "validation_set_performance_present_flag",
            "metric_type_performance_map_valid_flag",
            "mps_parent_signalling_enabled_flag",
        ):
            c.u(flag, 1)
        c.u("nnr_reserved_1bit", 1)
        c.u("nnr_reserved_2bits", 2)
        if c.get("base_model_id_present_flag"):
            c.st("base_model_id")
        if c.get("validation_set_performance_present_flag") or c.get("metric_type_performance_map_valid_flag"):
            c.st("performance_metric_type")
    else:
        c.u("nnr_reserved_7bits", 7)
    if c.get("mps_quantization_method_flags") & 3:
        c.u("mps_qp_density", 3)
        c.i("mps_quantization_parameter", 13)
    unsupported = [
        f
        for f in (
            "mps_sparsification_flag",
            "mps_pruning_flag",
            "mps_unification_flag",
            "mps_decomposition_performance_map_flag",
            "validation_set_performance_present_flag",
            "mps_parent_signalling_enabled_flag",
            "mps_topology_indexed_reference_flag",
        )
        if c.get(f)
    ]
    if unsupported:
        raise BitstreamError(
            f"the model parameter set uses {unsupported[0]}, which edgeprune does not support",
            "encode the model with edgeprune or NNCodec's default options",
        )
    c.byte_alignment()


def _tpl_header_and_payload(c: SyntaxCoder) -> None:
    c.u("topology_storage_format", 8)
    c.u("topology_compression_format", 8)
    if c.get("topology_storage_format") in (5, 6):
        raise BitstreamError("pruning / reference-list topology units are not supported", "re-encode the model")
    c.st("topology_data")


def _ndu_header(c: SyntaxCoder) -> None:
    c.u("nnr_compressed_data_unit_payload_type", 5)
    c.u("nnr_multiple_topology_elements_present_flag", 1)
    c.u("nnr_decompressed_data_format_present_flag", 1)
    c.u("input_parameters_present_flag", 1)
    ptype = c.get("nnr_compressed_data_unit_payload_type")
    if ptype not in (PayloadType.INT, PayloadType.FLOAT, PayloadType.RAW_FLOAT):
        raise BitstreamError(
            f"NDU payload type {ptype} is not supported (only INT, FLOAT, RAW_FLOAT)",
            "re-encode without block/decomposition tools",
        )
    if c.get("nnr_multiple_topology_elements_present_flag"):
        raise BitstreamError("NDUs with several topology elements are not supported", "re-encode one tensor per NDU")
    c.st("topology_elem_id")
    if c.get("general_profile_idc") == 1:
        c.u("node_id_present_flag", 1)
        if c.get("node_id_present_flag"):
            c.ue("device_id", 1)
            c.ue("parameter_id", 5)
            c.ue("put_node_depth", 4)
    if ptype == PayloadType.FLOAT:
        c.u("codebook_present_flag", 1)
        if c.get("codebook_present_flag"):
            raise BitstreamError("codebook quantisation is not supported", "re-encode with uniform quantisation")
    if ptype in (PayloadType.INT, PayloadType.FLOAT):
        c.u("dq_flag", 1)
    if c.get("nnr_decompressed_data_format_present_flag"):
        c.u("nnr_decompressed_data_format", 7)
    if not c.get("input_parameters_present_flag"):
        raise BitstreamError("NDU without in-band tensor dimensions", "re-encode with input parameters present")
    c.u("tensor_dimensions_flag", 1)
    c.u("cabac_unary_length_flag", 1)
    c.u("compressed_parameter_types", 4)
    if c.get("compressed_parameter_types"):
        raise BitstreamError("block parameter types (decomposition, LS, BN) are not supported", "re-encode plainly")
    if not c.get("tensor_dimensions_flag"):
        raise BitstreamError("NDU without in-band tensor dimensions", "re-encode with tensor dimensions present")
    c.ue("count_tensor_dimensions", 1)
    count = c.get("count_tensor_dimensions")
    if not 1 <= count <= MAX_DIMS:
        raise BitstreamError(f"NDU declares {count} tensor dimensions (1..{MAX_DIMS} supported)", "the file is damaged")
    if c.reading:
        c.fields["tensor_dimensions"] = []
    for j in range(count):
        c.ue_item("tensor_dimensions", j, 7)
    if c.get("cabac_unary_length_flag"):
        c.u("cabac_unary_length_minus1", 8)
    if count > 1:
        if c.get("general_profile_idc") == 1:
            c.ue("first_tensor_dimension_shift", 1)
        c.u("scan_order", 4)
        scan_order = c.get("scan_order")
        if scan_order > MAX_SCAN_ORDER:
            raise BitstreamError(f"scan order {scan_order} is not defined (0..{MAX_SCAN_ORDER})", "the file is damaged")
        if scan_order:
            block_rows = -(-c.get("tensor_dimensions")[0] // (4 << scan_order))
            c.entry_point_list("cabac_entry_point_list", block_rows - 1, bool(c.get("dq_flag")))
    c.byte_alignment()


# ------------------------------------------------------------------ units


@dataclass
class NnrUnit:
    """One parsed unit: its type, header fields, the payload bytes after the header, and where it lies."""

    unit_type: int
    fields: dict[str, Any] = field(default_factory=dict)
    payload: bytes = b""
    offset: int = 0
    size: int = 0


def _unit_body(
    unit_type: UnitType, fields: dict[str, Any], syntax: Callable[[SyntaxCoder], None] | None, payload: bytes
) -> bytes:
    w = BitWriter()
    w.u(6, int(unit_type))
    w.u(1, 1)  # independently_decodable_flag
    w.u(1, 0)  # partial_data_counter_present_flag
    if syntax is not None:
        syntax(SyntaxCoder(w, fields))
    w.raw(payload)
    return bytes(w.data)


def write_unit(
    unit_type: UnitType, fields: dict[str, Any], syntax: Callable[[SyntaxCoder], None] | None, payload: bytes = b""
) -> bytes:
    """A complete unit: the size (2-byte form below 32 KiB, as NNCodec), type, header and payload."""
    body = _unit_body(unit_type, fields, syntax, payload)
    if len(body) + 2 < 1 << 15:
        return (len(body) + 2).to_bytes(2, "big") + body
    if len(body) + 4 >= 1 << 31:
        raise BitstreamError(f"NNR unit of {len(body)} bytes exceeds the 2 GiB unit size limit", "split the tensor")
    return ((1 << 31) | (len(body) + 4)).to_bytes(4, "big") + body


def write_start_unit(profile: int) -> bytes:
    return write_unit(UnitType.STR, {"general_profile_idc": profile}, _str_header)


def write_model_parameter_set(profile: int, qp_density: int, base_qp: int = 0) -> bytes:
    fields = {
        "general_profile_idc": profile,
        "topology_carriage_flag": 1,
        "mps_sparsification_flag": 0,
        "mps_pruning_flag": 0,
        "mps_unification_flag": 0,
        "mps_decomposition_performance_map_flag": 0,
        "mps_quantization_method_flags": 1,
        "mps_topology_indexed_reference_flag": 0,
        "base_model_id_present_flag": 0,
        "validation_set_performance_present_flag": 0,
        "metric_type_performance_map_valid_flag": 0,
        "mps_parent_signalling_enabled_flag": 0,
        "nnr_reserved_1bit": 0,
        "nnr_reserved_2bits": 0,
        "nnr_reserved_7bits": 0,
        "mps_qp_density": qp_density,
        "mps_quantization_parameter": base_qp,
    }
    return write_unit(UnitType.MPS, fields, _mps_payload)


def write_topology_unit(text: str) -> bytes:
    return write_unit(
        UnitType.TPL,
        {"topology_storage_format": 0, "topology_compression_format": 0, "topology_data": text},
        _tpl_header_and_payload,
    )


def write_ndu(
    profile: int,
    name: str,
    parameter_id: int,
    payload_type: PayloadType,
    dims: list[int],
    dq: bool,
    num_gtx_flags: int,
    payload: bytes,
    scan_order: int = 0,
    entry_points: Sequence[int] = (),
) -> bytes:
    fields = {
        "general_profile_idc": profile,
        "nnr_compressed_data_unit_payload_type": int(payload_type),
        "nnr_multiple_topology_elements_present_flag": 0,
        "nnr_decompressed_data_format_present_flag": 0,
        "input_parameters_present_flag": 1,
        "topology_elem_id": name,
        "node_id_present_flag": 1,
        "device_id": 0,
        "parameter_id": parameter_id,
        "put_node_depth": 0,
        "codebook_present_flag": 0,
        "dq_flag": int(dq),
        "tensor_dimensions_flag": 1,
        "cabac_unary_length_flag": 1,
        "compressed_parameter_types": 0,
        "count_tensor_dimensions": len(dims),
        "tensor_dimensions": list(dims),
        "cabac_unary_length_minus1": num_gtx_flags - 1,
        "first_tensor_dimension_shift": 0,
        "scan_order": scan_order,
        "cabac_entry_point_list": list(entry_points),
    }
    return write_unit(UnitType.NDU, fields, _ndu_header, payload)


def parse_units(data: bytes) -> list[NnrUnit]:
    """Split ``data`` into units and parse the headers edgeprune understands; unknown types are kept
    (fields empty) so the caller can skip them. Raises BitstreamError on any inconsistency."""
    units: list[NnrUnit] = []
    context: dict[str, Any] = {"general_profile_idc": 0}
    pos = 0
    if not data:
        raise BitstreamError("the NNR bitstream is empty", "give a .nnr file written by `edgeprune encode`")
    while pos < len(data):
        what = f"NNR unit {len(units)} at byte {pos}"
        if len(data) - pos < 3:
            raise BitstreamError(f"{what} is truncated (only {len(data) - pos} bytes left)", "the file is incomplete")
        long_form = data[pos] >> 7
        header_bytes = 4 if long_form else 2
        if len(data) - pos < header_bytes + 1:
            raise BitstreamError(f"{what} is truncated (only {len(data) - pos} bytes left)", "the file is incomplete")
        size = int.from_bytes(data[pos : pos + header_bytes], "big") & ((1 << (8 * header_bytes - 1)) - 1)
        # a start unit is exactly type + flags + general_profile_idc: anything else is not NNR at all
        if not units and ((data[pos + header_bytes] >> 2) != UnitType.STR or size != header_bytes + 2):
            raise BitstreamError(
                "this is not an MPEG-NNR bitstream (it does not start with a start unit)",
                "give a .nnr file written by `edgeprune encode` or NNCodec",
            )
        if size < header_bytes + 1:
            raise BitstreamError(f"{what} declares an impossible size of {size} bytes", "the file is damaged")
        if pos + size > len(data):
            raise BitstreamError(
                f"{what} declares {size} bytes but only {len(data) - pos} remain",
                "the file is truncated; copy it again or re-encode the model",
            )
        reader = BitReader(data, pos + header_bytes, pos + size, what)
        unit_type = reader.u(6)
        reader.u(1)
        if reader.u(1):
            reader.u(8)  # partial_data_counter
        if not units and unit_type != UnitType.STR:
            raise BitstreamError(
                "this is not an MPEG-NNR bitstream (it does not start with a start unit)",
                "give a .nnr file written by `edgeprune encode` or NNCodec",
            )
        unit = NnrUnit(unit_type=unit_type, offset=pos, size=size)
        fields = dict(context)
        coder = SyntaxCoder(reader, fields)
        if unit_type == UnitType.STR:
            _str_header(coder)
            context["general_profile_idc"] = fields["general_profile_idc"]
            if fields["general_profile_idc"] > 1:
                raise BitstreamError(
                    f"unsupported general_profile_idc {fields['general_profile_idc']}", "use profile 0 or 1"
                )
        elif unit_type == UnitType.MPS:
            _mps_payload(coder)
        elif unit_type == UnitType.TPL:
            _tpl_header_and_payload(coder)
        elif unit_type == UnitType.NDU:
            _ndu_header(coder)
        elif unit_type in (UnitType.LPS, UnitType.QNT, UnitType.AGG):
            raise BitstreamError(
                f"{what} is of type {UnitType(unit_type).name}, which edgeprune does not support",
                "re-encode without layer parameter sets, quantisation units or aggregates",
            )
        unit.fields = fields
        unit.payload = bytes(data[reader.pos // 8 : pos + size]) if unit_type == UnitType.NDU else b""
        units.append(unit)
        pos += size
    return units
