"""``python -m runtime_bench``: the command the host runs on the device.

``run MODEL`` prints one JSON object (see :class:`runtime_bench.harness.Timings`) on stdout;
``probe`` prints the runtimes importable on this device. A harness failure (no runtime, unreadable
model) prints ``{"error": "..."}`` and exits with :data:`HARNESS_ERROR_EXIT`, so the host can tell
it from a crash or a kill and report the device's own reason.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from runtime_bench.harness import HarnessError, available_runtimes, benchmark, infer, python_info

HARNESS_ERROR_EXIT = 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runtime_bench", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="benchmark one .tflite or .onnx model")
    run.add_argument("model")
    run.add_argument("--runtime", default="auto", help="litert, tflite-runtime, onnxruntime or auto")
    run.add_argument("--threads", type=int, default=1)
    run.add_argument("--warmup", type=int, default=10)
    run.add_argument("--runs", type=int, default=100)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--samples", action="store_true", help="include every timed run in the JSON")
    infer_cmd = commands.add_parser("infer", help="run inputs (.npy) through a model, save the outputs (.npy)")
    infer_cmd.add_argument("model")
    infer_cmd.add_argument("--inputs", required=True, help=".npy of float inputs, batch first")
    infer_cmd.add_argument("--outputs", required=True, help="where to write the float outputs (.npy)")
    infer_cmd.add_argument("--runtime", default="auto", help="litert, tflite-runtime, onnxruntime or auto")
    infer_cmd.add_argument("--threads", type=int, default=1)
    commands.add_parser("probe", help="list the runtimes installed here")
    args = parser.parse_args(argv)
    try:
        if args.command == "probe":
            result = {"runtimes": available_runtimes(), **python_info()}
        elif args.command == "infer":
            result = infer(args.model, _load_inputs(args.inputs), args.runtime, args.threads)
            np.save(args.outputs, result.pop("outputs"))
            result["outputs"] = args.outputs
        else:
            timings = benchmark(args.model, args.runtime, args.threads, args.warmup, args.runs, args.seed)
            result = timings.to_dict(with_samples=args.samples)
    except HarnessError as exc:
        print(json.dumps({"error": str(exc)}))
        return HARNESS_ERROR_EXIT
    print(json.dumps(result))
    return 0


def _load_inputs(path: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise HarnessError(f"cannot read inputs {path}: {exc}") from exc


if __name__ == "__main__":
    sys.exit(main())
