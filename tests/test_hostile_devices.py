"""Bad device profiles and unreachable devices: one line naming the problem, no library log spew."""

from __future__ import annotations

import logging
import socket
import threading
from pathlib import Path

import pytest

from edgeprune.devices.profiles import load_profile
from edgeprune.devices.transport import Unreachable, open_transport
from edgeprune.errors import DeviceError

SSH_PROFILE = """
transport = "ssh"
workdir = "/tmp/edgeprune"
{extra}
[ssh]
host = "127.0.0.1"
{ssh}
"""


def _profile(tmp_path: Path, extra: str = "", ssh: str = "port = 22") -> Path:
    path = tmp_path / "dev.toml"
    path.write_text(SSH_PROFILE.format(extra=extra, ssh=ssh))
    return path


@pytest.mark.parametrize(
    "extra,ssh,message",
    [
        ('threads = "four"', "port = 22", "threads = 'four' is not an integer"),
        ("threads = 1.5", "port = 22", "is not an integer"),
        ("", "port = 99999", "ssh.port = 99999 is not a valid TCP port"),
        ("", "port = 0", "is not a valid TCP port"),
        ("", 'port = "22"', "ssh.port = '22' is not an integer"),
        ("timeout_s = nan", "port = 22", "timeout_s = nan"),
        ('runtimes = "litert"', "port = 22", "runtimes must be a list"),
        ("threads = " + "1" * 5000, "port = 22", "not valid TOML"),  # past Python's int-digit limit
    ],
)
def test_bad_profile_values_are_named(tmp_path, extra, ssh, message):
    with pytest.raises(DeviceError, match=message):
        load_profile(str(_profile(tmp_path, extra, ssh)))


def test_bad_profile_from_the_cli_is_one_line(runner, cli, tmp_path):
    model = tmp_path / "m.tflite"
    model.write_bytes(b"x")
    result = runner.invoke(cli, ["bench", str(model), "--target", str(_profile(tmp_path, ssh="port = 99999"))])
    assert result.exit_code == 2 and result.output.startswith("error:")
    assert len(result.output.strip().splitlines()) == 1 and "not a valid TCP port" in result.output


def test_ssh_port_that_accepts_and_never_answers(tmp_path, caplog, capfd):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    accepted: list[socket.socket] = []
    thread = threading.Thread(target=lambda: accepted.append(server.accept()[0]), daemon=True)
    thread.start()
    port = server.getsockname()[1]
    profile = load_profile(str(_profile(tmp_path, ssh=f"port = {port}\nconnect_timeout_s = 1")))
    caplog.set_level(logging.WARNING)
    try:
        with pytest.raises(Unreachable) as info:
            open_transport(profile).connect()
    finally:
        for conn in accepted:
            conn.close()
        server.close()
    assert "\n" not in str(info.value) and f"127.0.0.1:{port}" in str(info.value)
    assert not [r for r in caplog.records if r.name.startswith("paramiko")]
    assert "Traceback" not in capfd.readouterr().err
