"""Argument parsing and session setup shared by the spark-submit entry points."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys


def stage_main(stages: list[str], description: str, argv: list[str] | None = None) -> int:
    """Parse the common arguments, build the session, run ``stages`` for one ds."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--ds", type=dt.date.fromisoformat, required=True)
    p.add_argument("--conf", help="YAML merged over conf/default.yaml")
    p.add_argument("--lookback-days", type=int)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from graph.config import load_config
    from graph.pipeline import run_pipeline
    from graph.session import build_session

    cfg = load_config(args.conf)
    spark = build_session(cfg.spark, app_name=f"ringfence-{'-'.join(stages)}-{args.ds}")
    try:
        summary = run_pipeline(spark, cfg, args.input, args.output, args.ds,
                               lookback_days=args.lookback_days, stages=stages)
    finally:
        spark.stop()
    print(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(stage_main(sys.argv[1].split(","), "run the given comma-separated stages", sys.argv[2:]))
