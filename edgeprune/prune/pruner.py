"""The pruning run: SeReNe or the L1-magnitude baseline, driven by the same schedule.

``prune_model(model, example_input, data, options)`` trains ``model`` in place and returns a
:class:`PruneResult`. Both methods share everything except what makes channels prunable:

* ``serene``: the SeReNe regulariser shrinks insensitive channels every step; the threshold search
  cuts channels by the largest |w| of their producer entries relative to their group's mean
  (what the regulariser drove towards zero goes first; relative, because absolute magnitudes
  single out the layers with small weights - on digits/LeNet-5 the wide fc layer then loses 86 %
  of its neurons but the convs few channels, leaving 33 % of the MACs instead of 7.7 %; see
  BENCHMARKS.md);
* ``l1``: plain fine-tuning; the threshold search cuts channels by their L1 norm relative to their
  group's mean (Li et al.'s filter-norm criterion made comparable across layers).

Every epoch ends with the plateau detector (PWE); when it fires, the threshold search (TWT) cuts
as many channels as the loss bound - and the accuracy floor, with ``max_accuracy_drop`` - allows,
and the masks pin them at zero. Pruning stops at ``target_sparsity`` (fraction of parameters
removed once simplified), ``target_macs`` (fraction of MACs remaining) or when only the
``finetune_epochs`` of the epoch budget are left; those epochs fine-tune with the masks fixed.
If the final validation accuracy is below the floor, the last state that met it is restored.
"""

from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeprune.data import DataBundle
from edgeprune.errors import EdgepruneError
from edgeprune.graph import analyze
from edgeprune.metrics import evaluate
from edgeprune.progress import QUIET, Progress
from edgeprune.prune.masks import ChannelMasks
from edgeprune.prune.regularizer import SereneRegularizer
from edgeprune.prune.schedule import SCORES, PlateauDetector, threshold_search
from edgeprune.prune.sensitivity import SensitivityConfig
from edgeprune.prune.train import TrainConfig, fit, make_optimizer

METHODS = ("serene", "l1", "none")


@dataclass
class PruneOptions:
    """Everything a pruning run can be told (defaults: the budget `compress --example lenet5` uses)."""

    method: str = "serene"
    epochs: int = 40
    lr: float = 0.05
    optimizer: str = "sgd"
    lr_schedule: str = "constant"
    batch_size: int = 64
    weight_decay: float = 0.0
    lmbda: float = 0.01
    twt: float = 0.05
    pwe: int = 0
    sensitivity: str = "lower_bound"
    spatial: str = "mean"
    normalize: str = "group_max"
    target_sparsity: float | None = None
    target_macs: float | None = None
    max_accuracy_drop: float | None = 1.0
    finetune_epochs: int = 10
    search_evaluations: int = 16
    score: str | None = None  # channel score of the threshold search; None: the method's own
    seed: int = 0
    checkpoint: Path | None = None
    resume: bool = False

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise EdgepruneError(
                f"unknown pruning method {self.method!r}", f"choose one of {', '.join(METHODS)}"
            )
        for name in ("target_sparsity", "target_macs"):
            value = getattr(self, name)
            if value is not None and not 0 < value < 1:
                raise EdgepruneError(
                    f"{name.replace('_', '-')} must be between 0 and 1 (got {value})",
                    "give a fraction, e.g. 0.5",
                )
        if self.lmbda < 0 or self.twt < 0 or self.pwe < 0 or self.finetune_epochs < 0:
            raise EdgepruneError(
                "lambda, TWT, PWE and fine-tune epochs must not be negative",
                "e.g. --lmbda 0.01 --twt 0.05 --pwe 0",
            )
        if self.score is not None and self.score not in SCORES:
            raise EdgepruneError(
                f"unknown channel score {self.score!r}", f"choose one of {', '.join(SCORES)}"
            )
        self.sensitivity_config()  # validate the sensitivity settings early

    def sensitivity_config(self) -> SensitivityConfig:
        return SensitivityConfig(
            variant=self.sensitivity, spatial=self.spatial, normalize=self.normalize, seed=self.seed
        )

    def train_config(self) -> TrainConfig:
        return TrainConfig(
            epochs=self.epochs,
            lr=self.lr,
            optimizer=self.optimizer,
            weight_decay=self.weight_decay,
            batch_size=self.batch_size,
            seed=self.seed,
            lr_schedule=self.lr_schedule,
        )


