"""Helpers for the device tests: free ports, profile files for the loopback peers, device binaries."""

from __future__ import annotations

import socket
import struct
import sys
from pathlib import Path
from typing import Any

from edgeprune.testing.sshd import write_profile
from support.adb_peer import AdbPeer

STANDINS = {
    "benchmark_model": Path(__file__).with_name("benchmark_model_standin.py"),
    "onnxruntime_perf_test": Path(__file__).with_name("perf_test_standin.py"),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def adb_profile(peer: AdbPeer, server_port: int, path: Path, **overrides: Any) -> Path:
    adb = {
        "serial": peer.serial,
        "server_port": server_port,
        "connect": True,
        "connect_timeout_s": 5.0,
        **overrides.pop("adb", {}),
    }
    fields = {
        "name": "loopback-phone",
        "description": "ADB peer on 127.0.0.1",
        "extends": "android-arm64",
        "workdir": str(peer.root / "data/local/tmp/edgeprune"),
        "affinity": "",
        "timeout_s": 120.0,
        **overrides,
        "adb": adb,
    }
    return write_profile(path, fields)


def standin_binary(directory: Path, tool: str = "benchmark_model") -> Path:
    """A native tool's stand-in, runnable with this interpreter (it needs the runtime)."""
    body = STANDINS[tool].read_text().split("\n", 1)[1]
    dest = directory / tool
    dest.write_text(f"#!{sys.executable}\n{body}")
    dest.chmod(0o755)
    return dest


def foreign_elf(directory: Path) -> Path:
    """An ELF executable for a CPU this "device" cannot run: exec fails with "Exec format error".

    It targets the Motorola 88000 (EM_88K) rather than, say, aarch64, because a machine with
    qemu-user registered in binfmt_misc would run an aarch64 binary under emulation.
    """
    em_88k = 5
    header = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8) + struct.pack("<HHI", 2, em_88k, 1) + bytes(40)
    dest = directory / "benchmark_model_m88k"
    dest.write_bytes(header + bytes(4096))
    return dest


def check_transport_contract(transport: Any, src: Path, remote: str, scratch: Path, space_root: str) -> None:
    """What every transport must do: push and pull byte-exactly, run a command with its exit code and
    separate stdout/stderr, and report free space."""
    transport.push(src, remote)
    assert Path(remote).read_bytes() == src.read_bytes()
    back = scratch / "back.bin"
    transport.pull(remote, back)
    assert back.read_bytes() == src.read_bytes()
    result = transport.execute("echo out; echo err >&2; exit 7", 10)
    assert (result.exit_code, result.stdout, result.stderr) == (7, "out\n", "err\n")
    assert transport.free_bytes(space_root) > 0
