"""The object that flows through the pipeline, and what each stage is given.

A stage is a function ``run(artifact, ctx) -> dict`` that may replace ``artifact.model``, add
files to ``artifact.files`` and set the typed results later stages consume (``artifact.quant``),
and returns the numbers it wants in the report. The pipeline (``edgeprune.pipeline``) times the
stage and adds the common measurements (parameters, MACs, accuracy) itself, so stages never
repeat that bookkeeping.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from edgeprune.data import DataBundle
    from edgeprune.progress import Progress
    from edgeprune.quant import QuantizedWeights


@dataclass
class Artifact:
    """The model and everything produced from it so far.

    ``model`` is always a float ``nn.Module`` in eval mode on the CPU; ``example_input`` is one
    batch-of-one input with the shape the model expects. ``files`` maps artefact names
    ("pruned", "simplified", "nnr", "onnx_fp32", "onnx_int8", "tflite_fp32", "tflite_int8", ...)
    to paths already written atomically into the output directory. ``quant`` (set by the quantize
    stage) holds the INT8 levels the encoder codes and the exporters carry; ``dense_model`` (set by
    the pipeline before any stage changes the model) is the model as loaded, for the dense baseline
    exports; ``dense_test_accuracy`` its test accuracy once a stage has measured it (scored once).
    """

    model: nn.Module
    example_input: torch.Tensor
    data: DataBundle | None = None
    files: dict[str, Path] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    quant: QuantizedWeights | None = None
    dense_model: nn.Module | None = None
    dense_test_accuracy: float | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.example_input.shape)


@dataclass
class StageContext:
    """Everything a stage may use besides the artifact: never looked up globally.

    ``options`` maps a stage name to that stage's options object (its own dataclass, defined next
    to the stage); ``target`` is the device profile name the bench stage measures on.
    """

    out_dir: Path
    options: dict[str, Any] = field(default_factory=dict)
    target: str = "host"
    seed: int = 0
    progress: Progress | None = None
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("edgeprune"))

    def options_for(self, stage: str, default_factory: Any) -> Any:
        """The options object of ``stage``, or its defaults when the caller gave none."""
        opts = self.options.get(stage)
        return opts if opts is not None else default_factory()
