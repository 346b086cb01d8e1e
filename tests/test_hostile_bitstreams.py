"""Crafted .nnr files: every one is refused with one line and exit 2, before any large allocation."""

from __future__ import annotations

import base64
import json
import tracemalloc
import zlib

import numpy as np
import pytest
import torch
from support.nnr_streams import with_ndu, with_topology

from edgeprune import models
from edgeprune.errors import BitstreamError
from edgeprune.nnr.bitstream import UnitType, parse_units
from edgeprune.nnr.model import ModelEncodeOptions, decode_model, encode_model
from edgeprune.nnr.tensors import TPL_PREFIX, cabac_payload, decode_stream, pack_topology_text


@pytest.fixture(scope="module")
def stream() -> bytes:
    torch.manual_seed(0)
    return encode_model(models.lenet5(input_size=8).eval(), torch.zeros(1, 1, 8, 8), ModelEncodeOptions(threads=1)).data


def _tensors(edit):  # noqa: ANN001, ANN202 - edit(list of tensor entries)
    def apply(t: dict) -> dict:
        edit(t["tensors"])
        return t

    return apply


CASES = {
    "overflowing empty": (
        _tensors(lambda ts: ts.append({"name": "x", "shape": [65536] * 4, "dtype": "float32", "mode": "empty"})),
        "elements",
    ),
    "negative size": (_tensors(lambda ts: ts[0].__setitem__("shape", [-1, 5])), "incompletely"),
    "scale string": (_tensors(lambda ts: ts[0].update(mode="int8", scale="big", axis=0)), "malformed scales"),
    "scale dict": (_tensors(lambda ts: ts[0].update(mode="int8", scale={"a": 1}, axis=0)), "malformed scales"),
    "scale ragged": (_tensors(lambda ts: ts[0].update(mode="int8", scale=[[1], 2], axis=0)), "malformed scales"),
    "scale nan": (_tensors(lambda ts: ts[0].update(mode="int8", scale=[float("nan")] * 20, axis=0)), "malformed"),
    # topology v2: a JSON true inside a shape (an int to Python; found by the long fuzz), one-number scales
    "shape with true": (_tensors(lambda ts: ts[0].__setitem__("shape", [True, 20, 1, 1])), "incompletely"),
    "scalar scale bool": (_tensors(lambda ts: ts[0].update(mode="int8", scale=True)), "malformed scales"),
    "scalar scale inf": (_tensors(lambda ts: ts[0].update(mode="int8", scale=float("inf"))), "malformed scales"),
    "axis true": (_tensors(lambda ts: ts[0].update(mode="int8", scale=0.5, axis=True)), "scales for shape"),
    "deep json": (lambda t: '{"format":"edgeprune-nnr","a":' + "[" * 200_000 + "]" * 200_000 + "}", "nested"),
    "integer past the digit limit": (lambda t: json.dumps(t)[:-1] + ',"a":' + "1" * 5000 + "}", "not valid JSON"),
    "architecture list": (lambda t: {**t, "architecture": [1]}, "not an object"),
    "factory kwargs list": (lambda t: {**t, "architecture": {"factory": "os:system", "kwargs": ["ls"]}}, "never runs"),
    "input shape bomb": (lambda t: {**t, "input_shape": [1, 65536, 65536, 3]}, "input shape"),
}


def _assert_decode_refuses(runner, cli, data: bytes, tmp_path) -> str:  # noqa: ANN001
    """`edgeprune decode` of ``data``: one line, exit 2, nothing written; returns the line."""
    src, out = tmp_path / "evil.nnr", tmp_path / "out"
    src.write_bytes(data)
    out.mkdir()
    result = runner.invoke(cli, ["decode", str(src), "-o", str(out / "m.pt2")])
    assert result.exit_code == 2 and result.output.startswith("error:"), result.output
    assert len(result.output.strip().splitlines()) == 1 and list(out.iterdir()) == []
    return result.output


