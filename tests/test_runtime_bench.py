"""runtime_bench: the on-device harness (real runtimes, real models) and the native-tool log parsers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from runtime_bench.harness import HarnessError, TensorSpec, benchmark, random_input, summarise
from runtime_bench.parsers import ParseError, parse_benchmark_model, parse_perf_test

pytest_plugins = ["support.fixtures"]
REPO = Path(__file__).resolve().parents[1]

NEW_FORMAT = """\
INFO: STARTING!
INFO: Log parameter values verbosely: [0]
INFO: Graph: [/data/local/tmp/mobilenet.tflite]
INFO: Loaded model /data/local/tmp/mobilenet.tflite
INFO: The input model file size (MB): 24.6229
INFO: Initialized session in 119.515ms.
INFO: Running benchmark for at least 1 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
INFO: count=9 first=87112 curr=51629 min=51629 max=87112 avg=58147.4 std=11478 p5=51629 median=51962 p95=87112

INFO: Running benchmark for at least 50 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
INFO: count=1000 first=52162 curr=49785 min=49088 max=686105 avg=63743.2 std=60716 p5=49620 median=51891 p95=68628

INFO: Inference timings in us: Init: 119515, First inference: 87112, Warmup (avg): 58147.4, Inference (avg): 63743.2
INFO: Note: as the benchmark tool itself affects memory footprint, the following is only APPROXIMATE ...
INFO: Memory footprint delta from the start of the tool (MB): init=55.4961 overall=55.4961
INFO: Overall peak memory footprint (MB) via periodic monitoring: 93.2383
"""

# A 2019 build through logcat: no INFO prefix but the logcat one, no percentiles, old summary and memory lines.
OLD_FORMAT_LOGCAT = """\
I tflite  : Min num runs: [50]
I tflite  : Initialized session in 7.254ms
I tflite  : Running benchmark for at least 1 iterations and at least 0.5 seconds
I tflite  : count=3 first=2.95034e+06 curr=2.90011e+06 min=2.90011e+06 max=2.95034e+06 avg=2.92e+06 std=20518
I tflite  : Running benchmark for at least 50 iterations and at least 1 seconds
I tflite  : count=50 first=2.91e+06 curr=2.88e+06 min=2.85e+06 max=3.1e+06 avg=2.9066e+06 std=41000
I tflite  : Average inference timings in us: Warmup: 2.92e+06, Init: 7254, no stats: 2.9066e+06
I tflite  : Peak memory footprint (MB): init=3.125 overall=61.75
"""

PERF_TEST_NEW = """\
Session creation time cost: 0.0102016 s
First inference time cost: 2 ms
Total inference time cost: 0.185739 s
Total inference requests: 100
Average inference time cost: 1.85739 ms
Total inference run time: 0.18581 s
Number of inferences per second: 538.184
Avg CPU usage: 96 %
Peak working set size: 36696064 bytes
Avg CPU usage:96
Peak working set size:36696064
Min Latency: 0.00183404 s
Max Latency: 0.00231 s
P50 Latency: 0.00184107 s
P90 Latency: 0.00190503 s
P95 Latency: 0.00195 s
P99 Latency: 0.0021 s
P999 Latency: 0.00231 s
"""

PERF_TEST_OLD = """\
Setting intra_op_num_threads to 1
Session creation time cost:0.0523 s
Total time cost (including warm-up): 0.541 s
Total inference requests: 200
Average time cost: 2.6 ms
P50 Latency is 0.0025 sec
P90 Latency is 0.0031 sec
"""


def test_new_benchmark_model_format_is_read_in_milliseconds():
    r = parse_benchmark_model(NEW_FORMAT)
    assert r["runs"] == 1000  # the measured line, not the warm-up line
    assert r["median_ms"] == pytest.approx(51.891)
    assert r["mean_ms"] == pytest.approx(63.7432)
    assert r["p95_ms"] == pytest.approx(68.628)
    assert r["std_ms"] == pytest.approx(60.716)
    assert r["init_ms"] == pytest.approx(119.515)
    assert r["first_run_ms"] == pytest.approx(87.112)
    assert r["memory_delta_mb"] == pytest.approx(55.4961)
    assert r["peak_rss_mb"] == pytest.approx(93.2383)
    assert r["model_size_mb"] == pytest.approx(24.6229)
    assert r["p90_ms"] is None  # the tool prints no p90: never invented


def test_old_logcat_format_with_scientific_notation():
    r = parse_benchmark_model(OLD_FORMAT_LOGCAT)
    assert r["runs"] == 50
    assert r["mean_ms"] == pytest.approx(2906.6)
    assert r["first_run_ms"] == pytest.approx(2950.34)  # first= of the warm-up line
    assert r["min_ms"] == pytest.approx(2850.0)
    assert r["median_ms"] is None
    assert r["init_ms"] == pytest.approx(7.254)
    assert r["memory_delta_mb"] == pytest.approx(61.75)


def test_benchmark_model_failure_reports_the_tools_error_line():
    text = "INFO: STARTING!\nERROR: Could not open '/data/local/tmp/x.tflite'.\nERROR: Benchmarking failed.\n"
    with pytest.raises(ParseError, match="Could not open"):
        parse_benchmark_model(text)
    with pytest.raises(ParseError, match="no 'count="):
        parse_benchmark_model("Segmentation fault\n")


def test_perf_test_new_and_old_formats():
    new = parse_perf_test(PERF_TEST_NEW)
    assert new["mean_ms"] == pytest.approx(1.85739)
    assert new["median_ms"] == pytest.approx(1.84107)
    assert new["p90_ms"] == pytest.approx(1.90503)
    assert new["init_ms"] == pytest.approx(10.2016)
    assert new["first_run_ms"] == pytest.approx(2.0)
    assert new["peak_rss_mb"] == pytest.approx(36696064 / 2**20)
    assert new["runs"] == 100
    old = parse_perf_test(PERF_TEST_OLD)
    assert old["mean_ms"] == pytest.approx(2.6)
    assert old["median_ms"] == pytest.approx(2.5)
    assert old["p90_ms"] == pytest.approx(3.1)
    assert old["init_ms"] == pytest.approx(52.3)
    with pytest.raises(ParseError, match="Load model failed"):
        parse_perf_test("Error: Load model from m.onnx failed: Load model failed\n")


def test_summary_statistics_match_numpy():
    samples = [3.0, 1.0, 2.0, 10.0, 4.0]
    s = summarise(samples)
    assert s["median_ms"] == 3.0 and s["min_ms"] == 1.0 and s["max_ms"] == 10.0
    assert s["mean_ms"] == pytest.approx(4.0)
    assert s["p90_ms"] == pytest.approx(np.percentile(samples, 90))
    assert s["std_ms"] == pytest.approx(np.std(samples))
    with pytest.raises(HarnessError):
        summarise([])


@pytest.mark.parametrize("dtype", ["float32", "int8", "uint8", "int64", "bool"])
def test_random_inputs_have_the_tensors_dtype_and_shape(dtype):
    a = random_input(TensorSpec("x", [1, 3, 4], dtype), np.random.default_rng(0))
    assert a.dtype == np.dtype(dtype) and a.shape == (1, 3, 4)


@pytest.mark.parametrize("key", ["onnx_fp32", "onnx_int8", "tflite_fp32"])
def test_harness_times_real_models(lenet_exports, key):
    t = benchmark(str(lenet_exports[key]), threads=1, warmup=2, runs=20)
    assert t.runtime == ("onnxruntime" if key.startswith("onnx") else "litert")
    assert t.inputs[0].shape == [1, 1, 8, 8] and t.inputs[0].dtype == "float32"
    assert len(t.samples_ms) == 20 and t.runs == 20
    assert 0 < t.min_ms <= t.median_ms <= t.p90_ms <= t.max_ms
    assert t.mean_ms == pytest.approx(float(np.mean(t.samples_ms)))
    assert t.init_ms > 0 and t.first_run_ms > 0 and t.peak_rss_mb >= t.rss_before_load_mb > 0


def test_harness_rejects_wrong_runtime_and_bad_files(lenet_exports, tmp_path):
    with pytest.raises(HarnessError, match="cannot run model.onnx"):
        benchmark(str(lenet_exports["onnx_fp32"]), runtime="litert")
    checkpoint = tmp_path / "model.pt2"
    checkpoint.write_bytes(b"PK")
    with pytest.raises(HarnessError, match="expected .tflite or .onnx"):
        benchmark(str(checkpoint))
    garbage = tmp_path / "broken.tflite"
    garbage.write_bytes(b"not a flatbuffer" * 10)
    with pytest.raises(HarnessError, match="cannot load broken.tflite"):
        benchmark(str(garbage))


def test_harness_runs_without_torch_or_edgeprune(lenet_exports):
    """What the device has: numpy and a runtime. Importing torch or edgeprune would fail the run."""
    code = (
        "import sys; sys.modules.update(torch=None, edgeprune=None); "
        "from runtime_bench.__main__ import main; sys.exit(main(sys.argv[1:]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, "run", str(lenet_exports["tflite_fp32"]), "--runs", "5", "--samples"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["runtime"] == "litert" and len(result["samples_ms"]) == 5


def test_harness_cli_reports_errors_as_json(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "runtime_bench", "run", str(tmp_path / "missing.onnx")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert done.returncode == 3
    assert "does not exist" in json.loads(done.stdout)["error"]
