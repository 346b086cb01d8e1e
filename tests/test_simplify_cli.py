"""`edgeprune simplify` end to end, and the simplify stage inside the pipeline."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import torch

from edgeprune.artifact import Artifact, StageContext
from edgeprune.checkpoint import save_model
from edgeprune.metrics import count_params, evaluate
from edgeprune.simplify import stage


def pruned_lenet5(trained_lenet5) -> torch.nn.Module:
    """The trained example with some filters/units of every hidden layer zeroed (biases kept)."""
    model = copy.deepcopy(trained_lenet5.model).eval()
    with torch.no_grad():
        model.conv1.weight[::4] = 0
        model.conv2.weight[::3] = 0
        model.fc1.weight[::3] = 0
    return model


def test_cli_simplifies_a_saved_model_and_the_output_loads_with_plain_torch(runner, cli, trained_lenet5, tmp_path):
    model = pruned_lenet5(trained_lenet5)
    x = trained_lenet5.example_input
    save_model(model, x, tmp_path / "pruned.pt2")
    out = tmp_path / "small.pt2"
    args = ["simplify", str(tmp_path / "pruned.pt2"), "-o", str(out), "--data", "digits", "--json"]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["channels_removed"] == 5 + 17 + 167
    assert report["params_after"] < report["params_before"]
    assert report["max_abs_diff_float64"] <= 1e-9
    assert report["verification_inputs"] == 4  # random b1, mixed b3, real b1, real b3 (LeNet-5 fixes its size)

    # a fresh interpreter that only imports torch loads the result and agrees with the pruned model
    test_x, _ = trained_lenet5.data.test.tensors
    torch.save(test_x[:64], tmp_path / "x.pt")
    code = (
        "import sys, torch\n"
        f"m = torch.export.load({str(out)!r}).module()\n"
        f"x = torch.load({str(tmp_path / 'x.pt')!r})\n"
        f"torch.save(m(x), {str(tmp_path / 'y.pt')!r})\n"
        "assert 'edgeprune' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(torch.load(tmp_path / "y.pt"), model(test_x[:64]), rtol=1e-4, atol=1e-4)


def test_cli_refuses_to_overwrite_and_rejects_bad_options(runner, cli, trained_lenet5, tmp_path):
    save_model(pruned_lenet5(trained_lenet5), trained_lenet5.example_input, tmp_path / "m.pt2")
    (tmp_path / "out.pt2").write_bytes(b"keep me")
    result = runner.invoke(cli, ["simplify", str(tmp_path / "m.pt2"), "-o", str(tmp_path / "out.pt2")])
    assert result.exit_code == 2
    assert "already exists" in result.output and "--force" in result.output
    assert (tmp_path / "out.pt2").read_bytes() == b"keep me"
    result = runner.invoke(cli, ["simplify", str(tmp_path / "missing.pt2"), "-o", str(tmp_path / "x.pt2")])
    assert result.exit_code == 2 and "does not exist" in result.output
    result = runner.invoke(
        cli,
        [
            "simplify",
            str(tmp_path / "m.pt2"),
            "-o",
            str(tmp_path / "y.pt2"),
            "--padded-constants",
            "refuse",
            "--keep-batchnorm",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    # dead conv1 filters with a positive bias send relu(b) > 0 into the zero-padded conv2: kept
    expected = int((trained_lenet5.model.conv1.bias[::4] > 0).sum())
    assert expected > 0 and json.loads(result.output)["refused_channels"] == expected
    result = runner.invoke(
        cli, ["simplify", str(tmp_path / "m.pt2"), "-o", str(tmp_path / "z.pt2"), "--simplify-tolerance", "0"]
    )
    assert result.exit_code == 2 and "Invalid value" in result.output
    assert not (tmp_path / "x.pt2").exists()


def test_stage_replaces_the_model_and_saves_it(trained_lenet5, tmp_path):
    model = pruned_lenet5(trained_lenet5)
    art = Artifact(model=model, example_input=trained_lenet5.example_input, data=trained_lenet5.data)
    ctx = StageContext(out_dir=tmp_path, options={"simplify": stage.SimplifyOptions()})
    metrics = stage.run(art, ctx)
    assert art.files["simplified"] == tmp_path / "simplified.pt2" and art.files["simplified"].exists()
    assert count_params(art.model) < count_params(model)
    assert metrics["max_abs_diff_float64"] <= 1e-9 and metrics["size_bytes"] > 0
    assert {row["layer"] for row in metrics["layers"]} == {"conv1", "conv2", "fc1", "fc2"}
    batches = list(trained_lenet5.data.loader("test", 256))
    assert evaluate(art.model, batches)["accuracy"] == evaluate(model, batches)["accuracy"]
    json.dumps(metrics)  # the report must be JSON-serialisable


def test_cli_takes_a_state_dict_with_its_architecture(runner, cli, tmp_path):
    from edgeprune import models

    model = models.resnet20(shortcut="B").eval()
    with torch.no_grad():
        for name, module in model.named_modules():
            if name.endswith("conv1") and name != "conv1":
                module.weight[::2] = 0  # half of every block's inner channels
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    args = [
        "simplify",
        str(tmp_path / "weights.pt"),
        "--arch",
        "edgeprune.models:resnet20",
        "--arch-kwargs",
        '{"shortcut": "B"}',
        "--input-shape",
        "1,3,32,32",
        "-o",
        str(tmp_path / "s.pt2"),
    ]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "168 channels removed" in result.output  # (8 + 16 + 32) x 3 blocks and "max |delta|" in result.output
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(torch.export.load(tmp_path / "s.pt2").module()(x), model(x), rtol=1e-4, atol=1e-4)


def test_cli_map_mode_replaces_the_border_convs_by_precomputed_maps(runner, cli, trained_lenet5, tmp_path):
    """`--padded-constants map`: the same removals, no correction conv, the same outputs after a reload."""
    model = pruned_lenet5(trained_lenet5)
    save_model(model, trained_lenet5.example_input, tmp_path / "pruned.pt2")
    reports = {}
    for mode in ("border", "map"):
        args = ["simplify", str(tmp_path / "pruned.pt2"), "-o", str(tmp_path / f"{mode}.pt2")]
        result = runner.invoke(cli, [*args, "--padded-constants", mode, "--json"])
        assert result.exit_code == 0, result.output
        reports[mode] = json.loads(result.output)
    assert reports["border"]["border_corrections"] > 0 and reports["map"]["border_corrections"] == 0
    assert reports["map"]["channels_removed"] == reports["border"]["channels_removed"]
    assert reports["map"]["fixed_resolution"]
    test_x = trained_lenet5.data.test.tensors[0][:32]
    reloaded = torch.export.load(tmp_path / "map.pt2").module()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(test_x), model(test_x), rtol=1e-4, atol=1e-4)
