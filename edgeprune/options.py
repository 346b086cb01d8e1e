"""How a stage's options are declared: once, on the stage's options dataclass.

A field a user may set from the command line carries ``metadata=cli(...)``: its help text and,
where the field's name and type do not already say it, its flag, choices or bounds. The CLI
(:mod:`edgeprune.cli.declared`) generates the click options of ``compress`` and of the stage's own
command from these declarations, takes every default from the dataclass and builds the options
object back from what was typed; the Python API is the dataclass itself. So a new stage option is
one field, and a default is written in one place.

This module imports nothing from click: the library declares *what* can be set, the CLI decides
how it is spelled on a command line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

COMPRESS, COMMAND = "compress", "command"


@dataclass(frozen=True)
class CliOption:
    """One command-line spelling of an options field.

    ``flag``: the long name without dashes (default: the field name with dashes); "on/off" makes an
    on/off pair, unset when neither is given. ``prefixed``: in ``compress`` the flag gets the stage's
    prefix (``--epochs`` -> ``--prune-epochs``) so generic names cannot clash between stages.
    ``is_flag``: a switch that always sets the field - True when given, False when not, or the
    reverse with ``inverted`` (``--keep-batchnorm`` sets ``fold_batchnorm`` False). ``parse`` turns
    the typed text into the field's value. ``only``: declared for ``compress`` or for the stage's
    own command alone (a field may carry one spelling for each).
    """

    help: str
    flag: str | None = None
    prefixed: bool = True
    choices: tuple[str, ...] | None = None
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    is_flag: bool = False
    inverted: bool = False
    parse: Callable[[Any], Any] | None = None
    only: str | None = None
    default_text: str | None = None  # shown instead of the dataclass default (e.g. "the method's own")


def cli(help: str, **spelling: Any) -> dict[str, tuple[CliOption, ...]]:  # noqa: A002 - click's word
    """Field metadata declaring one command-line option (see :class:`CliOption`)."""
    return {"cli": (CliOption(help, **spelling),)}


def cli_each(*options: CliOption) -> dict[str, tuple[CliOption, ...]]:
    """Field metadata declaring a different spelling for ``compress`` and for the stage's command."""
    return {"cli": options}
