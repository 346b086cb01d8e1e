#!/usr/bin/env python3
"""Stand-in for TFLite's native ``benchmark_model`` on a test "device" (the ADB peer).

It accepts the real tool's flags, really runs the .tflite file with ai_edge_litert (so the
numbers are genuine latencies on this machine) and prints its log in the format of current
``tensorflow/lite/tools/benchmark`` builds - ``INFO:`` prefixes, the warm-up and measured
``count=...`` lines with integer microseconds and ``%g`` averages (which turn into scientific
notation such as ``2.95034e+06`` for slow models), the ``Inference timings in us`` summary and the
memory footprint lines - on stderr, exiting 1 with ``ERROR:`` lines when the model cannot be read.
The fixtures copy it to the device with the test interpreter as its ``#!`` line.
"""

import resource
import statistics
import sys
import time

import numpy as np


def flags(argv):
    values = {}
    for arg in argv:
        if not arg.startswith("--") or "=" not in arg:
            log("ERROR", f"Unconsumed cmdline flags: {arg}")
            sys.exit(1)
        key, _, value = arg[2:].partition("=")
        values[key] = value
    return values


def log(level, text):
    print(f"{level}: {text}", file=sys.stderr, flush=True)


def stats_line(samples_us):
    ordered = sorted(samples_us)

    def pct(p):
        return int(ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))])

    return (
        f"count={len(ordered)} first={int(samples_us[0])} curr={int(samples_us[-1])} min={int(ordered[0])} "
        f"max={int(ordered[-1])} avg={statistics.fmean(samples_us):g} std={int(statistics.pstdev(samples_us))} "
        f"p5={pct(5)} median={int(statistics.median(ordered))} p95={pct(95)}"
    )


def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main():
    args = flags(sys.argv[1:])
    graph = args.get("graph", "")
    threads = int(args.get("num_threads", "-1"))
    warmup = int(args.get("warmup_runs", "1"))
    runs = int(args.get("num_runs", "50"))
    log("INFO", "STARTING!")
    log("INFO", "Log parameter values verbosely: [0]")
    log("INFO", f"Min num runs: [{runs}]")
    log("INFO", f"Num threads: [{threads}]")
    log("INFO", f"Graph: [{graph}]")
    start_rss = rss_mb()
    try:
        with open(graph, "rb") as f:
            size_mb = len(f.read()) / 1e6
    except OSError:
        log("ERROR", f"Could not open '{graph}'.")
        log("ERROR", f"Failed to mmap model {graph}")
        log("ERROR", "Benchmarking failed.")
        sys.exit(1)
    log("INFO", f"Loaded model {graph}")
    log("INFO", f"The input model file size (MB): {size_mb:g}")
    from ai_edge_litert.interpreter import Interpreter

    start = time.perf_counter()
    interpreter = Interpreter(model_path=graph, num_threads=max(threads, 1))
    interpreter.allocate_tensors()
    init_us = (time.perf_counter() - start) * 1e6
    init_rss = rss_mb()
    log("INFO", f"Initialized session in {init_us / 1e3:g}ms.")
    rng = np.random.default_rng(0)
    for d in interpreter.get_input_details():
        dtype = np.dtype(d["dtype"])
        data = rng.standard_normal(d["shape"]) if dtype.kind == "f" else rng.integers(-128, 127, d["shape"])
        interpreter.set_tensor(d["index"], data.astype(dtype))

    def timed(n):
        samples = []
        for _ in range(n):
            t = time.perf_counter()
            interpreter.invoke()
            samples.append((time.perf_counter() - t) * 1e6)
        return samples

    log(
        "INFO",
        f"Running benchmark for at least {warmup} iterations and at least 0.5 seconds but terminate if "
        "exceeding 150 seconds.",
    )
    warm = timed(max(warmup, 1))
    log("INFO", stats_line(warm) + "\n")
    log(
        "INFO",
        f"Running benchmark for at least {runs} iterations and at least 1 seconds but terminate if "
        "exceeding 150 seconds.",
    )
    measured = timed(runs)
    log("INFO", stats_line(measured) + "\n")
    log(
        "INFO",
        f"Inference timings in us: Init: {int(init_us)}, First inference: {int(warm[0])}, "
        f"Warmup (avg): {statistics.fmean(warm):g}, Inference (avg): {statistics.fmean(measured):g}",
    )
    log(
        "INFO",
        "Note: as the benchmark tool itself affects memory footprint, the following is only APPROXIMATE "
        "to the actual memory footprint of the model at runtime. Take the information at your discretion.",
    )
    log(
        "INFO",
        f"Memory footprint delta from the start of the tool (MB): init={init_rss - start_rss:g} "
        f"overall={rss_mb() - start_rss:g}",
    )
    if args.get("report_peak_memory_footprint") == "true":
        log("INFO", f"Overall peak memory footprint (MB) via periodic monitoring: {rss_mb():g}")


if __name__ == "__main__":
    main()
