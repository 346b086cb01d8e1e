"""Help output: rich-click renders every command's --help, with ``compress``'s ~55 options grouped by stage.

This module must be imported before any command is defined (``edgeprune/cli/__init__.py`` imports it
first): :func:`rich_click.patch.patch` makes ``click.command`` build rich-click commands, so the stage
modules keep plain ``import click``. The panels are derived from each stage module's
``compress_options`` decorator, so an option added there lands in its stage's panel by itself.
"""

from __future__ import annotations

from collections.abc import Callable

from rich_click import rich_click as config
from rich_click.patch import patch
from rich_click.utils import OptionGroupDict

patch()
config.MAX_WIDTH = 110
config.TEXT_MARKUP = None  # help texts are plain text: [default: ...] and --flags must print as written
config.SHOW_ARGUMENTS = True
config.USE_CLICK_SHORT_HELP = False
# A separate metavar column is narrow and folds long choice lists mid-word ([...|l1_rel / ative]);
# appended to the help text, they wrap between words like the rest of it.
config.OPTIONS_TABLE_COLUMN_TYPES = ["required", "opt_short", "opt_long", "help"]
config.OPTIONS_TABLE_HELP_SECTIONS = ["help", "deprecated", "envvar", "metavar", "default", "required"]


def option_names(decorator: Callable) -> list[str]:
    """The long names of the options a click option decorator adds (e.g. a stage's ``compress_options``)."""

    def probe() -> None:
        """Only carries the options."""

    decorated = decorator(probe)
    params = getattr(decorated, "__click_params__", [])
    return [max(p.opts, key=len) for p in reversed(params)]


def group_compress_options(stage_panels: list[tuple[str, Callable]]) -> None:
    """Show ``compress --help`` as one panel per stage, after the input/output panels (examples stay first)."""
    panels: list[OptionGroupDict] = [
        {
            "name": "Input",
            "options": [
                "--example",
                "--arch",
                "--arch-kwargs",
                "--trust-checkpoint",
                "--input-shape",
                "--data",
                "--normalize",
                "--seed",
            ],
        },
        {"name": "Output and stages", "options": ["--output", "--force", "--stages", "--skip", "--target", "--json"]},
        *(OptionGroupDict(name=name, options=option_names(decorator)) for name, decorator in stage_panels),
        {"name": "Messages", "options": ["--quiet", "--verbose", "--debug", "--help"]},
    ]
    config.OPTION_GROUPS["* compress"] = panels
