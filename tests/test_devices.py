"""Device profiles, the host path, the bench stage in the pipeline and the bench/devices commands."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from edgeprune.artifact import Artifact, StageContext
from edgeprune.cli.bench import STAGE
from edgeprune.devices import stage
from edgeprune.devices.bench import BenchOptions, ModelFile, benchmark_files
from edgeprune.devices.profiles import list_profiles, load_profile, with_overrides
from edgeprune.devices.transport import (
    CommandResult,
    ConnectionLost,
    LocalTransport,
    Unreachable,
    parse_df_free,
    with_retries,
)
from edgeprune.errors import DeviceError
from edgeprune.pipeline import run_pipeline
from edgeprune.testing.sshd import write_profile

pytest_plugins = ["support.fixtures"]

BUILTIN = {"host", "rpi3", "rpi3-32bit", "huawei-p20", "xiaomi-mi9", "galaxy-tab-s6-lite", "android-arm64"}
FAST = BenchOptions(runs=20, warmup=2)


@pytest.fixture(autouse=True)
def _only_builtin_profiles(monkeypatch, tmp_path):
    """Keep the developer's own ~/.config profiles out of these tests."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("EDGEPRUNE_DEVICES", raising=False)


def test_builtin_profiles_describe_the_seed_devices():
    profiles = {p.name: p for p in list_profiles()}
    assert set(profiles) == BUILTIN
    for phone in ("huawei-p20", "xiaomi-mi9", "galaxy-tab-s6-lite"):
        p = profiles[phone]
        assert (p.transport, p.harness, p.affinity, p.threads) == ("adb", "benchmark_model", "f0", 4)
        assert p.workdir == "/data/local/tmp/edgeprune" and p.arch == "arm64-v8a"
    pi, pi32 = profiles["rpi3"], profiles["rpi3-32bit"]
    assert (pi.transport, pi.arch, pi.runtimes) == ("ssh", "aarch64", ("litert", "onnxruntime"))
    assert pi32.runtimes == ("tflite-runtime",) and pi32.ssh == pi.ssh  # inherits the connection
    assert not pi32.runs_format(".onnx") and pi32.runs_format(".tflite")
    assert profiles["host"].transport == "local"


def test_user_profiles_from_config_dir_and_env_override_builtins(tmp_path, monkeypatch):
    config = tmp_path / "config" / "edgeprune" / "devices"
    config.mkdir(parents=True)
    write_profile(config / "lab-pi.toml", {"extends": "rpi3", "ssh": {"host": "10.0.0.7"}})
    extra = tmp_path / "extra"
    extra.mkdir()
    write_profile(extra / "phone.toml", {"extends": "android-arm64", "name": "xiaomi-mi9", "description": "mine"})
    monkeypatch.setenv("EDGEPRUNE_DEVICES", str(extra))
    lab = load_profile("lab-pi")
    assert lab.ssh.host == "10.0.0.7" and lab.ssh.user == "pi" and lab.threads == 4
    shadow = load_profile("xiaomi-mi9")  # $EDGEPRUNE_DEVICES wins over the package
    assert shadow.description == "mine" and shadow.affinity == ""
    direct = write_profile(tmp_path / "mine.toml", {"extends": "huawei-p20", "adb": {"serial": "abc123"}})
    mine = load_profile(str(direct))
    assert mine.name == "mine" and mine.adb.serial == "abc123" and mine.affinity == "f0"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"transport": "telnet"}, "transport 'telnet' is unknown"),
        ({"runtimes": ["tensorrt"]}, "runtime 'tensorrt' is unknown"),
        ({"thread": 4}, "unknown key 'thread'"),
        ({"ssh": {"hostname": "x"}}, "unknown key ssh.'hostname'"),
        ({"extends": "nokia-3310"}, "extends unknown profile 'nokia-3310'"),
        ({"transport": "ssh", "workdir": "/tmp/x"}, "needs \\[ssh\\] host"),
        ({"affinity": "big"}, "not a hexadecimal CPU mask"),
    ],
)
def test_bad_profiles_are_rejected_with_the_fix(tmp_path, fields, message):
    path = write_profile(tmp_path / "bad.toml", {"name": "bad", **fields})
    with pytest.raises(DeviceError, match=message):
        load_profile(str(path))


def test_unknown_target_and_broken_toml(tmp_path):
    with pytest.raises(DeviceError, match="unknown target 'pi5'.*choose one of android-arm64"):
        load_profile("pi5")
    broken = tmp_path / "broken.toml"
    broken.write_text("name = \n")
    with pytest.raises(DeviceError, match="is not valid TOML"):
        load_profile(str(broken))
    with pytest.raises(DeviceError, match="does not exist"):
        load_profile(str(tmp_path / "missing.toml"))


