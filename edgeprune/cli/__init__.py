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

import logging
import sys
import traceback
import warnings

import click

from edgeprune import __version__
from edgeprune.cli import bench, compress, export, nnr, prune, simplify
from edgeprune.errors import EdgepruneError

STAGE_MODULES = (prune, simplify, export, nnr, bench)


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
        except KeyboardInterrupt:
            click.echo("interrupted: no partial output was left behind", err=True)
            sys.exit(130)


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
    """Console-script entry point."""
    cli(prog_name="edgeprune")

