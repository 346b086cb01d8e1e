"""The run report: ``report.json`` (machine-readable), ``report.md`` and a self-contained ``report.html``
(tables and plots), and the PNG plots."""

from __future__ import annotations

import base64
import html
import math
import platform
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edgeprune import __version__
from edgeprune.fileio import atomic_path, write_json, write_text


@dataclass
class StageRecord:
    """What one stage did: the common measurements plus its own ``metrics``."""

    name: str
    seconds: float
    params: int | None = None
    nonzero_params: int | None = None
    macs: int | None = None
    size_bytes: int | None = None
    accuracy: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)

    def result(self) -> dict[str, Any]:
        """The stage's numbers with the accuracy and size the pipeline lifted into the record
        (what a single-stage command prints and writes)."""
        lifted = {"accuracy": self.accuracy, "size_bytes": self.size_bytes}
        return {**self.metrics, **{k: v for k, v in lifted.items() if v is not None}}


@dataclass
class Report:
    meta: dict[str, Any] = field(default_factory=dict)
    stages: list[StageRecord] = field(default_factory=list)
    # When the run started; fixed once so report.json and the --json output are the same document.
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def add(self, record: StageRecord) -> None:
        self.stages.append(record)

    def stage(self, name: str) -> StageRecord | None:
        return next((s for s in self.stages if s.name == name), None)

    def result_of(self, name: str) -> dict[str, Any]:
        """:meth:`StageRecord.result` of a stage that ran (a KeyError names one that did not)."""
        record = self.stage(name)
        if record is None:
            raise KeyError(f"stage {name!r} did not run")
        return record.result()

    def all_files(self) -> set[str]:
        return {k for s in self.stages for k in s.files}

    def to_dict(self) -> dict[str, Any]:
        return {
            "edgeprune": __version__,
            "created": self.created,
            "machine": {
                "python": platform.python_version(),
                "platform": platform.platform(),
                "cpu": platform.machine(),
            },
            "meta": self.meta,
            "stages": [asdict(s) for s in self.stages],
        }

    # --- what the report says, independent of the format it is written in -------------------------------

    def sections(self) -> list[Section]:
        """The report's content, in order; ``to_markdown`` and ``to_html`` only render it."""
        title = self.meta.get("source", self.meta.get("example", "model"))
        samples = self.meta.get("test_samples")
        on = f"top-1 on the {samples} held-out test samples" if samples else "top-1 on the held-out test split"
        out = [
            Section(
                f"edgeprune report: {title}",
                1,
                [
                    f"Target: `{self.meta.get('target', 'host')}` · seed {self.meta.get('seed', 0)} · "
                    f"input {self.meta.get('input_shape')} · data {self.meta.get('data', '-')}",
                    "**weights**: the bytes the weights take as that stage stores them (fp32: 4 B each, pruned zeros "
                    "included until simplify removes them; INT8: 1 B per level, scales and biases excluded; .nnr: the "
                    "coded weight payload). **file**: the size of the file the stage wrote (load: the input file). "
                    f"**accuracy**: {on} (quantize/encode/export: of the INT8 or decoded model). **latency**: median "
                    "on the bench target, p10–p90 in brackets.",
                ],
                _main_table(self),
            )
        ]
        export = self.stage("export")
        if export and export.metrics.get("exports"):
            out.append(
                Section(
                    "Exported files",
                    2,
                    [
                        "Each file runs in its own runtime on the same test inputs as the float model it came from; "
                        "**max Δ / logit range** is the largest logit difference from that model over the range of its "
                        "logits, "
                        "and **top-1 agreement** how often both pick the same class."
                    ],
                    _exports_table(export),
                )
            )
        encode = self.stage("encode")
        if encode and encode.size_bytes:
            out.append(
                Section(
                    "NNR bitstreams",
                    2,
                    [
                        "**weights**: the compressed data units (NDUs); **topology**: the topology unit "
                        "(deflated JSON) that lets the .nnr be decoded without the model's code; **other headers**: "
                        "start unit, model parameter set and unit headers."
                    ],
                    _nnr_table(encode),
                )
            )
        bench = self.stage("bench")
        rows = [r for r in (bench.metrics.get("results", []) if bench else []) if isinstance(r, dict)]
        if rows:
            out.append(
                Section(
                    f"Latency on `{self.meta.get('target', 'host')}`",
                    2,
                    ["Median of the timed runs with their 10th and 90th percentiles; init is loading the model."],
                    _latency_table(rows),
                )
            )
        for s in self.stages:
            details = {k: v for k, v in s.metrics.items() if not isinstance(v, (dict, list))}
            if details or s.files:
                bullets = [f"{k}: {_fmt(v)}" for k, v in details.items()]
                bullets += [f"file `{k}`: `{Path(v).name}`" for k, v in s.files.items()]
                out.append(Section(s.name, 2, [], None, bullets))
            for key, rows_ in s.metrics.items():
                if isinstance(rows_, list) and rows_ and isinstance(rows_[0], dict):
                    keys = list(dict.fromkeys(k for r in rows_ for k in r))
                    out.append(
                        Section(f"{s.name}: {key}", 3, [], Table(keys, [[_fmt(r.get(k)) for k in keys] for r in rows_]))
                    )
        return out

    def to_markdown(self, plots: dict[str, Path] | None = None) -> str:
        lines: list[str] = []
        for i, section in enumerate(self.sections()):
            lines += ["#" * section.level + " " + section.title, ""]
            for paragraph in section.text:
                lines += [paragraph, ""]
            if section.table is not None:
                lines += [*section.table.markdown(), ""]
            if section.bullets:
                lines += [f"- {b}" for b in section.bullets] + [""]
            if i == 0 and plots:
                lines += [f"![{_PLOT_TITLES.get(k, k)}]({p.name})" for k, p in plots.items()] + [""]
        return "\n".join(lines).rstrip("\n") + "\n"

    def to_html(self, plots: dict[str, Path] | None = None) -> str:
        """One self-contained page: the tables plus every plot embedded as base64 (no file next to it needed)."""
        body: list[str] = []
        for i, section in enumerate(self.sections()):
            body.append(f"<h{section.level}>{_inline(section.title)}</h{section.level}>")
            body += [f"<p>{_inline(p)}</p>" for p in section.text]
            if section.table is not None:
                body.append(section.table.html())
            if section.bullets:
                body.append("<ul>" + "".join(f"<li>{_inline(b)}</li>" for b in section.bullets) + "</ul>")
            if i == 0 and plots:
                for key, path in plots.items():
                    data = base64.b64encode(path.read_bytes()).decode("ascii")
                    alt = html.escape(_PLOT_TITLES.get(key, key))
                    body.append(
                        f'<figure><img alt="{alt}" src="data:image/png;base64,{data}">'
                        f"<figcaption>{alt}</figcaption></figure>"
                    )
        title = html.escape(self.sections()[0].title)
        return (
            f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f"<style>{_CSS}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n"
        )

    def write(self, out_dir: Path) -> dict[str, Path]:
        """Write report.json, the plots, report.md and report.html into ``out_dir``; return their paths."""
        paths = {"report_json": write_json(out_dir / "report.json", self.to_dict())}
        plots = self.plot(out_dir)
        paths["report_md"] = write_text(out_dir / "report.md", self.to_markdown(plots))
        paths["report_html"] = write_text(out_dir / "report.html", self.to_html(plots))
        paths.update(plots)
        return paths

    def plot(self, out_dir: Path) -> dict[str, Path]:
        """stages.png (weights and accuracy per stage), latency.png (with spread), accuracy_vs_size.png."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        written: dict[str, Path] = {}
        rows = [(s.name, _weights_bytes(s), s.accuracy) for s in self.stages]
        sized = [(n, b) for n, b, _ in rows if b]
        scored = [(n, a) for n, _, a in rows if a is not None and not math.isnan(a)]
        if sized or scored:
            fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 0.5 * max(len(sized), len(scored), 3) + 1.4))
            if sized:
                names, values = [n for n, _ in sized][::-1], [b / 1024 for _, b in sized][::-1]
                bars = ax1.barh(names, values, color="tab:blue")
                ax1.set_xscale("log")
                ax1.bar_label(bars, [_bytes(int(v * 1024)) for v in values], padding=3, fontsize=8)
                ax1.set_xlim(min(values) / 2, max(values) * 8)  # room for the labels
                ax1.set_xlabel("weights as stored (KiB, log scale)")
            if scored:
                names, values = [n for n, _ in scored][::-1], [100 * a for _, a in scored][::-1]
                bars = ax2.barh(names, values, color="tab:red")
                ax2.bar_label(bars, [f"{v:.2f} %" for v in values], padding=3, fontsize=8)
                ax2.set_xlim(0, 118)  # the whole 0-100 % scale: a 0.3-point drop looks like one
                ax2.set_xlabel("test accuracy (%)")
            fig.suptitle("Weights and accuracy per stage")
            fig.tight_layout()
            written["plot_stages"] = _save(fig, out_dir / "stages.png")
            plt.close(fig)
        bench = self.stage("bench")
        timed = [
            r
            for r in (bench.metrics.get("results", []) if bench else [])
            if isinstance(r, dict) and r.get("median_ms") is not None
        ]
        if timed:
            scale, unit = (1e3, "µs") if max(r["median_ms"] for r in timed) < 1 else (1.0, "ms")
            medians = [r["median_ms"] * scale for r in timed]
            low = [
                m - (r["p10_ms"] if r.get("p10_ms") is not None else r["median_ms"]) * scale
                for m, r in zip(medians, timed, strict=True)
            ]
            high = [
                (r["p90_ms"] if r.get("p90_ms") is not None else r["median_ms"]) * scale - m
                for m, r in zip(medians, timed, strict=True)
            ]
            fig, ax = plt.subplots(figsize=(8, 0.45 * len(timed) + 1.4))
            labels = [f"{r.get('model', '?')} ({r.get('runtime', '?')})" for r in timed]
            bars = ax.barh(labels, medians, xerr=[low, high], capsize=3, color="tab:green")
            ax.bar_label(bars, [f"{m:.3g} {unit}" for m in medians], padding=6, fontsize=8)
            ax.set_xlim(0, max(m + h for m, h in zip(medians, high, strict=True)) * 1.3)
            ax.set_xlabel(f"latency ({unit}): median, whiskers p10-p90")
            ax.set_title(f"Latency on {self.meta.get('target', 'host')}")
            fig.tight_layout()
            written["plot_latency"] = _save(fig, out_dir / "latency.png")
            plt.close(fig)
        encode = self.stage("encode")
        sweep = encode.metrics.get("qp_sweep", []) if encode else []
        if len(sweep) > 1 and all("accuracy" in r and "size_bytes" in r for r in sweep):
            fig, ax = plt.subplots(figsize=(6, 4))
            ax.plot(
                [r["size_bytes"] / 1024 for r in sweep],
                [100 * r["accuracy"] for r in sweep],
                "o-",
                label="single qp (NNCodec style)",
            )
            for r in sweep:
                ax.annotate(
                    f"qp {r.get('qp', '')}",
                    (r["size_bytes"] / 1024, 100 * r["accuracy"]),
                    fontsize=7,
                    textcoords="offset points",
                    xytext=(4, -8),
                )
            for label, size, acc in _stream_points(encode):
                ax.plot([size / 1024], [100 * acc], "s", label=label)
            ax.set_xlabel("bitstream size (KiB)")
            ax.set_ylabel("test accuracy (%)")
            ax.set_title("Accuracy vs bitstream size")
            ax.legend(fontsize=8)
            fig.tight_layout()
            written["plot_rate"] = _save(fig, out_dir / "accuracy_vs_size.png")
            plt.close(fig)
        return written


_PLOT_TITLES = {
    "plot_stages": "Weights and accuracy per stage",
    "plot_latency": "Latency with p10-p90 spread",
    "plot_rate": "Accuracy vs bitstream size",
}
_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:70em;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:.5em 0 1.5em}th,td{border:1px solid #ccc;padding:.25em .6em}"
    "th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}"
    "img{max-width:100%}figure{margin:1em 0}figcaption{color:#666;font-size:.9em}"
    "code{background:#f3f3f3;padding:0 .2em}"
)


@dataclass
class Table:
    """A table as text cells; ``numeric`` columns are right-aligned."""

    header: list[str]
    rows: list[list[str]]
    numeric: list[bool] | None = None

    def _numeric(self) -> list[bool]:
        if self.numeric is not None:
            return self.numeric
        return [all(_NUMERIC.match(r[i]) for r in self.rows if r[i] != "-") and i > 0 for i in range(len(self.header))]

    def markdown(self) -> list[str]:
        align = "|" + "".join("---:|" if n else "---|" for n in self._numeric())
        return ["| " + " | ".join(self.header) + " |", align] + ["| " + " | ".join(r) + " |" for r in self.rows]

    def html(self) -> str:
        numeric = self._numeric()
        head = "".join(f"<th>{_inline(h)}</th>" for h in self.header)
        body = "".join(
            "<tr>"
            + "".join(
                f'<td class="num">{_inline(c)}</td>' if n else f"<td>{_inline(c)}</td>"
                for c, n in zip(r, numeric, strict=True)
            )
            + "</tr>"
            for r in self.rows
        )
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


@dataclass
class Section:
    title: str
    level: int
    text: list[str]
    table: Table | None = None
    bullets: list[str] = field(default_factory=list)


_NUMERIC = re.compile(r"^[-+]?[\d,.]+( [a-zµ%]+| KiB| MiB| B| %)?( \(.*\))?$", re.IGNORECASE)


def _inline(text: str) -> str:
    """Markdown's `code` and **bold** as HTML, everything else escaped."""
    escaped = html.escape(text)
    escaped = re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", escaped)