@pytest.mark.parametrize("case", sorted(CASES))
def test_crafted_topology_is_one_line(runner, cli, stream, tmp_path, case):
    edit, message = CASES[case]
    data = with_topology(stream, edit)
    tracemalloc.start()
    try:
        with pytest.raises(BitstreamError, match=message):
            decode_model(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 256 << 20
    _assert_decode_refuses(runner, cli, data, tmp_path)


PACKED_DAMAGE = {
    "not base85": (lambda t: TPL_PREFIX + "not base85 ~~~", "not valid base85"),
    "not deflate": (lambda t: TPL_PREFIX + base64.b85encode(b"\xff" * 40).decode(), "does not inflate"),
    "deflate cut short": (lambda t: pack_topology_text(json.dumps(t))[:-12], "cut short|does not inflate"),
    "not UTF-8": (lambda t: pack_topology_text('{"a": "\ud800"}'), "not UTF-8"),
    "not an object": (lambda t: pack_topology_text("[1, 2]"), "not a JSON object"),
    "not JSON": (lambda t: pack_topology_text("{tensors: 1"), "not valid JSON"),
}


@pytest.mark.parametrize("case", sorted(PACKED_DAMAGE))
def test_damaged_packed_topology_is_one_line(runner, cli, stream, tmp_path, case):
    """The version-3 unit's own layers (base85, deflate, UTF-8, JSON) each refuse damage in one line."""
    text, message = PACKED_DAMAGE[case]
    data = with_topology(stream, text, packed=False)  # the text goes into the unit as it is
    with pytest.raises(BitstreamError, match=message):
        decode_model(data)
    _assert_decode_refuses(runner, cli, data, tmp_path)


def test_ndu_dimensions_whose_product_wraps_around(stream):
    """Dimensions chosen so that an int64 product is 0 or negative (numpy wraps silently)."""
    ndu = next(u for u in parse_units(stream) if u.unit_type == UnitType.NDU)
    dims = ndu.fields["tensor_dimensions"]
    assert len(dims) == 4
    from edgeprune.nnr.tensors import decode_stream

    for wrapped in ([1 << 32, 1 << 32, 1, 1], [1 << 32, 1 << 31, 1, 1]):
        data = with_ndu(stream, ndu.fields["topology_elem_id"], tensor_dimensions=wrapped)
        with pytest.raises(BitstreamError, match="elements"):
            decode_stream(data)


@pytest.mark.parametrize(("packed", "message"), [(True, "inflates past"), (False, "larger or more deeply nested")])
def test_topology_json_is_not_parsed_when_too_large(stream, packed, message):
    """17 MiB of JSON: as plain text (version 1/2) it is refused unparsed; deflated (version 3, 17 KB in
    the file) inflation stops at the limit, so the bomb never reaches its full size in memory."""
    big = with_topology(stream, lambda t: json.dumps({**t, "pad": "x" * (17 << 20)}), packed=packed)
    with pytest.raises(BitstreamError, match=message):
        decode_model(big)


def _block_scanned(stream: bytes) -> tuple[bytes, list[int]]:
    """The stream with fc1.weight (500 x 200) re-coded in 8x8 block scan (63 entry points), without DQ: the
    same reconstruction indices, whose DQ parities follow raster order."""
    decoded = decode_stream(stream)
    levels = decoded.levels["fc1.weight"]
    qp = next(s.qp for s in decoded.stats if s.name == "fc1.weight")
    coded = cabac_payload(levels, levels.shape, dq=False, row_skip=False, qp_offset=qp, scan_order=1)
    data = with_ndu(
        stream, "fc1.weight", coded.data, dq_flag=0, scan_order=1, cabac_entry_point_list=coded.entry_points
    )
    return _with_crc(data), list(coded.entry_points)


def _with_crc(data: bytes) -> bytes:
    """``data`` with the topology's CRC-32 recomputed over its NDUs, so that a forged NDU is the only defect."""
    ndus = b"".join(data[u.offset : u.offset + u.size] for u in parse_units(data) if u.unit_type == UnitType.NDU)
    return with_topology(data, lambda t: {**t, "crc32": zlib.crc32(ndus)})


ENTRY_POINT_CASES = {
    "value bit": (lambda eps: [eps[0] ^ (1 << 3), *eps[1:]], "corrupt"),
    "offset one bit late": (lambda eps: [eps[0] + (1 << 11), *eps[1:]], "corrupt"),
    "offset past the payload": (lambda eps: [*eps[:-1], (1 << 40) << 11], "beyond its payload"),
}


@pytest.mark.parametrize("case", sorted(ENTRY_POINT_CASES))
def test_damaged_entry_points_are_one_line(runner, cli, stream, tmp_path, case):
    """A genuine block-scan NDU with one entry point damaged: refused by the decoder, not decoded to garbage."""
    data, eps = _block_scanned(stream)
    np.testing.assert_array_equal(decode_stream(data).levels["fc1.weight"], decode_stream(stream).levels["fc1.weight"])
    edit, message = ENTRY_POINT_CASES[case]
    forged = _with_crc(with_ndu(data, "fc1.weight", cabac_entry_point_list=edit(eps)))
    assert message in _assert_decode_refuses(runner, cli, forged, tmp_path)