@dataclass
class PruneEvent:
    epoch: int
    threshold: float
    channels_pruned: int
    channels_kept: int
    val_loss_before: float
    val_loss_after: float
    loss_bound: float
    params_remaining: float
    macs_remaining: float


@dataclass
class PruneResult:
    method: str
    groups: list[dict[str, Any]]
    events: list[PruneEvent]
    history: list[dict[str, float]]
    val_before: dict[str, float]
    val_after: dict[str, float]
    params_remaining: float
    macs_remaining: float
    epochs_run: int
    seconds: float
    masks: dict[str, torch.Tensor] = field(default_factory=dict)


class CostModel:
    """Fractions of parameters and MACs that survive simplification, computed from the masks.

    Each Conv/Linear weight entry costs one MAC per output position (read from the traced graph's
    recorded outputs); an entry goes away when it is a producer row or consumer column of a
    pruned channel. Used for ``target_sparsity`` / ``target_macs`` during training, when the real
    simplified model does not exist yet.
    """

    def __init__(self, model: nn.Module, graph: Any) -> None:
        parameters = dict(model.named_parameters())
        self.param_names = set(parameters)
        self.total_params = sum(p.numel() for p in parameters.values())
        self.mac_weight: dict[str, int] = {}
        values = graph.analysis.traced.values
        for layer in graph.analysis.layers.values():
            out = values.get(layer.node)
            if isinstance(out, torch.Tensor) and out.dim() >= 2:
                self.mac_weight[layer.weight] = out[0].numel() // out.shape[1]
        self.total_macs = sum(
            parameters[n].numel() * m for n, m in self.mac_weight.items() if n in parameters
        )

    def remaining(self, masks: ChannelMasks) -> tuple[float, float]:
        """(fraction of parameters, fraction of MACs) left after simplification."""
        removed = masks.removable_entries()
        params = sum(int(mask.sum()) for name, mask in removed.items() if name in self.param_names)
        macs = sum(int(removed[n].sum()) * m for n, m in self.mac_weight.items() if n in removed)
        return 1 - params / max(self.total_params, 1), 1 - macs / max(self.total_macs, 1)


