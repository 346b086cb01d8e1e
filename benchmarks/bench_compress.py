"""Time and peak memory of the README's first command: ``edgeprune compress --example lenet5``.

Runs the real console script in a subprocess (fresh interpreter, as a user would) ``--repeat`` times
and reports wall time, CPU time and peak RSS of the child, plus the per-stage times and the key
numbers from its report.json. Writes the table into BENCHMARKS.md's "compress --example" section.

    python benchmarks/bench_compress.py [--repeat 3] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from sections import replace_section

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## compress --example (foundation)"


def run_once(out_dir: Path) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "edgeprune", "--quiet", "compress", "--example", "lenet5", "-o", str(out_dir)]
    subprocess.run(cmd, check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    report = json.loads((out_dir / "report.json").read_text())
    return {
        "wall_s": wall,
        "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        "peak_rss_mib": after.ru_maxrss / 1024,  # ru_maxrss is KiB on Linux; max over all children so far
        "stages": {s["name"]: s["seconds"] for s in report["stages"]},
        "report": report,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-write", action="store_true", help="print only, do not update BENCHMARKS.md")
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeat):
            runs.append(run_once(Path(tmp) / f"out{i}"))
            print(f"run {i + 1}: {runs[-1]['wall_s']:.1f} s wall, {runs[-1]['peak_rss_mib']:.0f} MiB peak", flush=True)
    walls = [r["wall_s"] for r in runs]
    stage_names = list(runs[0]["stages"])
    last = runs[-1]["report"]["stages"]
    lines = [
        SECTION,
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"date {date.today().isoformat()}; command `python benchmarks/bench_compress.py --repeat {args.repeat}` "
        "(each run: `edgeprune --quiet compress --example lenet5 -o DIR` in a fresh process).",
        "",
        "| runs | wall median | wall min / max | CPU time median | peak RSS |",
        "|---:|---:|---:|---:|---:|",
        f"| {len(runs)} | {statistics.median(walls):.1f} s | {min(walls):.1f} / {max(walls):.1f} s "
        f"| {statistics.median(r['cpu_s'] for r in runs):.1f} s | {max(r['peak_rss_mib'] for r in runs):.0f} MiB |",
        "",
        "Median seconds per stage (load = training the example LeNet-5 on digits):",
        "",
        "| " + " | ".join(stage_names) + " |",
        "|" + "---:|" * len(stage_names),
        "| " + " | ".join(f"{statistics.median(r['stages'][n] for r in runs):.1f}" for n in stage_names) + " |",
        "",
        "Last run's report (accuracy is test accuracy on held-out digits):",
        "",
        "| stage | params | MACs | size (bytes) | accuracy |",
        "|---|---:|---:|---:|---:|",
    ]
    for s in last:
        acc = "-" if s["accuracy"] is None else f"{100 * s['accuracy']:.2f} %"
        lines.append(f"| {s['name']} | {s['params'] or '-'} | {s['macs'] or '-'} | {s['size_bytes'] or '-'} | {acc} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        replace_section(SECTION, text)


if __name__ == "__main__":
    main()
