"""Stage options are declared once, on the stage's dataclass; the CLI is generated from that."""

from __future__ import annotations

from dataclasses import dataclass, field

import click
import pytest
from click.testing import CliRunner

from edgeprune.cli.compress import _STAGES
from edgeprune.cli.declared import StageCli
from edgeprune.options import COMMAND, COMPRESS, CliOption, cli, cli_each


@dataclass
class _ToyOptions:
    """A stage a newcomer might add: every kind of declaration, one field each."""

    epochs: int = field(default=3, metadata=cli("Epochs.", low=1))
    mode: str = field(default="a", metadata=cli("Mode.", choices=("a", "b"), prefixed=False))
    fold: bool = field(default=True, metadata=cli("Keep it.", flag="keep", is_flag=True, inverted=True))
    dq: bool | None = field(default=None, metadata=cli("On or off.", flag="dq/no-dq"))
    sizes: tuple[int, ...] = field(default=(1,), metadata=cli("Sizes.", parse=lambda t: tuple(map(int, t.split(",")))))
    fast: bool = field(
        default=False,
        metadata=cli_each(
            CliOption("Fast.", is_flag=True, only=COMMAND),
            CliOption("Slow.", flag="slow", is_flag=True, inverted=True, only=COMPRESS),
        ),
    )
    internal: int = 7  # no metadata: not a command-line option


TOY = StageCli("toy", _ToyOptions, prefix="toy-")


def _parse(stage: StageCli, where: str, args: list[str]):  # noqa: ANN202 - (exit code, options, output)
    seen = {}

    @click.command()
    @stage.decorator(where)
    def command(**kwargs):  # noqa: ANN003, ANN202
        seen["options"] = stage.build(kwargs, where)
        seen["left"] = kwargs

    result = CliRunner().invoke(command, args)
    if "left" in seen:
        assert seen["left"] == {}, "every parsed value belongs to the stage"
    return result.exit_code, seen.get("options"), result.output


@pytest.mark.parametrize("stage", _STAGES, ids=lambda s: s.stage)
@pytest.mark.parametrize("where", [COMPRESS, COMMAND])
def test_no_option_given_means_the_dataclass_defaults(stage, where):
    code, options, output = _parse(stage, where, [])
    assert code == 0, output
    expected = stage.options()
    if (stage.stage, where) in (("export", COMMAND), ("nnr", COMMAND)):
        # INT8 is opt-in (--int8) for `edgeprune export` and `edgeprune encode`, the default in compress
        expected.int8 = False
    assert options == expected


def test_a_new_field_is_a_new_option_in_both_places():
    code, options, _ = _parse(
        TOY, COMPRESS, ["--toy-epochs", "5", "--mode", "b", "--toy-keep", "--toy-no-dq", "--toy-sizes", "2,3"]
    )
    assert code == 0
    assert options == _ToyOptions(epochs=5, mode="b", fold=False, dq=False, sizes=(2, 3), fast=True)
    code, options, _ = _parse(TOY, COMPRESS, ["--toy-slow"])
    assert code == 0 and options.fast is False
    code, options, _ = _parse(TOY, COMMAND, ["--epochs", "2", "--fast", "--dq"])
    assert code == 0
    assert options == _ToyOptions(epochs=2, fast=True, dq=True)


def test_declared_bounds_and_choices_are_enforced_by_the_parser():
    assert _parse(TOY, COMMAND, ["--epochs", "0"])[0] == 2
    assert _parse(TOY, COMMAND, ["--mode", "c"])[0] == 2
    assert _parse(TOY, COMMAND, ["--internal", "1"])[0] == 2  # undeclared fields are not options


def test_help_shows_the_dataclass_default():
    code, _, output = _parse(TOY, COMMAND, ["--help"])
    assert code == 0
    assert "[default: 3]" in output and "[default: 1]" in output
