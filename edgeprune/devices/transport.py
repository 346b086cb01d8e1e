"""One interface to a device, whatever the wire: push files, run a command, pull files, clean up.

``LocalTransport`` (this machine), ``SshTransport`` (``edgeprune.devices.ssh``, paramiko) and
``AdbTransport`` (``edgeprune.devices.adb``, the adb client) implement four primitives -
``connect``, ``push``, ``pull`` and ``execute`` - and inherit everything else (timeouts that kill
the remote process, free space, directories, removal), so the bench logic never knows which
transport it drives. Failures are :class:`DeviceError` subclasses whose class says whether a retry
can help: :class:`Unreachable` and :class:`ConnectionLost` can, the others cannot.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from edgeprune.devices.profiles import DeviceProfile
from edgeprune.errors import DeviceError

T = TypeVar("T")


class Unreachable(DeviceError):
    """Nothing answered at the device's address (off, wrong address, sshd/adb not running)."""


class AuthFailed(DeviceError):
    """The device answered but refused us (key not accepted, unknown host key, ADB unauthorised)."""


class ConnectionLost(DeviceError):
    """The connection broke during a transfer or command; reconnecting and retrying may work."""


class CommandTimeout(DeviceError):
    """A command ran past its time limit and was killed."""


class NoSpace(DeviceError):
    """The device's scratch directory has too little free space."""


@dataclass
class CommandResult:
    exit_code: int
    stdout: str
    stderr: str

    def last_error_line(self) -> str:
        lines = [ln.strip() for ln in (self.stderr or self.stdout).splitlines() if ln.strip()]
        return lines[-1] if lines else f"exit status {self.exit_code}"


class Transport(ABC):
    """A session with one device; use as a context manager (``with open_transport(p) as t:``)."""

    def __init__(self, profile: DeviceProfile) -> None:
        self.profile = profile
        self.in_flight: str | None = None  # PID file of a command that was started and not yet reaped

    # --- the primitives each transport implements -------------------------------------------------
    @abstractmethod
    def connect(self) -> None:
        """Open the session; raise Unreachable or AuthFailed."""

    @abstractmethod
    def close(self) -> None:
        """Release the session; never raises."""

    @abstractmethod
    def push(self, local: Path, remote: str) -> None:
        """Copy a host file to ``remote`` (a full file path on the device)."""

    @abstractmethod
    def pull(self, remote: str, local: Path) -> None:
        """Copy a device file to the host path ``local``."""

    @abstractmethod
    def execute(self, command: str, timeout: float) -> CommandResult:
        """Run a POSIX shell command line; raise CommandTimeout after ``timeout`` seconds."""

    # --- shared behaviour built on the primitives -------------------------------------------------
    def __enter__(self) -> Transport:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def reconnect(self) -> None:
        self.close()
        self.connect()

    def run(self, command: str, timeout: float, cwd: str, pid_file: str) -> CommandResult:
        """Run ``command`` in ``cwd``; on timeout kill it on the device (via ``pid_file``) and raise.

        Closing an SSH channel or killing the local adb client does not stop the process on the
        device, so the command records its PID first (``exec`` keeps the PID) and a timed-out run is
        killed explicitly - otherwise a runaway benchmark would keep a phone's big cores busy.
        """
        wrapped = f"cd {shlex.quote(cwd)} && echo $$ > {shlex.quote(pid_file)} && exec {command}"
        self.in_flight = pid_file
        try:
            result = self.execute(wrapped, timeout)
        except CommandTimeout:
            self.kill_recorded(pid_file)
            self.in_flight = None
            raise
        self.in_flight = None  # finished: its PID may be reused and must never be killed later
        return result

    def kill_recorded(self, pid_file: str) -> None:
        kill = f'pid=$(cat {shlex.quote(pid_file)} 2>/dev/null) && [ -n "$pid" ] && kill -9 "$pid"'
        with contextlib.suppress(DeviceError):
            try:
                self.execute(kill, 15.0)
            except ConnectionLost:
                self.reconnect()
                self.execute(kill, 15.0)

    def check(self, command: str, timeout: float = 30.0, what: str = "") -> CommandResult:
        """Run a housekeeping command and raise DeviceError if it fails."""
        result = self.execute(command, timeout)
        if result.exit_code != 0:
            raise DeviceError(
                f"{what or command!r} failed on {self.profile.name}: {result.last_error_line()}",
                f"check the device and its workdir {self.profile.workdir or '(temp)'}",
            )
        return result

    def make_dir(self, path: str) -> None:
        self.check(f"mkdir -p {shlex.quote(path)}", what=f"creating {path}")

    def remove(self, path: str) -> None:
        self.check(f"rm -rf {shlex.quote(path)}", what=f"removing {path}")

    def exists(self, path: str, executable: bool = False) -> bool:
        flag = "-x" if executable else "-e"
        return self.execute(f"test {flag} {shlex.quote(path)}", 30.0).exit_code == 0

    def free_bytes(self, path: str) -> int:
        """Free space of the filesystem holding ``path``, from ``df -k`` (coreutils, busybox, toybox)."""
        result = self.check(f"df -k {shlex.quote(path)}", what="df")
        return parse_df_free(result.stdout)


