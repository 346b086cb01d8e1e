"""Time one model in one runtime and summarise the latencies.

This module runs *on the device*: it may import only the standard library, numpy and the runtime it
is asked to use (ai_edge_litert, tflite_runtime or onnxruntime), because a Raspberry Pi with 1 GB of
RAM has no torch and often no room for it. The host copies the ``runtime_bench`` package next to the
model and runs ``python3 -m runtime_bench run MODEL``.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

# Runtime name -> (module to import, class or attribute path used for .tflite / .onnx).
TFLITE_RUNTIMES = ("litert", "tflite-runtime")
ONNX_RUNTIMES = ("onnxruntime",)
_MODULES = {
    "litert": "ai_edge_litert.interpreter",
    "tflite-runtime": "tflite_runtime.interpreter",
    "onnxruntime": "onnxruntime",
}
_DISTRIBUTIONS = {"litert": "ai-edge-litert", "tflite-runtime": "tflite-runtime", "onnxruntime": "onnxruntime"}


class HarnessError(Exception):
    """The model or runtime cannot be benchmarked here; the message says what to install or fix."""


@dataclass
class TensorSpec:
    name: str
    shape: list[int]
    dtype: str


@dataclass
class Timings:
    """Latency summary in milliseconds (what ``python -m runtime_bench run`` prints as JSON)."""

    model: str
    runtime: str
    runtime_version: str
    threads: int
    warmup: int
    runs: int
    inputs: list[TensorSpec]
    init_ms: float
    first_run_ms: float
    mean_ms: float
    median_ms: float
    p10_ms: float
    p90_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    peak_rss_mb: float
    rss_before_load_mb: float
    samples_ms: list[float] = field(default_factory=list)

    def to_dict(self, with_samples: bool = False) -> dict[str, Any]:
        out = asdict(self)
        if not with_samples:
            out.pop("samples_ms")
        return out


def summarise(samples_ms: list[float]) -> dict[str, float]:
    """Mean, median, p10 and p90 (linear interpolation, as numpy), std (population), min and max.

    p10..p90 is the spread the report draws: it ignores the scheduler hiccups that make min and max noisy.
    """
    if not samples_ms:
        raise HarnessError("no timed runs: pass --runs 1 or more")
    values = np.asarray(samples_ms, dtype=np.float64)
    return {
        "mean_ms": float(values.mean()),
        "median_ms": float(np.median(values)),
        "p10_ms": float(np.percentile(values, 10)),
        "p90_ms": float(np.percentile(values, 90)),
        "std_ms": float(values.std()),
        "min_ms": float(values.min()),
        "max_ms": float(values.max()),
    }


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB.

    /proc's VmHWM first: Linux carries ``ru_maxrss`` across ``execve``, so a harness started by a
    large parent (edgeprune with torch loaded, on the host) would report the parent's peak.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def current_rss_mb() -> float:
    """Resident set size now, from /proc (falls back to the peak where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / (1 << 20)
    except (OSError, ValueError, IndexError):
        return peak_rss_mb()


def pick_runtime(model_path: str, requested: str) -> str:
    """Resolve 'auto' to the first importable runtime that can load this model format."""
    candidates = _candidates(model_path)
    if requested != "auto":
        if requested not in candidates:
            raise HarnessError(
                f"runtime {requested!r} cannot run {os.path.basename(model_path)}; use one of {', '.join(candidates)}"
            )
        return requested
    for name in candidates:
        if importlib.util.find_spec(_MODULES[name].split(".")[0]) is not None:
            return name
    wanted = " or ".join(_DISTRIBUTIONS[c] for c in candidates)
    raise HarnessError(f"no runtime for {os.path.basename(model_path)} on this device: pip install {wanted}")


def _candidates(model_path: str) -> tuple[str, ...]:
    if model_path.endswith(".tflite"):
        return TFLITE_RUNTIMES
    if model_path.endswith(".onnx"):
        return ONNX_RUNTIMES
    raise HarnessError(f"unsupported model file {os.path.basename(model_path)}: expected .tflite or .onnx")


def _import_runtime(name: str) -> Any:
    try:
        return importlib.import_module(_MODULES[name])
    except ImportError as exc:
        raise HarnessError(f"cannot import {name} ({exc}): pip install {_DISTRIBUTIONS[name]}") from exc


def _version(name: str) -> str:
    try:
        from importlib.metadata import version

        return version(_DISTRIBUTIONS[name])
    except Exception:  # noqa: BLE001 - a missing version string must never fail a benchmark
        return "unknown"


def random_input(spec: TensorSpec, rng: np.random.Generator) -> np.ndarray:
    """Input data of the tensor's dtype and shape: N(0,1) floats, uniform integers over the full range."""
    dtype = np.dtype(spec.dtype)
    if dtype.kind == "f":
        return rng.standard_normal(spec.shape).astype(dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        low, high = max(info.min, -128), min(info.max, 127) if dtype.kind == "i" else min(info.max, 255)
        return rng.integers(low, high + 1, size=spec.shape, dtype=dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, size=spec.shape).astype(bool)
    raise HarnessError(f"input {spec.name!r} has dtype {dtype}, which the harness cannot generate")


class _TFLiteModel:
    """A TFLite interpreter prepared for repeated ``invoke`` with fixed inputs."""

    def __init__(self, module: Any, path: str, threads: int) -> None:
        self.interpreter = module.Interpreter(model_path=path, num_threads=threads)
        details = self.interpreter.get_input_details()
        for d in details:
            signature = d.get("shape_signature", d["shape"])
            if any(int(s) < 0 for s in signature):  # dynamic dims (the batch) become 1
                self.interpreter.resize_tensor_input(d["index"], [max(int(s), 1) for s in signature])
        self.interpreter.allocate_tensors()
        self.details = self.interpreter.get_input_details()
        self.specs = [
            TensorSpec(d["name"], [int(s) for s in d["shape"]], np.dtype(d["dtype"]).name) for d in self.details
        ]

    def bind(self, arrays: list[np.ndarray]) -> None:
        for d, a in zip(self.details, arrays):  # noqa: B905 - the harness also runs on Python 3.9
            self.interpreter.set_tensor(d["index"], a)

    def run(self) -> None:
        self.interpreter.invoke()

    def infer(self, x: np.ndarray) -> np.ndarray:
        """Float output for one float input sample batch, (de)quantising int8 I/O with the tensors' scales."""
        detail = self.details[0]
        self.interpreter.set_tensor(detail["index"], _quantize(x, detail))
        self.interpreter.invoke()
        out = self.interpreter.get_output_details()[0]
        return _dequantize(self.interpreter.get_tensor(out["index"]), out)

    def output_step(self) -> float:
        """The output's quantisation step (0 for a float output): the resolution an INT8 file answers in."""
        out = self.interpreter.get_output_details()[0]
        return 0.0 if np.dtype(out["dtype"]).kind == "f" else float(out["quantization"][0])


def _quantize(x: np.ndarray, detail: dict) -> np.ndarray:
    dtype = np.dtype(detail["dtype"])
    if dtype.kind == "f":
        return x.astype(dtype)
    scale, zero = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.rint(x / scale) + zero, info.min, info.max).astype(dtype)


def _dequantize(y: np.ndarray, detail: dict) -> np.ndarray:
    if np.dtype(detail["dtype"]).kind == "f":
        return y.astype(np.float32)
    scale, zero = detail["quantization"]
    return ((y.astype(np.float32) - zero) * scale).astype(np.float32)


_ONNX_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(bool)": "bool",
}


