"""Safe loading and saving of models.

Supported inputs (detected from the file's content, not its name):

* ``torch.export`` programs (``.pt2``, a zip with ``serialized_exported_program``): safe, no code runs;
* TorchScript archives (a zip with ``constants.pkl``/``code/``): loaded with ``torch.jit.load``
  (TorchScript code is interpreted, not arbitrary Python) and converted to an exported program;
* a ``state_dict`` plus ``--arch package.module:factory`` (and ``--arch-kwargs`` JSON): the tensors are
  read with ``weights_only=True``; keys and shapes must match the architecture exactly;
* a whole pickled ``nn.Module`` - only with ``trust=True`` (``--trust-checkpoint``) because
  unpickling can execute arbitrary code.

Models are saved as ``torch.export`` programs: they load anywhere torch runs, without edgeprune and
without trusting pickles, and they carry the example input shape.
"""

from __future__ import annotations

import importlib
import json
import pickle
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeprune.errors import CheckpointError
from edgeprune.fileio import atomic_path


@dataclass
class LoadedModel:
    """A model ready for the pipeline: eval mode, CPU, float32, with a batch-of-one example input."""

    model: nn.Module
    example_input: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)


def parse_input_shape(text: str | None) -> tuple[int, ...] | None:
    """Parse ``"1,3,32,32"`` into a shape tuple (None stays None)."""
    if text is None or text == "":
        return None
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise CheckpointError(
            f"invalid input shape {text!r}", "write it as comma-separated integers, e.g. 1,3,32,32"
        ) from None
    if len(shape) < 2 or any(v <= 0 for v in shape):
        raise CheckpointError(
            f"invalid input shape {text!r}", "give batch and at least one more positive dimension, e.g. 1,3,32,32"
        )
    return shape