def parse_df_free(text: str) -> int:
    """Bytes available from ``df -k`` output: the 'Available'/'Avail'/'Free' column of the last row.

    Long device names wrap the data row onto a second line on some systems, so the row is read
    from its end (``... Available Use% Mounted``) when it has fewer fields than the header.
    """
    lines = [ln.split() for ln in text.splitlines() if ln.strip()]
    if len(lines) < 2:
        raise DeviceError(f"cannot read free space from df output {text!r}", "check that df works on the device")
    header, row = lines[0], lines[-1]
    column = next((i for i, h in enumerate(header) if h.lower() in ("available", "avail", "free")), 3)
    index = column - len(header) + (1 if header[-1] == "on" else 0)  # "Mounted on" is two words
    value = row[index]
    units = {"K": 1, "M": 1 << 10, "G": 1 << 20, "T": 1 << 30}
    try:
        kib = float(value[:-1]) * units[value[-1].upper()] if value[-1].upper() in units else float(value)
    except (ValueError, IndexError) as exc:
        raise DeviceError(f"cannot read free space from df output {text!r}", "check df on the device") from exc
    return int(kib * 1024)


def with_retries(
    action: Callable[[], T],
    attempts: int,
    recover: Callable[[], None] | None = None,
    retry_on: tuple[type[DeviceError], ...] = (Unreachable, ConnectionLost),
    backoff_s: float = 0.5,
) -> T:
    """Run ``action``; on a retryable error call ``recover`` (e.g. reconnect) and try again.

    Only errors a retry can cure are retried (a device still booting, a dropped Wi-Fi link); a
    refused key or a timed-out benchmark fails at once. The wait doubles after each attempt.
    """
    for attempt in range(1, max(attempts, 1) + 1):
        try:
            return action()
        except retry_on:
            if attempt >= attempts:
                raise
            time.sleep(backoff_s * 2 ** (attempt - 1))
            if recover is not None:
                with contextlib.suppress(*retry_on):
                    recover()
    raise AssertionError("unreachable")  # pragma: no cover


class LocalTransport(Transport):
    """This machine: files are copied into a scratch directory and commands run under /bin/sh."""

    def connect(self) -> None:
        """Nothing to open: the host is always there."""

    def close(self) -> None:
        """Nothing to release."""

    def push(self, local: Path, remote: str) -> None:
        try:
            shutil.copyfile(local, remote)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(remote)
            if exc.errno == 28:  # ENOSPC
                raise NoSpace(f"no space left for {remote}", "free disk space or set workdir") from exc
            raise DeviceError(f"cannot copy {local} to {remote}: {exc.strerror}", "check the workdir") from exc

    def pull(self, remote: str, local: Path) -> None:
        shutil.copyfile(remote, local)

    def execute(self, command: str, timeout: float) -> CommandResult:
        try:
            done = subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise CommandTimeout(
                f"command exceeded its {timeout:g} s time limit on the host", "raise --timeout or lower --runs"
            ) from exc
        return CommandResult(done.returncode, done.stdout, done.stderr)


def default_workdir(profile: DeviceProfile) -> str:
    """The device's scratch directory; the host's defaults to ``$TMPDIR/edgeprune-bench``."""
    return profile.workdir or str(Path(tempfile.gettempdir()) / "edgeprune-bench")


def open_transport(profile: DeviceProfile, start_server: bool = True) -> Transport:
    """The (unconnected) transport named by ``profile.transport``.

    ``start_server`` only matters for ADB: whether a missing adb server may be started.
    """
    if profile.transport == "ssh":
        from edgeprune.devices.ssh import SshTransport

        return SshTransport(profile)
    if profile.transport == "adb":
        from edgeprune.devices.adb import AdbTransport

        return AdbTransport(profile, start_server=start_server)
    return LocalTransport(profile)


@dataclass
class Reachability:
    reachable: bool
    detail: str


def check_reachable(profile: DeviceProfile, timeout_s: float = 5.0) -> Reachability:
    """Connect to the device and run ``uname -m``; never raises (``edgeprune devices``)."""
    quick = dataclasses.replace(
        profile,
        ssh=dataclasses.replace(profile.ssh, connect_timeout_s=timeout_s),
        adb=dataclasses.replace(profile.adb, connect_timeout_s=timeout_s),
    )
    transport = open_transport(quick, start_server=False)
    try:
        with transport:
            result = transport.execute("uname -m", timeout_s)
    except DeviceError as exc:
        return Reachability(False, str(exc))
    if result.exit_code != 0:
        return Reachability(False, f"`uname -m` failed: {result.last_error_line()}")
    return Reachability(True, f"up ({result.stdout.strip()})")
