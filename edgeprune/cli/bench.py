"""CLI for the bench stage (see edgeprune.cli for the COMMANDS / compress_options / options_from contract)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

COMMANDS: list[click.Command] = []


def compress_options(f: Callable) -> Callable:
    """Options this stage adds to `edgeprune compress`."""
    return f


def options_from(kwargs: dict[str, Any]) -> tuple[str, Any]:
    """Pop this stage's options from `kwargs`; return (stage name, options object or None for defaults)."""
    return "bench", None
