"""Benchmark model files on a device profile through its transport.

One session per call: connect (with retries), check the free space, create a private run directory
on the device, copy the harness (``runtime_bench``, for devices with Python) or make sure the cached
native tools are there (Android: ``benchmark_model``, ``onnxruntime_perf_test``), then for each model
push it, run it with a time limit, parse the result and delete the model again. Whatever happens,
the run directory is removed before returning; only the content-addressed cache of native tools
stays, on purpose.
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
import shlex
import sys
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import runtime_bench
from edgeprune.devices.profiles import DeviceProfile
from edgeprune.devices.transport import (
    CommandResult,
    CommandTimeout,
    NoSpace,
    Transport,
    default_workdir,
    open_transport,
    with_retries,
)
from edgeprune.errors import DeviceError
from edgeprune.options import cli
from runtime_bench.__main__ import HARNESS_ERROR_EXIT
from runtime_bench.harness import ONNX_RUNTIMES, TFLITE_RUNTIMES
from runtime_bench.parsers import ParseError, parse_benchmark_model, parse_perf_test

log = logging.getLogger("edgeprune.devices")

# Free space demanded beyond the files themselves: logs, the runtime's scratch files, the pid file.
SPACE_MARGIN_BYTES = 4 << 20


@dataclass
class BenchOptions:
    """How to benchmark; ``None`` means "use the device profile's value"."""

    threads: int | None = field(default=None, metadata=cli("Runtime threads.", low=1, default_text="the profile's"))
    runs: int = field(default=100, metadata=cli("Timed runs per model.", low=1))
    warmup: int = field(default=10, metadata=cli("Untimed warm-up runs.", low=0))
    timeout_s: float | None = field(
        default=None,
        metadata=cli(
            "Seconds allowed per model before it is killed.",
            flag="timeout",
            low=0,
            low_open=True,
            default_text="the profile's",
        ),
    )
    benchmark_binary: str | None = field(
        default=None,
        metadata=cli(
            "Host path of TFLite's benchmark_model for Android targets (pushed once, cached on the device).",
            prefixed=False,
        ),
    )
    perf_test_binary: str | None = field(
        default=None,
        metadata=cli(
            "Host path of onnxruntime_perf_test for Android targets, to benchmark .onnx files there too.",
            prefixed=False,
        ),
    )
    retries: int = field(default=3, metadata=cli("Attempts for connecting and transfers when the link drops.", low=1))
    retry_backoff_s: float = 0.5
    seed: int = 0


@dataclass(frozen=True)
class ModelFile:
    """A model to benchmark: ``key`` names it in the results (e.g. "tflite_int8")."""

    key: str
    path: Path


def _harness_files() -> list[tuple[Path, str]]:
    """The runtime_bench package as (host file, path relative to the run directory)."""
    package = Path(runtime_bench.__file__).parent
    return [(f, f"runtime_bench/{f.name}") for f in sorted(package.glob("*.py"))]


class DeviceSession:
    """A connected transport plus the private run directory that is always removed at the end."""

    def __init__(self, profile: DeviceProfile, options: BenchOptions, transport: Transport | None = None) -> None:
        self.profile = profile
        self.options = options
        self.transport = transport or open_transport(profile)
        self.workdir = default_workdir(profile)
        self.run_dir = posixpath.join(self.workdir, f"run-{uuid.uuid4().hex[:12]}")
        self.pid_file = posixpath.join(self.run_dir, ".pid")

    def retrying(self, action: Callable[[], Any]) -> Any:
        """Run ``action``, reconnecting and retrying when the link drops or the device is not up yet."""
        return with_retries(
            action, self.options.retries, recover=self.transport.reconnect, backoff_s=self.options.retry_backoff_s
        )

    def __enter__(self) -> DeviceSession:
        self.retrying(self.transport.connect)
        try:
            self.retrying(lambda: self.transport.make_dir(self.run_dir))
        except BaseException:
            self.transport.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self.transport.in_flight:  # e.g. Ctrl-C mid-benchmark: stop it on the device too
                self.transport.kill_recorded(self.transport.in_flight)
            self.retrying(lambda: self.transport.remove(self.run_dir))
        except DeviceError as error:
            log.warning("could not remove %s on %s: %s", self.run_dir, self.profile.name, error)
        finally:
            self.transport.close()

    def require_space(self, needed: int) -> None:
        free = self.retrying(lambda: self.transport.free_bytes(self.run_dir))
        if free < needed + SPACE_MARGIN_BYTES:
            raise NoSpace(
                f"{self.profile.name} has {free / (1 << 20):.1f} MiB free in {self.workdir} but the "
                f"benchmark needs {(needed + SPACE_MARGIN_BYTES) / (1 << 20):.1f} MiB",
                "free space on the device or set workdir in the profile to a larger disk",
            )

    def push(self, local: Path, remote: str) -> None:
        """Copy one file; a dropped link is retried from scratch (the device deletes partial files)."""
        self.retrying(lambda: self.transport.push(local, remote))

    def run(self, command: str, timeout: float) -> CommandResult:
        """Run a benchmark; if the link drops, stop the orphaned run on the device before repeating it."""

        def recover() -> None:
            self.transport.reconnect()
            if self.transport.in_flight:
                self.transport.kill_recorded(self.transport.in_flight)

        result = with_retries(
            lambda: self.transport.run(command, timeout, self.run_dir, self.pid_file),
            self.options.retries,
            recover=recover,
            backoff_s=self.options.retry_backoff_s,
        )
        if result.exit_code != 0:
            log.debug(
                "%s on %s exited %d\nstdout:\n%s\nstderr:\n%s",
                command,
                self.profile.name,
                result.exit_code,
                result.stdout,
                result.stderr,
            )
        return result


def _json_record(text: str) -> dict[str, Any] | None:
    """The JSON object a device printed, or None for anything else (device output is untrusted text)."""
    try:
        record = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return record if isinstance(record, dict) else None


def _tool_error(profile: DeviceProfile, tool: str, setting: str, model: str, result: CommandResult) -> DeviceError:
    """Translate a failed benchmark command into the reason and fix a user can act on."""
    if result.exit_code == 127:
        return DeviceError(
            f"{tool} was not found on {profile.name} ({result.last_error_line()})",
            f"install it on the device or set the profile's {setting}",
        )
    if result.exit_code == 126:
        return DeviceError(
            f"{tool} is not executable on {profile.name} ({result.last_error_line()})",
            f"use a build for {profile.arch or 'this device'} and a workdir that allows executables (not /sdcard)",
        )
    return DeviceError(
        f"benchmarking {model} on {profile.name} failed: {result.last_error_line()}",
        "run with -v to see the device's full output",
    )


def _common_row(model: ModelFile, threads: int, options: BenchOptions) -> dict[str, Any]:
    return {
        "model": model.key,
        "file": model.path.name,
        "size_bytes": model.path.stat().st_size,
        "threads": threads,
        "runs": options.runs,
    }


class _PythonHarness:
    """Devices with Python: copy runtime_bench and run ``python3 -m runtime_bench run``."""

    tool = "runtime_bench"

    def __init__(self, session: DeviceSession) -> None:
        self.session = session

    def prepare(self) -> None:
        self.session.retrying(
            lambda: self.session.transport.make_dir(posixpath.join(self.session.run_dir, "runtime_bench"))
        )
        for local, relative in _harness_files():
            self.session.push(local, posixpath.join(self.session.run_dir, relative))

    def payload_bytes(self) -> int:
        return sum(f.stat().st_size for f, _ in _harness_files())

    def command(self, remote_model: str, runtime: str, threads: int) -> str:
        p, o = self.session.profile, self.session.options
        python = p.python or (sys.executable if p.transport == "local" else "python3")
        args = [
            "-m",
            "runtime_bench",
            "run",
            remote_model,
            "--runtime",
            runtime,
            "--threads",
            str(threads),
            "--warmup",
            str(o.warmup),
            "--runs",
            str(o.runs),
            "--seed",
            str(o.seed),
        ]
        pin = f"taskset {p.affinity} " if p.affinity else ""
        return f"env PYTHONPATH=. {pin}{shlex.quote(python)} " + " ".join(shlex.quote(a) for a in args)

    def parse(self, model: ModelFile, result: CommandResult) -> dict[str, Any]:
        p = self.session.profile
        if result.exit_code == HARNESS_ERROR_EXIT:
            record = _json_record(result.stdout)
            reason = record.get("error") if record else result.last_error_line()
            raise DeviceError(
                f"runtime_bench on {p.name} cannot run {model.path.name}: {reason}",
                p.setup or "install numpy and a runtime on the device",
            )
        if result.exit_code != 0:
            if "No module named 'numpy'" in result.stderr:
                raise DeviceError(f"numpy is missing on {p.name}", p.setup or "pip install numpy on the device")
            raise _tool_error(p, "python", "python", model.path.name, result)
        lines = result.stdout.strip().splitlines()
        record = _json_record(lines[-1]) if lines else None
        if record is None:
            raise DeviceError(
                f"runtime_bench on {p.name} printed no result for {model.path.name}",
                "run `python3 -m runtime_bench run MODEL` on the device to see why",
            )
        return record


class _NativeTool(ABC):
    """A native benchmark binary (Android has no Python), pushed once and cached under its content hash.

    Subclasses name the tool, the option/profile field holding its host path, and how to call it
    and read its log.
    """

    tool = ""
    option = ""  # BenchOptions / DeviceProfile field with the host path of the binary
    flag = ""
    runtime = ""
    where_to_get = ""

    def __init__(self, session: DeviceSession) -> None:
        self.session = session
        p = session.profile
        configured = self.configured(session.options, p)
        if not configured:
            raise DeviceError(
                f"{p.name} benchmarks with {self.tool}, and no binary was given",
                f"pass {self.flag} PATH ({self.where_to_get}) or set {self.option} in the profile",
            )
        self.local = Path(configured).expanduser()
        if not self.local.is_file():
            raise DeviceError(f"{self.tool} binary {self.local} does not exist", f"check {self.flag}")
        digest = hashlib.sha256(self.local.read_bytes()).hexdigest()[:16]
        self.remote = posixpath.join(session.workdir, "bin", f"{self.tool}-{digest}")

    @classmethod
    def configured(cls, options: BenchOptions, profile: DeviceProfile) -> str:
        return getattr(options, cls.option) or getattr(profile, cls.option)

    def payload_bytes(self) -> int:
        return self.local.stat().st_size

    def prepare(self) -> None:
        t = self.session.transport
        if self.session.retrying(lambda: t.exists(self.remote, executable=True)):
            return
        # Upload beside the cache entry and rename: a broken-off push never poisons the cache.
        partial = posixpath.join(self.session.run_dir, f"{self.tool}.part")
        self.session.retrying(lambda: t.make_dir(posixpath.dirname(self.remote)))
        self.session.push(self.local, partial)
        self.session.retrying(
            lambda: t.check(
                f"chmod 755 {shlex.quote(partial)} && mv -f {shlex.quote(partial)} {shlex.quote(self.remote)}",
                what=f"installing {self.tool}",
            )
        )

    @abstractmethod
    def arguments(self, remote_model: str, threads: int) -> list[str]:
        """The tool's command-line flags for one model."""

    def command(self, remote_model: str, runtime: str, threads: int) -> str:
        pin = f"taskset {self.session.profile.affinity} " if self.session.profile.affinity else ""
        args = self.arguments(remote_model, threads)
        return f"{pin}{shlex.quote(self.remote)} " + " ".join(shlex.quote(a) for a in args)

    @abstractmethod
    def parse_log(self, text: str) -> dict[str, Any]:
        """The tool's log as the harness's millisecond summary (raises ParseError)."""

    def parse(self, model: ModelFile, result: CommandResult) -> dict[str, Any]:
        p = self.session.profile
        if result.exit_code in (126, 127):
            # A cached binary that cannot run (wrong architecture) must not be reused next time.
            self.session.retrying(lambda: self.session.transport.remove(self.remote))
            raise _tool_error(p, self.tool, self.option, model.path.name, result)
        try:
            parsed = self.parse_log(result.stdout + "\n" + result.stderr)
        except ParseError as exc:
            raise DeviceError(
                f"{self.tool} on {p.name} failed for {model.path.name}: {exc}",
                "check the model and the binary's version",
            ) from exc
        if result.exit_code != 0:
            raise _tool_error(p, self.tool, self.option, model.path.name, result)
        return {**parsed, "runtime": self.runtime, "runtime_version": self.tool}