class _Controller:
    """The epoch hook: plateau -> threshold search -> masks; stopping; the accuracy floor."""

    def __init__(
        self,
        model: nn.Module,
        data: DataBundle,
        masks: ChannelMasks,
        optimizer: torch.optim.Optimizer,
        options: PruneOptions,
        cost: CostModel,
        regularizer: SereneRegularizer | None,
        floor: float | None,
    ) -> None:
        self.model, self.data, self.masks, self.optimizer = model, data, masks, optimizer
        self.options, self.cost, self.regularizer, self.floor = options, cost, regularizer, floor
        self.detector = PlateauDetector(options.pwe)
        self.events: list[PruneEvent] = []
        self.pruning = True
        self.finetune_left = options.finetune_epochs
        self.good: dict[str, Any] = {}
        self.remember()  # the starting point meets the accuracy floor by definition

    def remember(self) -> None:
        """Keep the current weights and masks as the latest state that meets the accuracy floor."""
        self.good = {"model": copy.deepcopy(self.model.state_dict()), "masks": self.masks.state_dict()}

    def measure(self) -> dict[str, float]:
        return evaluate(self.model, self.data.loader("val", 512))

    def after_epoch(self, epoch: int, metrics: dict[str, float]) -> bool:
        last_pruning_epoch = self.options.epochs - self.options.finetune_epochs - 1
        if self.pruning and self.detector.update(metrics["loss"], self.model):
            self._prune(epoch)
            metrics = self.measure()
        if self.floor is None or metrics["accuracy"] >= self.floor:
            self.remember()
        if self.pruning and (epoch >= last_pruning_epoch or self._target_reached()):
            self._stop_pruning()
            return self.finetune_left == 0
        if not self.pruning:
            self.finetune_left -= 1
            return self.finetune_left <= 0
        return False

    def _prune(self, epoch: int) -> None:
        opts = self.options
        score = opts.score or ("maxabs_relative" if opts.method == "serene" else "l1_relative")
        result = threshold_search(
            self.masks, self.measure, opts.twt, score, opts.search_evaluations, self.floor
        )
        self.masks.apply(self.optimizer)
        params, macs = self.cost.remaining(self.masks)
        self.events.append(
            PruneEvent(
                epoch=epoch + 1,
                threshold=result.threshold,
                channels_pruned=result.channels,
                channels_kept=self.masks.total_kept(),
                val_loss_before=result.loss_before,
                val_loss_after=result.loss_after,
                loss_bound=result.bound,
                params_remaining=params,
                macs_remaining=macs,
            )
        )

    def _target_reached(self) -> bool:
        params, macs = self.cost.remaining(self.masks)
        opts = self.options
        return (opts.target_sparsity is not None and 1 - params >= opts.target_sparsity) or (
            opts.target_macs is not None and macs <= opts.target_macs
        )

    def _stop_pruning(self) -> None:
        self.pruning = False
        if self.regularizer is not None:
            self.regularizer.lmbda = 0.0

    def restore_good(self) -> None:
        self.model.load_state_dict(self.good["model"])
        self.masks.load_state_dict(self.good["masks"])

    def state_dict(self) -> dict[str, Any]:
        return {
            "detector": self.detector.state_dict(),
            "pruning": self.pruning,
            "finetune_left": self.finetune_left,
            "good": self.good,
            "events": [e.__dict__ for e in self.events],
            "lmbda": self.regularizer.lmbda if self.regularizer is not None else 0.0,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.detector.load_state_dict(state["detector"])
        self.pruning, self.finetune_left, self.good = state["pruning"], state["finetune_left"], state["good"]
        self.events = [PruneEvent(**e) for e in state["events"]]
        if self.regularizer is not None:
            self.regularizer.lmbda = state["lmbda"]


def prune_model(
    model: nn.Module,
    example_input: torch.Tensor,
    data: DataBundle,
    options: PruneOptions,
    progress: Progress = QUIET,
) -> PruneResult:
    """Prune ``model`` in place with ``options.method`` (see the module docstring)."""
    start = time.perf_counter()
    graph = analyze(model, example_input)
    groups = graph.prunable_groups()
    if not groups:
        raise EdgepruneError(
            "the model has no prunable channel groups",
            "every channel is tied to the model input/output or to an operation edgeprune "
            "cannot prune; use --method none",
        )
    masks = ChannelMasks(model, groups)
    masks.mark_dead()
    cost = CostModel(model, graph)
    val_before = evaluate(model, data.loader("val", 512))
    floor = None
    if options.max_accuracy_drop is not None:
        floor = val_before["accuracy"] - options.max_accuracy_drop / 100
    cfg = options.train_config()
    torch.manual_seed(options.seed)
    optimizer = make_optimizer(model, cfg)
    regularizer = None
    if options.method == "serene":
        regularizer = SereneRegularizer(
            model, masks, options.lmbda, options.sensitivity_config(), optimizer=optimizer
        )
    controller = _Controller(model, data, masks, optimizer, options, cost, regularizer, floor)
    hooks: dict[str, Any] = {
        "step_hooks": (regularizer.shrink,) if regularizer else (lambda: masks.apply(optimizer),),
        "output_hooks": (regularizer.observe,) if regularizer else (),
        "epoch_hooks": (controller.after_epoch,),
    }
    state = {"masks": masks, "controller": controller}
    with regularizer if regularizer is not None else contextlib.nullcontext():
        history = fit(
            model,
            data,
            cfg,
            progress,
            optimizer=optimizer,
            checkpoint=options.checkpoint,
            resume=options.resume,
            state=state,
            **hooks,
        )
    val_after = evaluate(model, data.loader("val", 512))
    if floor is not None and val_after["accuracy"] < floor:
        controller.restore_good()
        val_after = evaluate(model, data.loader("val", 512))
    masks.apply()
    params, macs = cost.remaining(masks)
    rows = [
        {
            "group": g.id,
            "layers": ", ".join(sorted({s.name.rsplit(".", 1)[0] for s in g.producers})),
            "channels": g.size,
            "kept": masks.kept(g.id),
            "removed": g.size - masks.kept(g.id),
        }
        for g in masks.groups
    ]
    return PruneResult(
        method=options.method,
        groups=rows,
        events=controller.events,
        history=history,
        val_before=val_before,
        val_after=val_after,
        params_remaining=params,
        macs_remaining=macs,
        epochs_run=len(history),
        seconds=time.perf_counter() - start,
        masks={str(k): v.clone() for k, v in masks.keep.items()},
    )