def load_model(
    path: str | Path,
    arch: str | None = None,
    arch_kwargs: str | dict | None = None,
    trust: bool = False,
    input_shape: tuple[int, ...] | None = None,
) -> LoadedModel:
    """Load ``path`` into a :class:`LoadedModel` (see the module docstring for the formats)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"model file {path} does not exist", "check the path")
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, not a model file", "give a .pt/.pt2 file")
    kind = _sniff(path)
    meta: dict[str, Any] = {"source": str(path), "format": kind}
    if kind == "exported-program":
        model, saved_shape = _load_exported(path)
        input_shape = input_shape or saved_shape
    elif kind == "torchscript":
        model = _load_torchscript(path, input_shape)
    else:
        obj = _load_pickle(path, trust)
        if isinstance(obj, nn.Module):
            model = obj
            meta["format"] = "pickled-module"
        elif _is_state_dict(obj):
            if arch is None:
                raise CheckpointError(
                    f"{path} holds only a state_dict (weights without the network)",
                    "pass --arch package.module:factory, e.g. --arch edgeprune.models:resnet20",
                )
            model = build_arch(arch, arch_kwargs)
            _load_state_dict(model, _unwrap_state_dict(obj), path)
            meta["format"] = "state-dict"
            meta["arch"] = arch
            meta["arch_kwargs"] = _parse_kwargs(arch_kwargs)
        else:
            raise CheckpointError(
                f"{path} holds a {type(obj).__name__}, not a model or state_dict",
                "save the model with torch.save(model.state_dict()) or torch.export",
            )
    if input_shape is None:
        input_shape = _guess_input_shape(model)
    if input_shape is None:
        raise CheckpointError(f"cannot tell the input shape of {path}", "pass --input-shape, e.g. 1,3,32,32")
    model = model.float().eval()
    example = torch.randn(*input_shape, generator=torch.Generator().manual_seed(0))[:1]
    check_input_shape(model, example)
    meta["input_shape"] = list(example.shape)
    return LoadedModel(model, example, meta)


def check_input_shape(model: nn.Module, example: torch.Tensor) -> None:
    """Run one forward pass; a shape mismatch becomes a one-line CheckpointError."""
    try:
        with torch.no_grad():
            model(example)
    except (RuntimeError, ValueError, IndexError, AssertionError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"the model does not accept inputs of shape {list(example.shape)}: {first[:200]}",
            "pass the right --input-shape (batch,channels,height,width)",
        ) from None


def save_model(model: nn.Module, example_input: torch.Tensor, dest: str | Path) -> Path:
    """Atomically save ``model`` as a ``torch.export`` program loadable without edgeprune."""
    dest = Path(dest)
    program = export_program(model, example_input)
    with atomic_path(dest) as tmp:
        torch.export.save(
            program, tmp, extra_files={"edgeprune.json": json.dumps({"input_shape": list(example_input.shape)})}
        )
    return dest


def export_program(model: nn.Module, example_input: torch.Tensor) -> torch.export.ExportedProgram:
    """``torch.export`` the model in eval mode with a dynamic batch dimension.

    The batch is exported from a two-sample example so that torch does not specialise it to 1.
    Spatial dimensions are ``Dim.AUTO``: they stay dynamic where the model allows it (global
    pooling) and are specialised where it does not (Flatten -> Linear), so a saved model accepts
    every resolution the original accepted.
    """
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    example = example_input[:1].expand(2, *example_input.shape[1:]).contiguous()
    spatial = {d: torch.export.Dim.AUTO for d in range(2, example.dim())}
    model.eval()
    try:
        return torch.export.export(model, (example,), dynamic_shapes=({0: batch, **spatial},))
    except Exception as exc:  # torch.export raises many unrelated types for untraceable code
        raise CheckpointError(
            f"cannot export the model to save it: {str(exc).splitlines()[0][:200]}",
            "remove data-dependent Python control flow from forward()",
        ) from None


def build_arch(arch: str, arch_kwargs: str | dict | None) -> nn.Module:
    """Instantiate ``package.module:factory`` with keyword arguments from JSON."""
    if ":" not in arch:
        raise CheckpointError(
            f"invalid --arch {arch!r}", "write it as package.module:factory, e.g. edgeprune.models:lenet5"
        )
    module_name, _, attr = arch.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except ImportError as exc:
        raise CheckpointError(
            f"cannot import {module_name!r} for --arch: {exc}", "install the package or fix PYTHONPATH"
        ) from None
    except AttributeError:
        raise CheckpointError(
            f"{module_name!r} has no attribute {attr!r}", "check the factory name in --arch"
        ) from None
    kwargs = _parse_kwargs(arch_kwargs)
    try:
        model = factory(**kwargs)
    except TypeError as exc:
        raise CheckpointError(f"cannot build {arch} with {kwargs}: {exc}", "fix --arch-kwargs") from None
    if not isinstance(model, nn.Module):
        raise CheckpointError(
            f"{arch} returned a {type(model).__name__}, not an nn.Module", "point --arch at a model factory"
        )
    return model


def _parse_kwargs(arch_kwargs: str | dict | None) -> dict[str, Any]:
    if arch_kwargs is None or arch_kwargs == "":
        return {}
    if isinstance(arch_kwargs, dict):
        return arch_kwargs
    try:
        kwargs = json.loads(arch_kwargs)
    except json.JSONDecodeError as exc:
        raise CheckpointError(
            f"--arch-kwargs is not valid JSON: {exc.msg}", "write e.g. '{\"num_classes\": 10}'"
        ) from None
    if not isinstance(kwargs, dict):
        raise CheckpointError("--arch-kwargs must be a JSON object", "write e.g. '{\"num_classes\": 10}'")
    return kwargs


def _sniff(path: Path) -> str:
    """Tell the container format from the bytes: exported program, TorchScript, or torch.save pickle."""
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            head = f.read(2)
        if head[:1] == b"\x80":  # legacy (non-zip) torch.save / raw pickle
            return "pickle"
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint (unknown or truncated format)",
            "re-save it with torch.save or torch.export.save",
        )
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            bad = zf.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise CheckpointError(
            f"{path} is a corrupt archive: {exc}", "re-save the model; the file may be truncated"
        ) from None
    if bad is not None:
        raise CheckpointError(f"{path} is corrupt (bad CRC in {bad})", "re-save the model; the file may be damaged")
    if any(n.endswith("serialized_exported_program.json") or "/models/" in n and n.endswith(".json") for n in names):
        return "exported-program"
    if any(n.endswith("constants.pkl") for n in names) and any("/code/" in n for n in names):
        return "torchscript"
    if any(n.endswith("data.pkl") for n in names):
        return "pickle"
    raise CheckpointError(f"{path} is a zip archive but not a PyTorch checkpoint", "give a .pt/.pt2 written by torch")


def _load_exported(path: Path) -> tuple[nn.Module, tuple[int, ...] | None]:
    extra = {"edgeprune.json": ""}
    try:
        program = torch.export.load(path, extra_files=extra)
    except Exception as exc:  # torch.export.load raises assorted types on damaged archives
        raise CheckpointError(
            f"cannot load exported program {path}: {str(exc).splitlines()[0][:200]}", "re-export the model"
        ) from None
    shape = None
    if extra["edgeprune.json"]:
        shape = tuple(json.loads(extra["edgeprune.json"]).get("input_shape", ())) or None
    dims = _input_dims(program)
    if shape is None and dims is not None:
        # A program exported elsewhere: a symbolic dimension takes the size it was traced with (the batch: 1).
        hints = [d if isinstance(d, int) else getattr(d.node, "hint", None) for d in dims]
        if all(isinstance(h, int) for h in hints[1:]):
            shape = (1, *hints[1:])
    module = as_graph_module(program)
    if dims is not None and isinstance(dims[0], int) and shape is not None:
        module = _with_dynamic_batch(module, path, dims[0], shape)
    return module, shape


def _input_dims(program: torch.export.ExportedProgram) -> tuple[Any, ...] | None:
    """The dimensions (ints or SymInts) of the program's single user input, or None."""
    inputs = [s for s in program.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
    if len(inputs) != 1:
        return None
    node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == inputs[0].arg.name)
    val = node.meta.get("val")
    return tuple(val.shape) if val is not None and val.dim() >= 1 else None


