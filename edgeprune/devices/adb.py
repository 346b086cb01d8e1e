"""ADB transport: the real ``adb`` client (Debian's, or the binary bundled with adbutils).

Driving the adb binary rather than speaking the host protocol ourselves keeps behaviour identical
to what a user types (``adb push``, ``adb shell``), including its shell_v2 exit codes, and works with
whatever adb server the user already runs. ``[adb] server_host/server_port`` pick the server
(``adb -H/-P``), ``serial`` the device, and ``connect = true`` runs ``adb connect`` first for
devices reached over TCP/IP.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

from edgeprune.devices.profiles import DeviceProfile
from edgeprune.devices.transport import (
    AuthFailed,
    CommandResult,
    CommandTimeout,
    ConnectionLost,
    NoSpace,
    Transport,
    Unreachable,
)
from edgeprune.errors import DeviceError

# What adb itself (not the device command) prints when the link to the device is gone.
_LINK_LOST = re.compile(
    r"^(?:adb: )?error: .*?(?:device .*not found|device offline|no devices|closed"
    r"|couldn't read from device|protocol fault|connection reset|broken pipe)",
    re.IGNORECASE | re.MULTILINE,
)
_OFFLINE_POLL_S = 0.25


def adb_binary(configured: str = "") -> str:
    """The adb client to run: the profile's, else ``adb`` on PATH, else the one inside adbutils."""
    if configured:
        return configured
    found = shutil.which("adb")
    if found:
        return found
    try:
        import adbutils

        return str(adbutils.adb_path())
    except Exception as exc:  # noqa: BLE001 - adbutils raises its own error types when no binary fits
        raise Unreachable("no adb client found", "install Debian's adb package, or pip install adbutils") from exc


class AdbTransport(Transport):
    """Commands go through ``adb -H host -P port -s serial ...``.

    ``start_server=False`` (used by ``edgeprune devices``) reports a missing adb server instead of
    starting one, so merely listing targets never leaves a background daemon behind.
    """

    def __init__(self, profile: DeviceProfile, start_server: bool = True) -> None:
        super().__init__(profile)
        self.start_server = start_server

    def _server_running(self) -> bool:
        a = self.profile.adb
        try:
            with socket.create_connection((a.server_host, a.server_port), timeout=2.0):
                return True
        except OSError:
            return False

    def _base(self) -> list[str]:
        a = self.profile.adb
        argv = [adb_binary(a.adb), "-H", a.server_host, "-P", str(a.server_port)]
        return argv + (["-s", a.serial] if a.serial else [])

    def _device(self) -> str:
        return self.profile.adb.serial or "the attached device"

    def _adb(self, args: list[str], timeout: float, base: list[str] | None = None) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(
                [*(base or self._base()), *args], capture_output=True, text=True, timeout=timeout, errors="replace"
            )
        except subprocess.TimeoutExpired as exc:
            raise CommandTimeout(
                f"adb {args[0]} exceeded its {timeout:g} s time limit on {self._device()}",
                "raise --timeout or lower --runs",
            ) from exc
        except OSError as exc:
            raise Unreachable(f"cannot run the adb client: {exc.strerror}", "install adb or set [adb] adb") from exc

    def connect(self) -> None:
        a = self.profile.adb
        if not self.start_server and not self._server_running():
            raise Unreachable(
                f"no adb server is running at {a.server_host}:{a.server_port}",
                f"start it with `adb -P {a.server_port} start-server`",
            )
        if a.connect:
            base = self._base()[:5]  # without -s: `adb connect` takes the address as its argument
            try:
                done = self._adb(["connect", a.serial], a.connect_timeout_s, base)
            except CommandTimeout as exc:
                raise Unreachable(
                    f"{a.serial} did not complete the ADB handshake within {a.connect_timeout_s:g} s",
                    "check that the device is on and ADB over TCP/IP is enabled",
                ) from exc
            text = (done.stdout + done.stderr).strip()
            if "failed to authenticate" in text:
                raise AuthFailed(
                    f"{a.serial} has not authorised this computer for USB debugging",
                    "unlock the device and accept the 'Allow USB debugging?' prompt",
                )
            if done.returncode != 0 or "connected to" not in text:
                raise Unreachable(
                    f"adb cannot connect to {a.serial}: {text.splitlines()[-1] if text else 'no answer'}",
                    "check that the device is on, has ADB over TCP/IP enabled and the address is right",
                )
        state = self._state()
        deadline = time.monotonic() + a.connect_timeout_s
        while state == "offline" and time.monotonic() < deadline:  # the server is re-attaching the link
            time.sleep(_OFFLINE_POLL_S)
            state = self._state()
        if state == "device":
            return
        if "unauthorized" in state:
            raise AuthFailed(
                f"{self._device()} has not authorised this computer for USB debugging",
                "unlock the device and accept the 'Allow USB debugging?' prompt",
            )
        if "daemon" in state or "server" in state:
            raise Unreachable(
                f"no adb server answers at {a.server_host}:{a.server_port}",
                f"start one with `adb -P {a.server_port} start-server`, or fix [adb] server_host/port",
            )
        reason = state.splitlines()[0][:120] if state else "no answer"
        raise Unreachable(
            f"{self._device()} is not available over adb ({reason})",
            "check `adb devices`: connect the device, enable USB debugging, or fix [adb] serial",
        )

    def _state(self) -> str:
        """``adb get-state``: device, offline, unauthorized, or adb's error text."""
        try:
            done = self._adb(["get-state"], self.profile.adb.connect_timeout_s)
        except CommandTimeout as exc:
            raise Unreachable(
                f"{self._device()} did not answer adb within {self.profile.adb.connect_timeout_s:g} s",
                "replug the device or check `adb devices`",
            ) from exc
        text = (done.stdout.strip() if done.returncode == 0 else done.stderr.strip()).lower()
        return "offline" if "offline" in text else text

    def close(self) -> None:
        """Nothing to release: every adb call is its own short-lived client."""

    def _transfer(self, args: list[str], what: str, size: int) -> None:
        # A slow USB 2 link moves ~20 MB/s; allow 1 MB/s plus a fixed start-up margin.
        done = self._adb(args, 30.0 + size / 1e6)
        if done.returncode == 0:
            return
        text = (done.stderr or done.stdout).strip()
        if "No space left" in text:
            raise NoSpace(
                f"{self._device()} ran out of space while {what}",
                "free space on the device or set workdir to a larger partition",
            )
        if _LINK_LOST.search(text):
            raise ConnectionLost(
                f"the adb connection to {self._device()} dropped while {what}", "check the USB cable / network link"
            )
        raise DeviceError(
            f"adb failed while {what}: {text.splitlines()[-1] if text else 'no message'}",
            "check the device's workdir and permissions",
        )

    def push(self, local: Path, remote: str) -> None:
        self._transfer(["push", str(local), remote], f"pushing {local.name}", local.stat().st_size)

    def pull(self, remote: str, local: Path) -> None:
        self._transfer(["pull", remote, str(local)], f"pulling {remote}", 0)

    def execute(self, command: str, timeout: float) -> CommandResult:
        done = self._adb(["shell", command], timeout)
        if done.returncode != 0 and _LINK_LOST.search(done.stderr):
            raise ConnectionLost(
                f"the adb connection to {self._device()} dropped during a command", "check the USB cable / network link"
            )
        return CommandResult(done.returncode, done.stdout, done.stderr)
