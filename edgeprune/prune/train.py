"""Supervised training loop shared by the example models, fine-tuning and the pruners.

``fit`` runs epochs of SGD/Adam under a per-step learning-rate schedule and reports the
validation loss/accuracy per epoch. Pruners plug in through three kinds of hooks:

* ``output_hooks(outputs)`` run after the forward pass and *before* ``loss.backward()`` - SeReNe
  measures its sensitivities there, at the pre-step weights w^t;
* ``step_hooks()`` run after every optimizer step - the decoupled SeReNe shrink and the masks;
* ``epoch_hooks(epoch, metrics)`` run after every epoch with the validation metrics - the plateau
  detector and threshold search; a hook returning True ends training.

Determinism: the data order of epoch e is a permutation drawn from ``seed + e`` alone, so a run
resumed from a checkpoint, and a run split over several processes, see the same batches.

Data parallelism: launched by ``torchrun`` (WORLD_SIZE > 1) the loop joins the process group
(gloo, CPU) and wraps the model in DistributedDataParallel. Every global batch is split between
the processes and the loss is scaled so that DDP's gradient average equals the single-process
batch mean; validation runs on every process, so epoch hooks take the same decisions everywhere. The result
equals the single-process run up to the rounding of the all-reduce (a different summation order):
identical masks on short runs (tested with 2 processes), while long high-learning-rate runs amplify
the ~1e-7 differences like any change of summation order would.
Only rank 0 shows progress and writes checkpoints.

Checkpoint/resume: with ``checkpoint`` set, the model, optimizer, schedule, history, RNG state
and every object in ``state`` (masks, plateau detector, ...) are written atomically after every
epoch; ``resume=True`` continues from that file.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from edgeprune.data import DataBundle
from edgeprune.errors import EdgepruneError
from edgeprune.fileio import atomic_path
from edgeprune.metrics import evaluate
from edgeprune.progress import QUIET, Progress

LR_SCHEDULES = ("cycle", "cosine", "constant", "step")
OPTIMIZERS = ("sgd", "adam")


@dataclass
class TrainConfig:
    epochs: int = 10
    lr: float = 0.05
    optimizer: str = "sgd"  # "sgd" (momentum, nesterov) or "adam"
    weight_decay: float = 5e-4
    batch_size: int = 64
    seed: int = 0
    momentum: float = 0.9
    # cosine to 0 over all steps, constant, step (x0.1 at 50 % and 75 %) or cycle (a linear warm-up
    # over the first 10 % then cosine; the pruner restarts one cycle per prune/fine-tune phase)
    lr_schedule: str = "cosine"

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise EdgepruneError(f"unknown optimizer {self.optimizer!r}", f"choose one of {', '.join(OPTIMIZERS)}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise EdgepruneError(
                f"unknown learning-rate schedule {self.lr_schedule!r}",
                f"choose one of {', '.join(LR_SCHEDULES)}",
            )
        if self.epochs < 0 or self.batch_size < 1 or self.lr <= 0:
            raise EdgepruneError(
                "epochs, batch size and learning rate must be positive",
                "e.g. --epochs 20 --lr 0.01 --batch-size 64",
            )


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(
        params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0, weight_decay=cfg.weight_decay
    )


def cycle_factor(progress: float, warmup: float = 0.1, low: float = 0.01) -> float:
    """LR multiplier at ``progress`` (0..1) through one cycle: linear warm-up from 0.1 over the first
    ``warmup`` of it, then cosine down to ``low`` (held there past the end). Ending every
    prune/fine-tune cycle at a small LR is what lets the accuracy settle before it is compared
    with the floor; a constant LR left it swinging by 20 points on ResNet-20."""
    if progress < warmup:
        return 0.1 + 0.9 * progress / warmup
    t = min((progress - warmup) / (1 - warmup), 1.0)
    return low + (1 - low) * 0.5 * (1.0 + math.cos(math.pi * t))


def make_schedule(
    optimizer: torch.optim.Optimizer,
    cfg: TrainConfig,
    steps: int,
    lr_factor: Callable[[int], float] | None = None,
) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if lr_factor is not None:
            return lr_factor(step)
        progress = min(step / max(steps, 1), 1.0)
        if cfg.lr_schedule == "cycle":
            return cycle_factor(progress)
        if cfg.lr_schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        if cfg.lr_schedule == "step":
            return 0.1 ** ((progress >= 0.5) + (progress >= 0.75))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str) -> torch.device:
    """``auto`` -> the GPU when torch sees one, else the CPU; ``cuda`` without a GPU is refused."""
    if name not in DEVICES:
        raise EdgepruneError(f"unknown device {name!r}", f"choose one of {', '.join(DEVICES)}")
    if name == "cuda" and not torch.cuda.is_available():
        raise EdgepruneError(
            "--device cuda was given but torch sees no CUDA GPU on this machine",
            "use --device cpu (or auto), or install a CUDA build of torch",
        )
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(name)


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, not the machine's core count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def choose_threads() -> int:
    """Intra-op threads for training: one per CPU this process may use, or fewer when the user caps
    them with ``OMP_NUM_THREADS`` (the variable every BLAS/OpenMP program honours; running several jobs
    side by side with it set is how a shared machine is kept from spinning threads against each other).

    Not reduced when the machine is busy: the thread count changes the order of floating-point
    reductions, so a load-dependent choice made two runs with the same seed prune differently."""
    cpus = usable_cpus()
    cap = os.environ.get("OMP_NUM_THREADS", "").strip()
    return min(cpus, int(cap)) if cap.isdigit() and int(cap) > 0 else cpus


def init_distributed(backend: str = "gloo") -> tuple[int, int]:
    """(rank, world size); joins torchrun's process group (gloo on CPU, nccl on GPUs) when WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend)
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all processes (identity without a process group)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm modules that keep running statistics (an aten graph from a .pt2 has none)."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, inputs: torch.Tensor, batch_size: int = 128) -> None:
    """Re-estimate every BatchNorm's running mean and variance on ``inputs`` (forward passes only).

    Why: cutting channels changes the statistics of every BatchNorm downstream, and evaluating with
    the stale running statistics makes a cut look far worse than it is after the first few
    fine-tuning steps (which re-estimate them anyway) - the "adaptive BN" observation of EagleEye
    (Li et al., ECCV 2020). Weights are not touched; the statistics are a cumulative average over
    the batches, so the result does not depend on the momentum.
    """
    layers = batchnorm_layers(model)
    if not layers or len(inputs) == 0:
        return
    momenta = [m.momentum for m in layers]
    was_training = model.training
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    try:
        for start in range(0, len(inputs), batch_size):
            model(inputs[start : start + batch_size])
    finally:
        for m, momentum in zip(layers, momenta, strict=True):
            m.momentum = momentum
        model.train(was_training)


