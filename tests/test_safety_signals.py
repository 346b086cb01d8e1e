"""SIGTERM is handled like Ctrl-C: one line, nothing partial left behind; Ctrl-C during start-up too."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _spawn(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "edgeprune", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_sigterm_during_a_run_removes_the_work_directory(tmp_path):
    proc = _spawn(["compress", "--example", "lenet5", "-o", "out"], tmp_path)
    deadline = time.monotonic() + 300
    while not any(p.name.startswith(".out.partial-") for p in tmp_path.iterdir()):
        assert proc.poll() is None and time.monotonic() < deadline, "the run never started its work directory"
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM
    messages = [line for line in err.strip().splitlines() if not line.endswith(" ...")]  # not stage headers
    assert messages == ["terminated: no partial output was left behind"]
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no .out.partial-*, no .tmp.pt2, no out


def test_ctrl_c_during_start_up_is_one_line(tmp_path):
    proc = _spawn(["--help"], tmp_path)
    time.sleep(0.5)  # torch is still importing
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    if proc.returncode == 0:  # a very fast machine finished start-up first: nothing to test
        pytest.skip("start-up finished before the signal")
    assert proc.returncode == 130 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and err.startswith("interrupted")