def _weights_bytes(s: StageRecord) -> int | None:
    """Bytes the weights take as the stage stores them (see the report's legend)."""
    if s.name in ("load", "prune", "simplify") and s.params is not None:
        return 4 * s.params
    if s.name == "quantize" and s.metrics.get("quantized_values") is not None:
        return int(s.metrics["quantized_values"])
    if s.name == "encode" and s.metrics.get("weight_bytes") is not None:
        return int(s.metrics["weight_bytes"])
    return None


def _file_bytes(s: StageRecord, meta: dict[str, Any]) -> int | None:
    """Size of the file the stage wrote (load: the input checkpoint, when there was one)."""
    if s.name == "load":
        source = meta.get("source")
        return Path(source).stat().st_size if source and Path(source).is_file() else None
    if s.name in ("load", "prune", "simplify") and not s.files:
        return None
    return s.size_bytes


def stage_summary_cells(report: Report, s: StageRecord) -> tuple[str, str, str]:
    """(weights, file, accuracy) of one stage as the report's main table writes them (for the CLI summary)."""
    return _bytes(_weights_bytes(s)), _bytes(_file_bytes(s, report.meta)), _pct(s.accuracy).replace("-", "")


def _latency_cell(row: dict[str, Any] | None) -> str:
    if not row or row.get("median_ms") is None:
        return "-"
    spread = ""
    if row.get("p10_ms") is not None and row.get("p90_ms") is not None:
        spread = f" ({_duration(row['p10_ms'], bare=True)}–{_duration(row['p90_ms'])})"
    return _duration(row["median_ms"]) + spread