@pytest.mark.parametrize(
    ("text", "free"),
    [
        ("Filesystem 1K-blocks Used Available Use% Mounted on\n/dev/root 14800000 4000000 10000000 29% /\n", 10000000),
        (
            "Filesystem     1K-blocks   Used Available Use% Mounted on\n"
            "/dev/mapper/very-long-volume-group-name-root\n   14800000 4000000 123456  97% /\n",
            123456,
        ),
        (
            "Filesystem               Size     Used     Free   Blksize\n"
            "/data                    25.0G    20.0G     5.5G   4096\n",
            int(5.5 * (1 << 20)),
        ),
    ],
)
def test_free_space_from_coreutils_busybox_and_old_android_df(text, free):
    assert parse_df_free(text) == free * 1024


def test_retries_only_what_a_retry_can_cure():
    calls, recoveries = [], []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionLost("dropped", "retry")
        return "done"

    assert with_retries(flaky, 3, recover=lambda: recoveries.append(1), backoff_s=0) == "done"
    assert (len(calls), len(recoveries)) == (3, 2)

    def refused() -> None:
        calls.append(1)
        raise DeviceError("bad key", "fix it")

    calls.clear()
    with pytest.raises(DeviceError, match="bad key"):
        with_retries(refused, 5, backoff_s=0)
    assert len(calls) == 1
    calls.clear()
    with pytest.raises(Unreachable):
        with_retries(lambda: calls.append(1) or (_ for _ in ()).throw(Unreachable("down", "x")), 2, backoff_s=0)
    assert len(calls) == 2


def test_host_path_runs_the_harness_in_a_subprocess(lenet_exports):
    rows = benchmark_files(load_profile("host"), [ModelFile(k, p) for k, p in lenet_exports.items()], FAST)
    assert [r["runtime"] for r in rows] == ["onnxruntime", "onnxruntime", "litert"]
    own_peak_mb = (
        int(next(ln for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith("VmHWM")).split()[1])
        / 1024
    )
    for r in rows:
        assert r["tool"] == "runtime_bench" and r["median_ms"] > 0
        # The harness's own peak, not this (torch-laden) parent's: RSS is measured in the child.
        assert 0 < r["peak_rss_mb"] < own_peak_mb


def test_models_to_bench_orders_dense_first_and_ignores_other_files(tmp_path):
    names = ["model_int8.tflite", "model.onnx", "dense.onnx", "model.nnr", "model_int8.onnx"]
    files = dict(
        zip(
            ["tflite_int8", "onnx_fp32", "dense_onnx_fp32", "nnr", "onnx_int8"],
            [tmp_path / n for n in names],
            strict=True,
        )
    )
    assert [m.key for m in stage.models_to_bench(files)] == ["dense_onnx_fp32", "onnx_fp32", "onnx_int8", "tflite_int8"]


def test_headline_latency_prefers_int8_in_the_devices_first_runtime():
    rows = [
        {"model": "onnx_fp32", "median_ms": 4.0},
        {"model": "onnx_int8", "median_ms": 2.0},
        {"model": "tflite_int8", "median_ms": 1.0},
        {"model": "tflite_fp32", "median_ms": None},
    ]
    assert stage.headline_latency(rows, load_profile("xiaomi-mi9")) == 1.0
    onnx_first = load_profile("host").__class__(name="x", runtimes=("onnxruntime", "litert"))
    assert stage.headline_latency(rows, onnx_first) == 2.0
    assert stage.headline_latency(rows[:1], onnx_first) == 4.0


def test_bench_stage_in_the_pipeline_writes_table_plot_and_json(trained_lenet5, lenet_exports, tmp_path):
    art = Artifact(
        model=trained_lenet5.model,
        example_input=trained_lenet5.example_input,
        data=trained_lenet5.data,
        files=dict(lenet_exports),
        meta=dict(trained_lenet5.meta),
    )
    ctx = StageContext(out_dir=tmp_path, options={"bench": FAST}, target="host")
    _, report = run_pipeline(art, ctx, ["load", "bench"])
    bench = report.stage("bench")
    assert [r["model"] for r in bench.metrics["results"]] == ["onnx_fp32", "onnx_int8", "tflite_fp32"]
    int8 = next(r for r in bench.metrics["results"] if r["model"] == "onnx_int8")
    assert bench.metrics["latency_ms"] == int8["median_ms"]  # no tflite_int8 here: the ONNX int8 model
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["results"] == bench.metrics["results"] and saved["target"] == "host"
    written = report.write(tmp_path)
    assert written["plot_latency"].stat().st_size > 0
    assert "### bench: results" in (tmp_path / "report.md").read_text()


def test_bench_stage_without_exports_says_what_to_run(trained_lenet5, tmp_path):
    art = Artifact(model=trained_lenet5.model, example_input=trained_lenet5.example_input)
    with pytest.raises(DeviceError, match="no exported .onnx or .tflite.*run the export stage"):
        stage.run(art, StageContext(out_dir=tmp_path))


