"""Device profiles: what a target is, which runtimes it has and how to reach it, as TOML data.

The built-in profiles live in ``devices/*.toml`` (installed as the package ``edgeprune.profiles``).
Users add their own without touching the package, in this order of precedence (later wins):

1. the built-in profiles,
2. ``$XDG_CONFIG_HOME/edgeprune/devices/*.toml`` (``~/.config/edgeprune/devices`` by default),
3. every directory or file listed in ``$EDGEPRUNE_DEVICES`` (separated by ``os.pathsep``),
4. a path given directly as the target: ``--target ./my-pi.toml``.

A user profile can ``extends = "rpi3"`` and override only what differs (usually ``[ssh] host``),
so the runtimes and thread defaults of the built-in board are not copied by hand.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from edgeprune.errors import DeviceError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

TRANSPORTS = ("local", "ssh", "adb")
HARNESSES = ("python", "benchmark_model")
RUNTIMES = ("litert", "tflite-runtime", "onnxruntime")


@dataclass(frozen=True)
class SshSettings:
    """How to log in: key authentication only, and the server's host key must be known."""

    host: str = ""
    port: int = 22
    user: str = ""
    key: str = ""  # private key file; empty = ssh-agent and ~/.ssh/id_* as OpenSSH would
    known_hosts: str = ""  # extra known_hosts file read besides ~/.ssh/known_hosts
    connect_timeout_s: float = 10.0


@dataclass(frozen=True)
class AdbSettings:
    """Which device and which adb server; ``connect`` runs ``adb connect`` first (ADB over TCP/IP)."""

    serial: str = ""
    server_host: str = "127.0.0.1"
    server_port: int = 5037
    connect: bool = False
    adb: str = ""  # adb binary; empty = `adb` on PATH, else the one bundled with adbutils
    connect_timeout_s: float = 10.0


@dataclass(frozen=True)
class DeviceProfile:
    """One benchmark target (see devices/*.toml for documented examples of every field)."""

    name: str
    description: str = ""
    arch: str = ""
    transport: str = "local"
    harness: str = "python"  # python: copy runtime_bench and run it; benchmark_model: native TFLite tool
    runtimes: tuple[str, ...] = ("litert", "onnxruntime")
    threads: int = 1
    affinity: str = ""  # taskset CPU mask, e.g. "f0" = the four big cores of a big.LITTLE phone
    workdir: str = ""  # scratch directory on the device; empty = the host's temp dir (local only)
    python: str = "python3"
    benchmark_binary: str = ""  # host path of benchmark_model for this device (or --benchmark-binary)
    perf_test_binary: str = ""  # host path of onnxruntime_perf_test (or --perf-test-binary)
    benchmark_args: tuple[str, ...] = ()
    timeout_s: float = 300.0  # per benchmarked model
    setup: str = ""  # one paragraph: what to install on the device
    ssh: SshSettings = field(default_factory=SshSettings)
    adb: AdbSettings = field(default_factory=AdbSettings)
    source: str = ""  # file the profile was read from

    @property
    def address(self) -> str:
        """Where the device is, for listings and error messages."""
        if self.transport == "ssh":
            user = f"{self.ssh.user}@" if self.ssh.user else ""
            return f"{user}{self.ssh.host}:{self.ssh.port}"
        if self.transport == "adb":
            return f"adb {self.adb.serial or '(only device)'}"
        return "this machine"

    def runs_format(self, suffix: str) -> bool:
        """Whether this device can benchmark a model file with ``suffix`` ('.tflite' / '.onnx')."""
        if suffix == ".tflite":
            return any(r in self.runtimes for r in ("litert", "tflite-runtime"))
        if suffix == ".onnx":
            return "onnxruntime" in self.runtimes
        return False


def builtin_dir() -> Path:
    return Path(str(resources.files("edgeprune.profiles")))


def search_paths() -> list[Path]:
    """Profile directories/files in increasing precedence (see the module docstring)."""
    config_home = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    paths = [builtin_dir(), config_home / "edgeprune" / "devices"]
    paths += [Path(p).expanduser() for p in os.environ.get("EDGEPRUNE_DEVICES", "").split(os.pathsep) if p]
    return paths


def _profile_files() -> list[Path]:
    files: list[Path] = []
    for path in search_paths():
        if path.is_dir():
            files += sorted(path.glob("*.toml"))
        elif path.suffix == ".toml" and path.is_file():
            files.append(path)
    return files


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise DeviceError(f"cannot read device profile {path}: {exc.strerror}", "check the path") from exc
    except ValueError as exc:  # TOMLDecodeError, or an integer past Python's int-digit limit
        raise DeviceError(f"device profile {path} is not valid TOML: {exc}", "fix the file") from exc


