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
and the masks pin them at zero. A budget - ``target_sparsity`` (fraction of parameters removed once
simplified), ``target_params`` / ``target_macs`` (fraction or count left) - is reached by the last
pruning epoch: where TWT cuts less than the schedule towards it asks (geometric: every event removes
the same share of what is left), the next-ranked channels are cut anyway and fine-tuning recovers
(:func:`~edgeprune.prune.schedule.budget_cut`). SeReNe sees those cuts coming: during the epoch before
an event its regulariser fades out the channels the schedule will cut there (to ``fade_to`` of their
scale; by default only in models without residual streams), so that the network moves their work
elsewhere first and the TWT search takes them within its bound; L1, which has no regulariser, meets
them at the cut. Pruning stops once the budget is met or when only
the ``finetune_epochs`` of the epoch budget are left; those epochs fine-tune with the masks fixed
(by default a quarter of the epochs, one more under a budget: :func:`default_finetune_epochs`).
The first ``warmup_epochs`` (by default one when there is a floor, none without) train without
shrinking or pruning; the accuracy floor (``max_accuracy_drop`` points) is then set from the
validation accuracy after them. Every prune/fine-tune cycle has its own learning-rate cycle
(warm-up + cosine). lambda is per epoch (what a fully insensitive channel loses in one epoch), so
the shrink does not depend on the dataset or batch size. If the final validation accuracy is below
the floor, the last state that met it is restored, a warning goes to stderr and the result says
``rolled_back``. With ``round_to`` N both the TWT search and the budget cuts remove whole blocks, so
every layer stays a multiple of N channels wide (or whole): the runtime's SIMD block, where removed
MACs turn into latency (:func:`~edgeprune.prune.schedule.channel_candidates`).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from edgeprune.data import DataBundle
from edgeprune.errors import EdgepruneError
from edgeprune.graph import analyze
from edgeprune.metrics import evaluate
from edgeprune.options import cli
from edgeprune.progress import QUIET, Progress, warn
from edgeprune.prune.masks import BIAS_CUTS, ChannelMasks
from edgeprune.prune.regularizer import BN_SHRINK, SereneRegularizer
from edgeprune.prune.schedule import (
    SCORES,
    PlateauDetector,
    budget_cut,
    channel_candidates,
    threshold_search,
    uniform_width_order,
)
from edgeprune.prune.sensitivity import NORMALIZE as SENSITIVITY_NORMS
from edgeprune.prune.sensitivity import SPATIAL as SPATIAL_REDUCTIONS
from edgeprune.prune.sensitivity import VARIANTS as SENSITIVITY_VARIANTS
from edgeprune.prune.sensitivity import SensitivityConfig
from edgeprune.prune.train import (
    DEVICES,
    LR_SCHEDULES,
    OPTIMIZERS,
    Stateful,
    TrainConfig,
    choose_threads,
    cycle_factor,
    fit,
    make_optimizer,
    recalibrate_batchnorm,
    resolve_device,
)
from edgeprune.simplify import SimplifyOptions

METHODS = ("serene", "l1", "none")
# the state_dict entries recalibration rewrites
_BN_STATISTICS = (".running_mean", ".running_var", ".num_batches_tracked")


# The TWT search's cap per event under a budget (PruneOptions.search_evaluations); without one it is sized
# by the candidate count.
BUDGET_SEARCH_EVALUATIONS = 16

# The automatic epoch budget: forward MACs x training samples x epochs. Sized on the shared 2-core x86 VM
# (BENCHMARKS.md, "Epoch budget"): ResNet-20 at 28x28 (41 M MACs) on Fashion-MNIST's 54k training images
# gets 7 epochs and `compress` takes 32 minutes (goal: 45); LeNet-5 on digits keeps all 40.
MAX_AUTO_EPOCHS = 40
MIN_AUTO_EPOCHS = 4
AUTO_EPOCH_SAMPLE_MACS = 1.2e13


