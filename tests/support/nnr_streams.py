"""Forging .nnr streams for the reader tests: replace the topology unit, keep the NDUs (and their CRC)."""

from __future__ import annotations

import json

from edgeprune.nnr.bitstream import PayloadType, UnitType, parse_units, write_ndu, write_topology_unit
from edgeprune.nnr.tensors import pack_topology_text, topology_json


def _tpl(data: bytes):  # noqa: ANN202 - the parsed TPL unit
    return next(u for u in parse_units(data) if u.unit_type == UnitType.TPL)


def topology_of(data: bytes) -> dict:
    """The stream's topology JSON, as written (version 3: inflated; coded tensors' entries unnamed)."""
    return json.loads(topology_json(_tpl(data).fields["topology_data"]))


def entry_of(data: bytes, topology: dict, name: str) -> dict:
    """The entry of tensor ``name`` in ``topology``: the k-th entry with an NDU belongs to the k-th NDU."""
    ndu_names = iter(u.fields["topology_elem_id"] for u in parse_units(data) if u.unit_type == UnitType.NDU)
    for entry in topology["tensors"]:
        if entry.get("name", next(ndu_names) if entry.get("mode") not in ("empty", "raw_int") else None) == name:
            return entry
    raise KeyError(name)


def with_topology(data: bytes, edit, packed: bool = True) -> bytes:  # noqa: ANN001 - edit: dict -> dict or text
    """``data`` with its TPL unit's JSON replaced by ``edit(json)`` (packed as the encoder packs it unless
    ``packed`` is False: plain JSON, as version-1/2 streams carry it); the NDUs are unchanged."""
    tpl = _tpl(data)
    topology = edit(topology_of(data))
    text = topology if isinstance(topology, str) else json.dumps(topology)
    if packed:
        text = pack_topology_text(text)
    return data[: tpl.offset] + write_topology_unit(text) + data[tpl.offset + tpl.size :]


def with_ndu(data: bytes, name: str, payload: bytes | None = None, **fields) -> bytes:  # noqa: ANN003
    """``data`` with the NDU of tensor ``name`` rewritten through the bitstream writer: header ``fields``
    replaced (valid syntax, possibly hostile values) and, when given, its payload."""
    ndu = next(u for u in parse_units(data) if u.unit_type == UnitType.NDU and u.fields["topology_elem_id"] == name)
    f = {**ndu.fields, **fields}
    unit = write_ndu(
        f["general_profile_idc"],
        f["topology_elem_id"],
        f.get("parameter_id", 0),
        PayloadType(f["nnr_compressed_data_unit_payload_type"]),
        f["tensor_dimensions"],
        bool(f.get("dq_flag")),
        f.get("cabac_unary_length_minus1", 10) + 1,
        ndu.payload if payload is None else payload,
        f.get("scan_order", 0),
        f.get("cabac_entry_point_list", ()),
    )
    return data[: ndu.offset] + unit + data[ndu.offset + ndu.size :]
