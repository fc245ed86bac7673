"""The records of bench_quality.py (``bench/results/quality.jsonl``) that the cost benches add their timings to."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "quality.jsonl"


def add_record_arguments(p: argparse.ArgumentParser) -> None:
    """``--work``, ``--ds``, ``--label`` and ``--conf``: the bench_quality run a cost bench reads and adds to."""
    p.add_argument("--work", required=True, help="the bench_quality --work dir")
    p.add_argument("--ds", type=dt.date.fromisoformat, required=True)
    p.add_argument("--label", required=True, help="the bench_quality record (label) the timing belongs to")
    p.add_argument("--conf")


def add_to_record(label: str, fields: dict, results: Path = RESULTS) -> bool:
    """Add ``fields`` to the ringfence timings of the newest record labelled ``label`` (its other fields unchanged).

    False, with a message on stderr, when no record has that label."""
    lines = results.read_text().splitlines() if results.exists() else []
    hits = [i for i, line in enumerate(lines) if line.strip() and json.loads(line).get("label") == label]
    if not hits:
        print(f"no record labelled {label!r} in {results}; timing printed only", file=sys.stderr)
        return False
    record = json.loads(lines[hits[-1]])
    record["methods"]["ringfence"].update(fields)
    lines[hits[-1]] = json.dumps(record, default=str)
    results.write_text("\n".join(lines) + "\n")
    return True
