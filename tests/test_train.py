"""The training loop: seeds, schedules, checkpoint/resume of the pruning state, torchrun + DDP."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from edgeprune.errors import EdgepruneError
from edgeprune.models import LeNet5
from edgeprune.progress import Progress
from edgeprune.prune.pruner import PruneOptions, per_step_lambda, prune_model
from edgeprune.prune.train import TrainConfig, epoch_batches, fit, make_optimizer, make_schedule


def _fresh_lenet(seed: int = 0) -> LeNet5:
    torch.manual_seed(seed)
    return LeNet5(1, 10, 8)


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa)


def test_fit_is_deterministic_for_a_seed_and_differs_across_seeds(digits):
    runs = []
    for seed in (3, 3, 4):
        model = _fresh_lenet()
        history = fit(model, digits, TrainConfig(epochs=2, lr=0.05, seed=seed))
        runs.append(model)
        assert len(history) == 2 and history[-1]["accuracy"] > 0.5
    assert _same_state(runs[0], runs[1])
    assert not _same_state(runs[0], runs[2])


def test_adam_and_constant_schedule_train(digits):
    model = _fresh_lenet()
    history = fit(model, digits, TrainConfig(epochs=2, lr=1e-3, optimizer="adam", lr_schedule="constant"))
    assert history[-1]["accuracy"] > 0.7


def test_learning_rate_schedules():
    model = torch.nn.Linear(2, 2)
    for kind, expected in (("cosine", [1.0, 0.5, 0.0]), ("step", [1.0, 0.1, 0.01]), ("constant", [1.0] * 3)):
        cfg = TrainConfig(lr=1.0, lr_schedule=kind)
        schedule = make_schedule(make_optimizer(model, cfg), cfg, steps=100)
        factors = [schedule.lr_lambdas[0](step) for step in (0, 50, 100)]
        if kind == "step":
            factors[1] = schedule.lr_lambdas[0](60)
            factors[2] = schedule.lr_lambdas[0](80)
        assert factors == pytest.approx(expected, abs=1e-12)


def test_cycle_schedule_warms_up_then_decays_and_lambda_is_per_epoch():
    model = torch.nn.Linear(2, 2)
    cfg = TrainConfig(lr=1.0, lr_schedule="cycle")
    schedule = make_schedule(make_optimizer(model, cfg), cfg, steps=100)
    factors = [schedule.lr_lambdas[0](step) for step in (0, 5, 10, 55, 100, 150)]
    assert factors == pytest.approx([0.1, 0.55, 1.0, 0.505, 0.01, 0.01], abs=1e-12)
    # lambda is what an insensitive channel loses per epoch, whatever the number of steps
    for steps in (1, 20, 421):
        assert (1 - per_step_lambda(0.2, steps)) ** steps == pytest.approx(0.8)


def test_pruning_restarts_the_lr_cycle_at_every_prune_and_for_the_fine_tuning(trained_lenet5):
    model = copy.deepcopy(trained_lenet5.model)
    seen = []
    original = torch.optim.lr_scheduler.LambdaLR.step

    def record(self, *args, **kwargs):
        original(self, *args, **kwargs)
        seen.append(self.get_last_lr()[0])

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.optim.lr_scheduler.LambdaLR, "step", record)
        prune_model(
            model, trained_lenet5.example_input, trained_lenet5.data,
            PruneOptions(epochs=4, finetune_epochs=1, lr=0.05),
        )  # fmt: skip
    steps = len(seen) // 4  # warm-up epoch, two pruning epochs, one fine-tuning epoch
    starts = [seen[i * steps] for i in range(4)]
    ends = [seen[(i + 1) * steps - 1] for i in range(4)]
    assert all(s < 0.05 * 0.6 for s in starts)  # every cycle starts warming up ...
    assert all(e < 0.05 * 0.1 for e in ends)  # ... and ends low, where accuracy is compared
    assert max(seen) == pytest.approx(0.05, rel=0.05)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("optimizer", "rmsprop", "unknown optimizer"),
        ("lr_schedule", "linear", "unknown learning-rate"),
        ("batch_size", 0, "must be positive"),
    ],
)
def test_train_config_rejects_bad_settings(field, value, message):
    with pytest.raises(EdgepruneError, match=message):
        TrainConfig(**{field: value})


def test_batches_split_every_global_batch_between_processes(digits):
    cfg = TrainConfig(batch_size=64, seed=1)
    single = [y for _, y, _ in epoch_batches(digits, cfg, 0, 0, 1)]
    halves = [list(epoch_batches(digits, cfg, 0, r, 2)) for r in (0, 1)]
    for i, labels in enumerate(single):
        assert torch.equal(torch.cat([halves[0][i][1], halves[1][i][1]]), labels)
        assert halves[0][i][2] == len(labels)


class _InterruptAt(Progress):
    """A progress display that raises KeyboardInterrupt when the given epoch starts."""

    def __init__(self, epoch: int) -> None:
        super().__init__(enabled=False)
        self.epoch = epoch

    def track(self, items, description, total=None):
        if description.startswith(f"epoch {self.epoch}/"):
            raise KeyboardInterrupt
        return super().track(items, description, total)


@pytest.mark.parametrize(
    "options",
    [
        dict(epochs=5, finetune_epochs=1, lmbda=0.01),
        # interrupted while channels fade towards the next budget cut: the fading set must survive
        dict(epochs=5, finetune_epochs=1, target_macs=0.3, max_accuracy_drop=None, fade_to=0.01),
    ],
    ids=["twt", "budget-fading"],
)
def test_pruning_resumed_from_checkpoint_matches_an_uninterrupted_run(trained_lenet5, tmp_path, options):
    straight = copy.deepcopy(trained_lenet5.model)
    expected = prune_model(straight, trained_lenet5.example_input, trained_lenet5.data, PruneOptions(**options))
    assert expected.events, "the run must prune something for this test to mean anything"

    checkpoint = tmp_path / "state.pt"
    resumed = copy.deepcopy(trained_lenet5.model)
    opts = PruneOptions(**options, checkpoint=checkpoint, resume=True)
    with pytest.raises(KeyboardInterrupt):
        prune_model(resumed, trained_lenet5.example_input, trained_lenet5.data, opts, progress=_InterruptAt(4))
    assert checkpoint.exists()
    result = prune_model(resumed, trained_lenet5.example_input, trained_lenet5.data, opts)
    assert result.epochs_run == expected.epochs_run
    assert all(torch.equal(result.masks[k], expected.masks[k]) for k in expected.masks)
    assert [e.channels_pruned for e in result.events] == [e.channels_pruned for e in expected.events]
    assert _same_state(resumed, straight)


def test_resume_refuses_a_checkpoint_written_with_other_settings(trained_lenet5, tmp_path):
    checkpoint = tmp_path / "state.pt"
    art = trained_lenet5
    prune_model(
        copy.deepcopy(art.model),
        art.example_input,
        art.data,
        PruneOptions(epochs=2, finetune_epochs=0, checkpoint=checkpoint),
    )
    with pytest.raises(EdgepruneError, match="different settings"):
        prune_model(
            copy.deepcopy(art.model),
            art.example_input,
            art.data,
            PruneOptions(epochs=3, finetune_epochs=0, checkpoint=checkpoint, resume=True),
        )
    checkpoint.write_bytes(b"not a checkpoint")
    with pytest.raises(EdgepruneError, match="cannot read training checkpoint"):
        prune_model(
            copy.deepcopy(art.model),
            art.example_input,
            art.data,
            PruneOptions(epochs=2, finetune_epochs=0, checkpoint=checkpoint, resume=True),
        )


_DDP_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    from edgeprune.data import load_data
    from edgeprune.models import LeNet5
    from edgeprune.prune.pruner import PruneOptions, per_step_lambda, prune_model
    from edgeprune.prune.train import is_main_process

    torch.set_num_threads(1)
    data = load_data("digits", seed=0)
    model = LeNet5(1, 10, 8)
    model.load_state_dict(torch.load(sys.argv[1], weights_only=True))
    options = PruneOptions(epochs=3, finetune_epochs=1, lr=0.01, lmbda=0.01)
    result = prune_model(model, data.test.tensors[0][:1], data, options)
    if is_main_process():
        distributed = torch.distributed.is_initialized()
        torch.save({"masks": result.masks, "state": model.state_dict(), "world": distributed}, sys.argv[2])
    """
)


