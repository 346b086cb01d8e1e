"""Progress bars that respect --quiet, shared by training, calibration and benchmarking."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress

T = TypeVar("T")


class Progress:
    """A thin wrapper over rich's progress display; ``enabled=False`` makes every bar a no-op.

    Output goes to stderr so that ``--json`` keeps stdout machine-readable.
    """

    def __init__(self, enabled: bool = True, console: Console | None = None) -> None:
        self.enabled = enabled
        self.console = console or Console(stderr=True)

    def track(self, items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
        """Iterate over ``items`` while showing a bar labelled ``description``.

        Only on a terminal: redrawn into a file or pipe, a live bar leaves one blank line per refresh.
        """
        if not self.enabled or not self.console.is_terminal:
            yield from items
            return
        if total is None and hasattr(items, "__len__"):
            total = len(items)  # type: ignore[arg-type]
        columns = (
            TextColumn("[bold blue]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        with RichProgress(*columns, console=self.console, transient=True) as bar:
            task = bar.add_task(description, total=total)
            for item in items:
                yield item
                bar.advance(task)

    def print(self, *args: object) -> None:
        """Print a status line (suppressed when quiet)."""
        if self.enabled:
            self.console.print(*args)


QUIET = Progress(enabled=False)


def warn(message: str) -> None:
    """A warning the user must see: on stderr, even under --quiet."""
    print(f"warning: {message}", file=sys.stderr, flush=True)
