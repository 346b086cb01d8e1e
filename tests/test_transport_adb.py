"""ADB transport and the Android path end to end: the real adb client against the ADB peer.

The "phone" is tests/support/adb_peer.py on a loopback port; a private adb server (Debian's adb)
connects to it as it would to a phone with ADB over TCP/IP. The benchmark binary is the
benchmark_model stand-in, which prints the real tool's log format.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from support.adb_peer import AdbPeer, Faults
from support.helpers import adb_profile, check_transport_contract, foreign_elf, free_port, standin_binary

from edgeprune.devices.adb import AdbTransport
from edgeprune.devices.bench import BenchOptions, ModelFile, benchmark_files
from edgeprune.devices.profiles import load_profile
from edgeprune.devices.transport import AuthFailed, CommandTimeout, ConnectionLost, NoSpace, Unreachable
from edgeprune.errors import DeviceError

pytest_plugins = ["support.fixtures"]
pytestmark = pytest.mark.network

FAST = BenchOptions(runs=20, warmup=2, retries=3, retry_backoff_s=0.05)


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _phone(peer: AdbPeer, server: int, tmp_path: Path, **overrides) -> object:
    return load_profile(str(adb_profile(peer, server, tmp_path / "phone.toml", **overrides)))


def test_adb_primitives_through_the_real_client(adb_device, adb_server, tmp_path):
    profile = _phone(adb_device, adb_server, tmp_path)
    src = tmp_path / "payload.bin"
    src.write_bytes(os.urandom(700_000))  # several WRTE packets and sync DATA chunks
    remote = str(adb_device.root / "data/local/tmp/payload.bin")
    with AdbTransport(profile) as t:
        check_transport_contract(t, src, remote, tmp_path, str(adb_device.root))


def test_android_path_with_benchmark_model_end_to_end(adb_device, adb_server, tmp_path, lenet_exports):
    binary = standin_binary(tmp_path)
    profile = _phone(adb_device, adb_server, tmp_path, benchmark_binary=str(binary))
    models = [
        ModelFile("onnx_fp32", lenet_exports["onnx_fp32"]),
        ModelFile("tflite_fp32", lenet_exports["tflite_fp32"]),
    ]
    rows = benchmark_files(profile, models, FAST)
    assert rows[0]["skipped"] == "no onnxruntime_perf_test binary for loopback-phone (pass --perf-test-binary)"
    row = rows[1]
    assert row["tool"] == "benchmark_model" and row["runtime"] == "litert" and row["runs"] == 20
    assert 0 < row["min_ms"] <= row["median_ms"] <= row["max_ms"]
    assert row["init_ms"] > 0 and row["first_run_ms"] > 0
    # Only the content-addressed binary cache stays on the device.
    cached = _files(adb_device.root)
    assert len(cached) == 1 and cached[0].startswith("data/local/tmp/edgeprune/bin/benchmark_model-")
    # A second run reuses the cached binary (a push would replace its inode).
    inode = (adb_device.root / cached[0]).stat().st_ino
    benchmark_files(profile, models[1:], FAST)
    assert (adb_device.root / cached[0]).stat().st_ino == inode


def test_onnx_on_a_phone_through_onnxruntime_perf_test(adb_device, adb_server, tmp_path, lenet_exports):
    profile = _phone(
        adb_device,
        adb_server,
        tmp_path,
        benchmark_binary=str(standin_binary(tmp_path)),
        perf_test_binary=str(standin_binary(tmp_path, "onnxruntime_perf_test")),
    )
    models = [ModelFile(k, lenet_exports[k]) for k in ("onnx_int8", "tflite_fp32")]
    rows = benchmark_files(profile, models, FAST)
    assert [(r["tool"], r["runtime"]) for r in rows] == [
        ("onnxruntime_perf_test", "onnxruntime"),
        ("benchmark_model", "litert"),
    ]
    onnx = rows[0]
    assert 0 < onnx["min_ms"] <= onnx["median_ms"] <= onnx["p90_ms"] <= onnx["max_ms"]
    assert onnx["init_ms"] > 0 and onnx["peak_rss_mb"] > 0
    cached = sorted(Path(f).name.rsplit("-", 1)[0] for f in _files(adb_device.root))
    assert cached == ["benchmark_model", "onnxruntime_perf_test"]


def test_affinity_mask_is_applied_with_taskset(adb_device, adb_server, tmp_path, lenet_exports):
    profile = _phone(adb_device, adb_server, tmp_path, benchmark_binary=str(standin_binary(tmp_path)), affinity="1")
    rows = benchmark_files(profile, [ModelFile("tflite_fp32", lenet_exports["tflite_fp32"])], FAST)
    assert rows[0]["median_ms"] > 0


def test_missing_benchmark_binary_is_explained(adb_device, adb_server, tmp_path, lenet_exports):
    profile = _phone(adb_device, adb_server, tmp_path)
    with pytest.raises(DeviceError, match="no binary was given.*--benchmark-binary"):
        benchmark_files(profile, [ModelFile("m", lenet_exports["tflite_fp32"])], FAST)
    options = BenchOptions(benchmark_binary=str(tmp_path / "nowhere" / "benchmark_model"))
    with pytest.raises(DeviceError, match="benchmark_model binary .*nowhere/benchmark_model does not exist"):
        benchmark_files(profile, [ModelFile("m", lenet_exports["tflite_fp32"])], options)


def test_binary_for_another_architecture_is_not_executable(adb_device, adb_server, tmp_path, lenet_exports):
    profile = _phone(adb_device, adb_server, tmp_path, benchmark_binary=str(foreign_elf(tmp_path)))
    with pytest.raises(DeviceError, match="benchmark_model is not executable on loopback-phone.*Exec format error"):
        benchmark_files(profile, [ModelFile("m", lenet_exports["tflite_fp32"])], FAST)
    assert _files(adb_device.root) == []  # the useless binary is not kept in the cache


def test_dropped_connection_mid_push_is_retried(adb_device, adb_server, tmp_path, lenet_exports):
    profile = _phone(adb_device, adb_server, tmp_path, benchmark_binary=str(standin_binary(tmp_path)))
    adb_device.faults.drop_pushes = 1
    rows = benchmark_files(profile, [ModelFile("tflite_fp32", lenet_exports["tflite_fp32"])], FAST)
    assert adb_device.faults.drop_pushes == 0 and rows[0]["median_ms"] > 0
    assert all("/bin/" in f for f in _files(adb_device.root))


def test_connection_that_keeps_dropping_fails_cleanly(adb_device, adb_server, tmp_path, lenet_exports):
    profile = _phone(adb_device, adb_server, tmp_path, benchmark_binary=str(standin_binary(tmp_path)))
    adb_device.faults.drop_pushes = 3  # the binary upload breaks off on every attempt
    with pytest.raises(ConnectionLost, match="dropped while pushing benchmark_model"):
        benchmark_files(profile, [ModelFile("tflite_fp32", lenet_exports["tflite_fp32"])], FAST)
    assert _files(adb_device.root) == []  # no partial binary, no run directory


def test_unreachable_phone(adb_server, tmp_path, lenet_exports):
    closed = AdbPeer(tmp_path / "nothing")  # a serial whose port nobody listens on
    closed.port = free_port()
    profile = _phone(closed, adb_server, tmp_path, benchmark_binary=str(standin_binary(tmp_path)))
    with pytest.raises(Unreachable, match="adb cannot connect to 127.0.0.1:"):
        benchmark_files(profile, [ModelFile("m", lenet_exports["tflite_fp32"])], FAST)
    closed.listener.close()


def test_unauthorized_phone_is_an_auth_failure(tmp_path, adb_server, lenet_exports):
    with AdbPeer(tmp_path / "android", faults=Faults(unauthorized=True)) as peer:
        profile = _phone(peer, adb_server, tmp_path, benchmark_binary=str(standin_binary(tmp_path)))
        try:
            with pytest.raises(AuthFailed, match="not authorised this computer.*Allow USB debugging"):
                benchmark_files(profile, [ModelFile("m", lenet_exports["tflite_fp32"])], FAST)
        finally:
            subprocess.run(["adb", "-P", str(adb_server), "disconnect", peer.serial], capture_output=True)


def test_timeout_kills_benchmark_model_on_the_phone(adb_device, adb_server, tmp_path, lenet_exports):
    profile = _phone(adb_device, adb_server, tmp_path, benchmark_binary=str(standin_binary(tmp_path)))
    options = BenchOptions(runs=50_000_000, warmup=0, timeout_s=3.0, retries=1)
    with pytest.raises(CommandTimeout, match="exceeded its 3 s limit and was killed"):
        benchmark_files(profile, [ModelFile("tflite_fp32", lenet_exports["tflite_fp32"])], options)
    assert all("/bin/" in f for f in _files(adb_device.root))  # the run directory is gone


def test_phone_with_too_little_space(adb_device, adb_server, tmp_path, lenet_exports):
    fake_bin = tmp_path / "fakebin"
    fake_bin.mkdir()
    (fake_bin / "df").write_text(
        "#!/bin/sh\necho 'Filesystem 1K-blocks Used Available Use% Mounted on'\n"
        "echo '/dev/block/dm-5 52000000 51998000 2000 100% /data'\n"
    )
    (fake_bin / "df").chmod(0o755)
    adb_device.faults.env["PATH"] = f"{fake_bin}:{os.environ['PATH']}"
    profile = _phone(adb_device, adb_server, tmp_path, benchmark_binary=str(standin_binary(tmp_path)))
    with pytest.raises(NoSpace, match=r"has 2\.0 MiB free .* but the benchmark needs"):
        benchmark_files(profile, [ModelFile("m", lenet_exports["tflite_fp32"])], FAST)
    assert _files(adb_device.root) == []


def test_bench_command_on_a_phone(adb_device, adb_server, tmp_path, lenet_exports, runner, cli):
    profile = adb_profile(adb_device, adb_server, tmp_path / "phone.toml")
    result = runner.invoke(
        cli,
        [
            "bench",
            str(lenet_exports["tflite_fp32"]),
            "--target",
            str(profile),
            "--benchmark-binary",
            str(standin_binary(tmp_path)),
            "--runs",
            "10",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "model.tflite" in result.output and "litert benchmark_model" in result.output
    missing = runner.invoke(cli, ["bench", str(lenet_exports["tflite_fp32"]), "--target", str(profile)])
    assert missing.exit_code == 2
    assert "error: loopback-phone benchmarks with benchmark_model, and no binary was given" in missing.output


def test_devices_command_checks_a_phone(adb_device, adb_server, tmp_path, runner, cli, monkeypatch):
    monkeypatch.setenv("EDGEPRUNE_DEVICES", str(adb_profile(adb_device, adb_server, tmp_path / "phone.toml")))
    result = runner.invoke(cli, ["devices", "loopback-phone", "--json"])
    assert result.exit_code == 0, result.output
    phone = json.loads(result.stdout)["devices"][0]
    assert phone["reachable"] is True and phone["address"] == f"adb {adb_device.serial}"
    adb_device.stop()
    subprocess.run(["adb", "-P", str(adb_server), "disconnect", adb_device.serial], capture_output=True)
    gone = json.loads(runner.invoke(cli, ["devices", "loopback-phone", "--json"]).stdout)["devices"][0]
    assert gone["reachable"] is False and "adb cannot connect" in gone["detail"]