@pytest.mark.slow
def test_ddp_with_two_processes_gives_the_same_masks_as_one(trained_lenet5, tmp_path):
    script = tmp_path / "ddp_prune.py"
    script.write_text(_DDP_SCRIPT)
    weights = tmp_path / "trained.pt"
    torch.save(trained_lenet5.model.state_dict(), weights)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single, double = tmp_path / "one.pt", tmp_path / "two.pt"
    subprocess.run([sys.executable, str(script), str(weights), str(single)], check=True, env=env, timeout=300)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            str(script),
            str(weights),
            str(double),
        ],
        check=True,
        env=env,
        timeout=300,
        capture_output=True,
    )
    one, two = torch.load(single, weights_only=True), torch.load(double, weights_only=True)
    assert not one["world"] and two["world"]
    assert any(not m.all() for m in one["masks"].values()), "the run must prune something"
    for key, mask in one["masks"].items():
        assert torch.equal(mask, two["masks"][key]), key
    for key, value in one["state"].items():
        torch.testing.assert_close(value, two["state"][key], atol=1e-4, rtol=1e-4)


def test_fit_keeps_the_old_call_signature(digits):
    """edgeprune.examples calls fit(model, data, cfg, progress) and hooks positionally."""
    calls: list[str] = []
    model = _fresh_lenet()
    fit(
        model,
        digits,
        TrainConfig(epochs=1),
        Progress(enabled=False),
        (lambda: calls.append("step"),),
        (lambda epoch, metrics: calls.append(f"epoch{epoch}"),),
    )
    assert calls.count("step") == len(range(0, len(digits.train), 64)) and calls[-1] == "epoch0"
    assert not model.training


def test_checkpoint_is_written_atomically_each_epoch(digits, tmp_path: Path):
    checkpoint = tmp_path / "fit.pt"
    fit(_fresh_lenet(), digits, TrainConfig(epochs=2), checkpoint=checkpoint)
    payload = torch.load(checkpoint, weights_only=True)
    assert payload["epoch"] == 1 and len(payload["history"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fit.pt"]
