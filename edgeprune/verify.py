"""Proof that a transformed model computes the same function as the model it came from.

Both models are compared in float64, so algebra mistakes (a lost bias, a wrong index map) show
up at their real size instead of hiding under float32 rounding: an exact rewrite agrees to
~1e-15, a wrong one is off by ~1e-2. Inputs cover two resolutions where the model accepts them
(a simplified model locked to one size would fail the second), batch sizes 1 and 3, random,
all-zero, large-magnitude and real samples. Argmax agreement is never accepted as proof.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
import torch.utils._pytree as pytree
from torch import nn

from edgeprune.errors import VerificationError


def accepted_shapes(model: nn.Module, example_input: torch.Tensor) -> list[tuple[int, ...]]:
    """The example's per-sample shape, plus a larger resolution if the model accepts one.

    Spatial sizes grow by a quarter, a half, then double (rounded up to a multiple of 8 where
    possible, so stride-32 nets still divide evenly); models with a fixed Flatten->Linear accept none.
    """
    native = tuple(example_input.shape[1:])
    if len(native) < 2:
        return [native]
    for factor in (1.25, 1.5, 2.0):
        shape = (native[0], *(_grow(s, factor) for s in native[1:]))
        try:
            with torch.no_grad():
                model.eval()(torch.zeros(1, *shape))
        except Exception:  # noqa: BLE001 - any failure means "this model is tied to its resolution"
            continue
        return [native, shape]
    return [native]


def verification_inputs(
    shapes: Sequence[tuple[int, ...]], real: torch.Tensor | None, seed: int = 0
) -> list[torch.Tensor]:
    """Batches of 1 and 3 per shape: random, all-zero and x100 samples, plus real samples."""
    gen = torch.Generator().manual_seed(seed)
    inputs = []
    for shape in shapes:
        inputs.append(torch.randn(1, *shape, generator=gen))
        inputs.append(
            torch.stack(
                [torch.randn(*shape, generator=gen), torch.zeros(*shape), 100 * torch.randn(*shape, generator=gen)]
            )
        )
    if real is not None and len(real):
        inputs += [real[:1], real[:3]]
    return inputs


@torch.no_grad()
def worst_abs_diff(
    reference: nn.Module, candidate: nn.Module, inputs: Sequence[torch.Tensor], dtype: torch.dtype = torch.float64
) -> tuple[float, int]:
    """(max |reference(x) - candidate(x)|, index of the input where it occurs), both run in ``dtype``."""
    a = copy.deepcopy(reference).eval().to(dtype)
    b = candidate.eval() if _has_dtype(candidate, dtype) else copy.deepcopy(candidate).eval().to(dtype)
    worst, where = 0.0, 0
    for i, x in enumerate(inputs):
        diff = _output_diff(a(x.to(dtype)), b(x.to(dtype)))
        if diff > worst:
            worst, where = diff, i
    return worst, where


def assert_equivalent(
    reference: nn.Module,
    candidate: nn.Module,
    inputs: Sequence[torch.Tensor],
    tolerance: float = 1e-9,
    locate: Callable[[torch.Tensor], str | None] | None = None,
) -> float:
    """Raise VerificationError unless both models agree within ``tolerance`` in float64.

    ``locate(x)`` may name the first layer whose output diverges on the failing input; it is
    included in the message. Returns the largest difference seen.
    """
    try:
        worst, where = worst_abs_diff(reference, candidate, inputs)
    except VerificationError:
        raise
    except Exception as exc:  # a shape the candidate cannot run is a failed proof, not a crash
        first = str(exc).strip().splitlines()
        raise VerificationError(
            f"the simplified model fails where the original runs: {(first[0] if first else type(exc).__name__)[:200]}",
            "this is a bug in edgeprune; report it with the model",
        ) from None
    if worst > tolerance:
        x = inputs[where]
        layer = locate(x) if locate else None
        detail = f"; first diverging layer: {layer}" if layer else ""
        raise VerificationError(
            f"outputs differ by {worst:.3g} > {tolerance:g} (float64) on an input of shape {list(x.shape)}{detail}",
            "this is a bug in edgeprune; the model was not changed",
        )
    return worst


def _output_diff(reference: object, candidate: object) -> float:
    """max |difference| over every tensor of two outputs of the same structure (NaN counts as inf)."""
    ref_leaves, ref_spec = pytree.tree_flatten(reference)
    new_leaves, new_spec = pytree.tree_flatten(candidate)
    if ref_spec != new_spec:
        raise VerificationError("the structure of the model's output changed", "this is a bug in edgeprune")
    worst = 0.0
    for ya, yb in zip(ref_leaves, new_leaves, strict=True):
        if not isinstance(ya, torch.Tensor):
            continue
        if ya.shape != yb.shape:
            raise VerificationError(
                f"the output shape changed from {list(ya.shape)} to {list(yb.shape)}", "this is a bug in edgeprune"
            )
        diff = float((ya - yb).abs().max()) if ya.numel() else 0.0
        worst = max(worst, float("inf") if diff != diff else diff)
    return worst


def _grow(size: int, factor: float) -> int:
    """``size * factor`` rounded up to a multiple of 8 (for sizes of 8 and more)."""
    grown = int(size * factor)
    return -(-grown // 8) * 8 if size >= 8 else grown


def _has_dtype(model: nn.Module, dtype: torch.dtype) -> bool:
    tensors = [*model.parameters(), *model.buffers()]
    return all(t.dtype == dtype for t in tensors if t.is_floating_point())
