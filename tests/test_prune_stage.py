"""Real pruning runs on digits, the prune stage, and the `edgeprune prune` / compress CLI."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from edgeprune.artifact import Artifact, StageContext
from edgeprune.checkpoint import load_model
from edgeprune.data import load_data
from edgeprune.errors import DataError, EdgepruneError
from edgeprune.graph import analyze
from edgeprune.metrics import evaluate
from edgeprune.prune import stage as prune_stage
from edgeprune.prune.masks import ChannelMasks
from edgeprune.prune.pruner import MIN_AUTO_EPOCHS, PruneOptions, auto_epochs, prune_model
from edgeprune.prune.stage import run
from edgeprune.simplify import simplify
from edgeprune.simplify.options import SimplifyOptions


def _copy(art: Artifact) -> Artifact:
    return Artifact(model=copy.deepcopy(art.model), example_input=art.example_input, data=art.data, meta={})


@pytest.mark.parametrize(("method", "at_most_kept"), [("serene", 0.8), ("l1", 0.95)])
def test_short_real_run_removes_neurons_within_the_accuracy_bound(trained_lenet5, method, at_most_kept):
    art = _copy(trained_lenet5)
    options = PruneOptions(method=method, epochs=10, finetune_epochs=2, max_accuracy_drop=1.0)
    result = prune_model(art.model, art.example_input, art.data, options)
    kept = sum(row["kept"] for row in result.groups)
    assert kept < at_most_kept * sum(row["channels"] for row in result.groups)
    assert result.val_after["accuracy"] >= result.val_before["accuracy"] - 0.01
    assert result.params_remaining < at_most_kept
    simplified = simplify(art.model, art.example_input)
    assert simplified.report["channels_removed"] == sum(row["removed"] for row in result.groups)
    test_accuracy = evaluate(simplified.model, art.data.loader("test", 512))["accuracy"]
    assert test_accuracy >= trained_lenet5.meta["trained_test_accuracy"] - 0.03


@pytest.mark.parametrize("target", ["target_sparsity", "target_macs"])
def test_targets_stop_pruning_early(trained_lenet5, target):
    art = _copy(trained_lenet5)
    value = 0.3 if target == "target_sparsity" else 0.7
    options = PruneOptions(epochs=30, finetune_epochs=1, lmbda=0.01, **{target: value})
    result = prune_model(art.model, art.example_input, art.data, options)
    if target == "target_sparsity":
        assert result.params_remaining <= 0.7
    else:
        assert result.macs_remaining <= 0.7
    assert result.epochs_run < 30
    assert result.events[-1].epoch == result.epochs_run - 1  # pruned, then one epoch of fine-tuning


def test_a_budget_is_approached_geometrically(trained_lenet5):
    """After the first event (where TWT may cut a lot for free) every prune event keeps about the same
    share of the MACs that are left - a linear schedule would keep 0.80, 0.75, 0.66 and 0.49 of them
    here, putting the largest cut where the least training is left to recover from it."""
    art = _copy(trained_lenet5)
    options = PruneOptions(
        method="l1", epochs=6, finetune_epochs=1, warmup_epochs=0, twt=0.0, target_macs=0.1, max_accuracy_drop=None
    )
    result = prune_model(art.model, art.example_input, art.data, options)
    left = [1.0] + [event.macs_remaining for event in result.events]
    shares = [after / before for before, after in zip(left, left[1:], strict=False)]
    assert len(result.events) == 5 and result.macs_remaining <= 0.1
    assert min(shares[1:]) >= 0.55 and max(shares[1:]) / min(shares[1:]) < 1.25, shares


def test_fading_hands_the_budgets_cuts_to_the_free_search(trained_lenet5):
    """With the fade, the channels the next budget cut will remove shrink during the epoch before it, so
    the TWT search takes them within its loss bound and the budget has little left to force: on this
    run 63 forced channels after the first event instead of 115, none at the last. Without it the
    forced cuts stay large to the end (they are what the fine-tuning has to recover from). LeNet-5 has no
    residual stream, so the default fades as 0.01 does."""
    forced = {}
    for fade_to in (1.0, 0.01, None):
        art = _copy(trained_lenet5)
        options = PruneOptions(epochs=6, finetune_epochs=1, target_macs=0.2, max_accuracy_drop=None, fade_to=fade_to)
        result = prune_model(art.model, art.example_input, art.data, options)
        assert result.macs_remaining <= 0.2
        forced[fade_to] = [event.channels_forced for event in result.events]
    assert len(forced[0.01]) == len(forced[1.0]) == 5
    assert sum(forced[0.01][1:]) < 0.75 * sum(forced[1.0][1:]), forced
    assert forced[0.01][-1] <= 0.5 * forced[1.0][-1], forced
    assert forced[None] == forced[0.01]


@pytest.mark.parametrize(
    ("budget", "counts"),
    [({"target_macs": 0.5}, ("macs",)), ({"target_sparsity": 0.5}, ("params",)), ({}, ("params", "macs"))],
)
def test_the_search_prices_channels_in_what_the_budget_counts(trained_lenet5, monkeypatch, budget, counts):
    """The TWT search ranks by score per cost; with a MAC budget a channel costs its MAC share only (a
    parameter-heavy, MAC-light channel is not what that budget needs removed), with a parameter budget
    its parameter share, and without a budget both."""
    import edgeprune.prune.pruner as pruner

    seen: list[dict] = []

    def spy(*args, cost, **kwargs):
        seen.append(cost)
        return search(*args, cost=cost, **kwargs)

    search = pruner.threshold_search
    monkeypatch.setattr(pruner, "threshold_search", spy)
    art = _copy(trained_lenet5)
    graph = analyze(art.model, art.example_input)
    masks = ChannelMasks(art.model, graph.prunable_groups())
    cost = pruner.CostModel(art.model, graph)
    params, macs = cost.channel_cost(masks, ("params",)), cost.channel_cost(masks, ("macs",))
    # LeNet-5's conv channels carry more of the MACs than of the parameters and the Linear's the reverse,
    # so the two prices order the groups differently
    assert sorted(params, key=params.get) != sorted(macs, key=macs.get)
    assert cost.channel_cost(masks) == pytest.approx({g: params[g] + macs[g] for g in params})
    options = PruneOptions(method="l1", epochs=3, finetune_epochs=1, warmup_epochs=0, max_accuracy_drop=None, **budget)
    prune_model(art.model, art.example_input, art.data, options)
    assert seen and seen[0] == pytest.approx(cost.channel_cost(masks, counts))


@pytest.mark.parametrize(("floor", "first_event"), [(1.0, 2), (None, 1)])
def test_the_warm_up_epoch_is_there_to_set_the_floor(trained_lenet5, floor, first_event):
    """By default one epoch trains before pruning when there is an accuracy floor to set from it; without
    a floor the first epoch already ends with a prune event (one more event for the budget)."""

    def warmup(**options) -> int | None:
        return PruneOptions(**options).with_epoch_budget(10**6, 1000).warmup_epochs

    assert warmup(max_accuracy_drop=floor) == (0 if floor is None else 1)
    assert warmup(max_accuracy_drop=None, warmup_epochs=2) == 2
    art = _copy(trained_lenet5)
    options = PruneOptions(method="l1", epochs=4, finetune_epochs=1, twt=0.0, target_macs=0.05, max_accuracy_drop=floor)
    result = prune_model(art.model, art.example_input, art.data, options)
    assert result.events[0].epoch == first_event
    assert len(result.events) == 4 - first_event


def test_accuracy_floor_restores_the_last_good_state_and_says_so(trained_lenet5, capsys):
    """A destructive lambda wrecks accuracy; with the floor the run ends on a state that meets it,
    with a warning on stderr and ``rolled_back`` set - never silently."""
    harsh = dict(epochs=3, finetune_epochs=0, lmbda=0.99, twt=0.0, warmup_epochs=0)
    unbounded = _copy(trained_lenet5)
    wrecked = prune_model(
        unbounded.model,
        unbounded.example_input,
        unbounded.data,
        PruneOptions(**harsh, max_accuracy_drop=None),
    )
    floor = wrecked.val_before["accuracy"] - 0.01
    assert wrecked.val_after["accuracy"] < floor and not wrecked.rolled_back
    capsys.readouterr()
    bounded = _copy(trained_lenet5)
    kept = prune_model(bounded.model, bounded.example_input, bounded.data, PruneOptions(**harsh, max_accuracy_drop=1.0))
    assert kept.val_after["accuracy"] >= floor and kept.rolled_back
    warning = capsys.readouterr().err
    assert "warning: pruning ended at" in warning and "rolled back to the state after epoch" in warning


def test_stage_prunes_saves_and_reports(trained_lenet5, tmp_path):
    art = _copy(trained_lenet5)
    ctx = StageContext(out_dir=tmp_path, options={"prune": PruneOptions(epochs=5, finetune_epochs=1)}, seed=0)
    metrics = run(art, ctx)
    assert art.files["pruned"] == tmp_path / "pruned.pt2"
    assert metrics["size_bytes"] == (tmp_path / "pruned.pt2").stat().st_size
    assert metrics["method"] == "serene" and metrics["lambda"] == 0.2 and metrics["epochs_run"] == 5
    assert metrics["cut_biases"] == "none"  # the default keeps a cut exact up to the channel gain
    assert metrics["padded_constants"] == "border"  # simplify's default, what the MAC estimate assumed
    assert (metrics["epochs"], metrics["finetune_epochs"], metrics["epochs_auto"]) == (5, 1, False)
    assert [row["layers"] for row in metrics["channels"]] == ["conv1", "conv2", "fc1"]
    assert metrics["channels_kept"] < metrics["channels_total"] == 570
    assert metrics["rolled_back"] is False and metrics["preprocessing"].startswith("scaled to [0, 1], then")
    assert metrics["accuracy_before"] == pytest.approx(trained_lenet5.meta["trained_test_accuracy"])
    json.dumps(metrics)  # the report must be able to serialise it
    saved = load_model(tmp_path / "pruned.pt2")
    x = art.data.test.tensors[0][:16]
    torch.testing.assert_close(saved.model(x), art.model(x))


def test_epochs_default_to_a_compute_budget():
    """No --epochs: the example keeps 40 epochs (10 fine-tuning); a ResNet-20 at 28x28 on Fashion-MNIST's
    54k images gets what fits the budget; any model gets at least the minimum a pruning run needs."""
    decided = PruneOptions(epochs=40, finetune_epochs=10, warmup_epochs=1)
    assert PruneOptions().with_epoch_budget(260_520, 1_437) == decided
    resnet = PruneOptions().with_epoch_budget(41_000_000, 54_000)
    assert MIN_AUTO_EPOCHS <= resnet.epochs < 10 and resnet.finetune_epochs == resnet.epochs // 4
    assert auto_epochs(10**12, 10**6) == MIN_AUTO_EPOCHS
    assert PruneOptions(epochs=7).with_epoch_budget(10**12, 10**6) == PruneOptions(
        epochs=7, finetune_epochs=1, warmup_epochs=1
    )
    assert PruneOptions(finetune_epochs=0).with_epoch_budget(1, 1).finetune_epochs == 0


@pytest.mark.parametrize("budget", [{"target_macs": 0.1}, {"target_params": 0.2}, {"target_sparsity": 0.5}])
def test_a_budget_gets_one_more_fine_tune_epoch(budget):
    """Cuts a budget forces past TWT need more recovery: one fine-tune epoch more than the quarter, none
    taken from a one-epoch run, and an explicit --finetune-epochs still wins."""
    for epochs, finetune in ((8, 3), (24, 7), (40, 11), (2, 1), (1, 0)):
        assert PruneOptions(epochs=epochs, **budget).with_epoch_budget(1, 1).finetune_epochs == finetune
    assert PruneOptions(epochs=8).with_epoch_budget(1, 1).finetune_epochs == 2
    assert PruneOptions(epochs=8, finetune_epochs=2, **budget).with_epoch_budget(1, 1).finetune_epochs == 2


@pytest.mark.parametrize(
    ("options", "cap"),
    [
        ({"epochs": 6}, None),  # sized by the search
        ({"epochs": 40}, None),  # the README's example
        ({"epochs": 6, "target_macs": 0.2}, 16),  # the budget's schedule sets each event's share
        ({"epochs": 6, "target_sparsity": 0.5}, 16),
        ({"epochs": 40, "search_evaluations": 48}, 48),  # given: kept
    ],
)
def test_the_search_cap_is_sized_without_a_budget(options, cap):
    assert PruneOptions(**options).with_epoch_budget(1, 1).search_evaluations == cap


@pytest.mark.parametrize(("simplify_options", "expected"), [(None, "border"), (SimplifyOptions("map"), "map")])
def test_the_stage_prunes_for_the_padded_constants_simplify_will_use(
    trained_lenet5, tmp_path, monkeypatch, simplify_options, expected
):
    """A MAC budget pays for border-correction convs only where simplify builds them, so the prune stage
    takes simplify's --padded-constants from the run (compress passes both); alone, simplify's default."""
    seen: list[PruneOptions] = []
    monkeypatch.setattr(prune_stage, "prune_artifact", lambda art, options, dest, progress: seen.append(options) or {})
    options = {"prune": PruneOptions(epochs=1, target_macs=0.5)}
    if simplify_options is not None:
        options["simplify"] = simplify_options
    run(_copy(trained_lenet5), StageContext(out_dir=tmp_path, options=options, seed=0))
    assert seen[0].padded_constants == expected


def test_stage_without_data_refuses_unless_method_none(trained_lenet5, tmp_path):
    art = Artifact(model=copy.deepcopy(trained_lenet5.model), example_input=trained_lenet5.example_input)
    with pytest.raises(DataError, match=r"SeReNe needs data .* \(pass --data .* or --method none\)"):
        run(art, StageContext(out_dir=tmp_path))
    assert not (tmp_path / "pruned.pt2").exists()
    before = copy.deepcopy(art.model.state_dict())
    assert run(art, StageContext(out_dir=tmp_path, options={"prune": PruneOptions(method="none")}))["method"] == "none"
    assert all(torch.equal(before[k], v) for k, v in art.model.state_dict().items())
    assert (tmp_path / "pruned.pt2").exists()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "random"}, "unknown pruning method 'random'"),
        ({"target_macs": -1}, "target-macs must be positive"),
        ({"target_sparsity": 1.5}, "target-sparsity must be between"),
        ({"lmbda": 1.0}, "must be below 1"),
        ({"device": "tpu"}, "unknown device 'tpu'"),
        ({"bn_shrink": "beta"}, "unknown BatchNorm shrink"),
        ({"fade_to": 0}, r"fade-to .* must be in \(0, 1\]"),
        ({"twt": -1}, "must not be negative"),
        ({"sensitivity": "exact"}, "unknown sensitivity setting"),
        ({"score": "l2"}, "unknown channel score"),
        ({"cut_biases": True}, "unknown --cut-biases True"),  # the boolean of earlier versions
        ({"padded_constants": "zero"}, "unknown padded-constant mode 'zero'"),
        ({"round_to": 0}, "round-to must be at least 1"),
        ({"search_evaluations": 0}, "search-evaluations must be at least 1"),
    ],
)
def test_bad_options_are_refused(kwargs, message):
    with pytest.raises(EdgepruneError, match=message):
        PruneOptions(**kwargs)


@pytest.fixture
def lenet_state(trained_lenet5, tmp_path):
    path = tmp_path / "lenet5.pt"
    torch.save(trained_lenet5.model.state_dict(), path)
    x = load_data("digits", seed=0).train.tensors[0]  # the example standardised digits with these
    return [
        "--normalize",
        f"{float(x.mean())!r},{float(x.std(unbiased=False)) + 1e-6!r}",
        str(path),
        "--arch",
        "edgeprune.models:lenet5",
        "--arch-kwargs",
        '{"input_size": 8}',
        "--input-shape",
        "1,1,8,8",
    ]


def test_cli_prunes_a_state_dict_end_to_end(runner, cli, lenet_state, tmp_path):
    out = tmp_path / "pruned.pt2"
    result = runner.invoke(
        cli,
        [
            "prune",
            *lenet_state,
            "--data",
            "digits",
            "--method",
            "l1",
            "--epochs",
            "4",
            "--finetune-epochs",
            "1",
            "--search-evaluations",
            "3",
            "--json",
            "-o",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["method"] == "l1" and report["output"] == str(out) and report["epochs_run"] == 4
    assert report["channels_kept"] < report["channels_total"]
    assert report["events"] and all(e["evaluations"] <= 3 for e in report["events"])  # the cap reached the search
    assert load_model(out).model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    again = runner.invoke(cli, ["prune", *lenet_state, "--data", "digits", "-o", str(out)])
    assert again.exit_code == 2 and "already exists" in again.output


def test_cli_errors_are_one_line(runner, cli, lenet_state, tmp_path):
    out = str(tmp_path / "p.pt2")
    no_data = runner.invoke(cli, ["prune", *lenet_state, "-o", out])
    assert no_data.exit_code == 2
    assert no_data.output.strip() == (
        "error: SeReNe needs data to train and validate while pruning "
        "(pass --data (e.g. --data digits or a dataset directory) or --method none)"
    )
    bad = runner.invoke(cli, ["prune", *lenet_state, "--data", "digits", "--target-sparsity", "1.5", "-o", out])
    assert bad.exit_code == 2 and "--target-sparsity" in bad.output
    none = runner.invoke(cli, ["prune", *lenet_state, "--method", "none", "-o", out])
    assert none.exit_code == 0 and "unchanged" in none.output


def test_compress_takes_the_prune_options(runner, cli, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(
        cli,
        [
            "compress",
            "--example",
            "lenet5",
            "--stages",
            "load,prune",
            "--prune-method",
            "l1",
            "--prune-epochs",
            "3",
            "--prune-finetune-epochs",
            "1",
            "--twt",
            "0.1",
            "--prune-cut-biases",
            "padded",
            "--json",
            "-o",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    stage = next(s for s in json.loads(result.stdout)["stages"] if s["name"] == "prune")
    assert stage["metrics"]["method"] == "l1" and stage["metrics"]["twt"] == 0.1
    assert stage["metrics"]["cut_biases"] == "padded"
    assert stage["metrics"]["epochs_run"] == 3
    assert "### prune: channels" in (out / "report.md").read_text()
    assert (out / "pruned.pt2").exists()


def test_the_starting_validation_score_covers_the_whole_split_when_taken_after_training(trained_lenet5):
    """With a warm-up the full validation score waits until after training (512 images before it only check
    for a model near chance); the reported number is still the starting model's score on the whole split."""
    art = _copy(trained_lenet5)
    expected = evaluate(art.model, art.data.loader("val", 512))
    result = prune_model(art.model, art.example_input, art.data, PruneOptions(epochs=3, finetune_epochs=1))
    assert result.val_before == expected
    assert result.val_reference is not None  # the floor came from the warm-up epoch


