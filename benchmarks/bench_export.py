"""INT8 vs fp32: latency on onnxruntime (QDQ) and LiteRT (XNNPACK), accuracy, size, weight-level equality.

For each model the export stage writes model.onnx / model_int8.onnx / model.tflite / model_int8.tflite
(verified on the test split), then every file is timed with **one thread**, batch 1, in the same
process: the fp32 and INT8 files of a runtime are timed in alternating blocks, so load from other
processes hits both alike, and the median of all runs (>= 200 per file) is reported with the ratio.

Models (all trained here on real data, scikit-learn's handwritten digits):

* ``lenet5-8``: the embedded example (LeNet-5 with 3x3 kernels, 8x8 digits);
* ``lenet5-28`` dense and ``lenet5-28-reduced``: classic LeNet-5 (5x5, 20/50/500) on the digits
  upsampled to 28x28, and the same net with half its conv/fc channels removed (kept by L1 norm, then
  fine-tuned): the dense vs channel-reduced pair;
* ``resnet20-32`` dense and ``resnet20-32-half``: ResNet-20 (residual adds, BatchNorm folded) on the
  digits upsampled to 32x32, and ResNet-20 with half the channels in every layer (8/16/32), trained the
  same way: the shape a 50 % channel-pruned ResNet-20 has after simplification.

    python benchmarks/bench_export.py [--runs 300] [--models lenet5-8,lenet5-28] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import date
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sections import replace_section
from torch import nn
from torch.utils.data import TensorDataset

from edgeprune import quant
from edgeprune.artifact import Artifact, StageContext
from edgeprune.data import DataBundle, load_data
from edgeprune.examples import build_example
from edgeprune.export import stage as export_stage
from edgeprune.export.onnx import INPUT_NAME, make_session
from edgeprune.metrics import count_macs, count_params, evaluate
from edgeprune.models import LeNet5, ResNetCifar, resnet20
from edgeprune.progress import QUIET
from edgeprune.prune.train import TrainConfig, fit

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## INT8 quantisation and export"
BLOCKS = 6  # alternating fp32/int8 blocks per runtime


def upsampled_digits(side: int) -> DataBundle:
    """The digits at ``side`` x ``side`` (bilinear): real data at the input size of common small CNNs."""
    digits = load_data("digits", seed=0)

    def resize(ds: TensorDataset) -> TensorDataset:
        x, y = ds.tensors
        return TensorDataset(F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False), y)

    return replace(
        digits, name=f"digits{side}", train=resize(digits.train), val=resize(digits.val), test=resize(digits.test)
    )


def trained(model: nn.Module, data: DataBundle, epochs: int) -> Artifact:
    torch.manual_seed(0)
    fit(model, data, TrainConfig(epochs=epochs, lr=0.05, batch_size=64), QUIET)
    return Artifact(model=model.eval(), example_input=data.test.tensors[0][:1].clone(), data=data)


def channel_reduced_lenet5(dense: LeNet5, data: DataBundle, keep: float = 0.5, epochs: int = 3) -> Artifact:
    """LeNet-5 with the ``keep`` share of conv1/conv2/fc1 channels of largest L1 norm, fine-tuned."""

    def top(weight: torch.Tensor) -> torch.Tensor:
        n = max(1, round(keep * weight.shape[0]))
        return weight.abs().flatten(1).sum(1).topk(n).indices.sort().values

    def kernel(conv: nn.Conv2d) -> tuple[int, int]:
        """``conv.kernel_size``: typed ``tuple[int, ...]`` by torch, always (height, width) for a Conv2d."""
        height, width = conv.kernel_size
        return height, width

    k1, k2, kf = top(dense.conv1.weight), top(dense.conv2.weight), top(dense.fc1.weight)
    side = int(round((dense.fc1.in_features // dense.conv2.out_channels) ** 0.5))
    small = LeNet5(in_channels=dense.conv1.in_channels, num_classes=dense.fc2.out_features, input_size=28)
    small.conv1 = nn.Conv2d(dense.conv1.in_channels, len(k1), kernel(dense.conv1))
    small.conv2 = nn.Conv2d(len(k1), len(k2), kernel(dense.conv2))
    small.fc1 = nn.Linear(len(k2) * side * side, len(kf))
    small.fc2 = nn.Linear(len(kf), dense.fc2.out_features)
    flat = (k2[:, None] * side * side + torch.arange(side * side)).flatten()
    # LeNet5 and the convs built above all use nn.Conv2d's default bias=True.
    assert dense.conv1.bias is not None and dense.conv2.bias is not None
    assert small.conv1.bias is not None and small.conv2.bias is not None
    with torch.no_grad():
        small.conv1.weight.copy_(dense.conv1.weight[k1])
        small.conv1.bias.copy_(dense.conv1.bias[k1])
        small.conv2.weight.copy_(dense.conv2.weight[k2][:, k1])
        small.conv2.bias.copy_(dense.conv2.bias[k2])
        small.fc1.weight.copy_(dense.fc1.weight[kf][:, flat])
        small.fc1.bias.copy_(dense.fc1.bias[kf])
        small.fc2.weight.copy_(dense.fc2.weight[:, kf])
        small.fc2.bias.copy_(dense.fc2.bias)
    return trained(small, data, epochs)


def build_models(names: list[str]) -> dict[str, Artifact]:
    models: dict[str, Artifact] = {}
    if "lenet5-8" in names:
        models["lenet5-8"] = build_example("lenet5", seed=0)
    if {"lenet5-28", "lenet5-28-reduced"} & set(names):
        data28 = upsampled_digits(28)
        torch.manual_seed(0)
        dense = trained(LeNet5(1, 10, 28), data28, epochs=8)
        if "lenet5-28" in names:
            models["lenet5-28"] = dense
        if "lenet5-28-reduced" in names:
            assert isinstance(dense.model, LeNet5)  # trained() wraps the LeNet5 built above
            models["lenet5-28-reduced"] = channel_reduced_lenet5(dense.model, data28)
    if {"resnet20-32", "resnet20-32-half"} & set(names):
        data32 = upsampled_digits(32)
        torch.manual_seed(0)
        if "resnet20-32" in names:
            models["resnet20-32"] = trained(resnet20(in_channels=1), data32, epochs=4)
        if "resnet20-32-half" in names:
            torch.manual_seed(0)
            half = ResNetCifar((3, 3, 3), (8, 16, 32), "A", in_channels=1, num_classes=10)
            models["resnet20-32-half"] = trained(half, data32, epochs=4)
    return models


def _ort_runner(path: Path, x: np.ndarray) -> Callable[[], object]:
    session = make_session(path, threads=1)
    feed = {INPUT_NAME: x}
    return lambda: session.run(None, feed)


def _litert_runner(path: Path, x: np.ndarray) -> Callable[[], object]:
    from ai_edge_litert.interpreter import Interpreter

    from edgeprune.export.tflite import quantize_input

    interpreter = Interpreter(model_path=str(path), num_threads=1)
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    interpreter.set_tensor(detail["index"], quantize_input(x, detail))
    return interpreter.invoke


def paired_medians(fp32: Callable[[], object], int8: Callable[[], object], runs: int) -> tuple[float, float]:
    """Median microseconds of ``runs`` calls each, timed in alternating blocks after a warm-up."""
    for fn in (fp32, int8):
        for _ in range(max(20, runs // 10)):
            fn()
    times: dict[int, list[float]] = {0: [], 1: []}
    per_block = -(-runs // BLOCKS)
    for _ in range(BLOCKS):
        for key, fn in ((0, fp32), (1, int8)):
            for _ in range(per_block):
                start = time.perf_counter_ns()
                fn()
                times[key].append((time.perf_counter_ns() - start) / 1000)
    return statistics.median(times[0]), statistics.median(times[1])


def bench_model(name: str, art: Artifact, runs: int, out_dir: Path) -> list[dict]:
    assert art.data is not None  # build_models: every artifact is trained here and keeps its data
    fp32_accuracy = evaluate(art.model, art.data.loader("test", 256))["accuracy"]
    params, macs = count_params(art.model), count_macs(art.model, art.example_input)
    ctx = StageContext(out_dir=out_dir)
    quant.stage.run(art, ctx)
    result = export_stage.run(art, ctx)
    files = {f"{r['runtime']}_{r['precision']}": r for r in result["exports"]}
    x = art.example_input[:1].numpy()
    rows = []
    for runtime, runner, file_prefix, row_prefix in (
        ("onnxruntime QDQ", _ort_runner, "onnx", "onnxruntime"),
        ("LiteRT XNNPACK", _litert_runner, "tflite", "litert"),
    ):
        fp32_row, int8_row = files[f"{row_prefix}_fp32"], files[f"{row_prefix}_int8"]
        t_fp32, t_int8 = paired_medians(
            runner(art.files[f"{file_prefix}_fp32"], x), runner(art.files[f"{file_prefix}_int8"], x), runs
        )
        rows.append(
            {
                "model": name,
                "params": params,
                "macs": macs,
                "runtime": runtime,
                "fp32_us": t_fp32,
                "int8_us": t_int8,
                "speedup": t_fp32 / t_int8,
                "torch_acc": fp32_accuracy,
                "fp32_acc": fp32_row["accuracy"],
                "int8_acc": int8_row["accuracy"],
                "fp32_kib": fp32_row["size_bytes"] / 1024,
                "int8_kib": int8_row["size_bytes"] / 1024,
                "max_diff_fp32": fp32_row["max_abs_diff"],
                "mismatches": int8_row["weight_mismatches"],
            }
        )
        print(
            f"{name:<18} {runtime:<16} fp32 {t_fp32:8.1f} us  int8 {t_int8:8.1f} us  x{t_fp32 / t_int8:.2f}  "
            f"acc {100 * fp32_row['accuracy']:.2f} -> {100 * int8_row['accuracy']:.2f} %  "
            f"mismatches {int8_row['weight_mismatches']}",
            flush=True,
        )
    return rows


def markdown(rows: list[dict], runs: int, command: str) -> str:
    n_test = 359
    lines = [
        SECTION,
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores (shared VM), Python {platform.python_version()}, "
        f"torch {torch.__version__}; date {date.today().isoformat()}; command `{command}`.",
        f"Latency: batch 1, 1 thread, median of {runs} runs per file after warm-up, fp32 and INT8 timed in "
        f"{BLOCKS} alternating blocks in the same process. Accuracy: top-1 on the {n_test} held-out test digits "
        "in each runtime (torch fp32 in brackets). Mismatches: INT8 weight levels in the file that differ from "
        "the quantize stage's (target 0).",
        "",
        "| model | params | MACs | runtime | fp32 µs | INT8 µs | INT8 speed-up | acc fp32 (torch) | acc INT8 "
        "| Δ acc (pts) | size fp32 → INT8 KiB | fp32 max abs diff | mismatches |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['params']:,} | {r['macs']:,} | {r['runtime']} | {r['fp32_us']:.1f} | "
            f"{r['int8_us']:.1f} | **{r['speedup']:.2f}×** | {100 * r['fp32_acc']:.2f} % "
            f"({100 * r['torch_acc']:.2f} %) | {100 * r['int8_acc']:.2f} % | "
            f"{100 * (r['int8_acc'] - r['fp32_acc']):+.2f} | {r['fp32_kib']:.1f} → {r['int8_kib']:.1f} | "
            f"{r['max_diff_fp32']:.1e} | {r['mismatches']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300, help="timed runs per file (>= 200)")
    parser.add_argument("--models", default="lenet5-8,lenet5-28,lenet5-28-reduced,resnet20-32,resnet20-32-half")
    parser.add_argument("--no-write", action="store_true", help="print only, do not update BENCHMARKS.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        for name, art in build_models(names).items():
            rows.extend(bench_model(name, art, args.runs, Path(tmp) / name))
    text = markdown(rows, args.runs, "python benchmarks/bench_export.py " + " ".join(sys.argv[1:]))
    print(text)
    if not args.no_write:
        replace_section(SECTION, text)


if __name__ == "__main__":
    main()
