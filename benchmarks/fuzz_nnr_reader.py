"""Long mutation-fuzz run of the whole .nnr reader (the suite runs 3,000 cases; this runs millions).

    nice -n 5 python3 benchmarks/fuzz_nnr_reader.py --cases 1000000 --seed 1 > /tmp/fuzz.log

Prints a progress line every --every cases (cases, escapes, rate, peak RSS) and a summary at the
end or on SIGTERM/SIGINT, so a run cut short still reports honestly how far it got. Exit status 1
if any case escaped (anything but a one-line EdgepruneError).
"""

from __future__ import annotations

import argparse
import collections
import resource
import signal
import sys
import time

from edgeprune.testing.reader_fuzz import cases, run_case, seed_streams


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--every", type=int, default=10_000)
    args = parser.parse_args()
    stop = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    seeds = seed_streams()
    outcomes: collections.Counter = collections.Counter()
    escapes: list[str] = []
    start = time.monotonic()
    slowest = 0.0
    done = 0
    for kind, data in cases(seeds, args.cases, args.seed):
        if stop:
            break
        t0 = time.monotonic()
        result = run_case(data)
        slowest = max(slowest, time.monotonic() - t0)
        done += 1
        outcomes[result.split(":")[0]] += 1
        if result.startswith("escape"):
            escapes.append(f"{kind}: {result}")
            print(f"ESCAPE {kind}: {result}", flush=True)
        if done % args.every == 0:
            rate = done / (time.monotonic() - start)
            print(
                f"{done} cases, {len(escapes)} escapes, {rate:.0f}/s, slowest {slowest * 1e3:.0f} ms, "
                f"peak RSS {_peak_rss_mib():.0f} MiB",
                flush=True,
            )
    elapsed = time.monotonic() - start
    print(
        f"SUMMARY seed={args.seed} cases={done} ok={outcomes['ok']} refused={outcomes['refused']} "
        f"escapes={len(escapes)} elapsed={elapsed:.0f}s rate={done / max(elapsed, 1e-9):.0f}/s "
        f"slowest_case={slowest * 1e3:.0f}ms peak_rss={_peak_rss_mib():.0f}MiB",
        flush=True,
    )
    return 1 if escapes else 0


if __name__ == "__main__":
    sys.exit(main())