def _headline_row(bench: StageRecord) -> dict[str, Any] | None:
    latency = bench.metrics.get("latency_ms")
    rows = [r for r in bench.metrics.get("results", []) if isinstance(r, dict)]
    return next((r for r in rows if r.get("median_ms") == latency and latency is not None), None)


def _main_table(report: Report) -> Table:
    rows = []
    for s in report.stages:
        latency = "-"
        if s.name == "bench":
            headline = _headline_row(s)
            latency = _latency_cell(headline) if headline else _duration(s.metrics.get("latency_ms"))
        rows.append(
            [
                s.name,
                _num(s.params),
                _num(s.nonzero_params),
                _num(s.macs),
                _bytes(_weights_bytes(s)),
                _bytes(_file_bytes(s, report.meta)),
                _pct(s.accuracy),
                latency,
                f"{s.seconds:.1f} s",
            ]
        )
        if s.name == "encode" and s.metrics.get("qp_stream_size_bytes") is not None:
            rows.append(
                [
                    "encode (qp mode)",
                    "-",
                    "-",
                    "-",
                    _bytes(s.metrics.get("qp_stream_weight_bytes")),
                    _bytes(s.metrics["qp_stream_size_bytes"]),
                    _pct(s.metrics.get("qp_stream_accuracy")),
                    "-",
                    "-",
                ]
            )
    return Table(["stage", "params", "non-zero", "MACs", "weights", "file", "accuracy", "latency", "time"], rows)