@pytest.mark.slow
@pytest.mark.parametrize("padded_constants", ["border", "map"])
def test_compress_holds_a_mac_budget_for_the_model_simplify_builds(runner, cli, tmp_path, padded_constants):
    """End to end: under either --padded-constants the prune stage's MAC estimate is what the simplified
    model computes (to the report's rounding), and it is within the budget."""
    out = tmp_path / "out"
    args = ["--quiet", "compress", "--example", "lenet5", "--stages", "prune,simplify", "--prune-epochs", "3"]
    args += ["--target-macs", "0.3", "--padded-constants", padded_constants, "-o", str(out), "--json"]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    stages = {s["name"]: s for s in json.loads(result.stdout)["stages"]}
    real = stages["simplify"]["macs"] / stages["load"]["macs"]
    assert stages["prune"]["metrics"]["macs_remaining_estimate"] == pytest.approx(real, abs=5e-5)
    assert real <= 0.3


@pytest.mark.slow
def test_compress_round_to_leaves_widths_that_are_multiples(runner, cli, tmp_path):
    """End to end: ``--prune-round-to 4`` under a MAC budget leaves every pruned layer of the simplified
    model a multiple of four channels wide or whole (the example LeNet-5's 20-, 50- and 500-wide layers)."""
    out = tmp_path / "out"
    args = ["--quiet", "compress", "--example", "lenet5", "--stages", "prune,simplify", "--prune-epochs", "3"]
    result = runner.invoke(cli, [*args, "--target-macs", "0.3", "--prune-round-to", "4", "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    stages = {s["name"]: s for s in json.loads(result.stdout)["stages"]}
    assert stages["prune"]["metrics"]["round_to"] == 4  # the report says how the widths were chosen
    weights = torch.export.load(out / "simplified.pt2").state_dict
    widths = {k: v.shape[0] for k, v in weights.items() if k.endswith("weight") and "border" not in k}
    widths.pop("fc2.weight")  # the classifier's ten outputs are not a prunable group
    whole = {"conv1.weight": 20, "conv2.weight": 50, "fc1.weight": 500}
    assert widths.keys() == whole.keys() and sum(widths.values()) < sum(whole.values())
    assert all(w % 4 == 0 or w == whole[k] for k, w in widths.items()), widths
