"""Epoch budget (issue 10): `edgeprune compress` with default options on ResNet-20 and the full Fashion-MNIST.

Trains the dense ResNet-20 (projection shortcuts, 28x28, 2 epochs on the 54k training images; cached in
``--work``), then times, each in a fresh process: the seconds from interpreter start to the first training
step of the prune stage, and the whole default ``compress`` run. Needs Debian's ``dataset-fashion-mnist``.
Goals: compress <= 45 min on 2 cores, first step <= 15 s.

    python benchmarks/bench_epoch_budget.py [--work DIR] [--first-step-only]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ARCH = [
    "--arch",
    "edgeprune.models:resnet20",
    "--arch-kwargs",
    '{"in_channels": 1, "num_classes": 10, "shortcut": "B"}',
]
COMPRESS = ["compress", *ARCH, "--input-shape", "1,1,28,28", "--data", "fashion-mnist", "--quiet"]

# Runs in a child process: stops `compress` right after the prune stage's first optimiser step.
FIRST_STEP = """
import time
T0 = time.perf_counter()
import os, sys
import edgeprune.prune.pruner as pruner
real_fit = pruner.fit
def first_step(model, data, cfg, progress=None, **kw):
    def stop():
        print(f"{time.perf_counter() - T0:.2f}", flush=True)
        os._exit(0)
    kw["step_hooks"] = (stop, *kw.get("step_hooks", ()))
    return real_fit(model, data, cfg, progress, **kw)
pruner.fit = first_step
sys.argv = ["edgeprune", *sys.argv[1:]]
from edgeprune.cli import main
main()
"""


def dense_model(work: Path) -> Path:
    path = work / "fmnist_resnet20.pt"
    if path.exists():
        return path
    import torch

    from edgeprune.data import load_data
    from edgeprune.models import resnet20
    from edgeprune.prune.train import TrainConfig, fit

    torch.manual_seed(0)
    model = resnet20(in_channels=1, num_classes=10, shortcut="B")
    fit(model, load_data("fashion-mnist"), TrainConfig(epochs=2, lr=0.05))
    torch.save(model.state_dict(), path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/edgeprune-epoch-budget"))
    parser.add_argument("--first-step-only", action="store_true", help="Skip the full compress run (~35 min).")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    model = dense_model(args.work)
    first = subprocess.run(
        [sys.executable, "-c", FIRST_STEP, *COMPRESS[:1], str(model), *COMPRESS[1:], "-o", str(args.work / "first")],
        capture_output=True,
        text=True,
        check=True,
    )
    if args.first_step_only:
        print(json.dumps({"first_step_seconds": float(first.stdout.split()[-1])}))
        return
    started = time.perf_counter()
    out = args.work / "out"
    subprocess.run(
        [sys.executable, "-m", "edgeprune", *COMPRESS[:1], str(model), *COMPRESS[1:], "-o", str(out), "--force"],
        check=True,
        env={**os.environ},
    )
    seconds = time.perf_counter() - started
    report = json.loads((out / "report.json").read_text())
    prune = next(s for s in report["stages"] if s["name"] == "prune")
    result = {
        "first_step_seconds": float(first.stdout.split()[-1]),
        "compress_seconds": round(seconds, 1),
        "stage_seconds": {s["name"]: round(s["seconds"], 1) for s in report["stages"]},
        "epochs": prune["metrics"]["epochs"],
        "finetune_epochs": prune["metrics"]["finetune_epochs"],
        "val_accuracy_before_after": [prune["metrics"]["val_accuracy_before"], prune["metrics"]["val_accuracy_after"]],
        "accuracy_dense_pruned": [report["stages"][0].get("accuracy"), prune.get("accuracy")],
        "macs_dense_pruned": [report["stages"][0].get("macs"), prune.get("macs")],
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
