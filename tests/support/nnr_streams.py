"""Forging .nnr streams for the reader tests: replace the topology unit, keep the NDUs and their CRCs."""

from __future__ import annotations

import json

from edgeprune.nnr.bitstream import UnitType, parse_units, write_topology_unit


def topology_of(data: bytes) -> dict:
    """The stream's topology JSON."""
    return json.loads(next(u for u in parse_units(data) if u.unit_type == UnitType.TPL).fields["topology_data"])


def with_topology(data: bytes, edit) -> bytes:  # noqa: ANN001 - edit: dict -> dict (or JSON text)
    """``data`` with its TPL unit's JSON replaced by ``edit(json)``; NDUs (and their CRCs) unchanged."""
    tpl = next(u for u in parse_units(data) if u.unit_type == UnitType.TPL)
    topology = edit(json.loads(tpl.fields["topology_data"]))
    text = topology if isinstance(topology, str) else json.dumps(topology)
    return data[: tpl.offset] + write_topology_unit(text) + data[tpl.offset + tpl.size :]
