"""The run report: sizes that compare like with like, readable latencies, scaled INT8 deviation, and a
self-contained report.html that a real browser renders (headless Chromium)."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from edgeprune.progress import Progress
from edgeprune.report import Report, StageRecord, _duration


def _sample_report() -> Report:
    """A report with every section: stages with weights and files, exports, two NNR streams, a sweep, latency."""
    report = Report(meta={"example": "lenet5", "target": "host", "input_shape": [1, 1, 8, 8], "test_samples": 359})
    report.add(StageRecord("load", 2.0, params=1000, nonzero_params=1000, macs=5000, size_bytes=4000, accuracy=0.98))
    report.add(
        StageRecord(
            "prune",
            5.0,
            params=1000,
            nonzero_params=300,
            macs=5000,
            size_bytes=9000,
            accuracy=0.975,
            files={"pruned": "pruned.pt2"},
        )
    )
    report.add(
        StageRecord(
            "simplify",
            0.4,
            params=300,
            nonzero_params=300,
            macs=1500,
            size_bytes=5000,
            accuracy=0.975,
            files={"simplified": "simplified.pt2"},
        )
    )
    report.add(StageRecord("quantize", 0.1, size_bytes=2500, accuracy=0.972, metrics={"quantized_values": 290}))
    report.add(
        StageRecord(
            "encode",
            0.2,
            size_bytes=900,
            accuracy=0.972,
            metrics={
                "mode": "int8",
                "weight_bytes": 200,
                "topology_bytes": 600,
                "bits_per_weight": 5.5,
                "qp_stream_size_bytes": 850,
                "qp_stream_weight_bytes": 150,
                "qp_stream_topology_bytes": 600,
                "qp_stream_bits_per_weight": 4.1,
                "qp_stream_accuracy": 0.969,
                "qp_sweep": [
                    {"qp": -20, "size_bytes": 700, "accuracy": 0.9},
                    {"qp": -30, "size_bytes": 800, "accuracy": 0.97},
                ],
            },
        )
    )
    report.add(
        StageRecord(
            "export",
            9.0,
            size_bytes=3000,
            accuracy=0.972,
            metrics={
                "exports": [
                    {
                        "file": "model.onnx",
                        "runtime": "onnxruntime",
                        "precision": "fp32",
                        "size_bytes": 5200,
                        "accuracy": 0.975,
                        "max_abs_diff": 2e-6,
                        "max_abs_diff_relative": 1e-7,
                        "top1_agreement": 1.0,
                    },
                    {
                        "file": "model_int8.tflite",
                        "runtime": "litert",
                        "precision": "int8",
                        "size_bytes": 3000,
                        "accuracy": 0.972,
                        "max_abs_diff": 5.2,
                        "max_abs_diff_relative": 0.13,
                        "top1_agreement": 0.986,
                        "weight_mismatches": 0,
                    },
                ]
            },
        )
    )
    report.add(
        StageRecord(
            "bench",
            1.0,
            metrics={
                "latency_ms": 0.0052,
                "results": [
                    {
                        "model": "tflite_int8",
                        "runtime": "litert",
                        "median_ms": 0.0052,
                        "p10_ms": 0.0049,
                        "p90_ms": 0.0063,
                        "init_ms": 1.5,
                    },
                    {
                        "model": "dense_onnx_fp32",
                        "runtime": "onnxruntime",
                        "median_ms": 0.031,
                        "p10_ms": 0.029,
                        "p90_ms": 0.04,
                    },
                ],
            },
        )
    )
    return report


def _main_rows(markdown: str) -> dict[str, dict[str, str]]:
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) != len(header):
            break
        rows[cells[0]] = dict(zip(header, cells, strict=True))
    return rows


def test_durations_use_microseconds_under_a_millisecond():
    assert _duration(0.0052) == "5.2 µs"
    assert _duration(0.25) == "250 µs"
    assert _duration(12.345) == "12.3 ms"
    assert _duration(2500) == "2.5 s"
    assert _duration(None) == "-"


def test_main_table_separates_weights_from_files_and_shows_latency_spread(tmp_path):
    report = _sample_report()
    rows = _main_rows(report.to_markdown())
    # weights as stored: fp32 4 B each until simplify; 1 B per INT8 level; the .nnr weight payload
    assert [rows[s]["weights"] for s in ("load", "prune", "simplify", "quantize", "encode")] == [
        "3.9 KiB",
        "3.9 KiB",
        "1.2 KiB",
        "0.3 KiB",
        "0.2 KiB",
    ]
    # the file column is what was written; an in-memory example (no input file) has none
    assert rows["load"]["file"] == "-" and rows["prune"]["file"] == "8.8 KiB"
    assert rows["encode (qp mode)"]["file"] == "0.8 KiB" and rows["encode (qp mode)"]["accuracy"] == "96.90 %"
    assert rows["bench"]["latency"] == "5.2 µs (4.9–6.3 µs)"


def test_exports_show_deviation_relative_to_logit_range_and_top1_agreement():
    md = _sample_report().to_markdown()
    line = next(line for line in md.splitlines() if line.startswith("| `model_int8.tflite`"))
    assert "| 13 % |" in line and "98.60 %" in line
    nnr = next(line for line in md.splitlines() if line.startswith("| `model.nnr`"))
    assert nnr.split("|")[4:7] == [" 0.2 KiB ", " 0.6 KiB ", " 0.1 KiB "]  # weights, topology, other headers


def _png_size(path: Path) -> tuple[int, int]:
    return struct.unpack(">II", path.read_bytes()[16:24])


def test_plots_have_labels_and_an_accuracy_axis_from_zero(tmp_path, monkeypatch):
    import matplotlib.axes

    limits: list[tuple[float, float]] = []
    labels: list[list[str]] = []
    original_xlim, original_label = matplotlib.axes.Axes.set_xlim, matplotlib.axes.Axes.bar_label

    def record_xlim(self, *args, **kwargs):  # noqa: ANN001, ANN202
        limits.append((self.get_xlabel(), args))
        return original_xlim(self, *args, **kwargs)

    def record_label(self, container, texts=None, **kwargs):  # noqa: ANN001, ANN202
        labels.append(list(texts or []))
        return original_label(self, container, texts, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "set_xlim", record_xlim)
    monkeypatch.setattr(matplotlib.axes.Axes, "bar_label", record_label)
    written = _sample_report().plot(tmp_path)
    assert set(written) == {"plot_stages", "plot_latency", "plot_rate"}
    assert ["97.20 %", "97.20 %", "97.20 %", "97.50 %", "97.50 %", "98.00 %"] in labels  # accuracy, every stage
    assert ["5.2 µs", "31 µs"] in labels
    assert any(args and args[0] == 0 and args[1] >= 100 for _, args in limits)  # the whole accuracy scale


def test_progress_draws_no_bars_into_a_file(tmp_path):
    from rich.console import Console

    with open(tmp_path / "err.txt", "w") as stream:
        progress = Progress(console=Console(file=stream))
        assert list(progress.track(range(50), "training")) == list(range(50))
        progress.print("prune ...")
    assert (tmp_path / "err.txt").read_text() == "prune ...\n"


_CHECK = """<pre id="edgeprune-check"></pre><script>
window.addEventListener("load", () => {
  const images = [...document.images].map(i => ({alt: i.alt, ok: i.complete, w: i.naturalWidth, h: i.naturalHeight}));
  const tables = [...document.querySelectorAll("table")].map(t => ({
    rows: t.tBodies[0].rows.length, cols: t.tHead.rows[0].cells.length, width: t.getBoundingClientRect().width}));
  document.getElementById("edgeprune-check").textContent = JSON.stringify({images, tables});
});
</script>"""


def _chromium() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


@pytest.mark.skipif(_chromium() is None, reason="no chromium (tools/install.d/10-system-packages.sh installs it)")
def test_report_html_renders_every_table_and_plot_in_headless_chromium(tmp_path):
    report = _sample_report()
    written = report.write(tmp_path / "out")
    page = written["report_html"].read_text()
    assert 'src="data:image/png;base64,' in page and "<script" not in page  # self-contained, static
    # render a copy, alone in its folder (so nothing next to it can be loaded), with a probe script added
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "report.html").write_text(page.replace("</body>", _CHECK + "</body>"))
    result = subprocess.run(
        [
            _chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=10000",
            "--dump-dom",
            (alone / "report.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    match = re.search(r'<pre id="edgeprune-check">(.*?)</pre>', result.stdout, re.S)
    assert match and match.group(1), result.stderr[-2000:]
    rendered = json.loads(match.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    plots = [p for k, p in written.items() if k.startswith("plot_")]
    assert len(rendered["images"]) == len(plots) == 3
    sizes = sorted(_png_size(p) for p in plots)
    assert sorted((i["w"], i["h"]) for i in rendered["images"]) == sizes and all(i["ok"] for i in rendered["images"])
    tables = [s.table for s in report.sections() if s.table is not None]
    assert [(t["rows"], t["cols"]) for t in rendered["tables"]] == [(len(t.rows), len(t.header)) for t in tables]
    assert all(t["width"] > 0 for t in rendered["tables"])