def _raw_profiles() -> dict[str, tuple[dict[str, Any], Path]]:
    """Every profile by name; a later search path replaces an earlier profile of the same name."""
    found: dict[str, tuple[dict[str, Any], Path]] = {}
    for path in _profile_files():
        raw = _read_toml(path)
        found[str(raw.get("name", path.stem))] = (raw, path)
    return found


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        merged[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return merged


def _resolve(
    raw: dict[str, Any], path: Path, known: dict[str, tuple[dict[str, Any], Path]], seen: tuple[str, ...] = ()
) -> dict[str, Any]:
    parent = raw.get("extends")
    if not parent:
        return raw
    if parent in seen or parent not in known:
        problem = "extends itself" if parent in seen else f"extends unknown profile {parent!r}"
        raise DeviceError(f"device profile {path} {problem}", f"choose one of {', '.join(sorted(known))}")
    parent_raw, parent_path = known[parent]
    base = _resolve(parent_raw, parent_path, known, (*seen, parent))
    base = {k: v for k, v in base.items() if k not in ("name", "extends")}
    return _merge(base, {k: v for k, v in raw.items() if k != "extends"})


def _build(raw: dict[str, Any], path: Path) -> DeviceProfile:
    data = dict(raw)
    data.setdefault("name", path.stem)
    sections = {"ssh": SshSettings, "adb": AdbSettings}
    allowed = {f.name for f in dataclasses.fields(DeviceProfile)} - {"source"}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise DeviceError(
            f"device profile {path} has unknown key {unknown[0]!r}", f"valid keys: {', '.join(sorted(allowed))}"
        )
    for key, cls in sections.items():
        table = data.get(key, {})
        if not isinstance(table, dict):
            raise DeviceError(f"device profile {path}: [{key}] must be a table", f"write it as [{key}]")
        fields = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(table) - fields)
        if bad:
            raise DeviceError(
                f"device profile {path} has unknown key {key}.{bad[0]!r}", f"valid keys: {', '.join(sorted(fields))}"
            )
        data[key] = cls(**table)
    for key in ("runtimes", "benchmark_args"):
        if key in data:
            if not isinstance(data[key], list):
                raise DeviceError(
                    f"device profile {path}: {key} must be a list of strings", f'write it like {key} = ["..."]'
                )
            data[key] = tuple(data[key])
    try:
        profile = DeviceProfile(**data, source=str(path))
    except TypeError as exc:
        raise DeviceError(f"device profile {path} is malformed: {exc}", "compare it with devices/host.toml") from exc
    for obj, prefix in ((profile, ""), (profile.ssh, "ssh."), (profile.adb, "adb.")):
        _check_types(obj, prefix, path)
    _validate(profile)
    return profile


_TYPE_NAMES = {
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "bool": "true or false",
    "tuple[str, ...]": "a list of strings",
}


def _check_types(obj: Any, prefix: str, path: Path) -> None:
    """Every value has its field's type: ``threads = "four"`` fails here, not deep inside a benchmark."""
    for f in dataclasses.fields(obj):
        value, kind = getattr(obj, f.name), str(f.type)
        if kind == "int":
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif kind == "float":
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        elif kind == "str":
            ok = isinstance(value, str)
        elif kind == "bool":
            ok = isinstance(value, bool)
        elif kind == "tuple[str, ...]":
            ok = all(isinstance(v, str) for v in value)
        else:
            continue
        if not ok:
            raise DeviceError(
                f"device profile {path}: {prefix}{f.name} = {value!r} is not {_TYPE_NAMES[kind]}",
                f"write {prefix}{f.name} as {_TYPE_NAMES[kind]}, e.g. as in devices/host.toml",
            )


def _validate(p: DeviceProfile) -> None:
    def fail(problem: str, fix: str) -> None:
        raise DeviceError(f"device profile {p.source}: {problem}", fix)

    if p.transport not in TRANSPORTS:
        fail(f"transport {p.transport!r} is unknown", f"use one of {', '.join(TRANSPORTS)}")
    if p.harness not in HARNESSES:
        fail(f"harness {p.harness!r} is unknown", f"use one of {', '.join(HARNESSES)}")
    bad_runtime = next((r for r in p.runtimes if r not in RUNTIMES), None)
    if bad_runtime:
        fail(f"runtime {bad_runtime!r} is unknown", f"use some of {', '.join(RUNTIMES)}")
    if not 1 <= p.threads <= 1024:
        fail(f"threads = {p.threads} is invalid", "set threads between 1 and the device's core count")
    for name, port in (("ssh.port", p.ssh.port), ("adb.server_port", p.adb.server_port)):
        if not 1 <= port <= 65535:
            fail(f"{name} = {port} is not a valid TCP port", "use a port between 1 and 65535")
    for name, seconds in (
        ("timeout_s", p.timeout_s),
        ("ssh.connect_timeout_s", p.ssh.connect_timeout_s),
        ("adb.connect_timeout_s", p.adb.connect_timeout_s),
    ):
        if not 0 < seconds <= 86400:
            fail(f"{name} = {seconds} is invalid", "give a positive number of seconds (at most a day)")
    if p.affinity and not all(c in "0123456789abcdefABCDEF" for c in p.affinity.removeprefix("0x")):
        fail(f"affinity {p.affinity!r} is not a hexadecimal CPU mask", 'write it like "f0"')
    if p.transport == "ssh" and not p.ssh.host:
        fail("an ssh profile needs [ssh] host", 'add host = "192.168.1.20" (or extend it in your own profile)')
    if p.transport != "local" and not p.workdir:
        fail("a remote profile needs workdir", 'set workdir = "/tmp/edgeprune" (a directory the user may write)')


def list_profiles() -> list[DeviceProfile]:
    """All profiles visible from the search paths, sorted by name."""
    known = _raw_profiles()
    return [_build(_resolve(raw, path, known), path) for _, (raw, path) in sorted(known.items())]


def load_profile(target: str) -> DeviceProfile:
    """The profile called ``target``, or the one in the TOML file at path ``target``."""
    known = _raw_profiles()
    if target.endswith(".toml") or os.sep in target:
        path = Path(target).expanduser()
        if not path.is_file():
            raise DeviceError(f"device profile file {path} does not exist", "check the path given to --target")
        return _build(_resolve(_read_toml(path), path, known), path)
    if target not in known:
        raise DeviceError(
            f"unknown target {target!r}", f"choose one of {', '.join(sorted(known))}, or pass a profile .toml path"
        )
    raw, path = known[target]
    return _build(_resolve(raw, path, known), path)


def with_overrides(profile: DeviceProfile, **changes: Any) -> DeviceProfile:
    """A copy with the non-None ``changes`` applied (command-line options beat the profile)."""
    return dataclasses.replace(profile, **{k: v for k, v in changes.items() if v is not None})
