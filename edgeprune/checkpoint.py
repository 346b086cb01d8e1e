"""Safe loading and saving of models.

Supported inputs (detected from the file's content, not its name):

* ``torch.export`` programs (``.pt2``): ``torch.export.load`` itself is *not* safe - it unpickles
  opaque constants and ``use_pickle`` weights, falls back to ``torch.load(weights_only=False)`` for
  sample inputs, ``exec``s the archive's guard code and ``sympify``s (``eval``s) its shape
  expressions. :func:`inspect_exported_archive` therefore reads the archive's own JSON first and
  refuses anything outside what plain ``torch.export.save`` of an aten graph writes (tensor
  payloads, aten / arithmetic operators, shape expressions and guards made of sizes and integer
  arithmetic) unless ``trust=True``;
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
import math
import pickle
import re
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeprune.errors import CheckpointError
from edgeprune.fileio import atomic_path
from edgeprune.graph.trace import FILE_BATCH
from edgeprune.graph.trace import export_program as trace_export


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
        if not trust:
            inspect_exported_archive(path)
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
    if len(input_shape) < 2 or math.prod(input_shape[1:]) > MAX_INPUT_ELEMENTS:
        raise CheckpointError(
            f"input shape {list(input_shape)} is too large for one sample",
            "pass a realistic --input-shape, e.g. 1,3,32,32",
        )
    model = model.float().eval()
    example = torch.randn(1, *input_shape[1:], generator=torch.Generator().manual_seed(0))
    check_input_shape(model, example)
    if meta["format"] == "exported-program":
        _check_dynamic_batch(model, example, path)
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


def _check_dynamic_batch(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    """Training, evaluation and calibration run batches: a program exported for batch 1 only fails
    there with torch's "Guard failed"; say so up front instead."""
    try:
        with torch.no_grad():
            model(example.expand(2, *example.shape[1:]).contiguous())
    except (RuntimeError, AssertionError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
        raise CheckpointError(
            f"{path} was exported for a fixed batch size and does not accept a batch of 2 ({first})",
            "re-export it with a dynamic batch: torch.export.export(model, (x,), "
            "dynamic_shapes=({0: torch.export.Dim('batch')},))",
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
    """``torch.export`` the model for saving: a named batch of 1..65,536 and spatial sizes as the
    model allows, so a saved model accepts every batch and resolution the original accepted
    (the policy of :func:`edgeprune.graph.trace.export_program`)."""
    return trace_export(model, example_input, FILE_BATCH, purpose="export the model to save it", error=CheckpointError)


def build_arch(arch: str, arch_kwargs: str | dict | None) -> nn.Module:
    """Instantiate ``package.module:factory`` with keyword arguments from JSON.

    This imports and runs the *user's own code*: it is called only with ``--arch`` from the command
    line (or a library caller), never with a name read from a model, bitstream or data file.
    """
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
    if not callable(factory) or isinstance(factory, type) and not issubclass(factory, nn.Module):
        raise CheckpointError(
            f"{arch} is not a model factory (a callable returning an nn.Module)",
            "point --arch at your model class or factory function",
        )
    kwargs = _parse_kwargs(arch_kwargs)
    try:
        model = factory(**kwargs)
    except (TypeError, ValueError, RuntimeError, AssertionError, IndexError, KeyError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise CheckpointError(f"cannot build {arch} with {kwargs}: {first}", "fix --arch-kwargs") from None
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
    except (ValueError, RecursionError) as exc:  # ValueError: also a number past Python's int-digit limit
        why = exc.msg if isinstance(exc, json.JSONDecodeError) else "a value is too long or too deeply nested"
        raise CheckpointError(f"--arch-kwargs is not valid JSON: {why}", "write e.g. '{\"num_classes\": 10}'") from None
    if not isinstance(kwargs, dict):
        raise CheckpointError("--arch-kwargs must be a JSON object", "write e.g. '{\"num_classes\": 10}'")
    for key, value in kwargs.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise CheckpointError(f"--arch-kwargs {key} is {value}", "give finite numbers")
        if isinstance(value, int) and not isinstance(value, bool) and not -(1 << 24) <= value <= 1 << 24:
            raise CheckpointError(f"--arch-kwargs {key} = {value} is out of range", "give a realistic size")
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
    shape = _saved_input_shape(path, extra["edgeprune.json"])
    dims = _input_dims(program)
    if shape is None and dims is not None:
        # A program exported elsewhere: a symbolic dimension takes the size it was traced with (the batch: 1).
        hints = [d if isinstance(d, int) else getattr(d.node, "hint", None) for d in dims[1:]]
        sizes = [h for h in hints if isinstance(h, int)]
        if len(sizes) == len(hints):
            shape = (1, *sizes)
    module: nn.Module = as_graph_module(program)
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


def as_graph_module(program: torch.export.ExportedProgram) -> torch.fx.GraphModule:
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
    except (
        RuntimeError,
        EOFError,
        OSError,
        ValueError,
        zipfile.BadZipFile,
        IndexError,
        KeyError,
        TypeError,
        MemoryError,
        OverflowError,
    ) as exc:
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


MAX_INPUT_ELEMENTS = 1 << 22  # one input sample (16 MiB of float32; 3x1024x1024 fits): far above edge inputs


def _saved_input_shape(path: Path, text: str) -> tuple[int, ...] | None:
    """The input shape edgeprune recorded in ``extra/edgeprune.json`` (validated; None when absent)."""
    if not text:
        return None
    problem = "is not a JSON object"
    try:
        record = json.loads(text) if len(text) < 1 << 16 else None
    except (ValueError, RecursionError):  # ValueError: also a number past Python's int-digit limit
        record = None
    shape = record.get("input_shape") if isinstance(record, dict) else None
    if isinstance(record, dict):
        problem = "has an invalid input_shape"
        if shape is None:
            return None
        if (
            isinstance(shape, list)
            and 2 <= len(shape) <= 8
            and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)
            and math.prod(shape[1:]) <= MAX_INPUT_ELEMENTS
        ):
            return tuple(shape)
    raise CheckpointError(
        f"edgeprune.json inside {path} {problem}", "re-save the model with edgeprune, or pass --input-shape"
    )


# ------------------------------------------------------------------ .pt2 inspection

MAX_ARCHIVE_JSON = 64 << 20  # a model.json of 64 MiB describes ~100k nodes: far beyond edge models
_ROOT_FILES = re.compile(
    r"^(archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id|"
    r"extra/[\w.\-]{1,128}|models/\w{1,128}\.json|data/sample_inputs/\w{1,128}\.pt|"
    r"data/weights/weight_\d{1,9}|data/weights/\w{1,128}_weights_config\.json|"
    r"data/constants/tensor_\d{1,9}|data/constants/\w{1,128}_constants_config\.json)$"
)
_OPERATOR_TARGET = re.compile(
    r"^(torch\.ops\.aten\.\w{1,64}\.\w{1,64}|"
    r"_operator\.(add|sub|mul|floordiv|truediv|mod|neg|pow|getitem|eq|ne|lt|le|gt|ge)|"
    r"torch\.sym_(max|min|not|float|int|sqrt|ite)|math\.(ceil|floor|trunc|sqrt))$"
)
_SYMPY_NAMES = frozenset(
    {
        "Symbol",
        "Integer",
        "Rational",
        "Float",
        "Add",
        "Mul",
        "Pow",
        "FloorDiv",
        "Mod",
        "PythonMod",
        "CleanDiv",
        "CeilToInt",
        "FloorToInt",
        "TruncToInt",
        "IntTrueDiv",
        "FloatTrueDiv",
        "ToFloat",
        "Max",
        "Min",
        "Abs",
        "Eq",
        "Ne",
        "Lt",
        "Le",
        "Gt",
        "Ge",
        "And",
        "Or",
        "Not",
        "True",
        "False",
        "oo",
        "zoo",
        "positive",
        "integer",
        "nonnegative",
        "real",
        "finite",
        "ModularIndexing",
        "Where",
        "OpaqueUnaryFn_sqrt",
    }
)
_SYMBOL_NAME = re.compile(r"^[a-z]{1,8}\d{0,9}$")
_GUARD_TERM = re.compile(r"L\['[A-Za-z_]\w{0,63}'\]\.(size|stride)\(\)\[\d{1,2}\]")
_GUARD_WORDS = re.compile(r"\b(max|min|and|or|not|True|False)\b")
_GUARD_REST = re.compile(r"^[\d\s()+\-*/%<>=!,]*$")


def _refuse(path: Path, problem: str) -> CheckpointError:
    return CheckpointError(
        f"{path} {problem}, which can run code when loaded", "pass --trust-checkpoint only if you trust its source"
    )


def inspect_exported_archive(path: Path) -> None:
    """Refuse a ``.pt2`` whose loading could run code, *before* ``torch.export.load`` sees it.

    Reads only the zip directory and the archive's JSON: every file must be one that plain
    ``torch.export.save`` writes for tensors (pickled weights/constants, opaque or custom objects,
    legacy pickles and unknown payloads are refused), every graph operator must be an aten op or
    integer arithmetic, every shape expression (which torch ``sympify``s) must use only sympy's
    arithmetic names, every guard (which torch ``exec``s) only input sizes and integer arithmetic,
    and the sample inputs must load with ``weights_only=True`` (torch retries them unsafely).
    """
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            roots = {info.filename.split("/", 1)[0] for info in infos}
            if len(roots) != 1:
                raise _refuse(path, "is not a single torch.export archive")
            root = roots.pop() + "/"
            files = {info.filename[len(root) :]: info for info in infos if not info.filename.endswith("/")}
            for name in files:
                if not _ROOT_FILES.match(name):
                    raise _refuse(path, f"contains an unknown payload {name[:80]!r}")
            models = [n for n in files if n.startswith("models/")]
            if not models:
                raise _refuse(path, "has no exported program")

            def read_json(name: str) -> Any:
                info = files.get(name)
                if info is None:
                    raise _refuse(path, f"lacks {name} (a legacy format whose payloads are pickles)")
                if info.file_size > MAX_ARCHIVE_JSON:
                    raise CheckpointError(
                        f"{name} inside {path} is {info.file_size} bytes, over the {MAX_ARCHIVE_JSON >> 20} MiB limit",
                        "re-export the model",
                    )
                try:
                    return json.loads(zf.read(info))
                except (ValueError, RecursionError):  # bad JSON or UTF-8, or a number past the int-digit limit
                    raise CheckpointError(f"{name} inside {path} is not valid JSON", "re-export the model") from None

            for model_file in models:
                model = model_file[len("models/") : -len(".json")]
                for kind, prefix in (("weights", "weight_"), ("constants", "tensor_")):
                    config = read_json(f"data/{kind}/{model}_{kind}_config.json")
                    entries = config.get("config") if isinstance(config, dict) else None
                    if not isinstance(entries, dict):
                        raise _refuse(path, f"has a malformed {kind} config")
                    for fqn, meta in entries.items():
                        if not isinstance(meta, dict) or meta.get("use_pickle") is not False:
                            raise _refuse(path, f"stores {kind[:-1]} {str(fqn)[:60]!r} as a pickle")
                        payload = meta.get("path_name")
                        if not (
                            isinstance(payload, str)
                            and payload.startswith(prefix)
                            and f"data/{kind}/{payload}" in files
                        ):
                            raise _refuse(path, f"stores {kind[:-1]} {str(fqn)[:60]!r} as an unknown payload")
                _check_program(path, read_json(model_file))
                sample = files.get(f"data/sample_inputs/{model}.pt")
                if sample is not None:
                    _check_sample_inputs(path, zf.read(sample))
    except (zipfile.BadZipFile, OSError, EOFError, KeyError) as exc:
        raise CheckpointError(f"{path} is a corrupt archive: {exc}", "re-save the model") from None


def _check_program(path: Path, program: Any) -> None:
    """Operators, shape expressions and guard code of one serialized exported program."""
    if not isinstance(program, dict):
        raise _refuse(path, "has a malformed exported program")
    for guard in program.get("guards_code") or []:
        if not (isinstance(guard, str) and len(guard) < 4096 and _is_size_guard(guard)):
            raise _refuse(path, f"carries guard code {str(guard)[:60]!r}")
    for symbol in program.get("range_constraints") or {}:
        if not _SYMBOL_NAME.match(str(symbol)):
            raise _refuse(path, f"names a shape symbol {str(symbol)[:40]!r}")
    stack: list[Any] = [program]
    while stack:  # iterative walk: a deep document cannot exhaust the Python stack
        node = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "target" and isinstance(value, str) and not _OPERATOR_TARGET.match(value):
                    raise _refuse(path, f"calls {value[:80]!r}, which is not an aten operator")
                if key == "expr_str" and not _is_arithmetic_expression(value):
                    raise _refuse(path, f"carries a shape expression {str(value)[:60]!r}")
                if isinstance(value, (dict, list)):
                    stack.append(value)
        elif isinstance(node, list):
            stack.extend(v for v in node if isinstance(v, (dict, list)))


def _is_size_guard(guard: str) -> bool:
    """True for guards such as ``max(1, L['x'].size()[3] // 2) > 1``: sizes, integers, comparisons."""
    return bool(_GUARD_REST.match(_GUARD_WORDS.sub(" ", _GUARD_TERM.sub("0", guard))))


def _is_arithmetic_expression(text: Any) -> bool:
    """True for sympy reprs such as ``Mul(Integer(2), Symbol('s0', positive=True))`` and nothing else."""
    if not isinstance(text, str) or len(text) > 4096:
        return False
    bare = re.sub(r"'([a-z]{1,8}\d{0,9})'", "0", text)
    if not re.fullmatch(r"[\w\s(),=.\-]*", bare):
        return False
    return all(word in _SYMPY_NAMES for word in re.findall(r"[A-Za-z_]\w*", bare))


def _check_sample_inputs(path: Path, data: bytes) -> None:
    """torch retries sample inputs with ``weights_only=False``: make sure the safe load works."""
    import io

    if not data:
        return
    try:
        torch.load(io.BytesIO(data), weights_only=True)
    except Exception:  # noqa: BLE001 - any failure means torch would retry with a full unpickler
        raise _refuse(path, "has sample inputs that are not plain tensors") from None
