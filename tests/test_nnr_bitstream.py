"""NNR unit syntax and the stream codec: round trips, side information, and malformed input."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.nnr_streams import entry_of, topology_of, with_ndu, with_topology

from edgeprune.errors import BitstreamError
from edgeprune.nnr import decode_stream, encode_tensors, read_int8_levels
from edgeprune.nnr.bitstream import (
    BitReader,
    BitWriter,
    SyntaxCoder,
    UnitType,
    parse_units,
    write_model_parameter_set,
    write_ndu,
    write_start_unit,
    write_unit,
)
from edgeprune.nnr.qp import default_qp, qp_for_step, step_size
from edgeprune.quant import quantize_tensor


def sample_tensors(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    conv = (rng.standard_normal((16, 8, 3, 3)) * 0.1).astype(np.float32)
    conv[[1, 5, 9]] = 0  # pruned output channels
    return {
        "conv.weight": conv,
        "conv.bias": (rng.standard_normal(16) * 0.05).astype(np.float32),
        "fc.weight": (rng.standard_normal((10, 144)) * 0.05).astype(np.float32),
        "bn.num_batches_tracked": np.array(1234, dtype=np.int64),
        "empty": np.zeros((0, 4), dtype=np.float32),
        "scalar": np.array(0.5, dtype=np.float32),
    }


def test_exp_golomb_and_signed_fields_round_trip_through_one_syntax_description():
    values = {"a": 0, "b": 1, "c": 77, "d": 123456, "s": -4096, "t": 4095}

    def syntax(c: SyntaxCoder) -> None:
        c.ue("a", 0)
        c.ue("b", 1)
        c.ue("c", 7)
        c.ue("d", 3)
        c.i("s", 13)
        c.i("t", 13)
        c.byte_alignment()

    w = BitWriter()
    syntax(SyntaxCoder(w, dict(values)))
    read: dict = {}
    syntax(SyntaxCoder(BitReader(bytes(w.data), 0, len(w.data), "test"), read))
    assert read == values


def test_stream_round_trip_keeps_names_shapes_dtypes_and_levels():
    tensors = sample_tensors()
    stream = encode_tensors(tensors, qps={"conv.weight": -24, "fc.weight": -30})
    decoded = decode_stream(stream.data)
    assert list(decoded.tensors) == list(tensors)
    for name, value in tensors.items():
        got = decoded.tensors[name]
        assert got.shape == value.shape and got.dtype == value.dtype, name
    np.testing.assert_array_equal(decoded.tensors["bn.num_batches_tracked"], 1234)
    # reconstruction is exactly step * level; the DQ trellis keeps every weight within two steps
    w, rec, lv = tensors["fc.weight"], decoded.tensors["fc.weight"], decoded.levels["fc.weight"]
    np.testing.assert_array_equal(rec, np.float32(step_size(-30)) * lv.astype(np.float32))
    assert np.abs(w - rec).max() <= 2 * step_size(-30)
    assert np.sqrt(np.mean((w - rec) ** 2)) < 0.7 * step_size(-30)
    assert not decoded.tensors["conv.weight"][[1, 5, 9]].any()


def test_int8_levels_are_coded_exactly_with_their_scales():
    tensors = sample_tensors()
    quant = {"conv.weight": quantize_tensor(tensors["conv.weight"]), "fc.weight": quantize_tensor(tensors["fc.weight"])}
    stream = encode_tensors(tensors, int8=quant)
    levels = read_int8_levels(stream.data)
    assert set(levels) == {"conv.weight", "fc.weight"}
    for name, q in quant.items():
        assert levels[name].dtype == np.int8
        np.testing.assert_array_equal(levels[name], q.levels)
        np.testing.assert_array_equal(decode_stream(stream.data).tensors[name], q.dequantize())
    with pytest.raises(BitstreamError, match="no INT8"):
        read_int8_levels(encode_tensors(tensors).data)


def test_unknown_unit_types_are_skipped_by_size():
    stream = encode_tensors(sample_tensors()).data
    foreign = write_unit(UnitType(7) if 7 in UnitType._value2member_map_ else 7, {}, None, b"vendor data")  # type: ignore[arg-type]
    start = parse_units(stream)[1].offset
    spliced = stream[:start] + foreign + stream[start:]
    units = parse_units(spliced)
    assert [u.unit_type for u in units].count(7) == 1
    np.testing.assert_array_equal(decode_stream(spliced).levels["fc.weight"], decode_stream(stream).levels["fc.weight"])


def test_default_qps_and_qp_for_step():
    assert qp_for_step(step_size(-38)) == -38
    assert qp_for_step(step_size(-13)) == -13
    rng = np.random.default_rng(0)
    matrix = rng.standard_normal((64, 64)).astype(np.float32)
    assert abs(step_size(default_qp(matrix)) / (matrix.std() / 8) - 1) < 0.2
    assert default_qp(np.zeros((4, 4), np.float32)) == 0


# ------------------------------------------------------------------ malformed input


def stream_bytes() -> bytes:
    return encode_tensors(sample_tensors()).data


@pytest.mark.parametrize("cut", [0, 1, 3, 10, 30, -1, -7])
def test_truncated_streams_give_a_clear_error(cut):
    data = stream_bytes()
    with pytest.raises(BitstreamError, match="truncated|empty|remain|incomplete"):
        decode_stream(data[:cut])


def test_wrong_unit_sizes_are_detected():
    data = bytearray(stream_bytes())
    mps = parse_units(bytes(data))[1].offset
    data[mps : mps + 2] = (0x7FFF).to_bytes(2, "big")
    with pytest.raises(BitstreamError, match="declares 32767 bytes but only"):
        decode_stream(bytes(data))
    data[mps : mps + 2] = (1).to_bytes(2, "big")
    with pytest.raises(BitstreamError, match="impossible size"):
        decode_stream(bytes(data))
    data = bytearray(stream_bytes())
    data[mps : mps + 2] = (4).to_bytes(2, "big")  # cuts the MPS short: its fields run past the unit
    with pytest.raises(BitstreamError, match="truncated|damaged"):
        decode_stream(bytes(data))


def test_a_long_size_field_cut_short_is_truncation():
    """Found by the mutation test: a 4-byte size field announced in a 3-byte stream."""
    with pytest.raises(BitstreamError, match="truncated"):
        decode_stream(b"\x80\x00\x00")


def test_not_an_nnr_file():
    with pytest.raises(BitstreamError, match="not an MPEG-NNR"):
        decode_stream(b"PK\x03\x04 this is a zip file, not a bitstream")
    with pytest.raises(BitstreamError, match="empty"):
        decode_stream(b"")


def test_absurd_dimensions_are_refused_before_allocation():
    data = write_start_unit(1) + write_ndu(1, "huge", 0, 1, [1 << 20, 1 << 20], True, 11, b"\x00\x00\x00")  # type: ignore[arg-type]
    with pytest.raises(BitstreamError, match="declares"):
        decode_stream(data)
    # within the global limit, but far more weights than 10 payload bytes can code: refused before allocating
    data = write_start_unit(1) + write_ndu(1, "bomb", 0, 1, [1 << 24], True, 11, b"\x00" * 10)  # type: ignore[arg-type]
    with pytest.raises(BitstreamError, match="payload can hold"):
        decode_stream(data)
    with pytest.raises(BitstreamError, match="9 tensor dimensions"):  # the shared syntax refuses it both ways
        write_ndu(1, "many", 0, 1, [2] * 9, True, 11, b"\x00\x00\x00")  # type: ignore[arg-type]


def test_flipped_payload_bits_are_caught_by_the_unit_checksum():
    data = bytearray(stream_bytes())
    ndu = next(
        u
        for u in parse_units(bytes(data))
        if u.unit_type == UnitType.NDU and u.fields["topology_elem_id"] == "fc.weight"
    )
    data[ndu.offset + ndu.size - 3] ^= 0x10
    with pytest.raises(BitstreamError, match="checksum|corrupt|truncated"):
        decode_stream(bytes(data))


def test_topology_that_contradicts_the_ndus_is_rejected():
    tensors = sample_tensors()
    stream = encode_tensors(tensors)
    topology = topology_of(stream.data)
    entry = entry_of(stream.data, topology, "fc.weight")
    entry["shape"] = [3, 3]
    with pytest.raises(BitstreamError, match="does not match"):
        decode_stream(with_topology(stream.data, lambda _: topology))
    del entry["shape"]
    topology["crc32"] = zlib.crc32(b"something else")
    with pytest.raises(BitstreamError, match="checksum"):
        decode_stream(with_topology(stream.data, lambda _: topology))
    topology["crc32"] = "0"
    with pytest.raises(BitstreamError, match="checksum"):
        decode_stream(with_topology(stream.data, lambda _: topology))


def test_packed_topology_and_plain_json_version_1_and_2_streams_decode_alike():
    """Version 3 leaves out what the NDU headers say and deflates the unit; version-1 and -2 units (plain
    JSON, every coded tensor named, one CRC-32 per NDU) still decode to the same tensors."""
    tensors = sample_tensors()
    quant = {"fc.weight": quantize_tensor(tensors["fc.weight"], step=0.01)}  # one step: a uniform scale
    stream = encode_tensors(tensors, int8=quant)
    packed = topology_of(stream.data)
    fc = entry_of(stream.data, packed, "fc.weight")
    assert "name" not in fc and "shape" not in fc and isinstance(fc["scale"], float) and "axis" not in fc
    assert entry_of(stream.data, packed, "bn.num_batches_tracked") == {"shape": [], "dtype": "int64"}
    assert entry_of(stream.data, packed, "conv.weight") == {}  # everything is in its NDU
    new = decode_stream(stream.data)
    ndus = {u.fields["topology_elem_id"]: u for u in parse_units(stream.data) if u.unit_type == UnitType.NDU}
    version_2 = {**{k: v for k, v in new.topology.items() if k != "crc32"}, "version": 2}
    for entry in version_2["tensors"]:
        if entry["name"] in ndus:
            unit = ndus[entry["name"]]
            entry["crc32"] = zlib.crc32(stream.data[unit.offset : unit.offset + unit.size])
    version_1 = json.loads(json.dumps({**version_2, "version": 1}))
    for index, entry in enumerate(version_1["tensors"]):
        entry["ndu"] = index
    entry_of(stream.data, version_1, "fc.weight").update(scale=[0.01] * 10, axis=0)
    for legacy in (version_2, version_1):
        old = decode_stream(with_topology(stream.data, lambda _, t=legacy: t, packed=False))
        assert new.tensors.keys() == old.tensors.keys()
        for name in new.tensors:
            np.testing.assert_array_equal(new.tensors[name], old.tensors[name])
            assert new.tensors[name].dtype == old.tensors[name].dtype
    entry_of(stream.data, version_2, "conv.bias")["crc32"] ^= 1
    with pytest.raises(BitstreamError, match="checksum mismatch in the NDU of 'conv.bias'"):
        decode_stream(with_topology(stream.data, lambda _: version_2, packed=False))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("dtype", "object", "unsupported dtype"),
        ("dtype", "int8)", "unsupported dtype"),
        ("shape", [1 << 30, 1 << 30], "declares 1152921504606846976 elements"),
        ("mode", "empty", "incompletely"),  # an entry without an NDU must carry its name and shape
        ("scale", [1.0], "scales"),
        ("scale", True, "malformed scales"),
        ("shape", [True], "incompletely"),  # JSON true is a Python int: found by the long reader fuzz
        ("scale", float("nan"), "malformed scales"),
        ("axis", True, "scales"),
    ],
)
def test_hostile_topology_fields_are_rejected_without_allocating(field, value, message):
    tensors = sample_tensors()
    quant = {"fc.weight": quantize_tensor(tensors["fc.weight"])}
    stream = encode_tensors(tensors, int8=quant)
    topology = topology_of(stream.data)
    entry_of(stream.data, topology, "fc.weight")[field] = value
    with pytest.raises(BitstreamError, match=message):
        decode_stream(with_topology(stream.data, lambda _: topology))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_mutations_only_ever_raise_bitstream_errors(data):
    original = _FUZZ_STREAM
    mutated = bytearray(original)
    for _ in range(data.draw(st.integers(1, 6))):
        kind = data.draw(st.sampled_from(["flip", "set", "cut", "insert"]))
        pos = data.draw(st.integers(0, max(0, len(mutated) - 1)))
        if kind == "flip" and mutated:
            mutated[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "set" and mutated:
            mutated[pos] = data.draw(st.integers(0, 255))
        elif kind == "cut":
            del mutated[pos:]
        else:
            mutated[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
    try:
        decode_stream(bytes(mutated))
    except BitstreamError as exc:
        assert str(exc) and "\n" not in str(exc)


_FUZZ_STREAM = encode_tensors(sample_tensors(1), qps={"conv.weight": -20, "fc.weight": -22}).data


def test_a_qp_that_makes_weights_infinite_is_refused():
    """A base qp far outside any encoder's range (found by the long reader fuzz) used to decode to
    inf/NaN weights with a numpy RuntimeWarning; it is a damaged file."""
    stream = encode_tensors({"w": np.linspace(-1, 1, 64, dtype=np.float32).reshape(8, 8)}).data
    mps = next(u for u in parse_units(stream) if u.unit_type == UnitType.MPS)
    assert mps.fields["mps_quantization_parameter"] == 0
    hostile = write_model_parameter_set(
        1, mps.fields["mps_qp_density"], base_qp=4000
    )  # 13-bit field: 2^(4000/4) overflows float32
    forged = stream[: mps.offset] + hostile + stream[mps.offset + mps.size :]
    with pytest.raises(BitstreamError, match="not finite"):
        decode_stream(forged)


def test_entry_point_lists_round_trip_through_the_syntax():
    """NNCodec's packing: 8 value bits, the DQ state (with DQ), ue(11) of the first offset delta, then ie(7)
    of each change of delta (which may be negative)."""
    eps = [(900 << 11) | (17 << 3) | 5, (1200 << 11) | (255 << 3) | 0, (40 << 11) | (0 << 3) | 7, 3 << 3]
    for dq in (True, False):
        written = [ep if dq else ep & ~7 for ep in eps]

        def syntax(c: SyntaxCoder, dq: bool = dq, count: int = len(written)) -> None:
            c.entry_point_list("eps", count, dq)
            c.byte_alignment()

        w = BitWriter()
        syntax(SyntaxCoder(w, {"eps": written}))
        read: dict = {}
        syntax(SyntaxCoder(BitReader(bytes(w.data), 0, len(w.data), "test"), read))
        assert read["eps"] == written


def _big_stream(**kw) -> bytes:  # noqa: ANN003
    rng = np.random.default_rng(2)
    big = (rng.standard_normal((256, 4100)) * 0.05).astype(np.float32)  # 1.05 M weights: block scan by default
    tensors = {"big.weight": big, "bias": np.ones(3, np.float32)}
    return encode_tensors(tensors, **kw).data


def test_large_tensors_are_block_scanned_and_decode_alike_on_any_number_of_threads():
    stream = _big_stream()
    ndu = next(u for u in parse_units(stream) if u.unit_type == UnitType.NDU)
    assert ndu.fields["scan_order"] == 4 and len(ndu.fields["cabac_entry_point_list"]) == 3  # 4 block rows of 64
    reference = decode_stream(stream, threads=1)
    for threads in (2, 3, 8):
        decoded = decode_stream(stream, threads=threads)
        np.testing.assert_array_equal(decoded.tensors["big.weight"], reference.tensors["big.weight"])
        np.testing.assert_array_equal(decoded.levels["big.weight"], reference.levels["big.weight"])
    raster = decode_stream(_big_stream(scan_order=0), threads=2)
    assert (
        np.abs(raster.tensors["big.weight"] - reference.tensors["big.weight"]).max()
        <= step_size(default_qp(raster.tensors["big.weight"])) * 2
    )  # same qp, trellis in another order: the same grid, within a step


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda eps: [eps[0] ^ (1 << 3)] + eps[1:], "corrupt"),  # one value bit
        (lambda eps: eps[:1] + [eps[1] + (1 << 11)] + eps[2:], "corrupt"),  # one bit later
        (lambda eps: eps[:2] + [(1 << 40) << 11], "beyond its payload"),
    ],
)
def test_damaged_entry_points_are_one_line_errors(edit, message):
    stream = _big_stream()
    eps = next(u for u in parse_units(stream) if u.unit_type == UnitType.NDU).fields["cabac_entry_point_list"]
    forged = with_ndu(stream, "big.weight", cabac_entry_point_list=edit(list(eps)))
    for threads in (1, 4):
        with pytest.raises(BitstreamError, match=message) as err:
            decode_stream(forged, threads=threads)
        assert "\n" not in str(err.value)


def test_hostile_entry_point_headers_are_refused_before_decoding():
    stream = _big_stream()
    with pytest.raises(BitstreamError, match="scan order 9"):
        parse_units(with_ndu(stream, "big.weight", scan_order=9, cabac_entry_point_list=[]))
    # a first dimension of 2^30 with 64-row blocks declares 2^24 entry points in a header of a few bytes
    forged = with_ndu(stream, "big.weight", tensor_dimensions=[1 << 30, 1], cabac_entry_point_list=[1 << 3] * 3)
    with pytest.raises(BitstreamError, match="entry points, more than its header holds|truncated"):
        parse_units(forged)
    # a change of offset that puts an entry point before the previous one
    w = BitWriter()
    SyntaxCoder(w, {"eps": [(50 << 11), (10 << 11)]}).entry_point_list("eps", 2, False)
    w.u(1, 1)
    reader = SyntaxCoder(BitReader(bytes(w.data), 0, len(w.data), "NDU"), {})
    assert reader.entry_point_list("eps", 2, False) == [50 << 11, 10 << 11]  # deltas 50, 10: both valid
    w = BitWriter()
    w.u(8, 0)
    SyntaxCoder(w, {})._write_ue(11, 5)
    w.u(8, 0)
    SyntaxCoder(w, {})._write_ue(7, 12)  # ie(7) of -6: delta 5 - 6 < 0
    w.u(8, 0)
    with pytest.raises(BitstreamError, match="before the one preceding it"):
        SyntaxCoder(BitReader(bytes(w.data), 0, len(w.data), "NDU"), {}).entry_point_list("eps", 2, False)
