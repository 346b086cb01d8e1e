"""A throw-away OpenSSH server on 127.0.0.1 with its own keys and config in a temp directory.

The SSH transport is tested against the real sshd from Debian's openssh-server (installed by
tools/install.d/10-system-packages.sh), not a mock: key authentication, host-key checking, SFTP
and exit statuses all come from OpenSSH itself. Nothing outside the temp directory is touched
except /run/sshd, the privilege-separation directory sshd insists on when it runs as root.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SSHD = Path("/usr/sbin/sshd")


@dataclass
class SshServer:
    root: Path
    env: dict[str, str] = field(default_factory=dict)  # SetEnv: the environment of every session
    port: int = 0
    process: subprocess.Popen | None = None

    @property
    def user(self) -> str:
        return getpass.getuser()

    @property
    def client_key(self) -> Path:
        return self.root / "client_key"

    @property
    def known_hosts(self) -> Path:
        return self.root / "known_hosts"

    def _keygen(self, path: Path) -> None:
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "edgeprune-test", "-f", str(path)], check=True
        )

    def start(self) -> SshServer:
        if not SSHD.exists():
            raise RuntimeError("sshd is missing: run tools/install.d/10-system-packages.sh (openssh-server)")
        self.root.mkdir(parents=True, exist_ok=True)
        host_key = self.root / "host_key"
        for key in (host_key, self.client_key):
            if not key.exists():
                self._keygen(key)
        (self.root / "authorized_keys").write_text(self.client_key.with_suffix(".pub").read_text())
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        config = self.root / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    "ListenAddress 127.0.0.1",
                    f"HostKey {host_key}",
                    f"PidFile {self.root / 'sshd.pid'}",
                    f"AuthorizedKeysFile {self.root / 'authorized_keys'}",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "StrictModes no",
                    "PermitRootLogin prohibit-password",
                    "Subsystem sftp internal-sftp",
                    "LogLevel ERROR",
                    *(f"SetEnv {k}={v}" for k, v in self.env.items()),
                    "",
                ]
            )
        )
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        self.process = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(config)], stderr=subprocess.PIPE, text=True)
        self._wait_ready()
        public = host_key.with_suffix(".pub").read_text().split()
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {public[0]} {public[1]}\n")
        return self

    def _wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        process = self.process
        assert process is not None and process.stderr is not None, "start() launches sshd first"
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"sshd exited: {process.stderr.read()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    if s.recv(4) == b"SSH-":
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("sshd did not start listening within 10 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


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


def ssh_profile(server: SshServer, device_dir: Path, port: int | None = None, **overrides: Any) -> Path:
    """A profile for the loopback sshd whose device Python is this interpreter.

    ``port`` reaches the server through something else (a dropping proxy, a closed port); the
    server's host key is then recorded for that port, as ssh-keyscan would have done.
    """
    known_hosts = server.known_hosts
    if port is not None:
        known_hosts = device_dir.parent / f"known_hosts_{port}"
        known_hosts.write_text(server.known_hosts.read_text().replace(f"]:{server.port} ", f"]:{port} "))
    ssh = {
        "host": "127.0.0.1",
        "port": port or server.port,
        "user": server.user,
        "key": str(server.client_key),
        "known_hosts": str(known_hosts),
        "connect_timeout_s": 5.0,
        **overrides.pop("ssh", {}),
    }
    fields = {
        "name": "loopback-pi",
        "description": "sshd on 127.0.0.1",
        "arch": "x86_64",
        "transport": "ssh",
        "harness": "python",
        "runtimes": ["litert", "onnxruntime"],
        "threads": 1,
        "workdir": str(device_dir / "work"),
        "python": sys.executable,
        "timeout_s": 120.0,
        **overrides,
        "ssh": ssh,
    }
    return write_profile(device_dir.parent / f"{fields['name']}.toml", fields)
