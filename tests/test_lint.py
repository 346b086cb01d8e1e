"""The code style the project keeps: ``ruff check`` and ``ruff format --check`` over everything it ships or runs,
and ``mypy`` over the library, the benchmarks and the tools (configured in pyproject.toml)."""

from __future__ import annotations

import ast
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


def test_mypy_on_the_library_benchmarks_and_tools():
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


STAGE_PACKAGES = ("load", "prune", "simplify", "quant", "nnr", "export", "devices")


def test_stages_use_each_other_only_through_their_public_api():
    """Layering: a stage package reaches another stage only through that package's ``__init__``
    (``from edgeprune.nnr import coded_bytes``), never its modules. The CLI (the front end of every
    stage) and the test harnesses in edgeprune/testing are exempt; edgeprune.graph is the shared
    foundation the stages build on, not a stage."""
    offenders = []
    for path in (ROOT / "edgeprune").rglob("*.py"):
        parts = path.relative_to(ROOT / "edgeprune").parts
        if parts[0] in ("cli", "testing"):
            continue
        own = parts[0].removesuffix(".py")
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
            for name in names:
                pieces = name.split(".")
                if pieces[0] == "edgeprune" and len(pieces) > 2 and pieces[1] in STAGE_PACKAGES and pieces[1] != own:
                    offenders.append(f"{path.relative_to(ROOT)}: {name}")
    assert offenders == []
