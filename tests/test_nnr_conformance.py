"""Conformance with the reference: NNCodec 2.1.3 (Fraunhofer HHI) in its own venv, both directions.

* NNCodec's streams -> edgeprune's decoder: the same levels and reconstructions as NNCodec's decoder;
  and edgeprune's encoder, given the same weights and options, writes byte-identical NDUs.
* edgeprune's streams (with its packed JSON topology unit, INT8 and integer NDUs) -> NNCodec's decoder: the
  same integers and reconstructed tensors as edgeprune's decoder.
"""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgeprune.nnr import decode_stream, encode_tensors
from edgeprune.nnr import tensors as nnr_tensors
from edgeprune.nnr.bitstream import UnitType, parse_units
from edgeprune.nnr.tensors import TPL_PREFIX, auto_scan_order
from edgeprune.quant import quantize_tensor

ROOT = Path(__file__).resolve().parent.parent
VENV_PYTHON = ROOT / ".venv-nncodec" / "bin" / "python"
ORACLE = Path(__file__).resolve().parents[1] / "tools" / "nnr_oracle.py"

pytestmark = pytest.mark.skipif(
    not VENV_PYTHON.exists(), reason="NNCodec venv missing: run tools/install.d/50-nncodec.sh"
)


def _arr(a: np.ndarray) -> dict:
    a = np.ascontiguousarray(a)
    return {"dtype": a.dtype.str, "shape": list(a.shape), "data": base64.b64encode(a.tobytes()).decode()}


def _unarr(d: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(d["data"]), dtype=d["dtype"]).reshape(d["shape"])


def oracle(ops: list[dict], tmp_path: Path) -> list[dict]:
    request, response = tmp_path / "request.json", tmp_path / "response.json"
    request.write_text(json.dumps(ops))
    done = subprocess.run(
        [str(VENV_PYTHON), str(ORACLE), str(request), str(response)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(response.read_text())


def weights(shape: tuple[int, ...], seed: int, zero_heavy: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal(shape) * 0.05).astype(np.float32)
    if zero_heavy:  # a pruned layer: dead output channels and mostly-zero survivors
        w[::3] = 0
        w[np.abs(w) < 0.06] = 0
    return w


# (shape, qp, dq, estimator search (NNCodec's param_opt), row skipping, zero heavy, scan order)
CASES = [
    ((300,), -30, True, True, False, False, 0),
    ((64, 96), -38, True, True, False, False, 0),
    ((64, 96), -26, False, True, True, False, 0),
    ((32, 16, 3, 3), -20, True, True, True, False, 0),
    ((32, 16, 3, 3), -16, False, False, False, False, 0),
    ((48, 8, 3, 3), -24, True, True, True, True, 0),
    ((128, 40), -18, True, False, True, True, 0),
    ((10, 1), -32, True, True, False, False, 0),
    # block scans with entry points: 8x8 (12 block rows), 16x16 with border blocks, one 64-row block row,
    # 32x32 on a pruned layer (NNCodec cannot write a block scan of a (rows, 1) tensor: no such case)
    ((96, 80), -30, True, True, False, False, 1),
    ((130, 16, 3, 3), -20, True, False, False, False, 2),
    ((64, 200), -26, False, True, False, False, 4),
    ((200, 70), -24, True, True, False, True, 3),
    # NNCodec's row skipping in a block scan (edgeprune does not write it): decoded the same way
    ((72, 42), -22, False, True, True, True, 1),
    ((72, 42), -22, True, False, True, True, 2),
]


def ndus(data: bytes) -> dict[str, bytes]:
    return {
        u.fields["topology_elem_id"]: data[u.offset : u.offset + u.size]
        for u in parse_units(data)
        if u.unit_type == UnitType.NDU
    }


def test_nncodec_streams_decode_identically_and_edgeprune_writes_the_same_ndus(tmp_path):
    params = [{"t": weights(shape, i, zero)} for i, (shape, _, _, _, _, zero, _) in enumerate(CASES)]
    ops = [
        {
            "op": "compress",
            "params": {k: _arr(v) for k, v in p.items()},
            "kwargs": {
                "qp": qp,
                "nonweight_qp": qp,
                "use_dq": dq,
                "param_opt": po,
                "row_skipping": rs,
                "scan_order": scan,
            },
        }
        for p, (_, qp, dq, po, rs, _, scan) in zip(params, CASES, strict=True)
    ]
    streams = [base64.b64decode(r["bitstream"]) for r in oracle(ops, tmp_path)]
    theirs = oracle([{"op": "decompress", "bitstream": base64.b64encode(s).decode()} for s in streams], tmp_path)
    for p, case, stream, reference in zip(params, CASES, streams, theirs, strict=True):
        shape, qp, dq, po, rs, _, scan = case
        if len(shape) > 1 and scan:
            assert parse_units(stream)[-1].fields["scan_order"] == scan, case  # NNCodec wrote a block scan
        for threads in (1, 3):  # whole tensors, and block rows split across threads
            decoded = decode_stream(stream, threads=threads)
            np.testing.assert_array_equal(decoded.tensors["t"], _unarr(reference["params"]["t"]), err_msg=str(case))
        if scan and rs:
            continue
        ours = encode_tensors(p, qps=qp, dq=dq, row_skip=rs, estimator_search=po, scan_order=scan)
        assert ndus(ours.data)["t"] == ndus(stream)["t"], case
        np.testing.assert_array_equal(decode_stream(ours.data).levels["t"], decoded.levels["t"])


def test_edgeprune_streams_decode_identically_in_nncodec(tmp_path, monkeypatch):
    monkeypatch.setattr(nnr_tensors, "BLOCK_SCAN_MIN_WEIGHTS", 1 << 16)  # "big" gets the default block scan
    conv = weights((32, 16, 3, 3), 10, zero_heavy=True)
    fc = weights((10, 288), 11)
    big = weights((300, 256), 14)
    tensors = {
        "conv.weight": conv,
        "conv.bias": weights((32,), 12),
        "fc.weight": fc,
        "fc.bias": weights((10,), 13),
        "steps": np.array([3, 1, 4, 1, 5], dtype=np.int32),
        "big.weight": big,  # large enough for the default block scan with entry points
    }
    int8 = {"conv.weight": quantize_tensor(conv), "fc.weight": quantize_tensor(fc), "big.weight": quantize_tensor(big)}
    streams = [
        encode_tensors(tensors).data,  # per-tensor default qps, DQ
        encode_tensors(tensors, qps=-22, dq=False, row_skip=False).data,  # uniform, one qp
        encode_tensors(tensors, int8=int8).data,
        encode_tensors(tensors, scan_order=1).data,  # 8x8 blocks for every tensor of 2+ dimensions
    ]
    assert auto_scan_order(big.shape) == 4
    assert {u.fields.get("scan_order", 0) for u in parse_units(streams[0])[3:]} == {0, 4}
    theirs = oracle([{"op": "decompress", "bitstream": base64.b64encode(s).decode()} for s in streams], tmp_path)
    for stream, reference in zip(streams, theirs, strict=True):
        decoded = decode_stream(stream)
        assert reference["topology"].startswith(TPL_PREFIX)  # NNCodec reads the packed unit as text
        for name in tensors:
            got = _unarr(reference["params"][name])
            expected = decoded.levels.get(name, decoded.tensors[name])
            if np.issubdtype(got.dtype, np.integer):  # INT NDUs: NNCodec returns the coded integers
                np.testing.assert_array_equal(got, expected.astype(np.int32), err_msg=name)
            else:
                np.testing.assert_array_equal(got, decoded.tensors[name], err_msg=name)
