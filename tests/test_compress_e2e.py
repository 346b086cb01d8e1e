"""The README's first command, end to end: every artefact and real numbers in the report."""

from __future__ import annotations

import json

import onnxruntime as ort
import pytest
import torch

EXPECTED_FILES = {
    "pruned.pt2",
    "simplified.pt2",
    "quant.npz",
    "model.nnr",
    "model_qp.nnr",
    "model.onnx",
    "model_int8.onnx",
    "model.tflite",
    "model_int8.tflite",
    "dense.onnx",
    "dense.tflite",
    "bench.json",
    "report.json",
    "report.md",
    "stages.png",
    "latency.png",
}


@pytest.mark.slow
def test_compress_example_writes_every_artefact_with_real_numbers(tmp_path, runner, cli, digits):
    out = tmp_path / "out"
    result = runner.invoke(cli, ["--quiet", "compress", "--example", "lenet5", "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert EXPECTED_FILES <= {p.name for p in out.iterdir()}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "work directory left behind"
    report = json.loads(result.stdout)  # stderr may carry warnings
    assert report == json.loads((out / "report.json").read_text()) | {
        "output_dir": str(out),
        "report_files": report["report_files"],
    }
    stages = {s["name"]: s for s in report["stages"]}
    assert list(stages) == ["load", "prune", "simplify", "quantize", "encode", "export", "bench"]
    # real accuracy on held-out digits, and the pipeline really shrank the model without losing it
    assert stages["load"]["accuracy"] > 0.95
    assert stages["simplify"]["params"] < stages["load"]["params"]
    assert stages["simplify"]["macs"] < stages["load"]["macs"]
    assert stages["simplify"]["accuracy"] >= stages["load"]["accuracy"] - 0.02
    assert stages["simplify"]["metrics"]["max_abs_diff_float64"] <= 1e-9
    assert stages["encode"]["metrics"]["roundtrip_levels_exact"]
    assert stages["export"]["metrics"]["weight_mismatches"] == 0
    assert stages["export"]["metrics"]["accuracy_onnxruntime_int8"] >= stages["simplify"]["accuracy"] - 0.01
    benched = {r["model"] for r in stages["bench"]["metrics"]["results"]}
    assert benched >= {"onnx_int8", "tflite_int8", "dense_onnx_fp32"}
    # the artefacts stand on their own: ONNX runs in onnxruntime, the .pt2 loads with plain torch
    x, y = digits.test.tensors
    session = ort.InferenceSession(str(out / "model_int8.onnx"))
    logits = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert (logits.argmax(1) == y.numpy()).mean() == pytest.approx(stages["export"]["accuracy"], abs=0.02)
    simplified = torch.export.load(out / "simplified.pt2").module()
    assert (simplified(x).argmax(1) == y).float().mean().item() == pytest.approx(stages["simplify"]["accuracy"])


def test_interrupted_run_keeps_the_previous_results(tmp_path, runner, cli, monkeypatch):
    """--force replaces results only when the new run finishes; a failing stage leaves the old ones."""
    import edgeprune.pipeline

    out = tmp_path / "out"
    out.mkdir()
    (out / "report.json").write_text("{}")

    def broken_stage(art, ctx):
        (ctx.out_dir / "half.onnx").write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(edgeprune.pipeline, "stage_runner", lambda name: broken_stage)
    result = runner.invoke(cli, ["compress", "--example", "lenet5", "--stages", "simplify", "--force", "-o", str(out)])
    assert result.exit_code == 130
    assert [p.name for p in out.iterdir()] == ["report.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
