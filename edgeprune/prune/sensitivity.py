"""SeReNe neuron sensitivity: how much the network *outputs* move when a neuron's
pre-activation moves (Tartaglione et al., TNNLS 2021).

For output y in R^C and the post-synaptic potential z_n of neuron n (a Linear/Conv output before
BN and activation; for a conv a whole feature map), per sample:

* full:         S_n = (1/C) * sum_k |dy_k / dz_n|          - C vector-Jacobian products;
* lower bound:  S_n = (1/C) * |sum_k dy_k / dz_n|  <= full  - one backward of y.sum();
* sampled:      the full sum over m random classes, rescaled by C/m (unbiased, m backwards).

The absolute value is taken per element of z_n; a conv channel is then reduced over its spatial
positions (``spatial="mean"``, the reference code's choice, or ``"sum"``, the effect of
perturbing the whole map) and every neuron is averaged over the batch. Coupled channels (one
:class:`ChannelGroup`) share one sensitivity: the largest over the group's sites, so a channel
the network needs at any of its sites is protected. Where a BatchNorm scales the channels (an
``nn.Module`` model), z is the BN output rather than the conv output (see ``_batchnorm_sites``).

Normalisation (``normalize="group_max"``, the default) divides each group's sensitivities by their
maximum: the most sensitive channel of each group is never shrunk and the others are shrunk in
proportion to how much less they matter. Without it the shrink rate depends on the raw scale of S -
α = 1/C, the spatial reduction, the depth of the layer (spatially averaged conv sensitivities are
~1e-3, so max(0, 1 - S) is ~1 for every conv channel and SeReNe degrades to uniform weight decay
there) - and λ would have to be re-tuned per model. Measured on digits/LeNet-5 with the default
budget (BENCHMARKS.md, "Sensitivity defaults"): 6.9 % of the parameters left with it, 21.6 % without
(24.2 % with the spatial sum), at the same test accuracy. The lower bound is the default for its
cost (one partial backward); the full variant pruned further there (4.0 %) at 1.4x the run time.
``normalize="group_mean"`` divides by the mean over the group's live channels instead: every channel
above its group's mean sensitivity is spared, and the shrink falls on the less sensitive half. On digits /
VGG-BN (8 epochs, mean of 3 seeds; BENCHMARKS.md) it scored 97.77 % against group_max's 97.31 % at 6 % of
the MACs but 96.84 % against 96.94 % at 4 % - differences within the seed-to-seed spread, so group_max stays
the default.
With normalisation the spatial mean and sum give the same S (they differ by the constant H*W per group), so
``spatial`` only matters for ``normalize="none"``; the mean is the reference code's choice.

Capturing z: a forward hook on the site's module registers a *tensor* hook on its output. Tensor
hooks fire with the gradient of the tensor as it was when the hook was registered, so an in-place
activation that later overwrites the output (``ReLU(inplace=True)``) cannot turn the result into
the post-activation gradient - the failure of the reference implementation. The gradients are
produced by ``torch.autograd.grad``, so nothing is accumulated into ``.grad`` and the training
backward that follows is unaffected. It asks for the gradient of the captured outputs themselves
when their version counter shows no in-place change since the forward hook (the common case: a
BN or a functional activation follows) - a backward of input-gradients only, which costs about
half of a full one; if any output was overwritten in place it asks for the parameters' gradients
instead, so that autograd walks through the original tensors and the tensor hooks see them.

Models loaded from ``.pt2`` are ``fx.GraphModule`` s of aten calls: their convs are not module
calls, so there is nothing to hook. For them the probe inserts an identity "tap" module after
each site's graph node (the node names of the channel analysis are those of the re-exported
graph, which keeps the loaded graph's names) for the lifetime of the probe, hooks the taps the
same way, and removes them again on exit, so the saved model carries no trace of them. A site
whose node cannot be found is refused with a GraphError rather than silently left unmeasured.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from edgeprune.errors import EdgepruneError, GraphError
from edgeprune.prune.masks import is_scale, named_tensors, resolve

VARIANTS = ("lower_bound", "full", "sampled")
SPATIAL = ("mean", "sum")
NORMALIZE = ("group_max", "group_mean", "none")


@dataclass
class SensitivityConfig:
    variant: str = "lower_bound"
    spatial: str = "mean"
    normalize: str = "group_max"
    sampled_classes: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        for value, allowed, what in (
            (self.variant, VARIANTS, "sensitivity"),
            (self.spatial, SPATIAL, "spatial"),
            (self.normalize, NORMALIZE, "normalize"),
        ):
            if value not in allowed:
                raise EdgepruneError(f"unknown {what} setting {value!r}", f"choose one of {', '.join(allowed)}")
        if self.sampled_classes < 1:
            raise EdgepruneError("sampled_classes must be at least 1", "use e.g. 2")


@dataclass(frozen=True)
class _Site:
    """One tensor whose gradient is captured: a module's output, the channel dim, and which of
    its channels belong to which group channel."""

    module: str
    dim: int
    index: torch.Tensor
    channels: torch.Tensor


def _batchnorm_sites(model: nn.Module, group: Any, tensors: dict[str, torch.Tensor]) -> list[_Site]:
    """The outputs of the BatchNorm modules that scale the group's channels, if any.

    Under a BatchNorm the conv output's gradient scales with 1/||w|| (the normalisation undoes any
    scaling of w), so the pre-BN sensitivity *grows* as SeReNe shrinks a channel and stops telling
    channels apart; the BN output is the channel's real pre-activation.
    """
    sites = []
    scales = getattr(group, "scales", None)
    if scales is None:
        scales = [resolve(tensors, s) for s in group.biases if is_scale(s, tensors)]
    for scale in scales:
        path = scale.name.rpartition(".")[0]
        if isinstance(model.get_submodule(path), nn.modules.batchnorm._BatchNorm):
            sites.append(_Site(module=path, dim=1, index=scale.flat_index, channels=scale.channel_of))
    return sites


class _Tap(nn.Identity):
    """A hookable point inserted after a graph node (see the module docstring)."""


TAP_PREFIX = "_edgeprune_sensitivity_tap_"


def _insert_taps(model: fx.GraphModule, nodes: set[str]) -> dict[str, str]:
    """Insert a _Tap after each named node; return node name -> tap module path."""
    by_name = {n.name: n for n in model.graph.nodes}
    missing = sorted(nodes - set(by_name))
    if missing:
        raise GraphError(
            f"cannot locate the output of {missing[0]!r} in the traced model to measure its sensitivity",
            "prune the nn.Module (state_dict with --arch) instead of the traced .pt2, or use --method l1",
        )
    paths = {}
    for name in sorted(nodes):
        node, path = by_name[name], TAP_PREFIX + name
        model.add_submodule(path, _Tap())
        with model.graph.inserting_after(node):
            tap = model.graph.call_module(path, (node,))
        node.replace_all_uses_with(tap, delete_user_cb=lambda user, tap=tap: user is not tap)
        paths[name] = path
    model.recompile()
    return paths


def _remove_taps(model: fx.GraphModule) -> None:
    for node in list(model.graph.nodes):
        if node.op == "call_module" and str(node.target).startswith(TAP_PREFIX):
            node.replace_all_uses_with(node.args[0])
            model.graph.erase_node(node)
            model.delete_submodule(str(node.target))
    model.recompile()


class SensitivityProbe:
    """Hooks every site of the given groups and turns a forward's outputs into sensitivities.

    Use as a context manager around the forward pass; then call :meth:`measure` with the model
    outputs (before ``loss.backward()``): it returns the batch *sums* per site, which
    :meth:`group_sensitivity` turns into per-group vectors (summing first lets the data-parallel
    trainer all-reduce them across processes before dividing by the global batch size).
    """

    def __init__(self, model: nn.Module, groups: Sequence[Any], config: SensitivityConfig | None = None) -> None:
        self.model = model
        self.config = config or SensitivityConfig()
        self.groups = list(groups)
        self.traced = isinstance(model, fx.GraphModule)
        tensors = named_tensors(model)
        self.sites: dict[Any, list[_Site]] = {
            g.id: ([] if self.traced else _batchnorm_sites(model, g, tensors)) or self._graph_sites(g)
            for g in self.groups
        }
        self.modules = sorted({s.module for sites in self.sites.values() for s in sites})
        self._handles: list[Any] = []
        self._sums: dict[str, torch.Tensor] = {}
        self._recording = False  # tensor hooks also fire in the training backward: ignore those
        self._captured: list[tuple[torch.Tensor, int]] = []  # (output, its version when captured)
        self._dims = {s.module: s.dim for sites in self.sites.values() for s in sites}
        self._generator = torch.Generator().manual_seed(self.config.seed)

    def _graph_sites(self, group: Any) -> list[_Site]:
        sites = []
        for s in group.sites:
            where = TAP_PREFIX + s.node if self.traced else s.module
            if where is None:
                raise GraphError(
                    f"channel group {group.id} has an output that no Conv/Linear module produces",
                    "exclude that layer, or use --method l1",
                )
            sites.append(_Site(module=where, dim=s.dim, index=s.index.long(), channels=s.channels.long()))
        return sites

    def __enter__(self) -> SensitivityProbe:
        if isinstance(self.model, fx.GraphModule):
            _insert_taps(self.model, {m[len(TAP_PREFIX) :] for m in self.modules})
        for path in self.modules:
            self._handles.append(self.model.get_submodule(path).register_forward_hook(self._forward_hook(path)))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        if isinstance(self.model, fx.GraphModule):
            _remove_taps(self.model)

    def _forward_hook(self, path: str):  # noqa: ANN202 - hook factory
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if output.requires_grad:
                output.register_hook(self._gradient_hook(path))
                self._captured.append((output, output._version))

        return hook

    def _gradient_hook(self, path: str):  # noqa: ANN202 - hook factory
        dim = self._dims[path]
        spatial = self.config.spatial

        def hook(grad: torch.Tensor) -> None:
            if not self._recording:
                return
            per_element = grad.detach().abs().movedim(dim, 1)
            per_sample = per_element.reshape(per_element.shape[0], per_element.shape[1], -1)
            reduced = per_sample.mean(2) if spatial == "mean" else per_sample.sum(2)
            total = reduced.sum(0)
            self._sums[path] = self._sums[path] + total if path in self._sums else total

        return hook

    def discard(self) -> None:
        """Forget the outputs captured by the last forward pass (when it is not measured)."""
        self._captured = []

    def _gradient_targets(self) -> list[torch.Tensor]:
        captured, self._captured = self._captured, []
        untouched = [t for t, version in captured if t._version == version]
        if len(untouched) == len(captured):
            return untouched
        return untouched + [p for p in self.model.parameters() if p.requires_grad]

    def measure(self, outputs: torch.Tensor) -> tuple[dict[str, torch.Tensor], int]:
        """Per-site sensitivity summed over the batch (already scaled by 1/C), and the batch size."""
        self._sums = {}
        inputs = self._gradient_targets()
        num_classes = outputs.shape[1]
        variant = self.config.variant
        if variant == "lower_bound":
            targets, scale = [outputs.sum()], 1.0 / num_classes
        else:
            classes: Sequence[int] = range(num_classes)
            if variant == "sampled" and self.config.sampled_classes < num_classes:
                m = self.config.sampled_classes
                classes = torch.randperm(num_classes, generator=self._generator)[:m].tolist()
            targets = [outputs[:, k].sum() for k in classes]
            scale = 1.0 / len(targets)  # = (1/C) * (C/m) for the sampled estimate
        self._recording = True
        try:
            for target in targets:
                torch.autograd.grad(target, inputs, retain_graph=True, allow_unused=True)
        finally:
            self._recording = False
        missing = [m for m in self.modules if m not in self._sums]
        if missing:
            raise EdgepruneError(
                f"the model outputs do not depend on the output of {missing[0]!r}",
                "exclude that layer from pruning or check the model's forward",
            )
        return {k: v * scale for k, v in self._sums.items()}, int(outputs.shape[0])

    def group_sensitivity(self, site_sums: dict[str, torch.Tensor], count: int) -> dict[Any, torch.Tensor]:
        """Batch-mean sensitivity per group channel (max over the group's sites), normalised."""
        result = {}
        for g in self.groups:
            s = torch.zeros(g.size)
            for site in self.sites[g.id]:
                values = site_sums[site.module].cpu()[site.index].float() / max(count, 1)
                s.scatter_reduce_(0, site.channels, values, reduce="amax")
            live = s[s > 0]  # pruned channels measure 0 and must not pull a group's mean down
            if self.config.normalize != "none" and live.numel():
                s = s / (live.max() if self.config.normalize == "group_max" else live.mean())
            result[g.id] = s
        return result


def neuron_sensitivity(
    model: nn.Module, groups: Sequence[Any], inputs: torch.Tensor, config: SensitivityConfig | None = None
) -> dict[Any, torch.Tensor]:
    """Sensitivity of every group channel on one batch of ``inputs`` (model left unchanged)."""
    probe = SensitivityProbe(model, groups, config)
    with probe:
        outputs = model(inputs)
    return probe.group_sensitivity(*probe.measure(outputs))
