"""--device auto|cpu|cuda and the thread count of the prune stage (CPU-only machines included)."""

from __future__ import annotations

import copy
import os

import pytest
import torch

from edgeprune.errors import EdgepruneError
from edgeprune.prune.pruner import PruneOptions, prune_model
from edgeprune.prune.train import choose_threads, resolve_device, usable_cpus

NO_GPU = not torch.cuda.is_available()


def test_auto_picks_the_gpu_only_when_there_is_one():
    assert resolve_device("auto").type == ("cpu" if NO_GPU else "cuda")
    assert resolve_device("cpu").type == "cpu"


@pytest.mark.skipif(not NO_GPU, reason="needs a machine without a CUDA GPU")
def test_cuda_without_a_gpu_is_a_one_line_error(runner, cli, tmp_path):
    with pytest.raises(EdgepruneError, match="--device cuda was given but torch sees no CUDA GPU"):
        resolve_device("cuda")
    args = ["compress", "--example", "lenet5", "--stages", "load,prune", "--prune-device", "cuda"]
    result = runner.invoke(cli, [*args, "-o", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0 and "use --device cpu" in result.output


@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_pruning_runs_on_the_chosen_device_and_hands_the_model_back_on_the_cpu(trained_lenet5, device):
    model = copy.deepcopy(trained_lenet5.model)
    threads = torch.get_num_threads()
    result = prune_model(
        model, trained_lenet5.example_input, trained_lenet5.data,
        PruneOptions(epochs=3, finetune_epochs=1, device=device),
    )  # fmt: skip
    assert result.epochs_run == 3 and result.val_after["accuracy"] >= result.floor
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert torch.get_num_threads() == threads  # restored after the stage


def test_thread_count_follows_the_cpus_the_process_may_use(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert usable_cpus() == len(os.sched_getaffinity(0))
    monkeypatch.setattr(os, "getloadavg", lambda: (usable_cpus() + 8.0, 0.0, 0.0))
    assert choose_threads() == usable_cpus()  # never load-dependent: same seed, same threads, same result


@pytest.mark.parametrize(("value", "expected"), [("1", 1), ("1000", None), ("0", None), ("two", None), ("", None)])
def test_omp_num_threads_caps_the_training_threads(monkeypatch, value, expected):
    """A user running jobs side by side sets OMP_NUM_THREADS=1; a larger or unusable value changes nothing."""
    monkeypatch.setenv("OMP_NUM_THREADS", value)
    assert choose_threads() == (expected or usable_cpus())
