"""Benchmark of ``ringfence generate``: wall time, events written, peak memory.

Runs the generator in a child process (so the peak RSS is the generator's own,
measured with getrusage(RUSAGE_CHILDREN)) and prints one JSON line per size.

    .venv/bin/python bench/bench_generate.py --accounts 1000000 --days 30
    .venv/bin/python bench/bench_generate.py --accounts 20000 --days 30

Targets (issue #4): 1M accounts x 30 days (>= 10M events) in <= 10 min with peak memory <= 8 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_SECONDS = 600
TARGET_PEAK_GB = 8.0
TARGET_EVENTS_1M = 10_000_000

_CHILD = """
import datetime as dt, json, sys
from pathlib import Path
from graph.generate import generate_world
s = generate_world(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]),
                   dt.date.fromisoformat(sys.argv[4]), int(sys.argv[5]), 0.3)
print(json.dumps(s))
"""


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def bench(accounts: int, days: int, end_date: str, seed: int, out: Path | None) -> dict:
    tmp = None
    if out is None:
        tmp = Path(tempfile.mkdtemp(prefix="bench-generate-"))
        out = tmp / "world"
    try:
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", _CHILD, str(out), str(accounts), str(days), end_date,
                               str(seed)], check=True, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        # ru_maxrss of the largest child so far, in KiB on Linux
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        peak_kib = usage.ru_maxrss
        summary = json.loads(proc.stdout.strip().splitlines()[-1])
        result = {
            "accounts": accounts, "days": days, "seconds": round(wall, 1),
            "events": summary["events"], "rows": summary["rows"],
            "events_per_second": round(summary["events"] / wall),
            # CPU seconds of the generator: wall time on a shared machine depends on the neighbours
            "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),
            "load_average_1m": round(os.getloadavg()[0], 1),
            "peak_rss_gb": round(peak_kib / 1024**2, 2),
            "bytes_on_disk_mb": round(_du(out) / 1024**2, 1),
            "rings": summary["rings"], "ring_accounts_fraction": summary["ring_accounts_fraction"],
        }
        result["within_targets"] = (wall <= TARGET_SECONDS and result["peak_rss_gb"] <= TARGET_PEAK_GB
                                    and (accounts < 1_000_000 or summary["events"] >= TARGET_EVENTS_1M))
        return result
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--accounts", type=int, default=1_000_000)
    p.add_argument("--days", type=int, default=30)
    p.add_argument("--end-date", default="2026-11-24")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--out", type=Path, help="keep the world here (default: a temp dir, deleted)")
    args = p.parse_args(argv)
    result = bench(args.accounts, args.days, args.end_date, args.seed, args.out)
    print(json.dumps(result))
    return 0 if result["within_targets"] else 1


if __name__ == "__main__":
    sys.exit(main())