def _exports_table(export: StageRecord) -> Table:
    rows = []
    for r in export.metrics["exports"]:
        relative = r.get("max_abs_diff_relative")
        deviation = (
            "-"
            if r.get("max_abs_diff") is None
            else (f"{100 * relative:.2g} %" if relative is not None else f"{r['max_abs_diff']:.3g} (absolute)")
        )
        rows.append(
            [
                f"`{r.get('file')}`",
                str(r.get("precision", "-")),
                str(r.get("runtime", "-")),
                _bytes(r.get("size_bytes")),
                _pct(r.get("accuracy")),
                _pct(r.get("top1_agreement")),
                deviation,
                _num(r.get("weight_mismatches")),
            ]
        )
    return Table(
        [
            "file",
            "precision",
            "runtime",
            "file size",
            "accuracy",
            "top-1 agreement",
            "max Δ / logit range",
            "INT8 level mismatches",
        ],
        rows,
    )


def _stream_points(encode: StageRecord | None) -> list[tuple[str, int, float]]:
    """(label, size, accuracy) of the streams the encode stage wrote, for the rate-accuracy plot."""
    points: list[tuple[str, int, float]] = []
    if encode is None:
        return points
    if encode.size_bytes and encode.accuracy is not None:
        points.append((f"model.nnr ({encode.metrics.get('mode', '?')})", encode.size_bytes, encode.accuracy))
    if encode.metrics.get("qp_stream_size_bytes") and encode.metrics.get("qp_stream_accuracy") is not None:
        points.append(
            (
                "model_qp.nnr (per-tensor qp)",
                encode.metrics["qp_stream_size_bytes"],
                encode.metrics["qp_stream_accuracy"],
            )
        )
    return points


