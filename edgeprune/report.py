"""The run report: ``report.json`` (machine-readable), ``report.md`` (a table) and PNG plots."""

from __future__ import annotations

import math
import platform
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

    def to_markdown(self) -> str:
        lines = [
            f"# edgeprune report: {self.meta.get('source', self.meta.get('example', 'model'))}",
            "",
            f"Target: `{self.meta.get('target', 'host')}` · seed {self.meta.get('seed', 0)} · "
            f"input {self.meta.get('input_shape')} · data {self.meta.get('data', '-')}",
            "",
            "Size is the stage's main file (load: the fp32 weights); accuracy is top-1 on the held-out test split "
            "(quantize/encode/export: of the INT8 or decoded model); latency is the bench target's median.",
            "",
            "| stage | params | non-zero | MACs | size | accuracy | latency | time |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for s in self.stages:
            latency = s.metrics.get("latency_ms")
            lines.append(
                f"| {s.name} | {_num(s.params)} | {_num(s.nonzero_params)} | {_num(s.macs)} | {_bytes(s.size_bytes)} "
                f"| {_pct(s.accuracy)} | {_ms(latency)} | {s.seconds:.1f} s |"
            )
        for s in self.stages:
            details = {k: v for k, v in s.metrics.items() if not isinstance(v, (dict, list))}
            if details or s.files:
                lines += ["", f"## {s.name}", ""]
                lines += [f"- {k}: {_fmt(v)}" for k, v in details.items()]
                lines += [f"- file `{k}`: `{Path(v).name}`" for k, v in s.files.items()]
            for key, table in s.metrics.items():
                if isinstance(table, list) and table and isinstance(table[0], dict):
                    lines += ["", f"### {s.name}: {key}", "", *_table(table)]
        return "\n".join(lines) + "\n"

    def write(self, out_dir: Path) -> dict[str, Path]:
        """Write report.json, report.md and the plots into ``out_dir``; return their paths."""
        paths = {
            "report_json": write_json(out_dir / "report.json", self.to_dict()),
            "report_md": write_text(out_dir / "report.md", self.to_markdown()),
        }
        paths.update(self.plot(out_dir))
        return paths

    def plot(self, out_dir: Path) -> dict[str, Path]:
        """Size and accuracy per stage; latency per stage/runtime when the bench stage ran."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        written: dict[str, Path] = {}
        sized = [s for s in self.stages if s.size_bytes]
        if sized:
            fig, ax1 = plt.subplots(figsize=(7, 4))
            names = [s.name for s in sized]
            ax1.bar(names, [s.size_bytes / 1024 for s in sized], color="tab:blue")
            ax1.set_ylabel("size (KiB)", color="tab:blue")
            ax1.set_yscale("log")
            acc = [(s.name, s.accuracy) for s in sized if s.accuracy is not None]
            if acc:
                ax2 = ax1.twinx()
                ax2.plot([a[0] for a in acc], [100 * a[1] for a in acc], "o-", color="tab:red")
                ax2.set_ylabel("test accuracy (%)", color="tab:red")
            ax1.set_title("Size and accuracy per stage")
            fig.tight_layout()
            written["plot_stages"] = _save(fig, out_dir / "stages.png")
            plt.close(fig)
        bench = self.stage("bench")
        rows = bench.metrics.get("results", []) if bench else []
        rows = [r for r in rows if isinstance(r, dict) and r.get("median_ms") is not None]
        if rows:
            fig, ax = plt.subplots(figsize=(7, 4))
            ax.barh([r.get("model", "?") for r in rows], [r["median_ms"] for r in rows], color="tab:green")
            ax.set_xlabel("median latency (ms)")
            ax.set_title(f"Latency on {self.meta.get('target', 'host')}")
            fig.tight_layout()
            written["plot_latency"] = _save(fig, out_dir / "latency.png")
            plt.close(fig)
        encode = self.stage("encode")
        sweep = encode.metrics.get("qp_sweep", []) if encode else []
        if len(sweep) > 1 and all("accuracy" in r and "size_bytes" in r for r in sweep):
            fig, ax = plt.subplots(figsize=(6, 4))
            ax.plot([r["size_bytes"] / 1024 for r in sweep], [100 * r["accuracy"] for r in sweep], "o-")
            for r in sweep:
                ax.annotate(str(r.get("qp", "")), (r["size_bytes"] / 1024, 100 * r["accuracy"]))
            ax.set_xlabel("bitstream size (KiB)")
            ax.set_ylabel("test accuracy (%)")
            ax.set_title("Accuracy vs bitstream size")
            fig.tight_layout()
            written["plot_rate"] = _save(fig, out_dir / "accuracy_vs_size.png")
            plt.close(fig)
        return written


def _save(fig: Any, dest: Path) -> Path:
    with atomic_path(dest) as tmp:
        fig.savefig(tmp, dpi=110)
    return dest


def _table(rows: list[dict[str, Any]]) -> list[str]:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    return ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)] + [
        "| " + " | ".join(_fmt(r.get(k)) for k in keys) + " |" for r in rows
    ]


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


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f} ms"