class _BenchmarkModelTool(_NativeTool):
    """TFLite's ``benchmark_model`` for .tflite files."""

    tool, option, flag, runtime = "benchmark_model", "benchmark_binary", "--benchmark-binary", "litert"
    where_to_get = "an android_aarch64 build of tensorflow/lite/tools/benchmark:benchmark_model"

    def arguments(self, remote_model: str, threads: int) -> list[str]:
        o = self.session.options
        return [
            f"--graph={remote_model}",
            f"--num_threads={threads}",
            f"--warmup_runs={o.warmup}",
            f"--num_runs={o.runs}",
            *self.session.profile.benchmark_args,
        ]

    def parse_log(self, text: str) -> dict[str, Any]:
        return parse_benchmark_model(text)


class _PerfTestTool(_NativeTool):
    """onnxruntime's ``onnxruntime_perf_test`` for .onnx files (built from source for Android)."""

    tool, option, flag, runtime = "onnxruntime_perf_test", "perf_test_binary", "--perf-test-binary", "onnxruntime"
    where_to_get = "build it with onnxruntime's ./build.sh --android --android_abi arm64-v8a"

    def arguments(self, remote_model: str, threads: int) -> list[str]:
        # -I: generated inputs (free dimensions = 1), -s: percentiles, -x: intra-op threads.
        return [
            "-e",
            "cpu",
            "-m",
            "times",
            "-r",
            str(self.session.options.runs),
            "-x",
            str(threads),
            "-s",
            "-I",
            remote_model,
        ]

    def parse_log(self, text: str) -> dict[str, Any]:
        return parse_perf_test(text)


