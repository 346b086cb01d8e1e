"""benchmarks/sections.py: re-running one benchmark rewrites its own BENCHMARKS.md section only."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SECTIONS_PY = Path(__file__).resolve().parents[1] / "benchmarks" / "sections.py"
SPEC = importlib.util.spec_from_file_location("sections", SECTIONS_PY)
sections = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(sections)


def test_a_section_is_replaced_up_to_the_next_heading_and_others_are_kept(tmp_path):
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text("# Benchmarks\n\n## A\n\nold a\n\n## B\n\nkeep b\n")
    sections.replace_section("## A", "## A\n\nnew a\nsecond line\n", doc)
    assert doc.read_text() == "# Benchmarks\n\n## A\n\nnew a\nsecond line\n\n## B\n\nkeep b\n"
    sections.replace_section("## B", "## B\n\nnew b", doc)
    assert doc.read_text().endswith("## B\n\nnew b\n") and "new a" in doc.read_text()


def test_a_missing_section_is_appended_and_a_headless_text_is_refused(tmp_path):
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text("# Benchmarks\n")
    sections.replace_section("## New", "## New\n\nrows\n", doc)
    assert doc.read_text() == "# Benchmarks\n\n## New\n\nrows\n"
    with pytest.raises(ValueError):
        sections.replace_section("## New", "rows without the heading", doc)
