"""The ``edgeprune`` command: a click group whose commands only parse options and run the pipeline.

``compress`` runs the stages it is given; every single-stage command runs the load stage and its own
through the same :func:`edgeprune.pipeline.run_pipeline`, so both reach a stage by one code path.

Each pipeline stage has its own module here (``prune.py``, ``simplify.py``, ``nnr.py``,
``export.py``, ``bench.py``) that defines

* ``COMMANDS``: its subcommands (``edgeprune prune ...``),
* ``STAGES``: the :class:`~edgeprune.cli.declared.StageCli` of each stage it serves, which
  generates that stage's options for ``compress`` and for the stage's own command from the
  declarations on the stage's options dataclass,

so ``compress`` and the per-stage commands share one definition of every option.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any


def _interrupted_during_startup(signum: int, frame: object) -> None:
    """Ctrl-C while torch & co. are still importing: nothing exists yet to clean up, so one line."""
    sys.stderr.write("interrupted: nothing was written\n")
    os._exit(130)


_MAIN_THREAD = threading.current_thread() is threading.main_thread()
if _MAIN_THREAD:  # the imports below take seconds; a KeyboardInterrupt inside them would be a traceback
    signal.signal(signal.SIGINT, _interrupted_during_startup)

import logging  # noqa: E402
import traceback  # noqa: E402
import warnings  # noqa: E402

import click  # noqa: E402

from edgeprune import __version__  # noqa: E402
from edgeprune.cli import _help, bench, compress, export, nnr, prune, simplify  # noqa: E402  (_help first: it patches click)
from edgeprune.cli.common import compose  # noqa: E402
from edgeprune.errors import EdgepruneError  # noqa: E402

if _MAIN_THREAD:
    signal.signal(signal.SIGINT, signal.default_int_handler)

STAGE_MODULES = (prune, simplify, export, nnr, bench)


class Terminated(KeyboardInterrupt):
    """SIGTERM (``timeout``, ``docker stop``, CI cancellation): unwinds like Ctrl-C, so every atomic
    writer removes its temporary file or directory on the way out."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated()


class _Group(click.Group):
    """Turns user errors into one line and exit status 2; tracebacks only with --debug."""

    def main(  # type: ignore[override] # one signature for click's two overloads
        self, args: Sequence[str] | None = None, standalone_mode: bool = True, **kwargs: Any
    ) -> Any:  # noqa: ANN401 - click's
        """Usage errors (a bad option value, a missing argument) as one ``error:`` line, not a help panel."""
        if not standalone_mode:
            return super().main(args, standalone_mode=False, **kwargs)
        try:
            result = super().main(args, standalone_mode=False, **kwargs)
        except click.ClickException as exc:
            failed_in = getattr(exc, "ctx", None)
            where = f" (see '{failed_in.command_path} --help')" if failed_in else ""
            click.echo(f"error: {exc.format_message()}{where}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("interrupted: no partial output was left behind", err=True)
            sys.exit(128 + signal.SIGINT)
        sys.exit(result if isinstance(result, int) else 0)

    def invoke(self, ctx: click.Context):  # noqa: ANN201 - click's signature
        try:
            return super().invoke(ctx)
        except EdgepruneError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                traceback.print_exc()
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt as exc:
            if ctx.obj and ctx.obj.get("debug"):
                traceback.print_exc()
            what = "terminated" if isinstance(exc, Terminated) else "interrupted"
            click.echo(f"{what}: no partial output was left behind", err=True)
            sys.exit(128 + (signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT))


# Options a user may type before or after the subcommand. The verbosity flags are added to every
# subcommand here (no subcommand declares them); --seed, --json and --force are declared by the
# subcommands where they mean something, and the group's value becomes that subcommand's default.
_VERBOSITY = ("quiet", "verbose", "debug")
_FORWARDED = {"seed": "seed", "as_json": "as_json", "force": "force"}  # group parameter -> subcommand parameter


def _apply_verbosity(obj: dict[str, Any]) -> None:
    """Set logging and warning filters from ``obj``'s quiet/verbose/debug (callable again after each flag)."""
    level = logging.ERROR if obj.get("quiet") else logging.DEBUG if obj.get("verbose") else logging.WARNING
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(level)
    if not obj.get("verbose"):  # deprecation notices from torch/litert internals are not the user's business
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)


