"""The C CABAC core through its binding: round trips, quantisation, and hostile payloads."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edgeprune.nnr import _cabac

DQ_NEXT = [(0, 2), (7, 5), (1, 3), (6, 4), (2, 0), (5, 7), (3, 1), (4, 6)]


def dq_levels_from_coded(q: np.ndarray) -> np.ndarray:
    """Reconstruction indices n for coded indices q under the 8-state machine (the reference rule)."""
    state, out = 0, np.empty_like(q)
    for i, v in enumerate(q.tolist()):
        out[i] = 0 if v == 0 else 2 * v - (1 if v > 0 else -1) * (state & 1)
        state = DQ_NEXT[state][abs(v) & 1]
    return out


def roundtrip(levels: np.ndarray, rows: int, width: int, **kw) -> tuple[np.ndarray, int | None]:
    payload, _ = _cabac.encode(levels, rows, width, **kw)
    out = np.full(rows * width, 12345, dtype=np.int32)
    qp, used = _cabac.decode(
        payload,
        out,
        rows,
        width,
        dq=kw.get("dq", False),
        profile=kw.get("profile", True),
        num_gtx_flags=kw.get("num_gtx_flags", 11),
        has_qp_offset=kw.get("qp_offset") is not None,
        qp_density=kw.get("qp_density", 2),
    )
    assert used <= len(payload)
    return out, qp


magnitudes = st.one_of(st.integers(-3, 3), st.integers(-300, 300), st.integers(-(1 << 27), 1 << 27))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.integers(1, 12),
    width=st.integers(1, 12),
    data=st.data(),
    dq=st.booleans(),
    profile=st.booleans(),
    row_skip=st.booleans(),
    search=st.booleans(),
    ngtx=st.integers(1, 32),
    qp=st.none() | st.integers(-128, 127),
)
def test_random_levels_round_trip(rows, width, data, dq, profile, row_skip, search, ngtx, qp):
    coded = data.draw(hnp.arrays(np.int32, rows * width, elements=magnitudes))
    if data.draw(st.booleans()):  # pruned rows
        coded.reshape(rows, width)[::2] = 0
    levels = dq_levels_from_coded(coded) if dq else coded
    out, qp_back = roundtrip(
        levels,
        rows,
        width,
        dq=dq,
        profile=profile,
        row_skip=row_skip,
        estimator_search=search,
        num_gtx_flags=ngtx,
        qp_offset=qp,
    )
    np.testing.assert_array_equal(out, levels)
    assert qp_back == qp


@pytest.mark.parametrize("dq", [False, True])
def test_all_zero_tensor_costs_a_few_bytes_and_round_trips(dq):
    levels = np.zeros(64 * 100, dtype=np.int32)
    out, _ = roundtrip(levels, 64, 100, dq=dq, row_skip=True, qp_offset=-20)
    assert not out.any()
    assert len(_cabac.encode(levels, 64, 100, dq=dq, row_skip=True)[0]) < 40


def test_the_encoder_counts_the_bins_it_codes():
    """One bin per zero level (its significance flag); a level of +-1 adds its sign and its
    "greater than 1" flag; a row of zeros under row skip costs one flag instead of a flag per level."""

    def bins(levels: list[int], rows: int = 1, **kw) -> int:
        return _cabac.encode(np.array(levels, dtype=np.int32), rows, len(levels) // rows, **kw)[1]

    zeros = bins([0] * 64)
    assert zeros > 64  # the flags plus the estimator configurations signalled up front
    assert bins([0] * 65) == zeros + 1
    assert bins([0] * 64 + [1]) == zeros + 3
    assert bins([0] * 64 + [-1]) == zeros + 3
    assert bins([0] * 64, rows=8, row_skip=True) < bins([0] * 64, rows=8, row_skip=False) - 40


def test_row_skip_makes_pruned_rows_nearly_free():
    rng = np.random.default_rng(0)
    levels = rng.integers(-5, 6, size=(256, 64)).astype(np.int32)
    levels[::2] = 0
    with_skip, _ = _cabac.encode(levels.ravel(), 256, 64, row_skip=True)
    without, _ = _cabac.encode(levels.ravel(), 256, 64, row_skip=False)
    assert len(with_skip) < len(without)


def test_step_size_follows_the_nnc_formula():
    for qp in range(-80, 40):
        expected = np.float32((1 + (qp % 4) / 4) * 2.0 ** (qp // 4))
        assert _cabac.step_size(qp, 2) == expected


def test_uniform_quantisation_is_round_to_nearest():
    rng = np.random.default_rng(1)
    w = rng.standard_normal(5000).astype(np.float32)
    step = _cabac.step_size(-20, 2)
    out = np.empty(w.size, dtype=np.int32)
    _cabac.quantize(w, out, step, dq=False)
    np.testing.assert_array_equal(out, np.round(w * (np.float32(1) / np.float32(step))).astype(np.int32))


def test_dq_trellis_output_is_on_the_dq_grid_and_beats_uniform_at_equal_rate_step():
    rng = np.random.default_rng(2)
    w = rng.standard_normal(20000).astype(np.float32)
    step = np.float32(_cabac.step_size(-16, 2))
    n = np.empty(w.size, dtype=np.int32)
    _cabac.quantize(w, n, float(step), dq=True)
    # every n is reachable by the state machine: encoding accepts it and decoding returns it
    out, _ = roundtrip(n, 1, w.size, dq=True)
    np.testing.assert_array_equal(out, n)
    # DQ with step s has the distortion of a uniform quantiser between s and 2s (its levels cost like 2s)
    mse_dq = float(np.mean((w - step * n) ** 2))
    mse_coarse = float(np.mean((w - 2 * step * np.round(w / (2 * step))) ** 2))
    assert mse_dq < mse_coarse


def test_encoder_rejects_levels_off_the_dq_grid_and_out_of_range():
    with pytest.raises(_cabac.CabacError, match="DQ grid"):
        _cabac.encode(np.array([1, 0], dtype=np.int32), 1, 2, dq=True)  # state 0 allows even n only
    with pytest.raises(_cabac.CabacError, match="out of range"):
        _cabac.encode(np.array([1 << 29], dtype=np.int32), 1, 1)
    with pytest.raises(_cabac.CabacError, match="does not fit"):
        _cabac.encode(np.zeros(4, dtype=np.int32), 2, 2, qp_offset=200)
    with pytest.raises(TypeError, match="int32"):
        _cabac.encode(np.zeros(4, dtype=np.int64), 2, 2)
    with pytest.raises(TypeError, match="one element per weight"):
        _cabac.encode(np.zeros(3, dtype=np.int32), 2, 2)
    with pytest.raises(_cabac.CabacError, match="dimensions"):
        _cabac.encode(np.zeros(0, dtype=np.int32), 0, 5)


def test_truncated_payloads_raise_and_never_crash():
    rng = np.random.default_rng(3)
    levels = rng.integers(-40, 41, size=4096).astype(np.int32)
    payload, _ = _cabac.encode(levels, 64, 64, qp_offset=-30)
    out = np.empty(4096, dtype=np.int32)
    for cut in (0, 1, 2, 10, len(payload) // 2, len(payload) - 8):
        with pytest.raises(_cabac.CabacError, match="truncated|corrupt"):
            _cabac.decode(payload[:cut], out, 64, 64)


def test_garbage_payloads_raise_or_decode_and_never_crash():
    rng = np.random.default_rng(4)
    out = np.empty(32 * 32, dtype=np.int32)
    outcomes = set()
    for _ in range(300):
        junk = rng.integers(0, 256, size=int(rng.integers(0, 300)), dtype=np.uint8).tobytes()
        try:
            _cabac.decode(junk, out, 32, 32, dq=bool(rng.integers(2)))
            outcomes.add("decoded")
        except _cabac.CabacError as exc:
            outcomes.add(str(exc).split(" (")[0])
    assert any("truncated" in o or "corrupt" in o for o in outcomes)


def test_decoder_refuses_absurd_dimensions_before_allocating():
    with pytest.raises(_cabac.CabacError, match="too large"):
        _cabac.decode(b"\x00" * 16, np.empty(1, dtype=np.int32), 1 << 20, 1 << 20)


def test_gil_is_released_so_tensors_code_in_parallel():
    """A Python thread keeps running *during* a long encode: impossible if the C code held the GIL."""
    rng = np.random.default_rng(5)
    levels = rng.integers(-8, 9, size=1_000_000).astype(np.int32)
    stamps: list[float] = []
    stop = threading.Event()

    def ticker():
        while not stop.is_set():
            stamps.append(time.perf_counter())

    t = threading.Thread(target=ticker)
    t.start()
    time.sleep(0.01)
    begin = time.perf_counter()
    payload, _ = _cabac.encode(levels, 1000, 1000, estimator_search=True)
    end = time.perf_counter()
    stop.set()
    t.join()
    inside = [s for s in stamps if begin + 0.2 * (end - begin) < s < end - 0.2 * (end - begin)]
    assert end - begin > 0.02 and len(inside) > 50
    out = np.empty_like(levels)
    _cabac.decode(payload, out, 1000, 1000, has_qp_offset=False)
    np.testing.assert_array_equal(out, levels)


def test_decoder_never_accepts_levels_the_encoder_cannot_write():
    """Regression found by the long fuzz run: with DQ the decoder accepted |q| up to 2^28, i.e.
    |n| = 2|q| beyond the encoder's range, so a decoded stream could not be re-encoded."""
    data = (Path(__file__).resolve().parent.parent / "fuzz" / "corpus" / "regression-dq-level-range").read_bytes()
    rows, width = 1 + data[0] % 64, 1 + data[1] % 64
    out = np.empty(rows * width, dtype=np.int32)
    with pytest.raises(_cabac.CabacError, match="corrupt"):
        _cabac.decode(
            data[6:],
            out,
            rows,
            width,
            dq=True,
            profile=True,
            num_gtx_flags=1 + data[3] % 32,
            has_qp_offset=True,
            qp_density=(data[2] >> 3) & 7,
        )