def _compress_bench_options(args: list[str]):  # noqa: ANN202 - BenchOptions
    """Parse ``args`` with the bench options ``compress`` gets; return what its builder makes of them."""
    seen = {}

    @click.command()
    @STAGE.compress_options
    @click.option("--other", type=int)
    def command(**kwargs):  # noqa: ANN003, ANN202
        seen["stage"], seen["options"] = STAGE.options_from(kwargs)
        seen["left"] = kwargs

    result = CliRunner().invoke(command, args)
    assert result.exit_code == 0, result.output
    return seen


def test_compress_options_become_bench_options():
    args = ["--bench-threads", "2", "--bench-runs", "7", "--bench-timeout", "30", "--benchmark-binary", "/x/bm"]
    seen = _compress_bench_options([*args, "--other", "1"])
    options = seen["options"]
    assert seen["stage"] == "bench" and seen["left"] == {"other": 1}
    assert (options.threads, options.runs, options.warmup, options.timeout_s, options.benchmark_binary) == (
        2,
        7,
        10,
        30.0,
        "/x/bm",
    )
    assert _compress_bench_options([])["options"] == BenchOptions()


def test_bench_command_on_the_host(lenet_exports, runner, cli, tmp_path):
    out = tmp_path / "r.json"
    result = runner.invoke(cli, ["bench", str(lenet_exports["onnx_int8"]), "--runs", "10", "--json", "-o", str(out)])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed["results"][0]["model"] == "model_int8.onnx" and printed["latency_ms"] > 0
    assert json.loads(out.read_text()) == printed
    again = runner.invoke(cli, ["bench", str(lenet_exports["onnx_int8"]), "-o", str(out)])
    assert again.exit_code == 2 and "already exists" in again.output


def test_bench_command_errors_are_one_line(lenet_exports, runner, cli):
    result = runner.invoke(cli, ["bench", str(lenet_exports["onnx_int8"]), "--target", "pi5"])
    assert result.exit_code == 2
    assert result.output.startswith("error: unknown target 'pi5'") and "Traceback" not in result.output


def test_devices_command_lists_every_profile(runner, cli):
    result = runner.invoke(cli, ["devices", "--no-check", "--json"])
    assert result.exit_code == 0, result.output
    listed = {d["name"]: d for d in json.loads(result.stdout)["devices"]}
    assert set(listed) == BUILTIN and listed["rpi3"]["address"] == "pi@raspberrypi.local:22"
    checked = runner.invoke(cli, ["devices", "host"])
    assert checked.exit_code == 0 and "reachable" in checked.output and "unreachable" not in checked.output


class _InterruptedLocal(LocalTransport):
    """Starts the benchmark, then the user presses Ctrl-C while it runs."""

    started: subprocess.Popen | None = None

    def execute(self, command: str, timeout: float) -> CommandResult:
        if "-m runtime_bench run" not in command:
            return super().execute(command, timeout)
        self.started = subprocess.Popen(
            ["/bin/sh", "-c", command], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while not list(Path(self.profile.workdir).glob("run-*/.pid")) and time.monotonic() < deadline:
            time.sleep(0.02)
        raise KeyboardInterrupt


def test_interrupted_benchmark_is_killed_and_cleaned_up(lenet_exports, tmp_path):
    profile = with_overrides(load_profile("host"), workdir=str(tmp_path / "device"))
    transport = _InterruptedLocal(profile)
    options = BenchOptions(runs=50_000_000, warmup=0)
    with pytest.raises(KeyboardInterrupt):
        benchmark_files(profile, [ModelFile("m", lenet_exports["onnx_fp32"])], options, transport=transport)
    assert transport.started.wait(timeout=10) == -signal.SIGKILL
    assert list((tmp_path / "device").iterdir()) == []


@pytest.mark.slow
def test_compress_runs_export_then_bench_from_the_cli(runner, cli, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(
        cli,
        [
            "compress",
            "--example",
            "lenet5",
            "--stages",
            "export,bench",
            "--bench-runs",
            "20",
            "--bench-warmup",
            "2",
            "-o",
            str(out),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    bench = next(s for s in json.loads(result.stdout)["stages"] if s["name"] == "bench")
    models = [r["model"] for r in bench["metrics"]["results"]]
    assert models == ["onnx_fp32", "onnx_int8", "tflite_fp32", "tflite_int8"]
    assert all(r["runs"] == 20 and r["median_ms"] > 0 for r in bench["metrics"]["results"])
    tflite_int8 = bench["metrics"]["results"][3]["median_ms"]
    assert bench["metrics"]["latency_ms"] == tflite_int8  # the host lists LiteRT first
    assert (out / "latency.png").stat().st_size > 0 and (out / "bench.json").exists()
