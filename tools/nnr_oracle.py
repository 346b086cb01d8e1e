"""NNCodec 2.1.3 as a conformance oracle, run inside the isolated `.venv-nncodec` (numpy<2, no edgeprune).

Usage: ``.venv-nncodec/bin/python tools/nnr_oracle.py request.json response.json``. The request is a
list of operations; arrays and bytes travel as base64 in JSON because the two environments have
different numpy majors (pickles would not load across them).

* ``{"op": "compress", "params": {name: array}, "kwargs": {...}}`` -> ``{"bitstream": bytes}``
* ``{"op": "decompress", "bitstream": bytes}`` -> ``{"params": {name: array}, "topology": str}``
* ``{"op": "zstd", "data": bytes, "level": 19}`` -> ``{"size": int}`` (benchmarks: zstd lives in this venv)

compress and decompress also report ``seconds``: process CPU time, best of ``repeat`` (default 1), for the
benchmarks (NNCodec is single-threaded; CPU time is what a shared machine measures reliably).

Only NNCodec's codec core is needed; ``nncodec.nnc.compression`` imports its framework adapters
(torch, torchvision) at module level for ``compress_model``, which is never called here, so inert
stand-ins for those modules are registered before the import.
"""

from __future__ import annotations

import base64
import json
import sys
import time
import types

import numpy as np


def _stub_framework() -> None:
    for name in (
        "nncodec.framework",
        "nncodec.framework.tensorflow_model",
        "nncodec.framework.pytorch_model",
        "nncodec.framework.use_case_init",
    ):
        sys.modules.setdefault(name, types.ModuleType(name))
    pkg = sys.modules["nncodec.framework"]
    for sub in ("tensorflow_model", "pytorch_model", "use_case_init"):
        setattr(pkg, sub, sys.modules[f"nncodec.framework.{sub}"])


def _arr_in(d: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(d["data"]), dtype=d["dtype"]).reshape(d["shape"]).copy()


def _arr_out(a: np.ndarray) -> dict:
    a = np.ascontiguousarray(a)
    return {"dtype": a.dtype.str, "shape": list(a.shape), "data": base64.b64encode(a.tobytes()).decode()}


def main(request_path: str, response_path: str) -> None:
    _stub_framework()
    from nncodec.nnc.compression import compress, decompress

    with open(request_path) as f:
        ops = json.load(f)
    results = []
    for op in ops:
        repeat = int(op.get("repeat", 1))
        if op["op"] == "compress":
            params = {k: _arr_in(v) for k, v in op["params"].items()}
            seconds = []
            for _ in range(repeat):
                t0 = time.process_time()
                bs = compress(params, bitstream_path=None, return_bitstream=True, verbose=False, **op["kwargs"])
                seconds.append(time.process_time() - t0)
            results.append({"bitstream": base64.b64encode(bytes(bs)).decode(), "seconds": min(seconds)})
        elif op["op"] == "decompress":
            seconds = []
            for _ in range(repeat):
                bs = bytearray(base64.b64decode(op["bitstream"]))
                t0 = time.process_time()
                params, hls = decompress(bs, return_hls=True, verbose=False)
                seconds.append(time.process_time() - t0)
            topology = hls.get("tpl", {}).get("topology_data", "") if isinstance(hls, dict) else ""
            results.append(
                {
                    "params": {k: _arr_out(np.asarray(v)) for k, v in params.items()},
                    "topology": topology if isinstance(topology, str) else "",
                    "seconds": min(seconds),
                }
            )
        elif op["op"] == "zstd":
            import zstandard

            data = base64.b64decode(op["data"])
            results.append({"size": len(zstandard.ZstdCompressor(level=int(op.get("level", 19))).compress(data))})
        else:
            raise SystemExit(f"unknown op {op['op']!r}")
    with open(response_path, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
