"""The one writer of BENCHMARKS.md sections, shared by every benchmark script.

Each benchmark owns one ``## heading`` section; re-running it replaces that section (up to the
next ``## `` heading) and leaves every other benchmark's results alone. A section that does not
exist yet is appended, so a new benchmark needs no hand edit of the document first.
"""

from __future__ import annotations

from pathlib import Path

from edgeprune.fileio import write_text

BENCHMARKS_MD = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"


def replace_section(heading: str, text: str, path: Path = BENCHMARKS_MD) -> None:
    """Replace the section titled ``heading`` with ``text`` (which starts with that heading)."""
    if not text.startswith(heading):
        raise ValueError(f"section text must start with its heading {heading!r}")
    body = text.rstrip("\n") + "\n"
    doc = path.read_text() if path.exists() else ""
    start = doc.find(heading + "\n")
    if start == -1:
        write_text(path, doc.rstrip("\n") + ("\n\n" if doc else "") + body)
        return
    end = doc.find("\n## ", start + len(heading))
    write_text(path, doc[:start] + body + (doc[end:] if end != -1 else ""))
