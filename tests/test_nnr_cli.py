"""`edgeprune encode / decode / inspect` end to end, the encode stage, and their error paths."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from support.tolerance import accuracy_tolerance

from edgeprune.artifact import StageContext
from edgeprune.checkpoint import load_model, save_model
from edgeprune.metrics import evaluate
from edgeprune.nnr import decode_stream, read_int8_levels
from edgeprune.nnr.stage import NnrOptions, run
from edgeprune.quant import quantize_weights, to_deploy_graph
from edgeprune.quant.stage import run as run_quantize_stage


@pytest.fixture(scope="module")
def lenet_file(trained_lenet5, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "lenet5.pt2"
    return save_model(trained_lenet5.model, trained_lenet5.example_input, path)


def invoke_json(runner, cli, args):
    result = runner.invoke(cli, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_encode_inspect_decode_rebuilds_the_model_from_the_nnr_alone(runner, cli, lenet_file, trained_lenet5, tmp_path):
    nnr = tmp_path / "m.nnr"
    enc = invoke_json(runner, cli, ["encode", str(lenet_file), "-o", str(nnr)])
    assert enc["size_bytes"] == nnr.stat().st_size and enc["num_weights"] == 114760
    info = invoke_json(runner, cli, ["inspect", str(nnr)])
    assert [u["type"] for u in info["units"][:3]] == ["STR", "MPS", "TPL"]
    assert {t["name"] for t in info["tensors"]} >= {"conv1.weight", "fc1.weight"}
    assert info["architecture"] == "embedded"
    out = tmp_path / "decoded.pt2"
    invoke_json(runner, cli, ["decode", str(nnr), "-o", str(out)])
    decoded = load_model(out).model
    test = trained_lenet5.data.loader("test", 256)
    tolerance = accuracy_tolerance(len(trained_lenet5.data.test))
    assert evaluate(decoded, test)["accuracy"] >= evaluate(trained_lenet5.model, test)["accuracy"] - tolerance
    x = trained_lenet5.data.test.tensors[0][:64]
    with torch.no_grad():
        assert (decoded(x).argmax(1) == trained_lenet5.model(x).argmax(1)).float().mean() > 0.97
    human = runner.invoke(cli, ["inspect", str(nnr)])
    assert "bits/weight" in human.output and "fc1.weight" in human.output


def test_state_dict_with_arch_is_embedded_as_data_not_as_a_factory_name(runner, cli, trained_lenet5, tmp_path):
    weights = tmp_path / "sd.pt"
    torch.save(trained_lenet5.model.state_dict(), weights)
    nnr = tmp_path / "sd.nnr"
    invoke_json(
        runner,
        cli,
        [
            "encode",
            str(weights),
            "--arch",
            "edgeprune.models:lenet5",
            "--arch-kwargs",
            '{"input_size": 8}',
            "--input-shape",
            "1,1,8,8",
            "-o",
            str(nnr),
        ],
    )
    assert invoke_json(runner, cli, ["inspect", str(nnr)])["architecture"] == "embedded"
    assert b"edgeprune.models" not in nnr.read_bytes()  # decode must never import a name from the file
    out = tmp_path / "sd.pt2"
    invoke_json(runner, cli, ["decode", str(nnr), "-o", str(out)])
    assert load_model(out).example_input.shape == (1, 1, 8, 8)


def test_int8_mode_codes_exactly_the_deploy_levels(runner, cli, lenet_file, tmp_path):
    nnr = tmp_path / "int8.nnr"
    invoke_json(runner, cli, ["encode", str(lenet_file), "--int8", "-o", str(nnr)])
    loaded = load_model(lenet_file)
    deploy, _ = to_deploy_graph(loaded.model, loaded.example_input)
    expected = quantize_weights(deploy).tensors
    levels = read_int8_levels(nnr)
    assert set(levels) == set(expected)
    for name, q in expected.items():
        np.testing.assert_array_equal(levels[name], q.levels)


def test_accuracy_budget_beats_nncodecs_default_qp_by_half(
    runner, cli, lenet_file, trained_lenet5, example_normalize, tmp_path
):
    budget = invoke_json(
        runner,
        cli,
        [
            "encode",
            str(lenet_file),
            "--target-accuracy-drop",
            "0.5",
            "--data",
            "digits",
            "--normalize",
            example_normalize,
            "-o",
            str(tmp_path / "b.nnr"),
        ],
    )
    default = invoke_json(runner, cli, ["encode", str(lenet_file), "--qp", "-38", "-o", str(tmp_path / "d.nnr")])
    assert budget["weight_bytes"] <= 0.5 * default["weight_bytes"]
    model = copy.deepcopy(trained_lenet5.model)
    from edgeprune.nnr.model import load_decoded

    load_decoded(model, decode_stream(tmp_path / "b.nnr"))
    test = trained_lenet5.data.loader("test", 256)
    assert evaluate(model, test)["accuracy"] >= evaluate(trained_lenet5.model, test)["accuracy"] - 0.02


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["encode", "{model}", "--int8", "--qp", "-30", "-o", "{tmp}/x.nnr"], "--int8 codes fixed INT8 levels"),
        (["encode", "{model}", "--target-accuracy-drop", "1", "-o", "{tmp}/x.nnr"], "needs data"),
        (["encode", "{model}", "--rdoq", "1", "-o", "{tmp}/x.nnr"], "add --no-dq"),
        (["decode", "{tmp}/missing.nnr", "-o", "{tmp}/x.pt2"], "does not exist"),
        (["inspect", "{model}"], "not an MPEG-NNR bitstream"),
        (["decode", "{tmp}/junk.nnr", "-o", "{tmp}/x.pt2"], "the file is damaged"),
        (["encode", "{model}", "-o", "{tmp}/exists.nnr"], "already exists"),
    ],
)
def test_errors_are_one_line_with_exit_code_2(runner, cli, lenet_file, tmp_path, args, message):
    (tmp_path / "junk.nnr").write_bytes(b"\x00\x04\x02\x01" + bytes(range(40)))
    (tmp_path / "exists.nnr").write_bytes(b"keep me")
    result = runner.invoke(cli, [a.format(model=lenet_file, tmp=tmp_path) for a in args])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and message in result.output
    assert "Traceback" not in result.output
    assert (tmp_path / "exists.nnr").read_bytes() == b"keep me"
    assert not (tmp_path / "x.pt2").exists() and not (tmp_path / "x.nnr").exists()


def test_decode_without_architecture_asks_for_arch(runner, cli, trained_lenet5, tmp_path):
    from edgeprune.fileio import write_bytes
    from edgeprune.nnr import encode_tensors
    from edgeprune.nnr.model import model_tensors

    bare = write_bytes(tmp_path / "bare.nnr", encode_tensors(model_tensors(trained_lenet5.model)).data)
    result = runner.invoke(cli, ["decode", str(bare), "-o", str(tmp_path / "x.pt2")])
    assert result.exit_code == 2 and "--arch" in result.output
    ok = runner.invoke(
        cli,
        [
            "decode",
            str(bare),
            "-o",
            str(tmp_path / "x.pt2"),
            "--arch",
            "edgeprune.models:lenet5",
            "--arch-kwargs",
            '{"input_size": 8}',
            "--input-shape",
            "1,1,8,8",
        ],
    )
    assert ok.exit_code == 0, ok.output


def test_encode_stage_writes_int8_stream_and_qp_stream_and_checks_the_round_trip(trained_lenet5, tmp_path):
    art = copy.deepcopy(trained_lenet5)
    ctx = StageContext(out_dir=tmp_path, options={"nnr": NnrOptions(sweep=True)})
    run_quantize_stage(art, ctx)
    result = run(art, ctx)
    assert result["mode"] == "int8" and result["roundtrip_levels_exact"]
    assert art.files["nnr"] == tmp_path / "model.nnr" and (tmp_path / "model_qp.nnr").exists()
    levels = read_int8_levels(art.files["nnr"])
    for name, q in art.quant.tensors.items():
        np.testing.assert_array_equal(levels[name], q.levels)
    assert result["accuracy"] > 0.95 and result["qp_stream_accuracy"] > 0.95
    # the rate-allocated INT8 levels are the smallest artefact, smaller than the DQ qp-mode stream
    assert result["size_bytes"] < result["qp_stream_size_bytes"]
    assert result["qp_stream_size_bytes"] == (tmp_path / "model_qp.nnr").stat().st_size
    assert result["size_bytes"] == art.files["nnr"].stat().st_size
    sizes = [row["size_bytes"] for row in result["qp_sweep"]]
    assert sizes == sorted(sizes, reverse=True) and all("accuracy" in row for row in result["qp_sweep"])
    assert {"tensor", "bits/weight"} <= set(result["tensors"][0])


def test_encode_stage_without_quantize_codes_qp_mode(trained_lenet5, tmp_path):
    art = copy.deepcopy(trained_lenet5)
    result = run(art, StageContext(out_dir=tmp_path, options={"nnr": NnrOptions(bits_per_weight=1.0)}))
    assert result["mode"] == "qp" and "qp_stream_size_bytes" not in result
    matrices = [t for t in result["tensors"] if "x" in t["shape"]]
    bits = (
        8
        * sum(t["bytes"] for t in matrices)
        / sum(int(np.prod([int(d) for d in t["shape"].split("x")])) for t in matrices)
    )
    assert bits <= 1.05
