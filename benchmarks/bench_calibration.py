"""INT8 calibration: edgeprune's INT8 ONNX vs onnxruntime's ``quantize_static`` (MinMax, Percentile, Entropy).

For each model (trained here on scikit-learn's digits - 1,258 train / 180 val / 359 test images - and, for
``fmnist-mobilenetv2``, on 12,000 Fashion-MNIST training images, scored on its 10,000 test images):

* **onnxruntime** (the peer): the fp32 ONNX of the float model, ``quantize_static`` in QDQ format with
  per-channel symmetric int8 weights and uint8 activations - the configuration onnxruntime documents
  for CNNs - once per calibrator, on the same 128 training images edgeprune calibrates on;
* **edgeprune**: ``quantize`` + ``export --int8 --format onnx`` with ``--weight-quant maxabs`` (the same
  weight rule as the peer, so only the calibration differs) and with the default rate-allocated
  weights, once per ``--calibration`` choice (``best`` picks among the three on the validation split).

Every file is scored on the test split in two onnxruntime sessions: its default optimisations (the
fused INT8 kernels a user gets on this CPU) and basic rewrites only ("exact": QDQ run as the ONNX
definition says, what ARM and VNNI x86 compute). Columns: test accuracy and top-1 agreement with the
float model. One test image is 0.28 points on digits, 0.01 on Fashion-MNIST.

    python benchmarks/bench_calibration.py [--models lenet5,resnet20,mobilenetv2,fmnist-mobilenetv2]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import math
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from edgeprune import quant
from edgeprune.artifact import Artifact, StageContext
from edgeprune.data import load_data
from edgeprune.examples import build_example
from edgeprune.export import onnx as onnx_export
from edgeprune.export.stage import ExportOptions
from edgeprune.models import mobilenetv2_like, resnet20
from edgeprune.pipeline import run_pipeline
from edgeprune.progress import QUIET
from edgeprune.prune.train import TrainConfig, fit
from edgeprune.quant.calibrate import CALIBRATION_CHOICES

SAMPLES = 128


def _trained(factory, epochs: int, dataset: str = "digits", train: int | None = None) -> Artifact:  # noqa: ANN001
    """``factory``'s model trained on ``dataset`` (on its first ``train`` training images when given: the
    full Fashion-MNIST would take an hour here; its 10,000 test images are all kept)."""
    data = load_data(dataset, seed=0)
    if train is not None:
        data = dataclasses.replace(data, train=TensorDataset(*(t[:train] for t in data.train.tensors)))
    torch.manual_seed(0)
    model = factory(in_channels=1)
    fit(model, data, TrainConfig(epochs=epochs, lr=0.05, batch_size=64), QUIET)
    return Artifact(model=model.eval(), example_input=data.test.tensors[0][:1].clone(), data=data)


BUILDERS = {
    "lenet5": lambda: build_example("lenet5", seed=0),
    "resnet20": lambda: _trained(resnet20, 3),
    "mobilenetv2": lambda: _trained(mobilenetv2_like, 2),
    # the same architecture at 28x28 with 10,000 test images: one image is 0.01 points, not 0.28
    "fmnist-mobilenetv2": lambda: _trained(mobilenetv2_like, 3, "fashion-mnist", train=12_000),
}


def score(path: Path, x: torch.Tensor, y: np.ndarray, reference: np.ndarray) -> dict:
    """Accuracy and top-1 agreement with the float model, with onnxruntime's kernels and exactly; plus
    which test images the exact file gets right (``correct_exact``, for :func:`mcnemar`)."""
    out: dict = {}
    for key, exact in (("", False), ("_exact", True)):
        pred = onnx_export.run_session(path, x, exact=exact).argmax(1)
        out[f"accuracy{key}"] = float((pred == y).mean())
        out[f"agreement{key}"] = float((pred == reference.argmax(1)).mean())
    out["correct_exact"] = pred == y
    return out


def mcnemar(ours: np.ndarray, peer: np.ndarray) -> str:
    """Whether two files' exact accuracies differ beyond chance, on the same test images: the images only
    ours gets right (+), only the peer's (-), and the exact two-sided McNemar p-value. Why: on 359 test
    digits one image is 0.28 points, and an accuracy gap of one or two images says nothing by itself."""
    wins, losses = int((ours & ~peer).sum()), int((~ours & peer).sum())
    n = wins + losses
    tail = sum(math.comb(n, i) for i in range(min(wins, losses) + 1)) / 2**n if n else 0.5
    return f"+{wins} / -{losses} (p={min(1.0, 2 * tail):.2f})"


def show(row: dict) -> None:
    """Print one row as it finishes (a long run can be cut short without losing the rows so far)."""
    print({k: v for k, v in row.items() if k != "correct_exact"}, file=sys.stderr, flush=True)


def peer_rows(name: str, art: Artifact, work: Path, x: torch.Tensor, y: np.ndarray, ref: np.ndarray) -> list[dict]:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    fp32 = onnx_export.export_fp32(art.model, art.example_input, work / "peer_fp32.onnx")
    calibration = quant.calibration_inputs(art, SAMPLES)
    rows = []
    for method in ("minmax", "percentile", "entropy"):
        dest = work / f"peer_{method}.onnx"
        start = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):  # its histogram calibrators print progress; stdout is the table
            quantize_static(
                str(fp32),
                str(dest),
                onnx_export.BatchReader(calibration),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=onnx_export.ort_calibration_method(method),
                extra_options={"WeightSymmetric": True, "CalibPercentile": 99.99},
            )
        seconds = time.perf_counter() - start
        rows.append(
            {
                "model": name,
                "tool": "onnxruntime quantize_static",
                "weights": "maxabs (its own)",
                "calibration": method,
                "seconds": seconds,
                **score(dest, x, y, ref),
            }
        )
        show(rows[-1])
    return rows


def edgeprune_rows(
    name: str, art: Artifact, work: Path, x: torch.Tensor, y: np.ndarray, ref: np.ndarray, peer_correct: np.ndarray
) -> list[dict]:
    """edgeprune's INT8 ONNX per weight rule and calibration choice, each compared image by image with the
    best onnxruntime file (``peer_correct``: the test images it gets right exactly)."""
    rows = []
    for weights in ("maxabs", "allocated"):
        for method in CALIBRATION_CHOICES:
            out = work / f"ep_{weights}_{method}"
            out.mkdir()
            ctx = StageContext(
                out_dir=out,
                options={
                    "quantize": quant.QuantOptions(weights=weights, calibration=method, calibration_samples=SAMPLES),
                    "export": ExportOptions(formats=("onnx",), int8=True),
                },
                progress=QUIET,
            )
            start = time.perf_counter()
            _, report = run_pipeline(copy.deepcopy(art), ctx, ["load", "quantize", "export"], headers=False)
            seconds = time.perf_counter() - start
            row = next(r for r in report.result_of("export")["exports"] if r["file"] == "model_int8.onnx")
            chosen = method if method != "best" else f"best (chose {row['calibration']})"
            rows.append(
                {
                    "model": name,
                    "tool": "edgeprune",
                    "weights": weights,
                    "calibration": chosen,
                    "seconds": seconds,
                    **score(out / "model_int8.onnx", x, y, ref),
                }
            )
            rows[-1]["vs_peer"] = mcnemar(rows[-1]["correct_exact"], peer_correct)
            show(rows[-1])
    return rows


def markdown(rows: list[dict], command: str, seconds: float) -> str:
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"Machine: {platform.machine()}, {torch.get_num_threads()} thread(s), Python {platform.python_version()}, "
        f"torch {torch.__version__}; {now}; command `{command}` ({seconds:.0f} s). Calibration on the same "
        f"{SAMPLES} training images for every file; scored on each model's test split (359 digits; 10,000 "
        "Fashion-MNIST images for fmnist-mobilenetv2).",
        "",
        "| model | tool | weights | calibration | acc (this CPU's kernels) | agreement | acc (exact) | "
        "agreement (exact) | vs best onnxruntime (exact) |",
        "|---|---|---|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['tool']} | {r['weights']} | {r['calibration']} | {100 * r['accuracy']:.2f} % | "
            f"{r['agreement']:.3f} | {100 * r['accuracy_exact']:.2f} % | {r['agreement_exact']:.3f} | "
            f"{r.get('vs_peer', '')} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(BUILDERS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            art = BUILDERS[name]()
            work = Path(tmp) / name
            work.mkdir()
            assert art.data is not None  # every builder trains on its data
            x, y = art.data.test.tensors
            with torch.no_grad():
                reference = art.model.eval()(x).numpy()
            accuracy = float((reference.argmax(1) == y.numpy()).mean())
            rows.append(
                {
                    "model": name,
                    "tool": "float model (torch)",
                    "weights": "fp32",
                    "calibration": "-",
                    **{"accuracy": accuracy, "accuracy_exact": accuracy, "agreement": 1.0, "agreement_exact": 1.0},
                }
            )
            show(rows[-1])
            peers = peer_rows(name, art, work, x, y.numpy(), reference)
            best_peer = max(peers, key=lambda r: r["accuracy_exact"])
            ours = edgeprune_rows(name, art, work, x, y.numpy(), reference, best_peer["correct_exact"])
            rows += peers + ours
    command = "python benchmarks/bench_calibration.py --models " + args.models
    print(markdown(rows, command, time.perf_counter() - started))


if __name__ == "__main__":
    main()