def _with_dynamic_batch(module: nn.Module, path: Path, batch: int, shape: tuple[int, ...]) -> nn.Module:
    """A program traced with a fixed batch: re-export it with a dynamic batch, or refuse in one line.

    Training, calibration and evaluation feed other batch sizes, and saving exports a dynamic
    batch, so a graph that only takes ``batch`` samples would fail minutes later.
    """
    try:
        return as_graph_module(export_program(module, torch.zeros(shape)))
    except CheckpointError:
        raise CheckpointError(
            f"{path} was exported with a fixed batch of {batch} and its graph does not accept other batch sizes",
            "re-export it with dynamic_shapes=({0: torch.export.Dim('batch')},) in torch.export.export",
        ) from None


def as_graph_module(program: torch.export.ExportedProgram) -> nn.Module:
    """The program as a trainable ``fx.GraphModule``.

    ``ExportedProgram.module()`` refuses ``.eval()``/``.train()``; re-wrapping its graph in a plain
    GraphModule keeps the same code and parameters and behaves like any other module. The input
    guards of the original export (e.g. ``batch <= 4096``) are dropped: they describe the shapes
    the program was traced for, and would make every later export with a wider batch fail.
    """
    unlifted = program.module()
    graph = unlifted.graph
    for node in [n for n in graph.nodes if n.op == "call_module" and n.target == "_guards_fn"]:
        if not node.users:
            graph.erase_node(node)
    return torch.fx.GraphModule(unlifted, graph)


def _load_torchscript(path: Path, input_shape: tuple[int, ...] | None) -> nn.Module:
    try:
        scripted = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # the TorchScript loader raises RuntimeError subclasses with long C++ traces
        raise CheckpointError(
            f"cannot load TorchScript archive {path}: {str(exc).splitlines()[0][:200]}",
            "re-save the model with torch.jit.save",
        ) from None
    if input_shape is None:
        raise CheckpointError(
            f"{path} is TorchScript, which does not record its input shape", "pass --input-shape, e.g. 1,3,32,32"
        )
    from torch._export.converter import TS2EPConverter

    example = torch.zeros(input_shape)
    try:
        with warnings.catch_warnings():  # one "num_batches_tracked is never used" warning per BN layer
            warnings.simplefilter("ignore", UserWarning)
            program = TS2EPConverter(scripted, (example,)).convert()
    except Exception as exc:  # conversion failures come from deep inside torch
        raise CheckpointError(
            f"cannot convert TorchScript {path} to a graph: {str(exc).splitlines()[0][:200]}",
            "save a state_dict and pass --arch instead",
        ) from None
    return as_graph_module(program)


def _load_pickle(path: Path, trust: bool) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as exc:
        if trust:
            raise CheckpointError(f"{path} is corrupt: {exc}", "re-save the model") from None
        raise CheckpointError(
            f"{path} contains pickled Python objects (e.g. a whole model), which can run code when loaded",
            "pass --trust-checkpoint if you trust its source, or save a state_dict and use --arch",
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path} is corrupt or truncated: {first[:200]}", "re-save the model") from None
    except (AttributeError, ModuleNotFoundError) as exc:
        raise CheckpointError(
            f"{path} needs code that is not importable: {exc}", "install the package that defines the model"
        ) from None


def _is_state_dict(obj: Any) -> bool:
    inner = _unwrap_state_dict(obj) if isinstance(obj, dict) else None
    return isinstance(inner, dict) and len(inner) > 0 and all(isinstance(v, torch.Tensor) for v in inner.values())


def _unwrap_state_dict(obj: dict) -> Any:
    """Accept {"state_dict": ...} / {"model": ...} wrappers that training scripts commonly save."""
    for key in ("state_dict", "model_state_dict", "model"):
        if key in obj and isinstance(obj[key], dict):
            return obj[key]
    return obj


def _load_state_dict(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s) e.g. {missing[0]!r}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} key(s) e.g. {unexpected[0]!r}")
        raise CheckpointError(
            f"{path} does not match the architecture: {', '.join(parts)}", "check --arch and --arch-kwargs"
        )
    for k, v in expected.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise CheckpointError(
                f"{path} does not match the architecture: {k!r} has shape {list(state[k].shape)}, "
                f"the model expects {list(v.shape)}",
                "check --arch-kwargs (e.g. num_classes, in_channels)",
            )
    model.load_state_dict(state)


def _guess_input_shape(model: nn.Module) -> tuple[int, ...] | None:
    """The shape the model declares via an ``input_shape`` attribute (our zoo/examples), if any."""
    shape = getattr(model, "input_shape", None)
    return tuple(shape) if shape else None
