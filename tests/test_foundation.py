"""Pipeline plumbing: stage selection, atomic writes, the report, and CLI error handling."""

from __future__ import annotations

import json

import pytest
import torch

from edgeprune.errors import EdgepruneError
from edgeprune.fileio import atomic_path, write_json
from edgeprune.pipeline import STAGE_ORDER, select_stages
from edgeprune.report import Report, StageRecord


def test_select_stages_keeps_order_and_load():
    assert select_stages(None, None) == list(STAGE_ORDER)
    assert select_stages("export,simplify", None) == ["load", "simplify", "export"]
    assert select_stages(None, "bench,prune") == ["load", "simplify", "quantize", "encode", "export"]


@pytest.mark.parametrize(
    ("stages", "skip", "message"), [("prnue", None, "unknown stage"), (None, "load", "cannot be skipped")]
)
def test_select_stages_errors(stages, skip, message):
    with pytest.raises(EdgepruneError, match=message):
        select_stages(stages, skip)


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    dest = tmp_path / "model.bin"
    with pytest.raises(RuntimeError), atomic_path(dest) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    write_json(dest, {"a": torch.tensor(1.5)})
    assert json.loads(dest.read_text()) == {"a": 1.5}
    assert list(tmp_path.iterdir()) == [dest]


def test_report_markdown_json_and_plots(tmp_path):
    report = Report(meta={"source": "m.pt", "target": "host", "input_shape": [1, 1, 8, 8]})
    report.add(StageRecord("load", 0.1, params=1000, nonzero_params=1000, macs=5000, size_bytes=4000, accuracy=0.98))
    report.add(
        StageRecord(
            "encode",
            0.2,
            size_bytes=300,
            accuracy=0.975,
            metrics={
                "qp_sweep": [
                    {"qp": -20, "size_bytes": 200, "accuracy": 0.9},
                    {"qp": -30, "size_bytes": 300, "accuracy": 0.97},
                ]
            },
        )
    )
    report.add(
        StageRecord(
            "bench",
            1.0,
            metrics={
                "latency_ms": 0.05,
                "results": [
                    {"model": "onnx_fp32", "runtime": "onnxruntime", "median_ms": 0.08},
                    {"model": "onnx_int8", "runtime": "onnxruntime", "median_ms": 0.05},
                ],
            },
        )
    )
    paths = report.write(tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "| load | 1,000 | 1,000 | 5,000 | 3.9 KiB | - | 98.00 % |" in md  # weights, then file (none)
    assert "| onnx_int8 | onnxruntime | 0.05 |" in md
    assert json.loads((tmp_path / "report.json").read_text())["stages"][1]["size_bytes"] == 300
    for key in ("plot_stages", "plot_latency", "plot_rate"):
        assert paths[key].read_bytes()[:4] == b"\x89PNG"


def test_cli_help_lists_examples_and_commands(runner, cli):
    result = runner.invoke(cli, ["--help"])
    assert result.exit_code == 0
    assert "edgeprune compress --example lenet5" in result.output
    assert "compress" in result.output
    result = runner.invoke(cli, ["compress", "--help"])
    assert "Examples:" in result.output and "--target" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["compress", "-o", "{tmp}/o"], "no model given"),
        (["compress", "{tmp}/missing.pt", "-o", "{tmp}/o"], "does not exist"),
        (["compress", "{tmp}/m.pt", "--example", "lenet5", "-o", "{tmp}/o"], "either MODEL or --example"),
        (["compress", "--example", "lenet5", "--stages", "load,nope", "-o", "{tmp}/o"], "unknown stage 'nope'"),
        (["compress", "{tmp}/sd.pt", "--input-shape", "1,3,32,32", "-o", "{tmp}/o"], "holds only a state_dict"),
        (["compress", "{tmp}/whole.pt", "--input-shape", "1,3,32,32", "-o", "{tmp}/o"], "--trust-checkpoint"),
        (
            [
                "compress",
                "{tmp}/sd.pt",
                "--arch",
                "edgeprune.models:resnet20",
                "--input-shape",
                "1,3,32,32",
                "--data",
                "digits",
                "-o",
                "{tmp}/o",
            ],
            "dataset 'digits' has samples of shape [1, 8, 8]",
        ),
        (["compress", "--example", "lenet5", "-o", "{tmp}/full"], "already contains results"),
        (["compress", "--example", "lenet5", "--target", "nosuch", "-o", "{tmp}/o"], "unknown target 'nosuch'"),
    ],
)
def test_cli_user_errors_exit_2_without_traceback(tmp_path, runner, cli, args, message):
    from edgeprune.models import resnet20

    model = resnet20()
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    torch.save(model, tmp_path / "whole.pt")
    (tmp_path / "m.pt").write_bytes(b"x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "report.json").write_text("{}")
    result = runner.invoke(cli, [a.replace("{tmp}", str(tmp_path)) for a in args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert result.output.count("\n") <= 2
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
