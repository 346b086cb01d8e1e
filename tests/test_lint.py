"""The code style the project keeps: ``ruff check`` and ``ruff format --check`` over everything it ships or runs,
and ``mypy`` over the library (configured in pyproject.toml)."""

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


def test_mypy_on_the_library():
    mypy = shutil.which("mypy")
    assert mypy, "mypy is missing: install the test extras (tools/install-test-deps.sh)"
    result = subprocess.run([mypy], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_benchmarks_and_the_package_do_not_import_from_the_tests():
    """Layering: tests may use everything; nothing shipped or benchmarked may reach into tests/
    (shared harnesses live in edgeprune.testing)."""
    offenders = [
        str(path.relative_to(ROOT))
        for folder in ("edgeprune", "benchmarks", "tools", "runtime_bench")
        for path in (ROOT / folder).rglob("*.py")
        if any(
            marker in path.read_text()
            for marker in ("from tests", "import tests", "from support", '/ "tests"', "'tests'")
        )
    ]
    assert offenders == []
