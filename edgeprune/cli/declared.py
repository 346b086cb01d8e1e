"""Click options generated from the stages' option dataclasses (declared in :mod:`edgeprune.options`).

One :class:`StageCli` per stage gives ``compress`` its options (generic names prefixed with the
stage, ``--prune-epochs``) and the stage's own command the same options unprefixed (``--epochs``),
and turns the parsed values back into the options object. Every parsed value is stored under
``<stage>_<field>``, so stages never compete for a keyword, and an option the user did not give
keeps the dataclass default - the only place a default is written.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterable, Iterator
from dataclasses import Field, dataclass, fields
from pathlib import Path
from typing import Any, get_type_hints

import click

from edgeprune.cli.common import FiniteFloatRange, compose
from edgeprune.options import COMMAND, COMPRESS, CliOption


@dataclass(frozen=True)
class StageCli:
    """The command-line face of one stage: ``stage`` keys ``StageContext.options``; ``options`` is
    the stage's dataclass; ``prefix`` is what its generic flags get in ``compress``."""

    stage: str
    options: type
    prefix: str

    def decorator(self, where: str, names: Iterable[str] | None = None) -> Callable:
        """The click options of this stage in ``compress`` (``where=COMPRESS``) or in its own command
        (``COMMAND``); ``names`` limits them to those fields."""
        hints = get_type_hints(self.options)
        defaults = self.options()
        wanted = None if names is None else set(names)
        return compose(
            *(
                click.option(
                    self._flag(f, opt, where),
                    self._dest(f),
                    **_click_settings(opt, hints[f.name], getattr(defaults, f.name), self._flag(f, opt, where)),
                )
                for f, opt in self._declared(where)
                if wanted is None or f.name in wanted
            )
        )

    def build(self, kwargs: dict[str, Any], where: str, **fixed: Any) -> Any:  # noqa: ANN401 - the stage's dataclass
        """Pop this stage's values from ``kwargs`` and build its options object (``fixed`` set directly)."""
        given: dict[str, Any] = {}
        for f, opt in self._declared(where):
            key = self._dest(f)
            if key not in kwargs:
                continue
            value = kwargs.pop(key)
            if opt.is_flag:
                given[f.name] = bool(value) != opt.inverted
            elif value is not None:
                given[f.name] = opt.parse(value) if opt.parse else value
        return self.options(**{**given, **fixed})

    def compress_options(self, f: Callable) -> Callable:
        """Decorator adding this stage's options to ``edgeprune compress``."""
        return self.decorator(COMPRESS)(f)

    def command_options(self, f: Callable) -> Callable:
        """Decorator adding this stage's options to its own command."""
        return self.decorator(COMMAND)(f)

    def options_from(self, kwargs: dict[str, Any]) -> tuple[str, Any]:
        """(stage name, options object) from the parsed ``compress`` keywords."""
        return self.stage, self.build(kwargs, COMPRESS)

    def _declared(self, where: str) -> Iterator[tuple[Field, CliOption]]:
        for f in fields(self.options):
            for opt in f.metadata.get("cli", ()):
                if opt.only in (None, where):
                    yield f, opt

    def _flag(self, f: Field, opt: CliOption, where: str) -> str:
        prefix = self.prefix if where == COMPRESS and opt.prefixed else ""
        return "/".join(f"--{prefix}{part}" for part in (opt.flag or f.name.replace("_", "-")).split("/"))

    def _dest(self, f: Field) -> str:
        return f"{self.stage}_{f.name}"


def _click_settings(opt: CliOption, hint: Any, default: Any, flag: str) -> dict[str, Any]:  # noqa: ANN401
    """click.option keywords for one declared option; the default is shown, never passed to click."""
    if opt.is_flag:
        return {"is_flag": True, "default": False, "help": opt.help}
    shown = opt.default_text
    if shown is None and default is not None:
        if "/" in flag and isinstance(default, bool):
            shown = flag.split("/")[0 if default else 1]
        else:
            shown = ",".join(map(str, default)) if isinstance(default, tuple) else str(default)
    settings: dict[str, Any] = {"default": None, "help": opt.help + (f" [default: {shown}]" if shown else "")}
    if "/" not in flag:
        settings["type"] = _click_type(opt, hint)
    return settings


def _click_type(opt: CliOption, hint: Any) -> Any:  # noqa: ANN401 - a click parameter type
    if opt.choices is not None:
        return click.Choice(opt.choices)
    kinds = [a for a in hint.__args__ if a is not type(None)] if isinstance(hint, types.UnionType) else [hint]
    kind = kinds[0]
    if kind is int:
        low, high = (None if b is None else int(b) for b in (opt.low, opt.high))
        return click.IntRange(low, high, min_open=opt.low_open, max_open=opt.high_open)
    if kind is float:
        return FiniteFloatRange(opt.low, opt.high, min_open=opt.low_open, max_open=opt.high_open)
    if kind is Path:
        return click.Path(dir_okay=False, path_type=Path)
    return click.STRING
