"""Pytest fixtures for the device tests: real sshd, real adb server + ADB peer, exported models.

Loaded by the device test modules with ``pytest_plugins = ["support.fixtures"]``.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeprune.testing.sshd import SshServer
from support.adb_peer import AdbPeer
from support.helpers import free_port


@pytest.fixture(scope="session")
def sshd(tmp_path_factory) -> Iterator[SshServer]:
    server = SshServer(tmp_path_factory.mktemp("sshd")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def adb_server() -> Iterator[int]:
    """A private adb server (the real Debian adb) on a free port, killed at the end."""
    adb = shutil.which("adb")
    if adb is None:
        raise RuntimeError("adb is missing: run tools/install.d/10-system-packages.sh")
    port = free_port()
    subprocess.run([adb, "-P", str(port), "start-server"], check=True, capture_output=True, timeout=30)
    yield port
    subprocess.run([adb, "-P", str(port), "kill-server"], capture_output=True, timeout=30)


@pytest.fixture
def adb_device(tmp_path, adb_server) -> Iterator[AdbPeer]:
    peer = AdbPeer(tmp_path / "android").start()
    peer.root.mkdir(parents=True, exist_ok=True)
    yield peer
    subprocess.run(["adb", "-P", str(adb_server), "disconnect", peer.serial], capture_output=True, timeout=30)
    peer.stop()


def _export_onnx(model: torch.nn.Module, x: torch.Tensor, dest: Path) -> Path:
    torch.onnx.export(
        model, (x,), str(dest), input_names=["input"], output_names=["logits"], external_data=False, verbose=False
    )
    return dest


def _quantize_onnx(fp32: Path, dest: Path, calibration: np.ndarray) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter({"input": calibration[i : i + 1]} for i in range(len(calibration)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    quantize_static(
        str(fp32),
        str(dest),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    return dest


@pytest.fixture(scope="session")
def lenet_exports(tmp_path_factory, trained_lenet5) -> dict[str, Path]:
    """The trained example LeNet-5 as ONNX fp32 / ONNX int8 (QDQ) / TFLite fp32 files."""
    import litert_torch

    out = tmp_path_factory.mktemp("exports")
    model, x = trained_lenet5.model.eval(), trained_lenet5.example_input
    onnx_fp32 = _export_onnx(model, x, out / "model.onnx")
    calibration = trained_lenet5.data.train.tensors[0][:32].numpy()
    onnx_int8 = _quantize_onnx(onnx_fp32, out / "model_int8.onnx", calibration)
    tflite_fp32 = out / "model.tflite"
    litert_torch.convert(model, (x,)).export(str(tflite_fp32))
    return {"onnx_fp32": onnx_fp32, "onnx_int8": onnx_int8, "tflite_fp32": tflite_fp32}