def auto_epochs(forward_macs: int, train_samples: int) -> int:
    """Epochs when the user gives none: as many as fit AUTO_EPOCH_SAMPLE_MACS, between MIN_AUTO_EPOCHS
    (pruning needs a warm-up, a few shrink epochs and fine-tuning) and MAX_AUTO_EPOCHS. A budget in MACs,
    not seconds, so that the same command gives the same model on any machine."""
    per_epoch = max(forward_macs, 1) * max(train_samples, 1)
    return int(min(MAX_AUTO_EPOCHS, max(MIN_AUTO_EPOCHS, AUTO_EPOCH_SAMPLE_MACS // per_epoch)))


def default_finetune_epochs(epochs: int, budgeted: bool) -> int:
    """Fine-tune-only epochs when the user gives none: a quarter of the epochs, one more under a budget.

    A budget forces cuts past what the loss bound (TWT) would allow, and those cuts need a longer
    recovery: at 8 epochs, three fine-tune epochs instead of two scored +0.12 points (SeReNe) on
    Fashion-MNIST 14x14 / VGG-BN and +0.50 on digits / MobileNetV2 under MAC budgets, and helped L1
    on every 8-epoch part (BENCHMARKS.md, Pruning, eighth round). One more epoch, not a larger share: at 24
    epochs nine fine-tune epochs instead of six cost SeReNe 0.28 points - its shrink needs the pruning
    epochs. Without a budget every pruning epoch is a chance for TWT to cut, and the extra epoch cost
    one prune event (3.56 M instead of 3.04 M MACs at the same accuracy). A one-epoch run keeps its
    only epoch for pruning."""
    return epochs // 4 + int(budgeted and epochs > 1)


@dataclass
class PruneOptions:
    """Everything a pruning run can be told (defaults: the budget `compress --example lenet5` uses)."""

    method: str = field(
        default="serene",
        metadata=cli("serene (sensitivity-driven), l1 (magnitude + fine-tuning) or none.", choices=METHODS),
    )
    epochs: int | None = field(  # None: auto_epochs (the example's 40, fewer on big data)
        default=None,
        metadata=cli(
            "Training epochs in all (pruning + fine-tuning).",
            low=1,
            default_text=f"up to {MAX_AUTO_EPOCHS}, fewer when model x data exceed a 2-core budget of ~40 min",
        ),
    )
    lr: float = field(default=0.05, metadata=cli("Learning rate.", low=0, low_open=True))
    optimizer: str = field(
        default="sgd", metadata=cli("Optimizer (SGD with Nesterov momentum, or Adam).", choices=OPTIMIZERS)
    )
    lr_schedule: str = field(default="cycle", metadata=cli("Learning-rate schedule.", choices=LR_SCHEDULES))
    batch_size: int = field(default=64, metadata=cli("Global batch size (split over torchrun processes).", low=1))
    weight_decay: float = field(default=0.0, metadata=cli("Optimizer weight decay.", low=0))
    # per epoch: the fraction a fully insensitive channel loses in one epoch
    lmbda: float = field(default=0.2, metadata=cli("SeReNe: shrink per epoch (0..1).", low=0, prefixed=False))
    twt: float = field(
        default=0.05, metadata=cli("Threshold search: allowed relative loss increase.", low=0, prefixed=False)
    )
    pwe: int = field(
        default=0, metadata=cli("Plateau patience in epochs before each pruning step.", low=0, prefixed=False)
    )
    sensitivity: str = field(
        default="lower_bound", metadata=cli("SeReNe sensitivity estimator.", choices=SENSITIVITY_VARIANTS)
    )
    spatial: str = field(
        default="mean", metadata=cli("Reduction of conv sensitivities over positions.", choices=SPATIAL_REDUCTIONS)
    )
    normalize: str = field(
        default="group_max",
        metadata=cli(
            "Per-group normalisation of sensitivities.",
            flag="sensitivity-norm",  # --normalize is the data's (MEAN,STD)
            choices=SENSITIVITY_NORMS,
        ),
    )
    target_sparsity: float | None = field(
        default=None,
        metadata=cli(
            "Remove this fraction of the parameters by the last pruning epoch (cuts beyond TWT if needed).",
            low=0,
            high=1,
            low_open=True,
            high_open=True,
            prefixed=False,
        ),
    )
    target_macs: float | None = field(  # MACs left: a fraction (< 1) or an absolute count (>= 1)
        default=None,
        metadata=cli(
            "Prune to this fraction (< 1) or count (>= 1, e.g. 2e6) of MACs by the last pruning epoch.",
            low=0,
            low_open=True,
            prefixed=False,
        ),
    )
    target_params: float | None = field(  # parameters left: a fraction (< 1) or an absolute count (>= 1)
        default=None,
        metadata=cli(
            "Prune to this fraction (< 1) or count (>= 1) of parameters by the last pruning epoch.",
            low=0,
            low_open=True,
            prefixed=False,
        ),
    )
    max_accuracy_drop: float | None = field(
        default=1.0, metadata=cli("Largest validation accuracy drop allowed, in points.", low=0)
    )
    finetune_epochs: int | None = field(
        default=None,
        metadata=cli(
            "Final epochs that only fine-tune.", low=0, default_text="a quarter of the epochs, one more under a budget"
        ),
    )
    cut_biases: str = field(
        default="none",
        metadata=cli(
            "Which cut channels lose their bias too and output zero: none (every cut exact up to the gain), "
            "those a zero-padded conv reads (their constant would need border-correction convs), or all.",
            choices=BIAS_CUTS,
        ),
    )
    # Why: a budget cut that removes a channel still carrying signal costs accuracy that the next epoch
    # must recover; fading the channels the schedule will cut next lets the network move their work
    # elsewhere while they go (as growing-regularisation pruners do), and the cut itself is then nearly
    # free, so the TWT search takes it and spends its bound on more. Measured (BENCHMARKS.md, Pruning,
    # twelfth round; seeds 0-2, 0.01 against no fade): on the three VGG-BN parts +0.19 points over 13
    # budgets at a median 2 % fewer MACs; on the models with residual streams (MobileNetV2, two
    # ResNet-20s) -0.41 over 6, so by default (None) it fades only models without residual streams,
    # and a stream's own channels never fade (see _Controller._schedule_fade).
    fade_to: float | None = field(
        default=None,
        metadata=cli(
            "SeReNe under a budget: what a channel the next budget cut will remove keeps of its scale by "
            "then - it fades out over the epoch before (1: off).",
            low=0,
            low_open=True,
            high=1,
            default_text="0.01 for models without residual streams, off with them",
        ),
    )
    round_to: int = field(
        default=1,
        metadata=cli(
            "Keep every pruned layer's width a multiple of N - the runtime's SIMD block (onnxruntime on x86: "
            "16 floats with AVX-512, 8 with AVX2) - so that the removed MACs show up as latency.",
            low=1,
        ),
    )
    # Why sized: one gallop-and-bisect round over n candidates takes about 2 log2(n) evaluations, so a
    # fixed 16 cannot finish one on a 500-wide layer and each event stops short of the bound --twt sets.
    # Without a budget, sized by the candidate count (schedule.default_evaluations): the benchmark's 8
    # no-budget SeReNe rows (3-5 events) kept 0.68-1.00x the MACs at +0.09 points; digits ResNet-20 at
    # 20 / 40 epochs 0.59x / 0.42x at +0.19; the README example (40 epochs, 5 seeds) 0.84x the weights
    # at -0.16; Fashion-MNIST LeNet-5 at 7-20 epochs 0.71-0.90x for 0.46-0.88 points, still far above
    # dense (BENCHMARKS.md, Pruning, thirteenth round). Under a budget the schedule sets each event's
    # share and the longer search lost accuracy on 7 of 9 budgets (-0.17 points), so it keeps 16 there.
    search_evaluations: int | None = field(
        default=None,
        metadata=cli(
            "Validation passes the TWT search may spend per prune event; more prune further per event.",
            low=1,
            default_text=f"two search rounds over the channels; {BUDGET_SEARCH_EVALUATIONS} under a budget",
        ),
    )
    # How simplify will deliver a cut channel's constant to zero-padded convs (its --padded-constants): the
    # budget pays for border-correction convs only where simplify builds them. The pipeline sets it from the
    # simplify stage's options; a standalone prune assumes simplify's default.
    padded_constants: str = "border"
    bn_shrink: str = "auto"  # what the SeReNe shrink scales under a BatchNorm (regularizer.BN_SHRINK)
    # Plain training before the first shrink; the accuracy floor is set after it. Without a floor there
    # is nothing to set, and the epoch is worth more as one more prune event: on Fashion-MNIST 14x14 /
    # VGG-BN under MAC budgets of 8 and 6.5 %, no warm-up was never worse over three 3-seed sets, +0.15
    # and +0.25 points on average (BENCHMARKS.md, Pruning, seventh round).
    warmup_epochs: int | None = field(
        default=None,
        metadata=cli(
            "Epochs before pruning; they set the accuracy floor.",
            low=0,
            default_text="1 with an accuracy floor, 0 without",
        ),
    )
    # training inputs that re-estimate the BatchNorm statistics before a candidate cut is measured (0: off)
    recalibration_samples: int = 1024
    score: str | None = field(  # None: the method's own
        default=None,
        metadata=cli(
            "Channel score of the threshold search.",
            choices=SCORES,
            default_text="maxabs_relative for serene, l1_relative for l1",
        ),
    )
    seed: int = 0
    device: str = field(
        default="auto", metadata=cli("Train on: auto (a GPU when present), cpu or cuda.", choices=DEVICES)
    )
    checkpoint: Path | None = field(
        default=None, metadata=cli("Write the training/pruning state here after every epoch.")
    )
    resume: bool = field(default=False, metadata=cli("Resume from the checkpoint if present.", is_flag=True))

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise EdgepruneError(f"unknown pruning method {self.method!r}", f"choose one of {', '.join(METHODS)}")
        if self.target_sparsity is not None and not 0 < self.target_sparsity < 1:
            raise EdgepruneError(
                f"target-sparsity must be between 0 and 1 (got {self.target_sparsity})",
                "give a fraction, e.g. 0.5",
            )
        for name in ("target_macs", "target_params"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise EdgepruneError(
                    f"{name.replace('_', '-')} must be positive (got {value})",
                    "give a fraction of the model (e.g. 0.5) or an absolute count (e.g. 2e6)",
                )
        if (
            min(
                self.lmbda,
                self.twt,
                self.pwe,
                self.finetune_epochs or 0,
                self.warmup_epochs or 0,
                self.recalibration_samples,
            )
            < 0
        ):
            raise EdgepruneError(
                "lambda, TWT, PWE, warm-up and fine-tune epochs and recalibration samples must not be negative",
                "e.g. --lmbda 0.2 --twt 0.05 --pwe 0",
            )
        if self.lmbda >= 1:
            raise EdgepruneError(
                "lambda is the fraction an insensitive channel shrinks per epoch "
                f"and must be below 1 (got {self.lmbda})",
                "e.g. --lmbda 0.2",
            )
        if self.fade_to is not None and not 0 < self.fade_to <= 1:
            raise EdgepruneError(
                f"fade-to is what a channel keeps of its scale by its cut and must be in (0, 1] (got {self.fade_to})",
                "e.g. --prune-fade-to 0.01, or 1 to turn the fade off",
            )
        if self.round_to < 1:
            raise EdgepruneError(f"round-to must be at least 1 (got {self.round_to})", "e.g. --round-to 8")
        if self.search_evaluations is not None and self.search_evaluations < 1:
            raise EdgepruneError(
                f"search-evaluations must be at least 1 (got {self.search_evaluations})", "e.g. --search-evaluations 40"
            )
        if self.score is not None and self.score not in SCORES:
            raise EdgepruneError(f"unknown channel score {self.score!r}", f"choose one of {', '.join(SCORES)}")
        self.sensitivity_config()  # validate the sensitivity settings early
        if self.cut_biases not in BIAS_CUTS:
            raise EdgepruneError(f"unknown --cut-biases {self.cut_biases!r}", f"choose one of {', '.join(BIAS_CUTS)}")
        SimplifyOptions(padded_constants=self.padded_constants)  # simplify's own check of the mode
        if self.bn_shrink not in BN_SHRINK:
            raise EdgepruneError(
                f"unknown BatchNorm shrink {self.bn_shrink!r}", f"choose one of {', '.join(BN_SHRINK)}"
            )
        resolve_device(self.device)  # refuse an unknown device, or cuda without a GPU, before any work

    @property
    def budgeted(self) -> bool:
        """Whether a budget (sparsity, parameters or MACs) forces cuts beyond what TWT allows."""
        return any(t is not None for t in (self.target_sparsity, self.target_params, self.target_macs))

    def with_epoch_budget(self, forward_macs: int, train_samples: int) -> PruneOptions:
        """These options with ``epochs``, ``finetune_epochs``, ``warmup_epochs`` and ``search_evaluations``
        decided (see :func:`auto_epochs` and :func:`default_finetune_epochs`; a warm-up epoch only where
        there is a floor to set from it; the search cap left to the search - None - without a budget)."""
        epochs = self.epochs if self.epochs is not None else auto_epochs(forward_macs, train_samples)
        finetune = self.finetune_epochs
        if finetune is None:
            finetune = default_finetune_epochs(epochs, self.budgeted)
        warmup = self.warmup_epochs if self.warmup_epochs is not None else int(self.max_accuracy_drop is not None)
        evaluations = self.search_evaluations
        if evaluations is None and self.budgeted:
            evaluations = BUDGET_SEARCH_EVALUATIONS
        return dataclasses.replace(
            self, epochs=epochs, finetune_epochs=finetune, warmup_epochs=warmup, search_evaluations=evaluations
        )

    def sensitivity_config(self) -> SensitivityConfig:
        return SensitivityConfig(
            variant=self.sensitivity, spatial=self.spatial, normalize=self.normalize, seed=self.seed
        )

    def train_config(self) -> TrainConfig:
        assert self.epochs is not None, "with_epoch_budget decides the epochs before training"
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
    channels_forced: int = 0  # of channels_pruned, those cut beyond TWT to follow the budget
    evaluations: int = 0  # validation passes the TWT search spent (its cap: search_evaluations)


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
    epochs: int = 0  # the budget (given, or auto_epochs)
    finetune_epochs: int = 0
    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    rolled_back: bool = False  # the run ended below the floor and returned a state with fewer channels removed
    restored_epoch: int | None = None  # the epoch whose weights were returned, when not the last one
    val_reference: float | None = None  # validation accuracy the floor was set from (after warm-up)
    floor: float | None = None


# What a channel the next budget cut will remove keeps of its scale by then, where the default fades
DEFAULT_FADE_TO = 0.01

# What a budget can count; a channel is priced in all of them when no budget is set.
BUDGET_COUNTS = ("params", "macs")


class CostModel:
    """Fractions of parameters and MACs that survive simplification, computed from the masks.

    Each Conv/Linear weight entry costs one MAC per output position (read from the traced graph's
    recorded outputs); an entry goes away when it is a producer row or consumer column of a
    pruned channel. A zero-padded conv that reads a pruned channel's constant gets simplify's
    border correction (a one-input-channel conv with its kernel, per kept output channel), which
    is counted too - unless simplify will add the constant as one precomputed map
    (``padded_constants="map"``: no conv, no MACs). Exact for ``border`` and ``map``; ``carrier``
    keeps one dead channel instead (its consumer columns cost what a correction costs, its producer
    row a little more) and ``refuse`` keeps the channels, so those two are estimates. Used for
    ``target_sparsity`` / ``target_macs`` during training, when the real simplified model does not
    exist yet.
    """

    def __init__(self, model: nn.Module, graph: Any, padded_constants: str = "border") -> None:
        parameters = dict(model.named_parameters())
        self.param_names = set(parameters)
        self.total_params = sum(p.numel() for p in parameters.values())
        self.mac_weight: dict[str, int] = {}
        # weight name -> MACs of one kept output channel's border correction (kernel entries x positions)
        self.correction_macs: dict[str, int] = {}
        values = graph.analysis.traced.values
        for layer in graph.analysis.layers.values():
            out = values.get(layer.node)
            if isinstance(out, torch.Tensor) and out.dim() >= 2:
                self.mac_weight[layer.weight] = out[0].numel() // out.shape[1]
                if padded_constants != "map" and layer.pads and not layer.depthwise and layer.weight in parameters:
                    kernel = parameters[layer.weight][0, 0].numel()
                    self.correction_macs[layer.weight] = kernel * self.mac_weight[layer.weight]
        self.total_macs = sum(parameters[n].numel() * m for n, m in self.mac_weight.items() if n in parameters)

    def fraction(self, target: float, what: str) -> float:
        """A budget as a fraction of the dense model: fractions (< 1) as given, counts (>= 1) divided
        by the dense model's parameters or MACs."""
        if target < 1:
            return target
        return target / max(self.total_params if what == "params" else self.total_macs, 1)

    def channel_cost(self, masks: ChannelMasks, counts: Collection[str] = BUDGET_COUNTS) -> dict[Any, float]:
        """Per group, what one of its channels carries: its share of the parameters and/or of the
        MACs (``counts``), summed over every slice it owns (producer rows, BN entries, consumer
        columns) - a residual-stream channel spans many layers and so costs many times a leaf channel.

        Why ``counts``: the TWT search ranks by score per cost, and a cost that also counts what the
        budget does not makes it spend the tolerated loss on channels the budget does not need. On
        Fashion-MNIST 14x14 / VGG-BN under MAC budgets of 12, 8 and 6.5 %, ranking by the MAC share
        alone scored 0.12, 0.32 and 0.02 points above the parameter+MAC sum (3 seeds; BENCHMARKS.md,
        Pruning, sixth round)."""
        out = {}
        for g in masks.groups:
            params = macs = 0.0
            for s in [*g.weights, *g.biases, *g.consumers]:
                entries = s.tensor.numel() / max(s.tensor.shape[s.dim], 1) * len(s.flat_index) / max(g.size, 1)
                if s.name in self.param_names:
                    params += entries
                macs += entries * self.mac_weight.get(s.name, 0)
            share = {"params": params / max(self.total_params, 1), "macs": macs / max(self.total_macs, 1)}
            out[g.id] = sum(share[what] for what in counts)
        return out

    def remaining(self, masks: ChannelMasks) -> tuple[float, float]:
        """(fraction of parameters, fraction of MACs) left after simplification, border corrections
        included."""
        removed = masks.removable_entries()
        params = sum(int(mask.sum()) for name, mask in removed.items() if name in self.param_names)
        macs = sum(int(removed[n].sum()) * m for n, m in self.mac_weight.items() if n in removed)
        corrections = 0
        for name in self._corrected_convs(masks):
            kept_rows = int((~removed[name].flatten(1).all(1)).sum())
            corrections += kept_rows * self.correction_macs[name]
        return 1 - params / max(self.total_params, 1), 1 - (macs - corrections) / max(self.total_macs, 1)

    def _corrected_convs(self, masks: ChannelMasks) -> set[str]:
        """The zero-padded convs simplify will give a border correction: those reading a pruned
        channel that keeps a learnable bias (its constant output). Why count them: at 1 % of VGG-BN's
        MACs they were 17 % of the simplified model's MACs, and a MAC budget that ignored them ended
        4-5 % over on Fashion-MNIST 14x14 (BENCHMARKS.md, Pruning). A constant that ends exactly zero
        (say, a ReLU of a negative shift) needs no correction, so this can over-count, never under-count."""
        out = set()
        for g in masks.groups:
            if not masks.leaves_constant(g):
                continue
            dead = torch.nonzero(~masks.keep[g.id]).flatten()
            if dead.numel():
                out |= {
                    s.name
                    for s in g.consumers
                    if s.name in self.correction_macs and bool(torch.isin(s.channel_of, dead).any())
                }
        return out


def residual_streams(graph: Any) -> set[Any]:
    """The ids of the prunable groups whose channels are sums of several layers' outputs - residual
    streams: more than one producer layer once depthwise convs, which pass a channel on rather than
    add to it, are left out."""
    depthwise = {layer.weight for layer in graph.analysis.layers.values() if layer.depthwise}
    return {
        g.id
        for g in graph.prunable_groups()
        if len({p.name.rsplit(".", 1)[0] for p in g.producers if p.name not in depthwise}) > 1
    }


def per_step_lambda(lmbda_per_epoch: float, steps_per_epoch: int) -> float:
    """The per-step shrink rate that compounds to ``lmbda_per_epoch`` over one epoch, so the
    shrink an epoch applies does not depend on the dataset or batch size."""
    return 1.0 - (1.0 - lmbda_per_epoch) ** (1.0 / max(steps_per_epoch, 1))


class _Controller:
    """The epoch hook: warm-up -> (shrink, plateau -> threshold search -> masks)* -> fine-tuning;
    the learning-rate cycles; stopping; the accuracy floor."""

    def __init__(
        self,
        model: nn.Module,
        data: DataBundle,
        masks: ChannelMasks,
        optimizer: torch.optim.Optimizer,
        options: PruneOptions,
        cost: CostModel,
        regularizer: SereneRegularizer | None,
        val_before: dict[str, float],
        steps_per_epoch: int,
        streams: Collection[Any] = (),
    ) -> None:
        self.model, self.data, self.masks, self.optimizer = model, data, masks, optimizer
        self.streams = set(streams)  # ids of the groups that are residual streams (see residual_streams)
        self.options, self.cost, self.regularizer = options, cost, regularizer
        self.steps_per_epoch = steps_per_epoch
        # the channel score of the search and the budget cuts: the option, else the method's own
        self.score = options.score or ("maxabs_relative" if options.method == "serene" else "l1_relative")
        self.calibration_inputs = data.train.tensors[0][: options.recalibration_samples]
        self.lmbda_step = per_step_lambda(options.lmbda, steps_per_epoch)
        self.detector = PlateauDetector(options.pwe)
        self.events: list[PruneEvent] = []
        self.pruning = True
        assert options.epochs is not None and options.finetune_epochs is not None, "decided by with_epoch_budget"
        self.epochs, self.finetune_epochs = options.epochs, options.finetune_epochs
        self.finetune_left = self.finetune_epochs
        self.warmup_left = options.warmup_epochs if self.warms_up(options) else 0
        self.reference = val_before["accuracy"]
        self.floor: float | None = None
        self._set_floor(self.reference)
        self.cycle = (0, (self.warmup_left or options.pwe + 1) * steps_per_epoch)
        if regularizer is not None:
            regularizer.lmbda = 0.0 if self.warmup_left else self.lmbda_step
        self.good: dict[str, Any] = {}
        self.good_epoch = 0
        self.remember(0)  # the starting point meets the accuracy floor by definition

    @staticmethod
    def warms_up(options: PruneOptions) -> bool:
        """Warm up only when at least one pruning epoch is left after it (then the floor is set from it)."""
        assert options.epochs is not None and options.finetune_epochs is not None, "decided by with_epoch_budget"
        assert options.warmup_epochs is not None, "decided by with_epoch_budget"
        return options.warmup_epochs > 0 and options.epochs - options.finetune_epochs - options.warmup_epochs >= 1

    def _set_floor(self, reference: float) -> None:
        self.reference = reference
        if self.options.max_accuracy_drop is not None:
            self.floor = reference - self.options.max_accuracy_drop / 100

    def lr_factor(self, step: int) -> float:
        """The LR multiplier of the current cycle (warm-up + cosine, see train.cycle_factor)."""
        start, length = self.cycle
        return cycle_factor((step - start) / max(length, 1))

    def _new_cycle(self, epoch: int, epochs: int) -> None:
        self.cycle = ((epoch + 1) * self.steps_per_epoch, max(epochs, 1) * self.steps_per_epoch)

    def remember(self, epoch: int) -> None:
        """Keep the current weights and masks as the latest state that meets the accuracy floor."""
        self.good = {"model": copy.deepcopy(self.model.state_dict()), "masks": self.masks.state_dict()}
        self.good_epoch = epoch

    def measure(self) -> dict[str, float]:
        return evaluate(self.model, self.data.loader("val", 512))

    def recalibrate(self) -> None:
        """Re-estimate the BatchNorm statistics for the channels as they are now (see
        :func:`~edgeprune.prune.train.recalibrate_batchnorm`)."""
        recalibrate_batchnorm(self.model, self.calibration_inputs, self.options.batch_size)

    def measure_recalibrated(self) -> dict[str, float]:
        """What a candidate cut costs once the BatchNorms have adapted to it; the statistics are
        restored afterwards, so a rejected candidate leaves no trace."""
        saved = {k: v.clone() for k, v in self.model.state_dict().items() if k.endswith(_BN_STATISTICS)}
        self.recalibrate()
        try:
            return self.measure()
        finally:
            self.model.load_state_dict(saved, strict=False)

    def after_epoch(self, epoch: int, metrics: dict[str, float]) -> bool:
        opts = self.options
        if self.warmup_left:
            self.warmup_left -= 1
            if self.warmup_left == 0:
                # Re-base: the floor is measured on the model trained at this schedule, not on a
                # model whose accuracy the schedule itself would move (a swing the search cannot fix).
                self._set_floor(metrics["accuracy"])
                self.remember(epoch + 1)
                if self.regularizer is not None:
                    self.regularizer.lmbda = self.lmbda_step
                self._schedule_fade(epoch + 1)
                self._new_cycle(epoch, opts.pwe + 1)
            return False
        last_pruning_epoch = self.epochs - self.finetune_epochs - 1
        fired = self.pruning and self.detector.update(metrics["loss"], self.model)
        # A budget is reached by the last pruning epoch even when the plateau does not fire there.
        if fired or (self.pruning and epoch >= last_pruning_epoch and self._budget_goals()):
            self._prune(epoch)
            metrics = self.measure()
            self._schedule_fade(epoch + opts.pwe + 1)
            self._new_cycle(epoch, opts.pwe + 1)
        if self.floor is None or metrics["accuracy"] >= self.floor:
            self.remember(epoch + 1)
        if self.pruning and (epoch >= last_pruning_epoch or self._target_reached()):
            self._stop_pruning()
            self._new_cycle(epoch, self.finetune_left)
            return self.finetune_left == 0
        if not self.pruning:
            self.finetune_left -= 1
            return self.finetune_left <= 0
        return False

    def _prune(self, epoch: int) -> None:
        opts = self.options
        result = threshold_search(
            self.masks,
            self.measure_recalibrated,
            opts.twt,
            self.score,
            opts.search_evaluations,
            self.floor,
            cost=self.cost.channel_cost(self.masks, self._budget_goals() or BUDGET_COUNTS),
            round_to=opts.round_to,
        )
        forced = self._follow_budget(epoch)
        self.masks.apply(self.optimizer)
        self.recalibrate()
        params, macs = self.cost.remaining(self.masks)
        self.events.append(
            PruneEvent(
                epoch=epoch + 1,
                threshold=result.threshold,
                channels_pruned=result.channels + forced,
                channels_forced=forced,
                evaluations=result.evaluations,
                channels_kept=self.masks.total_kept(),
                val_loss_before=result.loss_before,
                val_loss_after=result.loss_after,
                loss_bound=result.bound,
                params_remaining=params,
                macs_remaining=macs,
            )
        )

    def _schedule_fade(self, epoch: int) -> None:
        """Hand the regulariser the channels the budget would cut at an event at ``epoch`` (none when
        pruning ends before it), to fade out until then (``fade_to``). The cut is planned as if the TWT
        search took nothing for free; at the event the search takes what has faded and whatever else
        fits its bound, and the budget's step follows from there, as at any event.

        Channels of a group written by more than one layer - a residual stream - do not fade; the event
        cuts them as before. Fading them collapsed one of three Fashion-MNIST / ResNet-20 seeds (37 % test
        accuracy against 78.5 % without the fade; 78.6 % with streams left out), and on digits / ResNet-20
        cost 0.4-1.0 points (BENCHMARKS.md, Pruning, twelfth round). With streams left out the models
        that have them still came out level or worse, so by default only models without streams fade."""
        reg = self.regularizer
        if reg is None:
            return
        reg.fading = {}
        fade_to = self.options.fade_to
        if fade_to is None:  # the default: models without residual streams only
            fade_to = 1.0 if self.streams else DEFAULT_FADE_TO
        if fade_to >= 1 or not self._budget_goals() or epoch > self.epochs - self.finetune_epochs - 1:
            return
        saved = self.masks.state_dict()
        self._follow_budget(epoch)
        for g in self.masks.groups:
            cut = saved["keep"][str(g.id)] & ~self.masks.keep[g.id]
            if cut.any() and g.id not in self.streams:
                reg.fading[g.id] = cut
        self.masks.load_state_dict(saved)
        steps = self.steps_per_epoch * (self.options.pwe + 1)
        reg.fade_rate = 1.0 - fade_to ** (1.0 / max(steps, 1))

    def _follow_budget(self, epoch: int) -> int:
        """Cut towards the budget where the TWT search stopped short; returns the channels cut.

        The schedule is geometric: after this event each budgeted fraction must be at most
        ``now * (goal / now) ** (1 / k)``, k being the prune events left (one per pruning epoch), so
        every event removes the same share of what is left and the target is reached by the last
        pruning epoch. Why not linear (1/k of the way each event, the first version): that leaves the
        large relative cuts to the last events, which have the least training left to recover - on
        digits / VGG-BN at 2 % of the MACs the last event removed about half of the channels left, and
        switching to geometric gained 0.6 (SeReNe) and 0.9 (L1) points (BENCHMARKS.md, Pruning).

        ``now`` is where this event's TWT search left off, so the search's free cuts come on top of the
        step and the budget is reached an event or so early; at the last event the search may then cut
        past it. Both measured (Fashion-MNIST 14x14 / VGG-BN at 5 and 4 % of the MACs, 5 seeds, at equal
        MACs; BENCHMARKS.md, Pruning, sixteenth round): counting the search's cuts toward the step lost
        0.17 / 0.16 points, a schedule front-loaded further lost 0.15-0.26, and no search at the last
        event (cut exactly to the budget) gained 0.16 at 5 % but over every part's budget rows came out
        level to worse (-0.03 at equal MACs; -0.89 and -1.36 on one MobileNetV2 and one ResNet-20 row)."""
        goals = self._budget_goals()
        if not goals:
            return 0
        pruning_epochs_left = self.epochs - self.finetune_epochs - epoch
        events_left = max(1, math.ceil(pruning_epochs_left / (self.options.pwe + 1)))
        params, macs = self.cost.remaining(self.masks)
        now = {"params": params, "macs": macs}
        step = {
            what: now[what] * (min(goal, now[what]) / max(now[what], 1e-12)) ** (1 / events_left)
            for what, goal in goals.items()
        }

        def within(masks: ChannelMasks) -> bool:
            p, m = self.cost.remaining(masks)
            left = {"params": p, "macs": m}
            return all(left[what] <= goal + 1e-12 for what, goal in step.items())

        candidates = channel_candidates(self.masks, self.score, self.options.round_to)
        return budget_cut(self.masks, uniform_width_order(self.masks, candidates), within)

    def _budget_goals(self) -> dict[str, float]:
        """The fractions of parameters / MACs the user asked to end at (none without a target)."""
        opts, goals = self.options, {}
        if opts.target_sparsity is not None:
            goals["params"] = 1 - opts.target_sparsity
        if opts.target_params is not None:
            goals["params"] = min(goals.get("params", 1.0), self.cost.fraction(opts.target_params, "params"))
        if opts.target_macs is not None:
            goals["macs"] = self.cost.fraction(opts.target_macs, "macs")
        return goals

    def _target_reached(self) -> bool:
        params, macs = self.cost.remaining(self.masks)
        opts = self.options
        return (
            (opts.target_sparsity is not None and 1 - params >= opts.target_sparsity)
            or (opts.target_macs is not None and macs <= self.cost.fraction(opts.target_macs, "macs"))
            or (opts.target_params is not None and params <= self.cost.fraction(opts.target_params, "params"))
        )

    def _stop_pruning(self) -> None:
        self.pruning = False
        if self.regularizer is not None:
            self.regularizer.lmbda = 0.0
            self.regularizer.fading = {}

    def restore_good(self) -> None:
        self.model.load_state_dict(self.good["model"])
        self.masks.load_state_dict(self.good["masks"])

    def state_dict(self) -> dict[str, Any]:
        return {
            "detector": self.detector.state_dict(),
            "pruning": self.pruning,
            "finetune_left": self.finetune_left,
            "warmup_left": self.warmup_left,
            "reference": self.reference,
            "cycle": self.cycle,
            "good": self.good,
            "good_epoch": self.good_epoch,
            "events": [e.__dict__ for e in self.events],
            "lmbda": self.regularizer.lmbda if self.regularizer is not None else 0.0,
            "fading": {str(k): v.clone() for k, v in self.regularizer.fading.items()} if self.regularizer else {},
            "fade_rate": self.regularizer.fade_rate if self.regularizer is not None else 0.0,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.detector.load_state_dict(state["detector"])
        self.pruning, self.finetune_left, self.good = state["pruning"], state["finetune_left"], state["good"]
        self.warmup_left, self.cycle, self.good_epoch = state["warmup_left"], tuple(state["cycle"]), state["good_epoch"]
        self._set_floor(state["reference"])
        self.events = [PruneEvent(**e) for e in state["events"]]
        if self.regularizer is not None:
            self.regularizer.lmbda = state["lmbda"]
            fading = state.get("fading", {})  # absent from checkpoints written before the fade existed
            self.regularizer.fading = {g.id: fading[str(g.id)] for g in self.masks.groups if str(g.id) in fading}
            self.regularizer.fade_rate = state.get("fade_rate", 0.0)


def prune_model(
    model: nn.Module,
    example_input: torch.Tensor,
    data: DataBundle,
    options: PruneOptions,
    progress: Progress = QUIET,
    starting_model: nn.Module | None = None,
) -> PruneResult:
    """Prune ``model`` in place with ``options.method`` (see the module docstring).

    Training runs on ``options.device`` with the intra-op thread count of
    :func:`~edgeprune.prune.train.choose_threads`; the model is handed back on the CPU.
    ``starting_model``: an untouched copy of ``model`` the caller already keeps (the prune stage does,
    for the report); the starting model's full validation score is then taken from it instead of from
    a second copy.
    """
    device = resolve_device(options.device)
    threads = torch.get_num_threads()
    torch.set_num_threads(choose_threads())
    try:
        return _prune_model(model, example_input, data, options, progress, device, starting_model)
    finally:
        torch.set_num_threads(threads)
        model.to("cpu")


def _on_device(data: DataBundle, device: torch.device) -> DataBundle:
    if device.type == "cpu":
        return data

    def move(split: TensorDataset) -> TensorDataset:
        return TensorDataset(*(t.to(device) for t in split.tensors))

    return dataclasses.replace(data, train=move(data.train), val=move(data.val), test=move(data.test))


def _prune_model(
    model: nn.Module,
    example_input: torch.Tensor,
    data: DataBundle,
    options: PruneOptions,
    progress: Progress,
    device: torch.device,
    starting_model: nn.Module | None,
) -> PruneResult:
    start = time.perf_counter()
    graph = analyze(model, example_input)
    model.to(device)
    data = _on_device(data, device)
    groups = graph.prunable_groups()
    if not groups:
        raise EdgepruneError(
            "the model has no prunable channel groups",
            "every channel is tied to the model input/output or to an operation edgeprune "
            "cannot prune; use --method none",
        )
    masks = ChannelMasks(model, groups, options.cut_biases, graph.zero_padded_convs())
    masks.mark_dead()
    cost = CostModel(model, graph, options.padded_constants)
    options = options.with_epoch_budget(cost.total_macs, len(data.train))
    # With a warm-up the floor is set after it: before the first step, 512 validation images are enough to
    # warn about a model near chance, and the starting model's full validation score (for the report) is
    # taken from a copy at the end - 6 s less before training on ResNet-20 / Fashion-MNIST.
    dense = None
    if _Controller.warms_up(options):
        dense = starting_model if starting_model is not None else copy.deepcopy(model)
    val = data.split("val")
    head = DataLoader(TensorDataset(*(t[:512] for t in val.tensors)), batch_size=512)
    val_before = evaluate(model, head if dense is not None else data.loader("val", 512))
    chance = 1.0 / max(data.num_classes, 2)
    if val_before["accuracy"] < 1.5 * chance:
        warn(
            f"the model scores {100 * val_before['accuracy']:.1f} % on the validation data at load, "
            f"near chance ({100 * chance:.1f} %): is the data preprocessed as in its training? "
            "pass --normalize MEAN,STD if the model was trained on standardised inputs"
        )
    cfg = options.train_config()
    torch.manual_seed(options.seed)
    optimizer = make_optimizer(model, cfg)
    steps_per_epoch = sum(1 for _ in range(0, len(data.train), cfg.batch_size))
    regularizer = None
    if options.method == "serene":
        regularizer = SereneRegularizer(
            model,
            masks,
            options.lmbda,
            options.sensitivity_config(),
            optimizer=optimizer,
            bn_shrink=options.bn_shrink,
        )
    controller = _Controller(
        model, data, masks, optimizer, options, cost, regularizer, val_before, steps_per_epoch, residual_streams(graph)
    )
    hooks: dict[str, Any] = {
        "step_hooks": (regularizer.shrink,) if regularizer else (lambda: masks.apply(optimizer),),
        "output_hooks": (regularizer.observe,) if regularizer else (),
        "epoch_hooks": (controller.after_epoch,),
        "lr_factor": controller.lr_factor if options.lr_schedule == "cycle" else None,
    }
    state: dict[str, Stateful] = {"masks": masks, "controller": controller}
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
    floor = controller.floor
    rolled_back = False
    restored_epoch = None
    if floor is not None and val_after["accuracy"] < floor:
        ended = val_after["accuracy"]
        removed = masks.total_channels() - masks.total_kept()
        controller.restore_good()
        val_after = evaluate(model, data.loader("val", 512))
        restored_epoch = controller.good_epoch
        # The same channels removed at an earlier epoch: early stopping on the validation set, not
        # a rollback of pruning - the cut itself met the bound.
        rolled_back = masks.total_channels() - masks.total_kept() < removed
        if rolled_back:
            warn(
                f"pruning ended at {100 * ended:.2f} % validation accuracy, below the floor of "
                f"{100 * floor:.2f} % ({options.max_accuracy_drop} points under {100 * controller.reference:.2f} %); "
                f"rolled back to the state after epoch {controller.good_epoch} "
                f"({masks.total_channels() - masks.total_kept()} channels removed). "
                "Give more epochs, a smaller --lmbda/--twt or a larger --max-accuracy-drop"
            )
        else:
            progress.print(
                f"fine-tuning ended at {100 * ended:.2f} % validation accuracy, "
                f"below the floor of {100 * floor:.2f} %; "
                f"kept the weights of epoch {restored_epoch}, which have the same channels removed and met it"
            )
    masks.apply()
    if dense is not None:
        val_before = evaluate(dense.to(device), data.loader("val", 512))
        dense.to("cpu")  # where the caller's copy was
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
        epochs=controller.epochs,
        finetune_epochs=controller.finetune_epochs,
        masks={str(k): v.clone() for k, v in masks.keep.items()},
        rolled_back=rolled_back,
        restored_epoch=restored_epoch,
        val_reference=controller.reference,
        floor=floor,
    )
