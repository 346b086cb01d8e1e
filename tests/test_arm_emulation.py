"""The Pi side on ARM: runtime_bench runs under qemu-user on the userlands a Raspberry Pi has, and computes what
the host computes.

* arm64: Debian bookworm (64-bit Raspberry Pi OS) with PyPI's aarch64 wheels of numpy, ai-edge-litert and
  onnxruntime;
* armhf: Debian bookworm armhf (32-bit Raspberry Pi OS, the usual Pi 3B system) with Debian's numpy (< 2)
  and tflite-runtime's armv7l wheel.

The userlands are built once by ``tools/build-arm-rootfs.sh`` (run by ``tools/install.d/30-arm-emulation.sh``);
nothing is downloaded here. Timings under emulation mean nothing and are not measured: the test compares
outputs of the fp32 and INT8 files from ``compress --example lenet5`` with the host's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from runtime_bench.harness import infer

REPO = Path(__file__).resolve().parents[1]
ARM_ROOT = Path(os.environ.get("EDGEPRUNE_ARM_ROOT", Path.home() / ".cache" / "edgeprune" / "arm-rootfs"))
QEMU = {"arm64": "qemu-aarch64-static", "armhf": "qemu-arm-static"}
# The Pi 3B's cores, as far as qemu models them: a Cortex-A53 (64-bit), and for 32-bit Raspberry Pi OS the
# closest ARMv7 model with the same NEON/VFPv4/IDIV features. Not qemu's default "max" CPU: under qemu 7.2
# its extra SIMD extensions make XNNPACK's INT8 kernels compute wrong logits (32 of 33 levels off here).
QEMU_CPU = {"arm64": "cortex-a53", "armhf": "cortex-a7"}
SAMPLES = 32  # held-out digits per file: every class several times, seconds under emulation

pytestmark = pytest.mark.slow


def _userland(arch: str) -> tuple[str, Path]:
    root = ARM_ROOT / arch
    qemu = shutil.which(QEMU[arch])
    if qemu is None or not (root / ".edgeprune-ready").is_file():
        pytest.skip(f"no {arch} userland in {ARM_ROOT} or no {QEMU[arch]}: run tools/install.d/30-arm-emulation.sh")
    return qemu, root


@pytest.fixture(scope="module")
def example(tmp_path_factory) -> dict[str, Path]:
    """fp32 and INT8 .tflite/.onnx files of the embedded example, and held-out inputs, written by the CLI."""
    work = tmp_path_factory.mktemp("arm")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # prune/simplify are skipped: this test is about the device side, and they do not change the file formats
    subprocess.run(
        [
            sys.executable,
            "-m",
            "edgeprune",
            "--quiet",
            "compress",
            "--example",
            "lenet5",
            "--stages",
            "load,quantize,export",
            "-o",
            str(work / "out"),
        ],
        check=True,
        env=env,
        cwd=work,
    )
    from edgeprune.data import load_data

    inputs = load_data("digits", seed=0).test.tensors[0][:SAMPLES].numpy()
    np.save(work / "inputs.npy", inputs)
    # the harness alone, as the host copies it to a Pi (no edgeprune, no torch)
    shutil.copytree(
        REPO / "runtime_bench", work / "device" / "runtime_bench", ignore=shutil.ignore_patterns("__pycache__")
    )
    return {"out": work / "out", "inputs": work / "inputs.npy", "device": work / "device", "work": work}


def _on_arm(arch: str, args: list[str], device: Path) -> subprocess.CompletedProcess:
    """``python3 -m runtime_bench ARGS`` in the ARM userland under qemu-user (-L: its files shadow the host's)."""
    qemu, root = _userland(arch)
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(device),
        "LANG": "C.UTF-8",
        # the host path of the userland's site dir: qemu 7.2 does not apply -L to statx (32-bit glibc's stat)
        "PYTHONPATH": f"{root / 'opt/edgeprune-site'}:{device}",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    return subprocess.run(
        [qemu, "-cpu", QEMU_CPU[arch], "-L", str(root), str(root / "usr/bin/python3"), "-m", "runtime_bench", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=device,
        timeout=600,
    )


@pytest.mark.parametrize(
    ("arch", "runtimes", "numpy_major"),
    [
        ("arm64", {"litert", "onnxruntime"}, None),
        ("armhf", {"tflite-runtime"}, 1),
    ],
)
def test_userland_has_the_pi_runtimes_and_no_torch(example, arch, runtimes, numpy_major):
    probe = _on_arm(arch, ["probe"], example["device"])
    assert probe.returncode == 0, probe.stderr[-3000:]
    found = json.loads(probe.stdout)
    assert runtimes <= set(found["runtimes"]), found
    if numpy_major is not None:  # tflite-runtime is built against numpy 1.x
        assert int(found["numpy"].split(".")[0]) == numpy_major, found
    assert found["machine"] == {"arm64": "aarch64", "armhf": "armv7l"}[arch]  # really ARM, not the host
    assert "torch" not in found.get("modules", [])


@pytest.mark.parametrize(
    ("arch", "model", "runtime"),
    [
        ("arm64", "model.tflite", "litert"),
        ("arm64", "model_int8.tflite", "litert"),
        ("arm64", "model.onnx", "onnxruntime"),
        ("armhf", "model.tflite", "tflite-runtime"),
        ("armhf", "model_int8.tflite", "tflite-runtime"),
    ],
)
def test_arm_outputs_match_the_host(example, arch, model, runtime):
    path = example["out"] / model
    host = infer(str(path), np.load(example["inputs"]), "litert" if runtime == "tflite-runtime" else runtime)
    dest = example["work"] / f"{arch}-{model}.npy"
    result = _on_arm(
        arch,
        ["infer", str(path), "--inputs", str(example["inputs"]), "--outputs", str(dest), "--runtime", runtime],
        example["device"],
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    info = json.loads(result.stdout)
    assert info["runtime"] == runtime
    arm, ref = np.load(dest), host["outputs"]
    assert arm.shape == ref.shape == (SAMPLES, 10)
    step = host["output_step"]
    if step == 0:
        # fp32: float32 rounding (eps 1.2e-7) accumulated over dot products of at most ~800 terms, in
        # whatever order ARM's kernels sum them: far below 1e-4 of the logit range.
        assert np.abs(arm - ref).max() <= 1e-4 * (ref.max() - ref.min()), np.abs(arm - ref).max()
        assert (arm.argmax(1) == ref.argmax(1)).all()
    else:
        # INT8: the same integer program; kernels may round a requantisation differently by one level.
        assert np.abs(arm - ref).max() <= step * 1.001, (np.abs(arm - ref).max(), step)
        top2 = np.sort(ref, axis=1)[:, -2:]
        clear = (top2[:, 1] - top2[:, 0]) > 2 * step  # a one-level change cannot flip these predictions
        assert (arm.argmax(1) == ref.argmax(1))[clear].all()