def epoch_batches(
    data: DataBundle, cfg: TrainConfig, epoch: int, rank: int, world: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
    """This process's share of every global batch of epoch ``epoch``, and the global batch size."""
    x, y = data.train.tensors
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(cfg.seed + epoch))
    for start in range(0, len(x), cfg.batch_size):
        batch = order[start : start + cfg.batch_size]
        if len(batch) < world:  # every process must take part in every step
            continue
        mine = batch.tensor_split(world)[rank]
        yield x[mine], y[mine], len(batch)


def fit(
    model: nn.Module,
    data: DataBundle,
    cfg: TrainConfig,
    progress: Progress = QUIET,
    step_hooks: tuple[Callable[[], None], ...] = (),
    epoch_hooks: tuple[Callable[[int, dict[str, float]], bool | None], ...] = (),
    output_hooks: tuple[Callable[[torch.Tensor], None], ...] = (),
    optimizer: torch.optim.Optimizer | None = None,
    checkpoint: Path | None = None,
    resume: bool = False,
    state: dict[str, Stateful] | None = None,
    lr_factor: Callable[[int], float] | None = None,
) -> list[dict[str, float]]:
    """Train ``model`` in place; return per-epoch validation metrics (see the module docstring).

    ``lr_factor(step)``, when given, replaces ``cfg.lr_schedule`` (the pruner's per-cycle schedule).
    """
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    rank, world = init_distributed("nccl" if device.type == "cuda" else "gloo")
    torch.manual_seed(cfg.seed)
    optimizer = optimizer or make_optimizer(model, cfg)
    steps_per_epoch = sum(1 for _ in range(0, len(data.train), cfg.batch_size))
    schedule = make_schedule(optimizer, cfg, cfg.epochs * steps_per_epoch, lr_factor)
    state = state or {}
    history: list[dict[str, float]] = []
    start_epoch = 0
    if resume and checkpoint is not None and checkpoint.exists():
        start_epoch, history = _load_checkpoint(checkpoint, model, optimizer, schedule, cfg, state)
    train_model = DistributedDataParallel(model) if world > 1 else model
    show = progress if rank == 0 else QUIET
    started, eta = time.perf_counter(), ""
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        batches = epoch_batches(data, cfg, epoch, rank, world)
        if epoch > start_epoch:  # the whole run's remaining time, not just this epoch's
            left = (time.perf_counter() - started) / (epoch - start_epoch) * (cfg.epochs - epoch)
            eta = f" (all epochs: ~{int(left // 60)}:{int(left % 60):02d} left)"
        label = f"epoch {epoch + 1}/{cfg.epochs}{eta}"
        for x, y, global_n in show.track(batches, label, total=steps_per_epoch):
            optimizer.zero_grad(set_to_none=True)
            outputs = train_model(x)
            for output_hook in output_hooks:
                output_hook(outputs)
            # Scaled so that DDP's average over `world` processes is the mean over the global batch.
            loss = F.cross_entropy(outputs, y, reduction="sum") * (world / global_n)
            loss.backward()
            optimizer.step()
            schedule.step()
            for step_hook in step_hooks:
                step_hook()
        metrics = evaluate(model, data.loader("val", 256))
        history.append(metrics)
        stop = False
        for epoch_hook in epoch_hooks:
            stop = bool(epoch_hook(epoch, metrics)) or stop
        if checkpoint is not None and rank == 0:
            _save_checkpoint(checkpoint, epoch, model, optimizer, schedule, cfg, history, state)
        if stop:
            break
    model.eval()
    return history