def test_rdoq_trades_distortion_for_rate_and_needs_uniform_quantisation():
    rng = np.random.default_rng(6)
    w = (rng.standard_normal(50_000) * 0.05).astype(np.float32)
    step = _cabac.step_size(-20, 2)
    sizes, errors = [], []
    for lam in (0.0, 1.0, 4.0):
        levels = np.empty(w.size, dtype=np.int32)
        _cabac.quantize(w, levels, step, dq=False, rdoq=lam)
        sizes.append(len(_cabac.encode(levels, 1, w.size)[0]))
        errors.append(float(np.mean((w - np.float32(step) * levels) ** 2)))
    assert sizes[0] > sizes[1] > sizes[2] and errors[0] < errors[1] < errors[2]
    with pytest.raises(_cabac.CabacError, match="disable DQ"):
        _cabac.quantize(w, np.empty(w.size, dtype=np.int32), step, dq=True, rdoq=1.0)


def _block_scan_payload(rows: int, width: int, scan_order: int, dq: bool, seed: int):  # noqa: ANN202
    from edgeprune.nnr.tensors import cabac_payload, quantize_levels

    w = (np.random.default_rng(seed).standard_normal((rows, width)) * 3).astype(np.float32)
    levels = quantize_levels(w, 1.0, dq, 0.0, scan_order)
    coded = cabac_payload(
        levels, (rows, width), dq, row_skip=False, estimator_search=bool(seed % 2), qp_offset=-3, scan_order=scan_order
    )
    return levels, coded


