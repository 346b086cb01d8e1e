"""The code style the project keeps: ``ruff check`` and ``ruff format --check`` over everything it ships or runs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECKED = ["edgeprune", "tests", "benchmarks", "tools", "runtime_bench"]


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["check", "format"])
def test_ruff(command):
    ruff = shutil.which("ruff")
    assert ruff, "ruff is missing: install the test extras (tools/install-test-deps.sh)"
    result = subprocess.run([ruff, *command, *CHECKED], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
