"""The ``ringfence`` command: one front door to every stage.

Each subcommand parses its arguments and calls library code; heavy modules
are imported inside the handlers so ``ringfence --help`` stays instant.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
import time
from pathlib import Path

log = logging.getLogger("ringfence")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_BLOCKED = 0, 1, 2, 3


def _date(s: str) -> dt.date:
    try:
        return dt.date.fromisoformat(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date YYYY-MM-DD: {s!r}") from None


def _fraction(s: str) -> float:
    v = float(s)
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"must be within [0, 1]: {s}")
    return v


def _load_cfg(args):
    from graph.config import load_config

    return load_config(getattr(args, "conf", None))


def _session(cfg, app: str):
    from graph.session import build_session

    return build_session(cfg.spark, app_name=app)


def _print_summary(title: str, summary: dict) -> None:
    print(f"\n== {title} ==")
    print(json.dumps(summary, indent=2, default=str, sort_keys=False))


# --- subcommands -------------------------------------------------------------


def cmd_generate(args) -> int:
    from graph.generate import generate_world

    t0 = time.time()
    summary = generate_world(
        out=Path(args.out), accounts=args.accounts, days=args.days, end_date=args.end_date,
        seed=args.seed, label_fraction=args.label_fraction,
    )
    summary["seconds"] = round(time.time() - t0, 1)
    _print_summary("generate", summary)
    return EXIT_OK


def cmd_run(args) -> int:
    from graph.pipeline import run_pipeline

    cfg = _load_cfg(args)
    spark = _session(cfg, f"ringfence-run-{args.ds}")
    summary = run_pipeline(
        spark, cfg, input_root=args.input, output_root=args.output, ds=args.ds,
        lookback_days=args.lookback_days, stages=args.stages,
    )
    _print_summary(f"run ds={args.ds}", summary)
    return summary.get("exit_code", EXIT_OK)


def cmd_validate(args) -> int:
    args.stages = ["validate"]
    return cmd_run(args)


def cmd_evaluate(args) -> int:
    from graph.evaluate import evaluate, format_report

    cfg = _load_cfg(args)
    spark = _session(cfg, f"ringfence-evaluate-{args.ds}")
    report = evaluate(spark, truth_root=args.truth, output_root=args.output, ds=args.ds,
                      lookback_days=args.lookback_days or cfg.pipeline.lookback_days)
    print(format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    return EXIT_OK


def cmd_export(args) -> int:
    from graph.export import export_lists

    cfg = _load_cfg(args)
    spark = _session(cfg, f"ringfence-export-{args.ds}")
    summary = export_lists(spark, cfg, output_root=args.output, ds=args.ds)
    _print_summary(f"export ds={args.ds}", summary)
    return EXIT_OK


def cmd_verify(args) -> int:
    from graph.export import verify_export

    summary = verify_export(Path(args.export_dir))
    _print_summary("verify", summary)
    return EXIT_OK


def cmd_publish(args) -> int:
    from graph.publish import publish

    cfg = _load_cfg(args)
    summary = publish(cfg, export_dir=Path(args.export_dir), force=args.force)
    _print_summary("publish", summary)
    return EXIT_OK


def cmd_rollback(args) -> int:
    from graph.publish import rollback

    cfg = _load_cfg(args)
    _print_summary("rollback", rollback(cfg))
    return EXIT_OK


def cmd_gc(args) -> int:
    from graph.publish import garbage_collect

    cfg = _load_cfg(args)
    _print_summary("gc", garbage_collect(cfg, keep=args.keep))
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ringfence",
        description="Graph-based fraud ring detection: nightly batch on Spark, lists for online scorers.",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def conf_arg(sp):
        sp.add_argument("--conf", help="YAML merged over conf/default.yaml (e.g. conf/cluster.example.yaml)")

    g = sub.add_parser("generate", help="write a synthetic world (inputs + ground truth) with planted rings")
    g.add_argument("--out", required=True, help="world folder to (re)write")
    g.add_argument("--accounts", type=int, default=20_000, help="legitimate + ring accounts (default 20000)")
    g.add_argument("--days", type=int, default=30, help="days of events (default 30)")
    g.add_argument("--end-date", type=_date, required=True, help="last event day, YYYY-MM-DD")
    g.add_argument("--seed", type=int, default=7, help="random seed; same seed, same world")
    g.add_argument("--label-fraction", type=_fraction, default=0.3,
                   help="fraction of ring entities labelled before the cut-off (default 0.3)")
    g.set_defaults(func=cmd_generate)

    r = sub.add_parser("run", help="the nightly pipeline for one ds: validate, rings, score, export")
    r.add_argument("--input", required=True, help="input root with accounts/ payments/ transfers/ sessions/ labels/")
    r.add_argument("--output", required=True, help="output root; results go under OUTPUT/ds=YYYY-MM-DD/")
    r.add_argument("--ds", type=_date, required=True, help="run date; the window ends with this day")
    r.add_argument("--lookback-days", type=int, help="override pipeline.lookback_days (e.g. 150 for AMLSim)")
    r.add_argument("--stages", nargs="+", help="only these stages (default: all, in order)")
    conf_arg(r)
    r.set_defaults(func=cmd_run)

    v = sub.add_parser("validate", help="validate inputs against the data contract; quarantine bad rows")
    v.add_argument("--input", required=True)
    v.add_argument("--output", required=True)
    v.add_argument("--ds", type=_date, required=True)
    v.add_argument("--lookback-days", type=int)
    conf_arg(v)
    v.set_defaults(func=cmd_validate)

    e = sub.add_parser("evaluate", help="score a run's lists against a world's ground truth")
    e.add_argument("--truth", required=True, help="WORLD/truth")
    e.add_argument("--output", required=True, help="the run's output root")
    e.add_argument("--ds", type=_date, required=True)
    e.add_argument("--json", help="also write the report as JSON here")
    e.add_argument("--lookback-days", type=int, help="the run's window (default: pipeline.lookback_days)")
    conf_arg(e)
    e.set_defaults(func=cmd_evaluate)

    x = sub.add_parser("export", help="write tokenised, signed risk lists for online scorers")
    x.add_argument("--output", required=True)
    x.add_argument("--ds", type=_date, required=True)
    conf_arg(x)
    x.set_defaults(func=cmd_export)

    vf = sub.add_parser("verify", help="check an export's signature, hash chain and checksums")
    vf.add_argument("export_dir")
    vf.set_defaults(func=cmd_verify)

    pb = sub.add_parser("publish", help="load an export into Redis and switch the live version atomically")
    pb.add_argument("export_dir")
    pb.add_argument("--force", action="store_true", help="override the circuit breaker")
    conf_arg(pb)
    pb.set_defaults(func=cmd_publish)

    rb = sub.add_parser("rollback", help="switch the live Redis version back to the previous one")
    conf_arg(rb)
    rb.set_defaults(func=cmd_rollback)

    gc = sub.add_parser("gc", help="delete (UNLINK) Redis versions older than the newest N")
    gc.add_argument("--keep", type=int, help="versions to keep (default redis.keep_versions)")
    conf_arg(gc)
    gc.set_defaults(func=cmd_gc)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from graph.config import ConfigError
    from graph.errors import RingfenceError
    from graph.session import GraphFramesUnavailable

    try:
        return args.func(args)
    except ConfigError as e:
        print(f"ringfence: config error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except GraphFramesUnavailable as e:
        print(f"ringfence: blocked: {e}", file=sys.stderr)
        return EXIT_BLOCKED
    except RingfenceError as e:
        print(f"ringfence: {e}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