def _verbosity_callback(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    """A subcommand's --quiet/--verbose/--debug: the same switch as before the subcommand."""
    if value:
        root = ctx.find_root()
        root.ensure_object(dict)
        root.obj[param.name] = True
        _apply_verbosity(root.obj)


def _verbosity_options() -> list[click.Option]:
    return [
        click.Option(
            ["-q", "--quiet"],
            is_flag=True,
            expose_value=False,
            callback=_verbosity_callback,
            help="Print only errors (and --json output).",
        ),
        click.Option(
            ["-v", "--verbose"],
            is_flag=True,
            expose_value=False,
            callback=_verbosity_callback,
            help="Print details of every stage.",
        ),
        click.Option(
            ["--debug"],
            is_flag=True,
            expose_value=False,
            callback=_verbosity_callback,
            help="Show full tracebacks for errors.",
        ),
    ]


def add_global_options(command: click.Command) -> click.Command:
    """Give ``command`` the verbosity flags (unless it declares them itself) so they work after it too."""
    taken = {opt for p in command.params for opt in getattr(p, "opts", [])}
    for option in _verbosity_options():
        if not taken.intersection(option.opts):
            command.params.append(option)
    return command


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="edgeprune")
@click.option("-q", "--quiet", is_flag=True, help="Print only errors (and --json output).")
@click.option("-v", "--verbose", is_flag=True, help="Print details of every stage.")
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
@click.option(
    "--seed",
    type=int,
    default=None,
    help="Seed for data splits, training and sampling (for the subcommands that take --seed) [default: 0].",
)
@click.option("--json", "as_json", is_flag=True, default=None, help="Print the machine-readable result on stdout.")
@click.option("--force", is_flag=True, default=None, help="Replace existing output (subcommands that write files).")
@click.pass_context
def cli(
    ctx: click.Context,
    quiet: bool,
    verbose: bool,
    debug: bool,
    seed: int | None,
    as_json: bool | None,
    force: bool | None,
) -> None:
    """Compress trained PyTorch models for edge devices.

    Every option here may also be given after the subcommand.

    \b
    Examples:
      edgeprune compress --example lenet5 -o out/
      edgeprune compress model.pt --arch edgeprune.models:resnet20 --data ./cifar-10-batches-py --target rpi3 -o out/
      edgeprune simplify pruned.pt2 -o small.pt2
      edgeprune inspect out/model.nnr
    """
    ctx.ensure_object(dict)
    ctx.obj.update({k: v for k, v in (("quiet", quiet), ("verbose", verbose), ("debug", debug)) if v})
    _apply_verbosity(ctx.obj)
    given = {name: value for name, value in (("seed", seed), ("as_json", as_json), ("force", force)) if value}
    if seed is not None:
        given["seed"] = seed
    if given:
        # click reads a subcommand's defaults from the parent's default_map under the subcommand's name;
        # the command line after the subcommand still wins.
        ctx.default_map = {
            name: {_FORWARDED[k]: v for k, v in given.items() if _FORWARDED[k] in {p.name for p in command.params}}
            for name, command in ctx.command.commands.items()  # type: ignore[attr-defined]
        }


_help.group_compress_options(
    [
        (title, compose(*(stage.compress_options for stage in module.STAGES)))
        for title, module in (
            ("Prune (SeReNe / L1)", prune),
            ("Simplify", simplify),
            ("Quantize and export (ONNX, TFLite)", export),
            ("Encode (MPEG-NNR)", nnr),
            ("Bench", bench),
        )
    ]
)
cli.add_command(add_global_options(compress.compress))
for _module in STAGE_MODULES:
    for _command in _module.COMMANDS:
        cli.add_command(add_global_options(_command))


def main() -> None:
    """Console-script entry point: SIGTERM is handled like Ctrl-C (nothing partial is left behind)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    cli(prog_name="edgeprune")
