"""Parse the text that native benchmark tools print into the harness's millisecond summary.

Android has no Python, so there the bench stage runs TFLite's ``benchmark_model`` or onnxruntime's
``onnxruntime_perf_test`` and reads their logs. Both tools have changed their wording over the
years, print through logcat prefixes (``INFO: ``, ``I tflite  : ``) and switch to scientific notation
for large values (``avg=2.95034e+06``), so the parsers match on keys, not on whole lines. The result
uses the same keys as :class:`runtime_bench.harness.Timings`; statistics a tool does not print are
``None`` rather than guessed.
"""

from __future__ import annotations

import re
from typing import Any

# A decimal number in any notation a C++ ostream produces: 12, 12.5, 2.95034e+06, 1e-05, nan.
NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_STATS_LINE = re.compile(rf"count=(?P<count>{NUMBER})(?P<rest>(?:\s+\w+={NUMBER})*)")
_KEY_VALUE = re.compile(rf"(\w+)=({NUMBER})")


class ParseError(ValueError):
    """The tool's output holds no result; the message carries the tool's own error line."""


def _first(pattern: str, text: str) -> float | None:
    match = re.search(pattern, text)
    return float(match.group(1)) if match else None


def _error_line(text: str) -> str | None:
    """The tool's first 'ERROR: ...' (or logcat 'E tflite : ...') line, the reason a run failed."""
    match = re.search(r"^(?:.*?\bE\s+tflite\s*:\s*|.*?\bERROR:\s*)(.+)$", text, re.MULTILINE)
    return match.group(1).strip() if match else None


def _us_to_ms(value: float | None) -> float | None:
    return None if value is None else value / 1e3


def parse_benchmark_model(text: str) -> dict[str, Any]:
    """Summarise TFLite ``benchmark_model`` output (2019 to current builds) in milliseconds.

    The tool prints one ``count=... avg=...`` line for the warm-up and one for the measured runs;
    the last one is the measurement. Newer builds add ``median``, ``p5`` and ``p95`` to it and an
    ``Inference timings in us: Init: ..., First inference: ...`` summary; older builds print
    ``Average inference timings in us: Warmup: ..., Init: ..., no stats: ...`` and
    ``Peak memory footprint (MB): init=... overall=...``.
    """
    stats_lines = [m for m in _STATS_LINE.finditer(text)]
    if not stats_lines:
        reason = _error_line(text)
        raise ParseError(
            f"benchmark_model printed no timings: {reason}"
            if reason
            else "benchmark_model printed no 'count=... avg=...' line"
        )
    measured = {k: float(v) for k, v in _KEY_VALUE.findall(stats_lines[-1].group(0))}
    warmup = {k: float(v) for k, v in _KEY_VALUE.findall(stats_lines[0].group(0))} if len(stats_lines) > 1 else {}
    init_us = _first(rf"Inference timings in us:.*?\bInit:\s*({NUMBER})", text)
    if init_us is None:
        init_us = _first(rf"Average inference timings in us:.*?\bInit:\s*({NUMBER})", text)
    init_ms = _us_to_ms(init_us)
    if init_ms is None:
        init_ms = _first(rf"Initialized session in\s*({NUMBER})\s*ms", text)
    first_us = _first(rf"First inference:\s*({NUMBER})", text)
    if first_us is None:
        first_us = warmup.get("first", measured.get("first"))
    memory_overall = _first(
        rf"(?:Memory footprint delta from the start of the tool|Peak memory footprint) "
        rf"\(MB\):\s*init=\s*{NUMBER}\s+overall=\s*({NUMBER})",
        text,
    )
    peak_monitored = _first(rf"Overall peak memory footprint \(MB\) via periodic monitoring:\s*({NUMBER})", text)
    return {
        "runs": int(measured["count"]),
        "init_ms": init_ms,
        "first_run_ms": _us_to_ms(first_us),
        "mean_ms": _us_to_ms(measured.get("avg")),
        "median_ms": _us_to_ms(measured.get("median")),
        "p90_ms": None,  # benchmark_model prints p5 and p95 only
        "p95_ms": _us_to_ms(measured.get("p95")),
        "std_ms": _us_to_ms(measured.get("std")),
        "min_ms": _us_to_ms(measured.get("min")),
        "max_ms": _us_to_ms(measured.get("max")),
        "peak_rss_mb": peak_monitored,
        "memory_delta_mb": memory_overall,
        "model_size_mb": _first(rf"model file size \(MB\):\s*({NUMBER})", text),
    }


def _seconds_to_ms(value: float | None) -> float | None:
    return None if value is None else value * 1e3


def parse_perf_test(text: str) -> dict[str, Any]:
    """Summarise ``onnxruntime_perf_test`` output in milliseconds.

    Current builds print ``Average inference time cost: X ms``, ``Session creation time cost: X s``,
    ``Peak working set size: N bytes`` and, with ``-s``, ``P50 Latency: X s``; older builds (and the
    tool's README) print ``Average inference time cost: X ms`` / ``Average time cost: X ms`` and
    ``P50 Latency is X sec``. Percentiles are always in seconds.
    """
    mean_ms = _first(rf"Average (?:inference )?time cost:\s*({NUMBER})\s*ms", text)
    if mean_ms is None:
        reason = _error_line(text) or next((ln.strip() for ln in text.splitlines() if "rror" in ln), None)
        raise ParseError(
            f"onnxruntime_perf_test printed no timings: {reason}"
            if reason
            else "onnxruntime_perf_test printed no 'Average inference time cost' line"
        )

    def latency(name: str) -> float | None:
        return _seconds_to_ms(_first(rf"{name} Latency(?::| is)\s*({NUMBER})\s*s", text))

    peak_bytes = _first(rf"Peak working set size:\s*({NUMBER})\s*bytes", text)
    requests = _first(rf"Total inference requests:\s*({NUMBER})", text)
    return {
        "runs": None if requests is None else int(requests),
        "init_ms": _seconds_to_ms(_first(rf"Session creation time cost:\s*({NUMBER})\s*s", text)),
        "first_run_ms": _first(rf"First inference time cost:\s*({NUMBER})\s*ms", text),
        "mean_ms": mean_ms,
        "median_ms": latency("P50"),
        "p90_ms": latency("P90"),
        "p95_ms": latency("P95"),
        "std_ms": None,
        "min_ms": latency("Min"),
        "max_ms": latency("Max"),
        "peak_rss_mb": None if peak_bytes is None else peak_bytes / (1 << 20),
        "memory_delta_mb": None,
        "model_size_mb": None,
    }
