"""The ``edgeprune`` command: a click group whose commands only parse options and call the library.

Each pipeline stage has its own module here (``prune.py``, ``simplify.py``, ``nnr.py``,
``export.py``, ``bench.py``) that defines

* ``COMMANDS``: its subcommands (``edgeprune prune ...``),
* ``compress_options``: a decorator adding that stage's options to ``edgeprune compress``,
* ``options_from(kwargs)``: pops those options from the parsed kwargs and returns
  ``(stage_name, options_object)``,

so ``compress`` and the per-stage commands share one definition of every option.
"""

from __future__ import annotations

import os
import signal
import sys
import threading


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
from edgeprune.cli import bench, compress, export, nnr, prune, simplify  # noqa: E402
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


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="edgeprune")
@click.option("-q", "--quiet", is_flag=True, help="Print only errors (and --json output).")
@click.option("-v", "--verbose", is_flag=True, help="Print details of every stage.")
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
@click.pass_context
def cli(ctx: click.Context, quiet: bool, verbose: bool, debug: bool) -> None:
    """Compress trained PyTorch models for edge devices.

    \b
    Examples:
      edgeprune compress --example lenet5 -o out/
      edgeprune compress model.pt --arch edgeprune.models:resnet20 --data ./cifar-10-batches-py --target rpi3 -o out/
      edgeprune simplify pruned.pt2 -o small.pt2
      edgeprune inspect out/model.nnr
    """
    ctx.ensure_object(dict)
    ctx.obj.update(quiet=quiet, verbose=verbose, debug=debug)
    level = logging.ERROR if quiet else logging.DEBUG if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if not verbose:  # deprecation notices from torch/litert internals are not the user's business
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)


cli.add_command(compress.compress)
for _module in STAGE_MODULES:
    for _command in _module.COMMANDS:
        cli.add_command(_command)


def main() -> None:
    """Console-script entry point: SIGTERM is handled like Ctrl-C (nothing partial is left behind)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    cli(prog_name="edgeprune")