class _OnnxModel:
    """An onnxruntime CPU session with intra-op threads fixed, as on a small device."""

    def __init__(self, module: Any, path: str, threads: int) -> None:
        options = module.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = module.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.specs = []
        for i in self.session.get_inputs():
            if i.type not in _ONNX_DTYPES:
                raise HarnessError(f"input {i.name!r} has type {i.type}, which the harness cannot generate")
            shape = [d if isinstance(d, int) and d > 0 else 1 for d in i.shape]  # symbolic dims -> 1
            self.specs.append(TensorSpec(i.name, shape, _ONNX_DTYPES[i.type]))
        self.feed: dict[str, np.ndarray] = {}

    def bind(self, arrays: list[np.ndarray]) -> None:
        self.feed = dict(zip([s.name for s in self.specs], arrays))  # noqa: B905 - runs on Python 3.9

    def run(self) -> None:
        self.session.run(None, self.feed)

    def infer(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(
            self.session.run(None, {self.specs[0].name: x.astype(self.specs[0].dtype)})[0], dtype=np.float32
        )

    def output_step(self) -> float:
        return 0.0  # QDQ files dequantise inside the graph: float outputs


def infer(model_path: str, inputs: np.ndarray, runtime: str = "auto", threads: int = 1) -> dict[str, Any]:
    """Run ``inputs`` through the model one sample at a time; float outputs plus what produced them.

    This is how the host checks that a device computes what the host computed (``runtime_bench infer``):
    timings under emulation mean nothing, outputs do.
    """
    if not os.path.isfile(model_path):
        raise HarnessError(f"model file {model_path} does not exist")
    name = pick_runtime(model_path, runtime)
    module = _import_runtime(name)
    try:
        model = (_TFLiteModel if name in TFLITE_RUNTIMES else _OnnxModel)(module, model_path, threads)
    except HarnessError:
        raise
    except Exception as exc:  # noqa: BLE001 - runtimes raise bare RuntimeError/ValueError for bad files
        raise HarnessError(f"{name} cannot load {os.path.basename(model_path)}: {str(exc).splitlines()[0]}") from exc
    expected = model.specs[0].shape[1:]
    if list(inputs.shape[1:]) != list(expected):
        raise HarnessError(
            f"inputs have shape {list(inputs.shape)}, the model takes [N, {', '.join(map(str, expected))}]"
        )
    outputs = np.concatenate([model.infer(inputs[i : i + 1]) for i in range(len(inputs))])
    return {
        "model": os.path.basename(model_path),
        "runtime": name,
        "runtime_version": _version(name),
        "output_step": model.output_step(),
        "outputs": outputs,
    }


def benchmark(
    model_path: str, runtime: str = "auto", threads: int = 1, warmup: int = 10, runs: int = 100, seed: int = 0
) -> Timings:
    """Load ``model_path``, run it ``warmup`` times untimed and ``runs`` times timed."""
    if not os.path.isfile(model_path):
        raise HarnessError(f"model file {model_path} does not exist")
    if threads < 1 or warmup < 0 or runs < 1:
        raise HarnessError("need threads >= 1, warmup >= 0 and runs >= 1")
    name = pick_runtime(model_path, runtime)
    module = _import_runtime(name)
    rss_before = current_rss_mb()
    start = time.perf_counter()
    try:
        model = (_TFLiteModel if name in TFLITE_RUNTIMES else _OnnxModel)(module, model_path, threads)
    except HarnessError:
        raise
    except Exception as exc:  # noqa: BLE001 - runtimes raise bare RuntimeError/ValueError for bad files
        raise HarnessError(f"{name} cannot load {os.path.basename(model_path)}: {str(exc).splitlines()[0]}") from exc
    init_ms = (time.perf_counter() - start) * 1e3
    rng = np.random.default_rng(seed)
    model.bind([random_input(s, rng) for s in model.specs])
    start = time.perf_counter()
    model.run()
    first_run_ms = (time.perf_counter() - start) * 1e3
    for _ in range(warmup):
        model.run()
    samples = []
    clock = time.perf_counter
    for _ in range(runs):
        start = clock()
        model.run()
        samples.append((clock() - start) * 1e3)
    return Timings(
        model=os.path.basename(model_path),
        runtime=name,
        runtime_version=_version(name),
        threads=threads,
        warmup=warmup,
        runs=runs,
        inputs=model.specs,
        init_ms=init_ms,
        first_run_ms=first_run_ms,
        peak_rss_mb=peak_rss_mb(),
        rss_before_load_mb=rss_before,
        samples_ms=samples,
        **summarise(samples),
    )


def available_runtimes() -> dict[str, str]:
    """The runtimes importable here with their versions (``python -m runtime_bench probe``)."""
    found = {}
    for name, module in _MODULES.items():
        if importlib.util.find_spec(module.split(".")[0]) is not None:
            found[name] = _version(name)
    return found


def python_info() -> dict[str, Any]:
    """Interpreter, numpy, CPU architecture, and whether torch is importable (a Pi image should not need it)."""
    import platform

    modules = [m for m in ("torch",) if importlib.util.find_spec(m) is not None]
    return {
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "machine": platform.machine(),
        "modules": modules,
    }