def _save_checkpoint(
    path: Path,
    epoch: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    cfg: TrainConfig,
    history: list[dict[str, float]],
    state: dict[str, Stateful],
) -> None:
    payload = {
        "epoch": epoch,
        "config": asdict(cfg),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "history": history,
        "rng": torch.get_rng_state(),
        "state": {name: obj.state_dict() for name, obj in state.items()},
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def _load_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    cfg: TrainConfig,
    state: dict[str, Stateful],
) -> tuple[int, list[dict[str, float]]]:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user problem
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise EdgepruneError(
            f"cannot read training checkpoint {path}: {first}",
            "delete it to start over, or point --checkpoint elsewhere",
        ) from None
    fields = ("config", "model", "optimizer", "schedule", "rng", "state", "epoch", "history")
    if not isinstance(payload, dict) or any(k not in payload for k in fields) or not isinstance(payload["state"], dict):
        raise EdgepruneError(
            f"{path} is not an edgeprune training checkpoint",
            "delete it to start over, or point --checkpoint elsewhere",
        )
    if payload.get("config") != asdict(cfg):
        raise EdgepruneError(
            f"training checkpoint {path} was written with different settings",
            "resume with the same options, or delete the checkpoint to start over",
        )
    missing = sorted(set(state) - set(payload["state"]))
    if missing:
        raise EdgepruneError(
            f"training checkpoint {path} lacks the {missing[0]!r} state",
            "it was written by a different pruning method; delete it to start over",
        )
    try:
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        schedule.load_state_dict(payload["schedule"])
        torch.set_rng_state(payload["rng"])
        for name, obj in state.items():
            obj.load_state_dict(payload["state"][name])
        return int(payload["epoch"]) + 1, list(payload["history"])
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise EdgepruneError(
            f"training checkpoint {path} is damaged: {first}",
            "delete it to start over, or point --checkpoint elsewhere",
        ) from None