def _nnr_table(encode: StageRecord) -> Table:
    m = encode.metrics
    streams = [
        (
            "model.nnr",
            m.get("mode", "-"),
            encode.size_bytes,
            m.get("weight_bytes"),
            m.get("topology_bytes"),
            m.get("bits_per_weight"),
            encode.accuracy,
        )
    ]
    if m.get("qp_stream_size_bytes") is not None:
        streams.append(
            (
                "model_qp.nnr",
                "qp",
                m["qp_stream_size_bytes"],
                m.get("qp_stream_weight_bytes"),
                m.get("qp_stream_topology_bytes"),
                m.get("qp_stream_bits_per_weight"),
                m.get("qp_stream_accuracy"),
            )
        )
    rows = []
    for name, mode, size, weights, topology, bpw, acc in streams:
        known = [v for v in (weights, topology) if v is not None]
        rest = size - sum(known) if size is not None and known else None
        rows.append(
            [
                f"`{name}`",
                str(mode),
                _bytes(size),
                _bytes(weights),
                _bytes(topology),
                _bytes(rest),
                "-" if bpw is None else f"{bpw:.3f}",
                _pct(acc),
            ]
        )
    return Table(["stream", "mode", "file", "weights", "topology", "other headers", "bits/weight", "accuracy"], rows)


def _latency_table(rows: list[dict[str, Any]]) -> Table:
    out = []
    for r in rows:
        if r.get("skipped"):
            out.append([str(r.get("model", "?")), "skipped", str(r["skipped"]), "-", "-", "-", "-"])
            continue
        runtime = f"{r.get('runtime') or '-'} {r.get('runtime_version') or ''}".strip()
        out.append(
            [
                str(r.get("model", "?")),
                runtime,
                _duration(r.get("median_ms")),
                _duration(r.get("p10_ms")),
                _duration(r.get("p90_ms")),
                _duration(r.get("init_ms")),
                "-" if r.get("peak_rss_mb") is None else f"{r['peak_rss_mb']:.0f} MiB",
            ]
        )
    return Table(["model", "runtime", "median", "p10", "p90", "init", "peak RSS"], out)


def _save(fig: Any, dest: Path) -> Path:
    with atomic_path(dest) as tmp:
        fig.savefig(tmp, dpi=110)
    return dest


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


def _num(v: int | None) -> str:
    return "-" if v is None else f"{v:,}"


def _bytes(v: int | None) -> str:
    if v is None:
        return "-"
    return f"{v / 1024:.1f} KiB" if v < 1 << 20 else f"{v / (1 << 20):.2f} MiB"


def _pct(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f} %"


def _duration(ms: float | None, bare: bool = False) -> str:
    """A duration in the unit that keeps it readable: µs under 1 ms, s from 1000 ms (``bare``: no unit)."""
    if ms is None:
        return "-"
    if ms < 1:
        value, unit = ms * 1e3, "µs"
    elif ms < 1000:
        value, unit = ms, "ms"
    else:
        value, unit = ms / 1e3, "s"
    text = f"{value:.3g}" if value < 100 else f"{value:.0f}"
    return text if bare else f"{text} {unit}"
