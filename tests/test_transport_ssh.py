"""SSH transport and the Pi path end to end against a real OpenSSH server on 127.0.0.1.

The "Raspberry Pi" is this machine behind sshd: the bench copies runtime_bench over SFTP, runs it
with the device's Python through an exec channel and reads its JSON, exactly as on a real board.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.fault_proxy import DroppingProxy
from support.helpers import check_transport_contract, free_port

from edgeprune.devices.bench import BenchOptions, ModelFile, benchmark_files
from edgeprune.devices.profiles import load_profile
from edgeprune.devices.ssh import SshTransport
from edgeprune.devices.transport import AuthFailed, CommandTimeout, ConnectionLost, NoSpace, Unreachable
from edgeprune.errors import DeviceError
from edgeprune.testing.sshd import SshServer, ssh_profile, write_profile

pytest_plugins = ["support.fixtures"]
pytestmark = pytest.mark.network

FAST = BenchOptions(runs=20, warmup=2, retries=3, retry_backoff_s=0.05)


def _device_files(device: Path) -> list[str]:
    work = device / "work"
    return sorted(str(p.relative_to(work)) for p in work.rglob("*")) if work.exists() else []


def test_transport_primitives_against_real_sshd(sshd, tmp_path):
    profile = load_profile(str(ssh_profile(sshd, tmp_path / "pi")))
    src = tmp_path / "payload.bin"
    src.write_bytes(os.urandom(300_000))
    remote = str(tmp_path / "pi" / "payload.bin")
    (tmp_path / "pi").mkdir()
    with SshTransport(profile) as t:
        check_transport_contract(t, src, remote, tmp_path, str(tmp_path))
        assert t.exists(remote) and not t.exists(remote, executable=True)


def test_pi_path_benchmarks_every_model_end_to_end(sshd, tmp_path, lenet_exports):
    profile = load_profile(str(ssh_profile(sshd, tmp_path / "pi")))
    models = [ModelFile(k, p) for k, p in lenet_exports.items()]
    rows = benchmark_files(profile, models, FAST)
    assert [r["model"] for r in rows] == list(lenet_exports)
    for row in rows:
        assert row["tool"] == "runtime_bench" and row["runs"] == 20
        assert row["runtime"] == ("onnxruntime" if row["file"].endswith(".onnx") else "litert")
        assert 0 < row["min_ms"] <= row["median_ms"] <= row["p90_ms"] <= row["max_ms"]
        assert row["init_ms"] > 0 and row["peak_rss_mb"] > 0
    assert _device_files(tmp_path / "pi") == []  # the run directory is gone


def test_models_without_a_runtime_on_the_device_are_skipped(sshd, tmp_path, lenet_exports):
    profile = load_profile(str(ssh_profile(sshd, tmp_path / "pi", runtimes=["litert"])))
    rows = benchmark_files(
        profile,
        [ModelFile("onnx_fp32", lenet_exports["onnx_fp32"]), ModelFile("tflite_fp32", lenet_exports["tflite_fp32"])],
        FAST,
    )
    assert rows[0]["skipped"] == "loopback-pi has no runtime for .onnx files" and rows[0]["median_ms"] is None
    assert rows[1]["median_ms"] > 0


def test_unreachable_host_is_retried_then_reported(sshd, tmp_path, lenet_exports):
    profile = load_profile(str(ssh_profile(sshd, tmp_path / "pi", port=free_port())))
    start = time.monotonic()
    with pytest.raises(Unreachable, match="cannot reach loopback-pi at 127.0.0.1:.*Connection refused"):
        benchmark_files(profile, [ModelFile("m", lenet_exports["tflite_fp32"])], FAST)
    assert time.monotonic() - start >= 0.05 + 0.1  # two back-offs: three attempts were made


def test_wrong_key_is_an_auth_failure_without_retries(sshd, tmp_path, lenet_exports):
    other_key = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other_key)], check=True)
    profile = load_profile(str(ssh_profile(sshd, tmp_path / "pi", ssh={"key": str(other_key)})))
    with pytest.raises(AuthFailed, match="refused SSH key authentication.*ssh-copy-id"):
        benchmark_files(profile, [ModelFile("m", lenet_exports["tflite_fp32"])], FAST)


def test_unknown_host_key_is_refused(sshd, tmp_path):
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    profile = load_profile(str(ssh_profile(sshd, tmp_path / "pi", ssh={"known_hosts": str(empty)})))
    with pytest.raises(AuthFailed, match="not in known_hosts.*ssh-keyscan -p"):
        SshTransport(profile).connect()


def test_changed_host_key_is_refused(sshd, tmp_path):
    impostor = tmp_path / "impostor"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(impostor)], check=True)
    kind, key = impostor.with_suffix(".pub").read_text().split()[:2]
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{sshd.port} {kind} {key}\n")
    profile = load_profile(str(ssh_profile(sshd, tmp_path / "pi", ssh={"known_hosts": str(known)})))
    with pytest.raises(AuthFailed, match="has changed"):
        SshTransport(profile).connect()


def test_connection_dropped_mid_push_is_retried(sshd, tmp_path, lenet_exports):
    proxy = DroppingProxy(sshd.port, cut_after=200_000, drops=1)  # cuts inside the 460 kB model upload
    try:
        profile = load_profile(str(ssh_profile(sshd, tmp_path / "pi", port=proxy.port)))
        rows = benchmark_files(profile, [ModelFile("tflite_fp32", lenet_exports["tflite_fp32"])], FAST)
    finally:
        proxy.close()
    assert proxy.cut_connections == 1
    assert rows[0]["median_ms"] > 0
    assert _device_files(tmp_path / "pi") == []


def test_connection_that_keeps_dropping_fails_cleanly(sshd, tmp_path, lenet_exports):
    proxy = DroppingProxy(sshd.port, cut_after=200_000, drops=3)
    try:
        profile = load_profile(str(ssh_profile(sshd, tmp_path / "pi", port=proxy.port)))
        with pytest.raises(ConnectionLost, match="dropped while pushing model.tflite"):
            benchmark_files(profile, [ModelFile("tflite_fp32", lenet_exports["tflite_fp32"])], FAST)
    finally:
        proxy.close()
    assert proxy.cut_connections == 3
    assert _device_files(tmp_path / "pi") == []  # cleaned up over the fourth, intact connection


def test_timeout_kills_the_benchmark_on_the_device(sshd, tmp_path, lenet_exports):
    profile = load_profile(str(ssh_profile(sshd, tmp_path / "pi")))
    options = BenchOptions(runs=50_000_000, warmup=0, timeout_s=2.0, retries=1)
    with pytest.raises(CommandTimeout, match="model.onnx on loopback-pi exceeded its 2 s limit and was killed"):
        benchmark_files(profile, [ModelFile("onnx_fp32", lenet_exports["onnx_fp32"])], options)
    assert _device_files(tmp_path / "pi") == []


def test_timed_out_command_does_not_survive_on_the_device(sshd, tmp_path):
    """Closing the SSH channel leaves the process running; the transport kills it by its recorded PID."""
    profile = load_profile(str(ssh_profile(sshd, tmp_path / "pi")))
    pid_file = tmp_path / "bench.pid"
    with SshTransport(profile) as t, pytest.raises(CommandTimeout):
        t.run("sleep 600", 1.0, str(tmp_path), str(pid_file))
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has already died


def test_missing_python_on_the_device(sshd, tmp_path, lenet_exports):
    profile = load_profile(str(ssh_profile(sshd, tmp_path / "pi", python="/opt/no-such/python3")))
    with pytest.raises(DeviceError, match="python was not found on loopback-pi"):
        benchmark_files(profile, [ModelFile("m", lenet_exports["tflite_fp32"])], FAST)
    assert _device_files(tmp_path / "pi") == []


def test_device_without_the_runtime_reports_what_to_install(sshd, tmp_path, lenet_exports):
    """A 32-bit Pi profile (tflite-runtime) on a device where only ai-edge-litert is installed."""
    profile = load_profile(str(ssh_profile(sshd, tmp_path / "pi", runtimes=["tflite-runtime"])))
    with pytest.raises(DeviceError, match="cannot import tflite-runtime.*pip install tflite-runtime"):
        benchmark_files(profile, [ModelFile("m", lenet_exports["tflite_fp32"])], FAST)


def test_too_little_space_is_refused_before_pushing(tmp_path, lenet_exports):
    """A nearly full device: its sshd puts a df first on the PATH that reports 1 MiB free."""
    fake_bin = tmp_path / "fakebin"
    fake_bin.mkdir()
    df = fake_bin / "df"
    df.write_text(
        "#!/bin/sh\necho 'Filesystem 1K-blocks Used Available Use% Mounted on'\n"
        "echo '/dev/mmcblk0p2 14800000 14799000 1024 100% /'\n"
    )
    df.chmod(0o755)
    full = SshServer(tmp_path / "sshd", env={"PATH": f"{fake_bin}:/usr/local/bin:/usr/bin:/bin"}).start()
    try:
        profile = load_profile(str(ssh_profile(full, tmp_path / "pi")))
        with pytest.raises(NoSpace, match="has 1.0 MiB free in .* but the benchmark needs"):
            benchmark_files(profile, [ModelFile("m", lenet_exports["tflite_fp32"])], FAST)
    finally:
        full.stop()
    assert _device_files(tmp_path / "pi") == []


def test_profile_written_by_a_user_extends_a_builtin(sshd, tmp_path, lenet_exports, monkeypatch):
    """~/.config-style directory: `extends = "rpi3"` plus the address is all a user writes."""
    config = tmp_path / "profiles"
    config.mkdir()
    write_profile(
        config / "my-pi.toml",
        {
            "extends": "rpi3",
            "name": "my-pi",
            "python": sys.executable,
            "threads": 1,
            "workdir": str(tmp_path / "pi" / "work"),
            "ssh": {
                "host": "127.0.0.1",
                "port": sshd.port,
                "user": sshd.user,
                "key": str(sshd.client_key),
                "known_hosts": str(sshd.known_hosts),
            },
        },
    )
    monkeypatch.setenv("EDGEPRUNE_DEVICES", str(config))
    profile = load_profile("my-pi")
    assert profile.runtimes == ("litert", "onnxruntime") and profile.timeout_s == 900  # inherited from rpi3
    rows = benchmark_files(profile, [ModelFile("tflite_fp32", lenet_exports["tflite_fp32"])], FAST)
    assert rows[0]["median_ms"] > 0


def test_bench_command_over_ssh_writes_json(sshd, tmp_path, lenet_exports, runner, cli):
    profile = ssh_profile(sshd, tmp_path / "pi")
    out = tmp_path / "results.json"
    result = runner.invoke(
        cli,
        [
            "bench",
            str(lenet_exports["onnx_int8"]),
            str(lenet_exports["tflite_fp32"]),
            "--target",
            str(profile),
            "--runs",
            "10",
            "--warmup",
            "1",
            "-o",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "model_int8.onnx" in result.output and "litert" in result.output
    saved = json.loads(out.read_text())
    assert saved["target"] == "loopback-pi" and len(saved["results"]) == 2
    assert saved["latency_ms"] == saved["results"][0]["median_ms"]  # the int8 model is the headline


def test_devices_command_checks_reachability(sshd, tmp_path, runner, cli, monkeypatch):
    up = ssh_profile(sshd, tmp_path / "pi")
    down = ssh_profile(sshd, tmp_path / "pi2", name="dead-pi", port=free_port())
    monkeypatch.setenv("EDGEPRUNE_DEVICES", os.pathsep.join([str(up), str(down)]))
    result = runner.invoke(cli, ["devices", "loopback-pi", "dead-pi", "--timeout", "2", "--json"])
    assert result.exit_code == 0, result.output
    status = {d["name"]: d for d in json.loads(result.stdout)["devices"]}
    assert status["loopback-pi"]["reachable"] is True and "x86_64" in status["loopback-pi"]["detail"]
    assert status["dead-pi"]["reachable"] is False and "Connection refused" in status["dead-pi"]["detail"]
