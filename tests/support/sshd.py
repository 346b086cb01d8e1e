"""A throw-away OpenSSH server on 127.0.0.1 with its own keys and config in a temp directory.

The SSH transport is tested against the real sshd from Debian's openssh-server (installed by
tools/install.d/10-system-packages.sh), not a mock: key authentication, host-key checking, SFTP
and exit statuses all come from OpenSSH itself. Nothing outside the temp directory is touched
except /run/sshd, the privilege-separation directory sshd insists on when it runs as root.
"""

from __future__ import annotations

import getpass
import os
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

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
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"sshd exited: {self.process.stderr.read()}")
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
