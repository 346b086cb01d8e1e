"""Global options work where users type them: before the subcommand or after it."""

from __future__ import annotations

import json

import click
import pytest
import torch
from torch import nn

import edgeprune.examples
from edgeprune.checkpoint import save_model
from edgeprune.errors import EdgepruneError


class _Stop(EdgepruneError):
    """Raised by the stub below once it has seen what the CLI passed on."""


@pytest.fixture
def seen_seed(monkeypatch) -> list[int]:
    """Replace the example trainer with a recorder of the seed it was given (then stop the run)."""
    seen: list[int] = []

    def record(name, seed=0, data_spec=None, progress=None):  # noqa: ANN001, ANN202 - stub of build_example
        seen.append(seed)
        raise _Stop("stopped by the test", "nothing to fix")

    monkeypatch.setattr(edgeprune.examples, "build_example", record)
    return seen


@pytest.mark.parametrize(
    ("args", "seed"),
    [
        (["--seed", "1", "compress"], 1),
        (["compress", "--seed", "2"], 2),
        (["--seed", "1", "compress", "--seed", "3"], 3),  # after the subcommand wins
        (["compress"], 0),
    ],
)
def test_seed_before_or_after_the_subcommand(runner, cli, seen_seed, tmp_path, args, seed):
    result = runner.invoke(cli, [*args, "--example", "lenet5", "--skip", "bench", "-o", str(tmp_path / "o")])
    assert result.exit_code == 2 and "stopped by the test" in result.output, result.output
    assert seen_seed == [seed]


def test_json_before_the_subcommand(runner, cli):
    result = runner.invoke(cli, ["--json", "devices", "--no-check"])
    assert result.exit_code == 0, result.output
    assert "host" in {d["name"] for d in json.loads(result.output)["devices"]}


def test_quiet_after_the_subcommand_silences_the_summary(runner, cli):
    loud = runner.invoke(cli, ["devices", "--no-check"])
    quiet = runner.invoke(cli, ["devices", "--no-check", "--quiet"])
    assert loud.exit_code == quiet.exit_code == 0
    assert "host" in loud.output and quiet.output == ""


@pytest.fixture(scope="module")
def tiny_nnr(tmp_path_factory) -> str:
    """A real .nnr of a tiny convolutional model, written by `edgeprune encode`."""
    from click.testing import CliRunner

    from edgeprune.cli import cli as group

    folder = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
    save_model(model, torch.randn(1, 1, 8, 8), folder / "tiny.pt2")
    result = CliRunner().invoke(group, ["encode", str(folder / "tiny.pt2"), "-o", str(folder / "tiny.nnr")])
    assert result.exit_code == 0, result.output
    return str(folder / "tiny.nnr")


def test_inspect_takes_quiet_and_json_after_the_subcommand(runner, cli, tiny_nnr):
    quiet = runner.invoke(cli, ["inspect", "--quiet", tiny_nnr])
    assert quiet.exit_code == 0 and quiet.output == "", quiet.output
    both = runner.invoke(cli, ["inspect", tiny_nnr, "--quiet", "--json"])
    assert both.exit_code == 0 and json.loads(both.output)["num_weights"] > 0


def test_force_before_the_subcommand_overwrites(runner, cli, tiny_nnr, tmp_path):
    out = tmp_path / "again.nnr"
    out.write_bytes(b"old")
    refused = runner.invoke(cli, ["encode", tiny_nnr.replace(".nnr", ".pt2"), "-o", str(out)])
    assert refused.exit_code == 2 and "--force" in refused.output
    forced = runner.invoke(cli, ["--force", "encode", tiny_nnr.replace(".nnr", ".pt2"), "-o", str(out)])
    assert forced.exit_code == 0, forced.output
    assert out.read_bytes() != b"old"


def test_debug_after_the_subcommand_shows_the_traceback(runner, cli, tmp_path):
    missing = str(tmp_path / "missing.nnr")
    plain = runner.invoke(cli, ["inspect", missing])
    debug = runner.invoke(cli, ["inspect", missing, "--debug"])
    assert plain.exit_code == debug.exit_code == 2
    assert "Traceback" not in plain.output and "Traceback" in debug.output


@pytest.mark.parametrize(
    "command",
    ["compress", "prune", "simplify", "quantize", "export", "encode", "decode", "inspect", "bench", "devices"],
)
def test_every_subcommand_accepts_the_verbosity_flags(runner, cli, command):
    result = runner.invoke(cli, [command, "--quiet", "--verbose", "--debug", "--help"])
    assert result.exit_code == 0, result.output
    assert "--quiet" in result.output


def test_compress_help_is_grouped_by_stage_with_examples_first(runner, cli):
    result = runner.invoke(cli, ["compress", "--help"])
    assert result.exit_code == 0, result.output
    text = result.output
    panels = [
        "Input",
        "Output and stages",
        "Prune (SeReNe / L1)",
        "Simplify",
        "Quantize and export (ONNX, TFLite)",
        "Encode (MPEG-NNR)",
        "Bench",
        "Messages",
    ]
    positions = [text.find(f"─ {name} ─") for name in panels]
    assert -1 not in positions and positions == sorted(positions), positions
    assert text.find("edgeprune compress --example lenet5") < positions[0]
    # each stage's options sit in its own panel: --lmbda between Prune and Simplify, --nnr-qp in Encode
    assert positions[2] < text.find("--lmbda") < positions[3]
    assert positions[5] < text.find("--nnr-qp ") < positions[6]


def test_compress_help_never_breaks_a_word(runner, cli):
    """Every word of every option's help and choices appears whole: wrapping happens between words only."""
    from edgeprune.cli.compress import compress

    result = runner.invoke(cli, ["compress", "--help"])
    flat = " ".join(line.strip("│ ") for line in result.output.splitlines())
    words = set()
    for param in compress.params:
        words.update(w.strip(".,;:()[]'\"") for w in (getattr(param, "help", None) or "").split())
        if isinstance(param.type, click.Choice):
            words.update(param.type.choices)
    broken = sorted(w for w in words if len(w) > 3 and w not in flat)
    assert not broken, broken
