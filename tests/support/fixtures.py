"""Pytest fixtures for the device tests: real sshd, real adb server + ADB peer, exported models.

Loaded by the device test modules with ``pytest_plugins = ["support.fixtures"]``.
"""

from __future__ import annotations

import json
import shutil
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from support.adb_peer import AdbPeer
from support.sshd import SshServer

STANDIN = Path(__file__).with_name("benchmark_model_standin.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def write_profile(path: Path, fields: dict[str, Any]) -> Path:
    """Write a device profile; dict values become [tables]."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in fields.items() if not isinstance(v, dict)]
    for table, values in fields.items():
        if isinstance(values, dict):
            lines += ["", f"[{table}]", *(f"{k} = {_toml_value(v)}" for k, v in values.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="session")
def sshd(tmp_path_factory) -> Iterator[SshServer]:
    server = SshServer(tmp_path_factory.mktemp("sshd")).start()
    yield server
    server.stop()


def ssh_profile(server: SshServer, device_dir: Path, port: int | None = None, **overrides: Any) -> Path:
    """A profile for the loopback sshd whose device Python is this interpreter."""
    ssh = {"host": "127.0.0.1", "port": port or server.port, "user": server.user, "key": str(server.client_key),
           "known_hosts": str(server.known_hosts), "connect_timeout_s": 5.0, **overrides.pop("ssh", {})}
    fields = {"name": "loopback-pi", "description": "sshd on 127.0.0.1", "arch": "x86_64", "transport": "ssh",
              "harness": "python", "runtimes": ["litert", "onnxruntime"], "threads": 1,
              "workdir": str(device_dir / "work"), "python": sys.executable, "timeout_s": 120.0, **overrides,
              "ssh": ssh}
    return write_profile(device_dir.parent / f"{fields['name']}.toml", fields)


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


def adb_profile(peer: AdbPeer, server_port: int, path: Path, **overrides: Any) -> Path:
    adb = {"serial": peer.serial, "server_port": server_port, "connect": True, "connect_timeout_s": 5.0,
           **overrides.pop("adb", {})}
    fields = {"name": "loopback-phone", "description": "ADB peer on 127.0.0.1", "extends": "android-arm64",
              "workdir": str(peer.root / "data/local/tmp/edgeprune"), "affinity": "", "timeout_s": 120.0,
              **overrides, "adb": adb}
    return write_profile(path, fields)


def standin_binary(directory: Path) -> Path:
    """The benchmark_model stand-in, runnable with this interpreter (it needs ai_edge_litert)."""
    body = STANDIN.read_text().split("\n", 1)[1]
    dest = directory / "benchmark_model"
    dest.write_text(f"#!{sys.executable}\n{body}")
    dest.chmod(0o755)
    return dest


def foreign_elf(directory: Path) -> Path:
    """An ELF executable header for aarch64: on this x86-64 "device" exec fails (Exec format error)."""
    header = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8) + struct.pack("<HHI", 2, 183, 1) + bytes(40)
    dest = directory / "benchmark_model_aarch64"
    dest.write_bytes(header + bytes(4096))
    return dest


def _export_onnx(model: torch.nn.Module, x: torch.Tensor, dest: Path) -> Path:
    torch.onnx.export(model, (x,), str(dest), input_names=["input"], output_names=["logits"],
                      external_data=False, verbose=False)
    return dest


def _quantize_onnx(fp32: Path, dest: Path, calibration: np.ndarray) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter({"input": calibration[i:i + 1]} for i in range(len(calibration)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    quantize_static(str(fp32), str(dest), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
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
