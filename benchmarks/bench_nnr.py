"""edgeprune's NNR/CABAC coder side by side with NNCodec 2.1.3, in one run.

    python benchmarks/bench_nnr.py            # writes benchmarks/results/nnr.md and nnr_accuracy_vs_size.png

Needs the NNCodec venv of tools/install.d/50-nncodec.sh (NNCodec runs there; its timings are taken
in that process with the same clock). Models: LeNet-5 trained on scikit-learn digits (dense), the
same model pruned (L1 channel pruning + fine-tuning) and simplified by edgeprune's own stages, and,
for throughput only, the 15 M weights of an untrained VGG-16 (Kaiming init; timing does not depend on
training, size does). All timings single-process on a shared 2-core VM: compare ratios, not absolutes.
"""

from __future__ import annotations

import argparse
import base64
import copy
import json
import lzma
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edgeprune.artifact import StageContext  # noqa: E402
from edgeprune.examples import build_example  # noqa: E402
from edgeprune.metrics import evaluate  # noqa: E402
from edgeprune.nnr import decode_stream, encode_tensors  # noqa: E402
from edgeprune.nnr.allocate import allocate_qps  # noqa: E402
from edgeprune.nnr.bitstream import UnitType, parse_units  # noqa: E402
from edgeprune.nnr.model import load_decoded, model_tensors  # noqa: E402

VENV_PYTHON = ROOT / ".venv-nncodec" / "bin" / "python"
ORACLE = ROOT / "tools" / "nnr_oracle.py"
RESULTS = ROOT / "benchmarks" / "results"
REPEAT = 3  # edgeprune timings: best of 3; NNCodec: compress once (about 20 s), decompress best of 2


def arr(a: np.ndarray) -> dict:
    a = np.ascontiguousarray(a)
    return {"dtype": a.dtype.str, "shape": list(a.shape), "data": base64.b64encode(a.tobytes()).decode()}


def unarr(d: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(d["data"]), dtype=d["dtype"]).reshape(d["shape"])