NATIVE_TOOLS: dict[str, type[_NativeTool]] = {".tflite": _BenchmarkModelTool, ".onnx": _PerfTestTool}


def _skip_reason(profile: DeviceProfile, options: BenchOptions, suffix: str) -> str | None:
    """Why a model file cannot be benchmarked on this device, or None when it can."""
    if not profile.runs_format(suffix):
        return f"{profile.name} has no runtime for {suffix} files"
    tool = NATIVE_TOOLS[suffix] if profile.harness == "benchmark_model" else None
    if tool is _PerfTestTool and not tool.configured(options, profile):
        return f"no {tool.tool} binary for {profile.name} (pass {tool.flag})"
    return None


def benchmark_files(
    profile: DeviceProfile,
    models: Iterable[ModelFile],
    options: BenchOptions,
    transport: Transport | None = None,
    progress: Callable[[Iterable[ModelFile]], Iterable[ModelFile]] = iter,
) -> list[dict[str, Any]]:
    """Benchmark ``models`` on ``profile``; one result row per model (skipped formats say why)."""
    models = list(models)
    threads = options.threads or profile.threads
    timeout = options.timeout_s or profile.timeout_s
    for m in models:
        if not m.path.is_file():
            raise DeviceError(f"model file {m.path} does not exist", "check the path")
    skipped = {m.key: _skip_reason(profile, options, m.path.suffix) for m in models}
    runnable = [m for m in models if skipped[m.key] is None]
    rows: dict[str, dict[str, Any]] = {
        m.key: {**_common_row(m, threads, options), "median_ms": None, "skipped": skipped[m.key]}
        for m in models
        if m not in runnable
    }
    if runnable:
        with DeviceSession(profile, options, transport) as session:
            if profile.harness == "python":
                python = _PythonHarness(session)
                harnesses: dict[str, Any] = {".tflite": python, ".onnx": python}
            else:
                harnesses = {s: NATIVE_TOOLS[s](session) for s in {m.path.suffix for m in runnable}}
            unique = list({id(h): h for h in harnesses.values()}.values())
            session.require_space(sum(h.payload_bytes() for h in unique) + max(m.path.stat().st_size for m in runnable))
            for harness in unique:
                harness.prepare()
            for model in progress(runnable):
                rows[model.key] = _benchmark_one(session, harnesses[model.path.suffix], model, threads, timeout)
    return [rows[m.key] for m in models]


