#!/usr/bin/env python3
"""Stand-in for ``onnxruntime_perf_test`` on a test "device" (the ADB peer).

onnxruntime publishes no binary of its perf tool (it is built from source, also for Android), so
the tests use this script: it takes the real tool's flags (``-e cpu -m times -r N -x T -s -I
MODEL``), really runs the model with onnxruntime and prints the summary in the format of current
``onnxruntime/test/perftest`` builds, latencies in seconds as the tool does.
"""

import argparse
import resource
import sys
import time

import numpy as np


def main():
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("-e", default="cpu")
    parser.add_argument("-m", default="duration")
    parser.add_argument("-r", type=int, default=1000)
    parser.add_argument("-x", type=int, default=0)
    parser.add_argument("-s", action="store_true")
    parser.add_argument("-I", action="store_true")
    parser.add_argument("model")
    args = parser.parse_args()
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.x
    start = time.perf_counter()
    try:
        session = ort.InferenceSession(args.model, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - the real tool prints any load failure the same way
        print(f"Error: Load model from {args.model} failed:{exc}", file=sys.stderr)
        sys.exit(1)
    print(f"Session creation time cost: {time.perf_counter() - start:g} s")
    feed = {
        i.name: np.random.default_rng(0)
        .standard_normal([d if isinstance(d, int) else 1 for d in i.shape])
        .astype(np.float32)
        for i in session.get_inputs()
    }
    start = time.perf_counter()
    session.run(None, feed)
    print(f"First inference time cost: {int((time.perf_counter() - start) * 1e3)} ms")
    samples = []
    for _ in range(args.r):
        t = time.perf_counter()
        session.run(None, feed)
        samples.append(time.perf_counter() - t)
    total = sum(samples)
    print(f"Total inference time cost: {total:g} s")
    print(f"Total inference requests: {len(samples)}")
    print(f"Average inference time cost: {total / len(samples) * 1e3:g} ms")
    print(f"Total inference run time: {total:g} s")
    print(f"Number of inferences per second: {len(samples) / total:g}")
    print("Avg CPU usage: 100 %")
    print(f"Peak working set size: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024} bytes")
    if args.s:
        ordered = sorted(samples)
        print(f"Min Latency: {ordered[0]:g} s")
        print(f"Max Latency: {ordered[-1]:g} s")
        for p in (50, 90, 95, 99, 99.9):
            name = "P999" if p == 99.9 else f"P{p}"
            print(f"{name} Latency: {ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]:g} s")


if __name__ == "__main__":
    main()