def _decode_range(coded, rows, width, dq, out, eps, block_rows=None):  # noqa: ANN001, ANN202
    return _cabac.decode(
        coded.data, out, rows, width, dq=dq, scan_order=coded.scan_order, entry_points=eps, block_rows=block_rows
    )


@pytest.mark.parametrize("dq", [False, True])
@pytest.mark.parametrize(("scan_order", "rows", "width"), [(1, 61, 37), (2, 100, 7), (4, 130, 200), (3, 33, 65)])
def test_block_scan_decodes_alike_from_every_entry_point(scan_order, rows, width, dq):
    """Every split of the block rows into ranges (as threads decode them) gives the levels the encoder had;
    only the range that ends the tensor reports the bytes consumed."""
    levels, coded = _block_scan_payload(rows, width, scan_order, dq, seed=rows)
    count = _cabac.block_rows(rows, scan_order)
    assert count == -(-rows // (4 << scan_order)) and len(coded.entry_points) == count - 1
    eps = np.array(coded.entry_points, dtype=np.uint64)
    out = np.full(rows * width, 12345, dtype=np.int32)
    qp, used = _decode_range(coded, rows, width, dq, out, eps)
    assert qp == -3 and used == len(coded.data)
    np.testing.assert_array_equal(out, levels)
    for first in range(count):
        for end in range(first + 1, count + 1):
            part = np.full(rows * width, 12345, dtype=np.int32)
            _, used = _decode_range(coded, rows, width, dq, part, eps, (first, end))
            assert used == (len(coded.data) if end == count else 0)
            lo, hi = first * (4 << scan_order) * width, min(rows, end * (4 << scan_order)) * width
            np.testing.assert_array_equal(part[lo:hi], levels[lo:hi])
            assert (part[:lo] == 12345).all() and (part[hi:] == 12345).all()  # nothing outside its rows


def test_a_damaged_entry_point_is_caught_by_the_block_row_before_it():
    rows, width, scan_order = 40, 50, 1
    _, coded = _block_scan_payload(rows, width, scan_order, True, seed=5)
    out = np.empty(rows * width, dtype=np.int32)
    for k in range(len(coded.entry_points)):
        for flip in (1 << 11, 1 << 3, 1):  # offset, value bits, DQ state
            eps = np.array(coded.entry_points, dtype=np.uint64)
            eps[k] ^= np.uint64(flip)
            with pytest.raises(_cabac.CabacError, match="corrupt"):
                _decode_range(coded, rows, width, True, out, eps)
    eps = np.array(coded.entry_points, dtype=np.uint64)
    eps[-1] = np.uint64(8 * len(coded.data) + 64) << np.uint64(11)  # beyond the payload: refused, not read
    with pytest.raises(_cabac.CabacError, match="corrupt"):
        _decode_range(coded, rows, width, True, out, eps, (len(eps), len(eps) + 1))


def test_block_scan_arguments_are_checked():
    levels = np.zeros(40 * 8, dtype=np.int32)
    with pytest.raises(TypeError, match="needs entry_points"):
        _cabac.encode(levels, 40, 8, dq=False, scan_order=1)
    with pytest.raises(TypeError, match="one entry point per block row"):
        _cabac.encode(levels, 40, 8, dq=False, scan_order=1, row_skip=False, entry_points=np.zeros(2, np.uint64))
    with pytest.raises(_cabac.CabacError, match="inconsistent"):  # NNCodec's row skip in a block scan: not written
        _cabac.encode(levels, 40, 8, dq=False, scan_order=1, row_skip=True, entry_points=np.zeros(4, np.uint64))
    eps_out = np.zeros(4, np.uint64)
    payload, _ = _cabac.encode(levels, 40, 8, dq=False, scan_order=1, row_skip=False, entry_points=eps_out)
    eps = np.zeros(4, np.uint64)
    with pytest.raises(ValueError, match="block_rows"):
        _cabac.decode(payload, levels, 40, 8, dq=False, scan_order=1, entry_points=eps, block_rows=(3, 9))
    assert [_cabac.block_rows(r, 4) for r in (1, 64, 65)] == [1, 1, 2]


def test_derived_estimator_tables_match_their_generator():
    """nnr_derived_tables.h is generated from the normative tables; a hand edit or a stale copy fails here."""
    import subprocess
    import sys

    tool = Path(__file__).resolve().parents[1] / "tools" / "gen_cabac_tables.py"
    assert subprocess.run([sys.executable, str(tool), "--check"]).returncode == 0
