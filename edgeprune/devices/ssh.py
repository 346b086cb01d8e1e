"""SSH transport (paramiko): key authentication, host-key checking on, SFTP for files.

Host keys are checked against ``~/.ssh/known_hosts`` plus the profile's ``[ssh] known_hosts``
file, and an unknown key is refused (paramiko's ``RejectPolicy``), exactly as ``ssh`` with
``StrictHostKeyChecking yes`` would: a benchmark target on a lab network is not a reason to let
anyone impersonate it.
"""

from __future__ import annotations

import logging
import posixpath
import time
from pathlib import Path

import paramiko

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

_POLL_S = 0.01


class SshTransport(Transport):
    """A paramiko session to ``[ssh] user@host:port`` of the profile."""

    client: paramiko.SSHClient | None = None
    sftp: paramiko.SFTPClient | None = None

    def _where(self) -> str:
        s = self.profile.ssh
        return f"{s.host}:{s.port}"

    def connect(self) -> None:
        s = self.profile.ssh
        if not logging.getLogger().isEnabledFor(logging.DEBUG):
            # paramiko's transport thread logs every failed handshake as a ~100-line traceback at
            # ERROR level; the one-line Unreachable/AuthFailed below says the same (--verbose shows it).
            logging.getLogger("paramiko").setLevel(logging.CRITICAL + 1)
        client = paramiko.SSHClient()
        client.load_system_host_keys()
        if s.known_hosts:
            known = Path(s.known_hosts).expanduser()
            if not known.is_file():
                raise AuthFailed(
                    f"known_hosts file {known} of profile {self.profile.name} does not exist",
                    "fix [ssh] known_hosts in the profile",
                )
            client.load_host_keys(str(known))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        key = str(Path(s.key).expanduser()) if s.key else None
        if key and not Path(key).is_file():
            raise AuthFailed(f"SSH key {key} of profile {self.profile.name} does not exist", "fix [ssh] key")
        try:
            client.connect(
                s.host,
                port=s.port,
                username=s.user or None,
                key_filename=key,
                look_for_keys=key is None,
                allow_agent=key is None,
                timeout=s.connect_timeout_s,
                banner_timeout=s.connect_timeout_s,
                auth_timeout=s.connect_timeout_s,
            )
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise AuthFailed(
                f"the host key of {self._where()} has changed since it was recorded in known_hosts",
                f"if the device was really reinstalled, remove its old line with ssh-keygen -R '[{s.host}]:{s.port}'",
            ) from exc
        except paramiko.AuthenticationException as exc:
            client.close()
            raise AuthFailed(
                f"{self._where()} refused SSH key authentication for user {s.user or '(default)'}",
                "copy your public key to the device with ssh-copy-id, or fix [ssh] user/key",
            ) from exc
        except paramiko.SSHException as exc:
            client.close()
            if "not found in known_hosts" in str(exc):
                raise AuthFailed(
                    f"the host key of {self._where()} is not in known_hosts",
                    f"verify and add it: ssh-keyscan -p {s.port} {s.host} >> ~/.ssh/known_hosts",
                ) from exc
            raise Unreachable(
                f"SSH handshake with {self._where()} failed: {exc}", "check that sshd runs on the device"
            ) from exc
        except (OSError, EOFError) as exc:
            client.close()
            # paramiko folds one error per resolved address into NoValidConnectionsError.
            causes = getattr(exc, "errors", {}).values() or [exc]
            reason = "; ".join(sorted({getattr(c, "strerror", None) or str(c) for c in causes}))
            raise Unreachable(
                f"cannot reach {self.profile.name} at {self._where()}: {reason}",
                "check that the device is on, the address is right and sshd runs",
            ) from exc
        self.client = client

    def close(self) -> None:
        if self.sftp is not None:
            self.sftp.close()
            self.sftp = None
        if self.client is not None:
            self.client.close()
            self.client = None

    def _connected(self) -> paramiko.SSHClient:
        """The SSH client, connecting first if there is none."""
        if self.client is None:
            self.connect()
        assert self.client is not None, "connect() sets the client or raises"
        return self.client

    def _sftp(self) -> paramiko.SFTPClient:
        if self.sftp is None:
            try:
                self.sftp = self._connected().open_sftp()
            except (paramiko.SSHException, OSError, EOFError) as exc:
                raise ConnectionLost(
                    f"cannot open SFTP on {self._where()}: {exc}", "check that the device's sshd has the sftp subsystem"
                ) from exc
        return self.sftp

    def _alive(self) -> bool:
        transport = self.client.get_transport() if self.client is not None else None
        return transport is not None and transport.is_active()

    def push(self, local: Path, remote: str) -> None:
        try:
            self._sftp().put(str(local), remote)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            dropped = ConnectionLost(
                f"connection to {self._where()} dropped while pushing {local.name}",
                "check the network link to the device",
            )
            if not self._alive():
                raise dropped from exc
            # OpenSSH's sftp-server reports a full disk as a bare "Failure": ask df what happened. Paramiko's
            # reader thread may not have noticed a dead link yet, so the df itself can be what finds it.
            try:
                free = self.free_bytes(posixpath.dirname(remote) or ".")
            except ConnectionLost:
                raise dropped from exc
            if free < local.stat().st_size:
                raise NoSpace(
                    f"{self.profile.name} ran out of space writing {remote}",
                    "free space on the device or point workdir at a larger disk",
                ) from exc
            raise DeviceError(
                f"cannot write {remote} on {self.profile.name}: {exc}", "check the profile's workdir"
            ) from exc

    def pull(self, remote: str, local: Path) -> None:
        try:
            self._sftp().get(remote, str(local))
        except (paramiko.SSHException, EOFError) as exc:
            raise ConnectionLost(
                f"connection to {self._where()} dropped while pulling {remote}", "check the network link to the device"
            ) from exc
        except OSError as exc:
            raise DeviceError(f"cannot read {remote} on {self.profile.name}: {exc}", "check the path") from exc

    def execute(self, command: str, timeout: float) -> CommandResult:
        transport = self._connected().get_transport()
        if transport is None or not transport.is_active():
            raise ConnectionLost(f"the SSH session to {self._where()} is closed", "reconnect")
        try:
            channel = transport.open_session()
            channel.exec_command(command)
            out, err = bytearray(), bytearray()
            deadline = time.monotonic() + timeout
            while True:
                busy = False
                while channel.recv_ready():
                    out += channel.recv(65536)
                    busy = True
                while channel.recv_stderr_ready():
                    err += channel.recv_stderr(65536)
                    busy = True
                if channel.exit_status_ready() and not channel.recv_ready() and not channel.recv_stderr_ready():
                    break
                if not transport.is_active():
                    raise ConnectionLost(
                        f"connection to {self._where()} dropped during a command",
                        "check the network link to the device",
                    )
                if time.monotonic() > deadline:
                    channel.close()
                    raise CommandTimeout(
                        f"command exceeded its {timeout:g} s time limit on {self.profile.name}",
                        "raise --timeout or lower --runs",
                    )
                if not busy:
                    time.sleep(_POLL_S)
            code = channel.recv_exit_status()
            channel.close()
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise ConnectionLost(
                f"connection to {self._where()} dropped during a command: {exc}", "check the network link to the device"
            ) from exc
        return CommandResult(code, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"))