def oracle(ops: list[dict]) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        req, resp = Path(tmp) / "req.json", Path(tmp) / "resp.json"
        req.write_text(json.dumps(ops))
        subprocess.run(
            [str(VENV_PYTHON), str(ORACLE), str(req), str(resp)],
            check=True,
            cwd=tmp,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        return json.loads(resp.read_text())


def float_params(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """What NNCodec accepts: float32 tensors (its int32 path is irrelevant here)."""
    return {k: v.astype(np.float32) for k, v in model_tensors(model).items() if np.issubdtype(v.dtype, np.floating)}


def ndu_bytes(data: bytes) -> int:
    return sum(u.size for u in parse_units(data) if u.unit_type == UnitType.NDU)


def entropy_bytes(levels: dict[str, np.ndarray]) -> float:
    """Zeroth-order entropy of the levels, per tensor, summed (the memoryless bound)."""
    total = 0.0
    for v in levels.values():
        _, counts = np.unique(v, return_counts=True)
        p = counts / counts.sum()
        total += float(-(counts * np.log2(p)).sum()) / 8
    return total


def psnr_db(params: dict[str, np.ndarray], rec: dict[str, np.ndarray]) -> float:
    values = []
    for k, w in params.items():
        if w.ndim >= 2:
            mse = float(np.mean((w - rec[k]) ** 2))
            values.append(10 * math.log10(float(np.abs(w).max()) ** 2 / mse) if mse > 0 else 120.0)
    return float(np.mean(values))


def pruned_lenet(dense):  # noqa: ANN001 - Artifact
    from edgeprune.prune.pruner import PruneOptions
    from edgeprune.prune.stage import run as prune_run
    from edgeprune.simplify.stage import run as simplify_run

    art = copy.deepcopy(dense)
    with tempfile.TemporaryDirectory() as tmp:
        ctx = StageContext(
            out_dir=Path(tmp),
            options={"prune": PruneOptions(method="l1", epochs=6, finetune_epochs=2, target_sparsity=0.6)},
        )
        prune_run(art, ctx)
        simplify_run(art, ctx)
    return art


def same_qp_rows(name: str, model, data) -> list[dict]:  # noqa: ANN001
    params = float_params(model)
    qps = (-38, -30, -22)
    nonweight = -75
    ops = [
        {
            "op": "compress",
            "params": {k: arr(v) for k, v in params.items()},
            "kwargs": {"qp": qp, "nonweight_qp": nonweight},
        }
        for qp in qps
    ]
    theirs = oracle(ops)
    rows = []
    for qp, r in zip(qps, theirs, strict=True):
        stream = base64.b64decode(r["bitstream"])
        per_tensor = {k: (qp if v.ndim >= 2 else nonweight) for k, v in params.items()}
        same = encode_tensors(params, qps=per_tensor, estimator_search=True, row_skip=False, scan_order=0)
        fast = encode_tensors(params, qps=per_tensor, estimator_search=False, row_skip=True)
        decoded = decode_stream(stream)
        levels = decoded.levels
        int_levels = np.concatenate([v.ravel() for v in levels.values()])
        packed = int_levels.astype(np.int8 if np.abs(int_levels).max() < 128 else np.int32).tobytes()
        zstd = oracle([{"op": "zstd", "data": base64.b64encode(packed).decode(), "level": 19}])[0]["size"]
        acc = None
        if data is not None:
            candidate = load_decoded(copy.deepcopy(model), _with_ints(decode_stream(fast.data), model))
            acc = evaluate(candidate, data.loader("test", 256))["accuracy"]
        rows.append(
            {
                "model": name,
                "qp": qp,
                "nncodec_bytes": len(stream),
                "nncodec_ndu_bytes": ndu_bytes(stream),
                "edgeprune_same_opts_ndu_bytes": ndu_bytes(same.data),
                "byte_identical_ndus": ndu_bytes(same.data) == ndu_bytes(stream)
                and all(a == b for a, b in zip(_ndus(same.data), _ndus(stream), strict=True)),
                "edgeprune_fast_ndu_bytes": ndu_bytes(fast.data),
                "bits_per_weight": 8 * ndu_bytes(stream) / sum(v.size for v in params.values()),
                "psnr_db": psnr_db(params, decoded.tensors),
                "h0_bytes": entropy_bytes(levels),
                "lzma9e_bytes": len(lzma.compress(packed, preset=9 | lzma.PRESET_EXTREME)),
                "zstd19_bytes": zstd,
                "accuracy_fast": acc,
            }
        )
    return rows


def _ndus(data: bytes) -> list[bytes]:
    return [data[u.offset : u.offset + u.size] for u in parse_units(data) if u.unit_type == UnitType.NDU]


def throughput_rows(params: dict[str, np.ndarray], qp: int = -32) -> list[dict]:
    n = sum(v.size for v in params.values())
    ops = [{"op": "compress", "params": {k: arr(v) for k, v in params.items()}, "kwargs": {"qp": qp}}]
    enc = oracle(ops)[0]
    stream = base64.b64decode(enc["bitstream"])
    dec = oracle([{"op": "decompress", "bitstream": enc["bitstream"], "repeat": 2}])[0]
    rows = [
        {
            "coder": "NNCodec 2.1.3 (DQ, estimator search)",
            "threads": 1,
            "encode_s": enc["seconds"],
            "decode_s": dec["seconds"],
        }
    ]
    threads = [1, min(2, os.cpu_count() or 1)]
    for search in (True, False):
        for t in sorted(set(threads)):
            e = d = ew = dw = float("inf")
            for _ in range(REPEAT):  # best of REPEAT: the machine is shared
                w0, c0 = time.perf_counter(), time.process_time()
                ours = encode_tensors(params, qps=qp, estimator_search=search, row_skip=False, threads=t)
                e, ew = min(e, time.process_time() - c0), min(ew, time.perf_counter() - w0)
                w0, c0 = time.perf_counter(), time.process_time()
                decode_stream(ours.data, threads=t)
                d, dw = min(d, time.process_time() - c0), min(dw, time.perf_counter() - w0)
            rows.append(
                {
                    "coder": f"edgeprune (DQ, estimator search {'on' if search else 'off'})",
                    "threads": t,
                    "encode_s": e,
                    "decode_s": d,
                    "encode_wall_s": ew,
                    "decode_wall_s": dw,
                }
            )
    d = float("inf")
    for _ in range(REPEAT):
        t0 = time.process_time()
        decode_stream(stream, threads=1)
        d = min(d, time.process_time() - t0)
    rows.append({"coder": "edgeprune decoding NNCodec's stream", "threads": 1, "encode_s": float("nan"), "decode_s": d})
    for r in rows:
        r["weights"] = n
        r["encode_Mparams_s"] = n / r["encode_s"] / 1e6 if r["encode_s"] == r["encode_s"] else float("nan")
        r["decode_Mparams_s"] = n / r["decode_s"] / 1e6
    return rows


def embedding_params() -> dict[str, np.ndarray]:
    """One dominant tensor: a MiniLM-sized word-embedding table (30,522 x 384, BERT's N(0, 0.02) init),
    where decoding tensor by tensor cannot use a second thread."""
    rng = np.random.default_rng(0)
    return {"embeddings.word_embeddings.weight": (rng.standard_normal((30522, 384)) * 0.02).astype(np.float32)}


def _best_decodes(streams: dict[str, bytes], repeat: int = 9) -> dict[tuple[str, int], tuple[float, float]]:
    """(wall s, process CPU s) of each stream on 1 and 2 threads, each the best of ``repeat``; the runs are
    interleaved so that a slow spell of the shared machine does not land on one configuration."""
    best: dict[tuple[str, int], tuple[float, float]] = {}
    for _ in range(repeat):
        for name, data in streams.items():
            for threads in (1, 2):
                w0, c0 = time.perf_counter(), time.process_time()
                decode_stream(data, threads=threads)
                wall, cpu = time.perf_counter() - w0, time.process_time() - c0
                old = best.get((name, threads), (float("inf"), float("inf")))
                best[name, threads] = (min(old[0], wall), min(old[1], cpu))
    return best


def decode_scaling_rows(models: list[tuple[str, dict[str, np.ndarray]]], qp: int = -32) -> list[dict]:
    """Decode wall time against NNCodec (single-threaded; its CPU time, which is at most its wall time):
    edgeprune's default streams (large tensors in block scan with entry points) on 1 and 2 threads,
    the same weights in raster scan (parallel across tensors only), and NNCodec's own stream."""
    rows: list[dict] = []
    for label, params in models:
        n = sum(v.size for v in params.values())
        enc = oracle([{"op": "compress", "params": {k: arr(v) for k, v in params.items()}, "kwargs": {"qp": qp}}])[0]
        theirs = base64.b64decode(enc["bitstream"])
        reference = oracle([{"op": "decompress", "bitstream": enc["bitstream"], "repeat": 5}])[0]["seconds"]
        default, raster = encode_tensors(params, qps=qp), encode_tensors(params, qps=qp, scan_order=0)
        streams = {
            "edgeprune default (block scan)": default.data,
            "edgeprune raster scan": raster.data,
            "edgeprune decoding NNCodec's stream": theirs,
        }
        # NNCodec's stream codes the levels of the raster stream (byte-identical NDUs with its estimator
        # search; without it only the few signalled configuration bins differ), so it has the same bins.
        bins = {"edgeprune default (block scan)": default.bins, "edgeprune raster scan": raster.bins}
        first = len(rows)
        rows.append(
            {
                "model": label,
                "weights": n,
                "decoder": "NNCodec 2.1.3",
                "threads": 1,
                "wall_s": reference,
                "cpu_s": reference,
                "bytes": len(theirs),
                "bins": raster.bins,
            }
        )
        timings = _best_decodes(streams)
        for (name, threads), (wall, cpu) in timings.items():
            rows.append(
                {
                    "model": label,
                    "weights": n,
                    "decoder": name,
                    "threads": threads,
                    "wall_s": wall,
                    "cpu_s": cpu,
                    "bytes": len(streams[name]),
                    "bins": bins.get(name, raster.bins),
                }
            )
        for r in rows[first:]:
            r["vs_nncodec"] = reference / r["wall_s"]
    return rows


def curve(name: str, model, data) -> dict:  # noqa: ANN001
    params = float_params(model)
    float_acc = evaluate(model, data.loader("test", 256))["accuracy"]
    qps = (-38, -34, -30, -26, -22, -18, -14)
    theirs = oracle(
        [{"op": "compress", "params": {k: arr(v) for k, v in params.items()}, "kwargs": {"qp": qp}} for qp in qps]
    )
    nncodec = []
    for qp, r in zip(qps, theirs, strict=True):
        stream = base64.b64decode(r["bitstream"])
        candidate = load_decoded(copy.deepcopy(model), _with_ints(decode_stream(stream), model))
        nncodec.append(
            {"qp": qp, "bytes": len(stream), "accuracy": evaluate(candidate, data.loader("test", 256))["accuracy"]}
        )
    ours = []
    for bpw in (0.4, 0.6, 0.8, 1.0, 1.5, 2.0, 3.0):
        allocation = allocate_qps(model, data, bits_per_weight=bpw)
        encoded = encode_tensors(model_tensors(model), qps=allocation.qps)
        candidate = load_decoded(copy.deepcopy(model), decode_stream(encoded.data))
        ours.append(
            {
                "target_bpw": bpw,
                "bytes": encoded.weight_bytes + 18,
                "accuracy": evaluate(candidate, data.loader("test", 256))["accuracy"],
            }
        )
    return {"model": name, "float_accuracy": float_acc, "nncodec": nncodec, "edgeprune": ours}


def _with_ints(decoded, model):  # noqa: ANN001, ANN202 - NNCodec streams carry no integer buffers
    for k, v in model.state_dict().items():
        if k not in decoded.tensors:
            decoded.tensors[k] = v.numpy()
    return decoded


def plot(curves: list[dict], dest: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(6 * len(curves), 4.2))
    for ax, c in zip(np.atleast_1d(axes), curves, strict=True):
        ax.plot(
            [r["bytes"] / 1024 for r in c["nncodec"]],
            [100 * r["accuracy"] for r in c["nncodec"]],
            "o-",
            label="NNCodec, one qp for all (-38 ... -14)",
        )
        ax.plot(
            [r["bytes"] / 1024 for r in c["edgeprune"]],
            [100 * r["accuracy"] for r in c["edgeprune"]],
            "s-",
            label="edgeprune, per-tensor qp (Fisher)",
        )
        ax.axhline(100 * c["float_accuracy"] - 0.5, color="grey", ls="--", lw=0.8, label="float - 0.5 point")
        ax.set_xscale("log")
        ax.set_xlabel("bitstream KiB (weights)")
        ax.set_ylabel("test accuracy %")
        ax.set_title(c["model"])
        ax.set_ylim(max(0, 100 * c["float_accuracy"] - 15), 100)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(dest, dpi=110)


def equal_accuracy_ratio(c: dict) -> tuple[float, dict] | None:
    """Our smallest stream within 0.5 point of float, over NNCodec's default-qp (-38) stream, and that
    stream's row; None when no allocation stays within 0.5 point."""
    ok = [r for r in c["edgeprune"] if r["accuracy"] >= c["float_accuracy"] - 0.005]
    default = next(r for r in c["nncodec"] if r["qp"] == -38)
    if not ok:
        return None
    best = min(ok, key=lambda r: r["bytes"])
    return best["bytes"] / default["bytes"], best


def nominal_clock_hz() -> float | None:
    """The CPU clock the kernel reports (``cpu MHz`` of /proc/cpuinfo), None where it reports none. On a VM
    that is the nominal clock, not a measured one, so cycles derived from it are an estimate."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    match = re.search(r"^cpu MHz\s*:\s*([0-9.]+)", text, re.MULTILINE)
    return float(match.group(1)) * 1e6 if match else None


def decode_markdown(rows: list[dict]) -> list[str]:
    clock = nominal_clock_hz()
    cycles = f"cycles/bin at {clock / 1e9:.2f} GHz" if clock else "cycles/bin (clock unknown)"
    lines = [
        "",
        "**Decode wall time vs NNCodec** (qp -32, DQ; dict -> bytes -> dict per call; best of 9 decodes, NNCodec "
        "best of 5 in its own process; NNCodec decodes on one thread, so its CPU time stands for its wall time). "
        "Bins: regular + bypass bins the encoder coded. ns/bin and cycles/bin divide the CPU time of the whole "
        "decode call - NDU parsing and dequantisation included, NNCodec's Python layer included - by the bins, "
        "so they bound the arithmetic decoder's own cost from above; cycles at the clock /proc/cpuinfo reports "
        "(nominal on a VM):",
        "",
        "| weights | decoder | threads | stream B | bins | wall s | CPU s | Mparams/s (wall) | vs NNCodec (wall) "
        f"| ns/bin (CPU) | {cycles} |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ns_per_bin = 1e9 * r["cpu_s"] / r["bins"]
        lines.append(
            f"| {r['model']} ({r['weights'] / 1e6:.1f} M) | {r['decoder']} | {r['threads']} | {r['bytes']:,} | "
            f"{r['bins']:,} | {r['wall_s']:.3f} | {r['cpu_s']:.3f} | {r['weights'] / r['wall_s'] / 1e6:.1f} | "
            f"{r['vs_nncodec']:.2f}x | {ns_per_bin:.2f} | {f'{ns_per_bin * clock / 1e9:.1f}' if clock else '-'} |"
        )
    return lines


def markdown(
    same: list[dict], speed: list[dict], curves: list[dict], seconds: float, decode: list[dict] | None = None
) -> str:
    lines = [
        f"Machine: {platform.node()} ({os.cpu_count()} CPUs, {platform.machine()}), "
        f"Python {platform.python_version()}, "
        f"torch {torch.__version__}; date {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; "
        f"command `python benchmarks/bench_nnr.py` ({seconds:.0f} s). NNCodec 2.1.3 runs in `.venv-nncodec`.",
        "",
        "**Same weights, same qp** (NNCodec defaults: DQ, estimator search, 1-D tensors at qp -75). "
        "'same opts' = edgeprune with NNCodec's options; 'fast' = edgeprune's defaults (no estimator search, "
        "row skipping). Sizes are NDU bytes (the tensors).",
        "",
        "| model | qp | NNCodec B | edgeprune same opts B | identical NDUs | edgeprune fast B (ratio) "
        "| bits/weight "
        "| PSNR dB | H0 B | NNCodec/H0 | lzma-9e B | zstd-19 B |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in same:
        lines.append(
            f"| {r['model']} | {r['qp']} | {r['nncodec_ndu_bytes']:,} | "
            f"{r['edgeprune_same_opts_ndu_bytes']:,} | "
            f"{'yes' if r['byte_identical_ndus'] else 'NO'} | {r['edgeprune_fast_ndu_bytes']:,} "
            f"({r['edgeprune_fast_ndu_bytes'] / r['nncodec_ndu_bytes']:.3f}) | {r['bits_per_weight']:.2f} | "
            f"{r['psnr_db']:.1f} | {r['h0_bytes']:,.0f} | {r['nncodec_ndu_bytes'] / r['h0_bytes']:.3f} | "
            f"{r['lzma9e_bytes']:,} | {r['zstd19_bytes']:,} |"
        )
    base = speed[0] if speed else {}
    lines += [
        "",
        f"**Throughput** ({base.get('weights', 0) / 1e6:.1f} M weights of VGG-16, qp -32, DQ; "
        "end-to-end dict -> bytes -> dict; "
        "process CPU time (all threads) and wall time; edgeprune best of 3, NNCodec compress once / "
        "decompress best of 2; shared, overloaded 2-core VM, so wall times are only indicative):",
        "",
        "| coder | threads | encode CPU s | encode Mparams/s | vs NNCodec | decode CPU s | decode Mparams/s "
        "| vs NNCodec | encode / decode wall s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in speed:
        enc = (
            f"{r['encode_s']:.2f} | {r['encode_Mparams_s']:.2f} | {base['encode_s'] / r['encode_s']:.1f}x"
            if r["encode_s"] == r["encode_s"]
            else "- | - | -"
        )
        wall = f"{r['encode_wall_s']:.2f} / {r['decode_wall_s']:.2f}" if "encode_wall_s" in r else "-"
        lines.append(
            f"| {r['coder']} | {r['threads']} | {enc} | {r['decode_s']:.2f} | {r['decode_Mparams_s']:.2f} | "
            f"{base['decode_s'] / r['decode_s']:.1f}x | {wall} |"
        )
    lines += decode_markdown(decode or [])
    lines += [
        "",
        "**Accuracy vs size** (`benchmarks/results/nnr_accuracy_vs_size.png`): NNCodec's single qp vs "
        "edgeprune's per-tensor allocation (`--bits-per-weight` targets).",
        "",
    ]
    for c in curves:
        found = equal_accuracy_ratio(c)
        if found is None:
            verdict = ". No allocation stayed within 0.5 point."
        else:
            ratio, best = found
            verdict = (
                f". **At <= 0.5 point below float: {best['bytes']:,} B = {ratio:.2f}x NNCodec's default-qp stream.**"
            )
        lines.append(
            f"- {c['model']}: float {100 * c['float_accuracy']:.2f} %. NNCodec "
            + ", ".join(f"qp {r['qp']}: {r['bytes']:,} B / {100 * r['accuracy']:.1f} %" for r in c["nncodec"])
            + ". edgeprune "
            + ", ".join(
                f"{r['target_bpw']} b/w: {r['bytes']:,} B / {100 * r['accuracy']:.1f} %" for r in c["edgeprune"]
            )
            + verdict
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-throughput", action="store_true", help="Leave out the 15 M-weight timing runs.")
    parser.add_argument(
        "--decode-only", action="store_true", help="Only the decode-speed table (writes results/nnr_decode.md)."
    )
    args = parser.parse_args()
    if not VENV_PYTHON.exists():
        raise SystemExit("NNCodec venv missing: run tools/install.d/50-nncodec.sh")
    torch.set_num_threads(1)
    start = time.perf_counter()
    from edgeprune.models import vgg16_cifar

    torch.manual_seed(0)
    vgg = float_params(vgg16_cifar())
    decode = [] if args.skip_throughput else decode_scaling_rows([("VGG-16", vgg), ("embedding", embedding_params())])
    if args.decode_only:
        RESULTS.mkdir(parents=True, exist_ok=True)
        text = "\n".join(decode_markdown(decode)) + "\n"
        (RESULTS / "nnr_decode.md").write_text(text)
        (RESULTS / "nnr_decode.json").write_text(json.dumps(decode, indent=1))
        print(text)
        return
    dense = build_example("lenet5", seed=0)
    pruned = pruned_lenet(dense)
    models = [("LeNet-5 dense (digits)", dense.model), ("LeNet-5 L1-pruned + simplified", pruned.model)]
    same = [row for name, m in models for row in same_qp_rows(name, m, dense.data)]
    speed = []
    if not args.skip_throughput:
        speed = throughput_rows(vgg)
    curves = [curve(name, m, dense.data) for name, m in models]
    RESULTS.mkdir(parents=True, exist_ok=True)
    plot(curves, RESULTS / "nnr_accuracy_vs_size.png")
    text = markdown(same, speed, curves, time.perf_counter() - start, decode)
    (RESULTS / "nnr.md").write_text(text)
    results = {"same_qp": same, "throughput": speed, "decode": decode, "curves": curves}
    (RESULTS / "nnr.json").write_text(json.dumps(results, indent=1))
    print(text)


if __name__ == "__main__":
    main()