def _benchmark_one(
    session: DeviceSession, harness: Any, model: ModelFile, threads: int, timeout: float
) -> dict[str, Any]:
    profile = session.profile
    remote = posixpath.join(session.run_dir, model.path.name)
    family = ONNX_RUNTIMES if model.path.suffix == ".onnx" else TFLITE_RUNTIMES
    runtime = next(r for r in profile.runtimes if r in family)
    session.push(model.path, remote)
    try:
        result = session.run(harness.command(remote, runtime, threads), timeout)
    except CommandTimeout as exc:
        raise CommandTimeout(
            f"benchmarking {model.path.name} on {profile.name} exceeded its {timeout:g} s limit and was killed",
            "raise --timeout or lower --runs",
        ) from exc
    parsed = harness.parse(model, result)
    session.retrying(lambda: session.transport.remove(remote))
    keep = (
        "runtime",
        "runtime_version",
        "median_ms",
        "p10_ms",
        "p90_ms",
        "mean_ms",
        "std_ms",
        "min_ms",
        "max_ms",
        "init_ms",
        "first_run_ms",
        "peak_rss_mb",
    )
    row = {**_common_row(model, threads, session.options), "tool": harness.tool, **{k: parsed.get(k) for k in keep}}
    if row["median_ms"] is None and row["mean_ms"] is not None:
        row["median_ms"], row["statistic"] = row["mean_ms"], "mean (this benchmark_model prints no median)"
    return row
