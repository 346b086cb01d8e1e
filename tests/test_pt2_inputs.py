""".pt2 programs exported elsewhere: the per-stage commands read the input shape from the program, a fixed
batch is made dynamic (or refused in one line), and no batch bound of the original export breaks saving."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn


def _digits_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10)).eval()


class _FixedBatch(nn.Module):
    """Reshapes to a literal batch of 1: its traced graph cannot take any other batch."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.reshape(1, 64))


def _export(model: nn.Module, dest: Path, batch: torch.export.Dim | None) -> Path:
    example = torch.randn(2 if batch is not None else 1, 1, 8, 8)
    shapes = ({0: batch},) if batch is not None else None
    torch.export.save(torch.export.export(model, (example,), dynamic_shapes=shapes), dest)
    return dest


@pytest.fixture(scope="module")
def programs(tmp_path_factory) -> dict[str, Path]:
    """Programs as a user would write them with plain torch.export (no edgeprune metadata)."""
    folder = tmp_path_factory.mktemp("programs")
    net = _digits_net()
    return {
        "dynamic": _export(net, folder / "dynamic.pt2", torch.export.Dim("batch")),
        "bounded": _export(net, folder / "bounded.pt2", torch.export.Dim("batch", max=4096)),
        "static": _export(net, folder / "static.pt2", None),
        "fixed": _export(_FixedBatch().eval(), folder / "fixed.pt2", None),
    }


@pytest.mark.parametrize("kind", ["dynamic", "bounded", "static"])
def test_simplify_and_export_need_no_input_shape(runner, cli, programs, tmp_path, kind):
    small = tmp_path / "small.pt2"
    result = runner.invoke(cli, ["simplify", str(programs[kind]), "-o", str(small)])
    assert result.exit_code == 0, result.output
    # the saved program takes any batch, including more than the original bound
    program = torch.export.load(small).module()
    assert program(torch.randn(5000, 1, 8, 8)).shape == (5000, 10)
    result = runner.invoke(cli, ["export", str(programs[kind]), "--format", "onnx", "-o", str(tmp_path / "x")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "x" / "model.onnx").stat().st_size > 0


@pytest.mark.parametrize("kind", ["dynamic", "bounded"])
def test_prune_trains_and_saves_a_program_without_input_shape(runner, cli, programs, tmp_path, kind):
    out = tmp_path / "pruned.pt2"
    result = runner.invoke(
        cli,
        [
            "--quiet",
            "prune",
            str(programs[kind]),
            "--data",
            "digits",
            "--method",
            "l1",
            "--epochs",
            "2",
            "--finetune-epochs",
            "1",
            "-o",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert torch.export.load(out).module()(torch.randn(3, 1, 8, 8)).shape == (3, 10)


def test_a_fixed_batch_graph_is_refused_in_one_line(runner, cli, programs, tmp_path):
    result = runner.invoke(cli, ["simplify", str(programs["fixed"]), "-o", str(tmp_path / "s.pt2")])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "fixed batch of 1" in lines[0] and "Dim('batch')" in lines[0], result.output
    assert not (tmp_path / "s.pt2").exists()
