"""Benchmark of the nightly pipeline stages that exist today (issues #5 and #11).

For each size (a target number of events: 1M and 10M by default):

1. ``ringfence generate`` writes the world once into the bench work dir; a world
   whose ``_WORLD_COMPLETE`` summary matches the parameters is reused.
2. ``ringfence run --stages validate graph signals`` runs as a subprocess with the
   default config plus a bench conf (``spark.driver_memory``), while the peak RSS
   of the whole process tree (python driver, driver JVM, python workers) is
   sampled with psutil every 0.5 s; per-stage seconds come from the run's
   ``run_summary.json``.
3. The single-machine limit of the graph stage: the account projection
   (``graph.hubs.account_projection`` over the written ``graph/vertices``,
   ``graph/edges`` and ``hubs`` tables) is computed once with Spark and written
   as Parquet; then a separate process reads it with pyarrow, maps ids to ints
   with pandas factorize and times ``scipy.sparse.csgraph.connected_components``.
4. One JSON line per (size, measurement) is appended to
   ``bench/results/results.jsonl`` with machine info, load average and the exact
   command. ``bench/report.py`` turns that file into ``docs/benchmarks.md``.

Ring discovery and scoring need GraphFrames, whose jars are unavailable here, so
they are not measured: they are listed in BLOCKED_STAGES and move to
PIPELINE_STAGES once they run.

    .venv/bin/python bench/bench_pipeline.py --quick          # smoke size, ~50k events
    .venv/bin/python bench/bench_pipeline.py                  # 1M and 10M events
    .venv/bin/python bench/bench_pipeline.py --sizes 1M 3M
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "results.jsonl"
BIN = Path(sys.executable).parent

# The stages measured today, in pipeline order. Add "rings" and "score" here once
# GraphFrames is on the classpath; the report picks the stage list up from the results.
PIPELINE_STAGES = ["validate", "graph", "signals"]
BLOCKED_STAGES = {
    "rings": "ring discovery needs GraphFrames (connected components, label propagation)",
    "score": "risk propagation needs GraphFrames (aggregateMessages / Pregel)",
}
# Events per account of `ringfence generate` over 30 days (measured: 128,021 events
# from 8,000 accounts, seed 7); used to pick the account count of a target size.
EVENTS_PER_ACCOUNT = 16.0
QUICK_ACCOUNTS = 3_000
SAMPLE_SECONDS = 0.5


def parse_size(text: str) -> tuple[str, int]:
    """``"1M"`` / ``"250k"`` / ``"quick"`` -> (label, accounts)."""
    if text == "quick":
        return "quick", QUICK_ACCOUNTS
    mult = {"k": 1_000, "m": 1_000_000}.get(text[-1].lower(), 1)
    digits = text[:-1] if mult > 1 else text
    try:
        events = float(digits) * mult
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 1M, 250k or quick: {text!r}") from None
    return text, max(100, round(events / EVENTS_PER_ACCOUNT))


# --- measuring a process tree --------------------------------------------------


def _tree(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def run_measured(cmd: list[str], log_path: Path, timeout_s: float, env: dict | None = None) -> dict:
    """Run ``cmd``; sample the summed RSS of its process tree every 0.5 s.

    CPU seconds are the last seen user+system time of every process in the tree
    (a process that lives shorter than one sample is missed: a slight undercount).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()
    t0 = time.perf_counter()
    with log_path.open("w") as log:
        child = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        root = psutil.Process(child.pid)
        peak = 0
        cpu: dict[int, float] = {}
        loads = []
        timed_out = False
        while child.poll() is None:
            rss = 0
            for p in _tree(root):
                try:
                    rss += p.memory_info().rss
                    t = p.cpu_times()
                    cpu[p.pid] = t.user + t.system
                except psutil.Error:
                    pass
            peak = max(peak, rss)
            loads.append(os.getloadavg()[0])
            if time.perf_counter() - t0 > timeout_s:
                timed_out = True
                for p in reversed(_tree(root)):  # only the processes this bench started, by pid
                    try:
                        p.kill()
                    except psutil.Error:
                        pass
            time.sleep(SAMPLE_SECONDS)
        child.wait()
    wall = time.perf_counter() - t0
    return {
        "exit_code": child.returncode,
        "timed_out": timed_out,
        "wall_seconds": round(wall, 1),
        "peak_rss_gb": round(peak / 1024**3, 3),
        "cpu_seconds": round(sum(cpu.values()), 1),
        "load_avg_start": [round(x, 2) for x in load_start],
        "load_avg_mean_1m": round(sum(loads) / len(loads), 2) if loads else None,
        "log": str(log_path),
    }


def machine_info() -> dict:
    vm = psutil.virtual_memory()
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                text=True, check=False).stdout.strip()
    except OSError:
        commit = ""
    import pyspark

    return {
        "hostname": platform.node(),
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "ram_gb": round(vm.total / 1024**3, 1),
        "ram_available_gb_at_start": round(vm.available / 1024**3, 1),
        "python": platform.python_version(),
        "pyspark": pyspark.__version__,
        "git_commit": commit,
    }


def append_result(record: dict) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
    print(json.dumps(record, sort_keys=True), flush=True)


# --- the steps -------------------------------------------------------------------


def world_matches(world: Path, accounts: int, days: int, end_date: dt.date, seed: int) -> dict | None:
    marker = world / "_WORLD_COMPLETE"
    if not marker.is_file():
        return None
    s = json.loads(marker.read_text())
    start = (end_date - dt.timedelta(days=days - 1)).isoformat()
    ok = (s.get("seed") == seed and s.get("window") == [start, end_date.isoformat()]
          and s.get("rows", {}).get("accounts") == accounts)
    return s if ok else None


_STAGE_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d+ INFO graph\.pipeline: stage (\w+): (start|done)",
                         re.MULTILINE)


def running_stage(log_path: Path) -> dict | None:
    """The stage a killed run was in and how long it had run (log timestamps vs. the log's
    last write, both local time): a lower bound on that stage's seconds."""
    if not log_path.is_file():
        return None
    started: dict[str, dt.datetime] = {}
    for ts, stage, what in _STAGE_LINE.findall(log_path.read_text(errors="replace")):
        if what == "start":
            started[stage] = dt.datetime.strptime(ts, "%Y-%m-%d %H:%M:%S")
        else:
            started.pop(stage, None)
    if not started:
        return None
    stage, t0 = max(started.items(), key=lambda kv: kv[1])
    last_write = dt.datetime.fromtimestamp(log_path.stat().st_mtime)
    return {"stage": stage, "seconds_at_kill": round((last_write - t0).total_seconds(), 1)}


def write_bench_conf(work: Path, driver_memory: str) -> Path:
    """The bench conf, merged over conf/default.yaml by ``--conf``: only what differs."""
    conf = work / "bench-conf.yaml"
    conf.write_text(
        "# Written by bench/bench_pipeline.py; merged over conf/default.yaml.\n"
        f"spark:\n  driver_memory: {driver_memory}\n"
    )
    return conf


def child_projection(run_dir: str, conf: str, out: str) -> None:
    """Step 3a, in its own process: the account projection with Spark, written as Parquet."""
    from graph.build import IdentityGraph
    from graph.config import load_config
    from graph.hubs import PROJECTION_COLUMNS, account_projection
    from graph.session import build_session

    cfg = load_config(conf)
    spark = build_session(cfg.spark, app_name="bench-projection")
    t0 = time.perf_counter()
    g = IdentityGraph(vertices=spark.read.parquet(f"{run_dir}/graph/vertices"),
                      edges=spark.read.parquet(f"{run_dir}/graph/edges"))
    hubs = spark.read.parquet(f"{run_dir}/hubs")
    proj = account_projection(g, hubs, cfg.hubs.merchant_link_max_accounts).select(*PROJECTION_COLUMNS)
    proj.write.mode("overwrite").parquet(out)
    print(json.dumps({"projection_seconds": round(time.perf_counter() - t0, 1)}), flush=True)
    spark.stop()


def child_scipy_cc(path: str) -> None:
    """Step 3b, in its own process: pyarrow read, pandas factorize, scipy connected components."""
    import resource

    import numpy as np
    import pandas as pd
    import pyarrow.parquet as pq
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    base_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    table = pq.read_table(path, columns=["src", "dst"])
    t1 = time.perf_counter()
    ids = pd.concat([table.column("src").to_pandas(), table.column("dst").to_pandas()], ignore_index=True)
    codes, uniques = pd.factorize(ids)
    del ids
    n, m = len(uniques), table.num_rows
    del table
    src, dst = codes[:m].astype(np.int32), codes[m:].astype(np.int32)
    del codes, uniques
    t2 = time.perf_counter()
    # Undirected: one stored direction is enough; tocsr() sums the rows of one pair
    # linked by several identifier types, so nnz = distinct account pairs.
    adj = coo_matrix((np.ones(m, dtype=np.int8), (src, dst)), shape=(n, n)).tocsr()
    n_comp, labels = connected_components(adj, directed=False)
    t3 = time.perf_counter()
    sizes = np.bincount(labels) if n else np.zeros(1, dtype=np.int64)
    print(json.dumps({
        "projection_rows": int(m), "unique_pairs": int(adj.nnz), "vertices": int(n),
        "components": int(n_comp), "largest_component": int(sizes.max()),
        "components_ge_3": int((sizes >= 3).sum()),
        "read_seconds": round(t1 - t0, 2), "factorize_seconds": round(t2 - t1, 2),
        "cc_seconds": round(t3 - t2, 2), "total_seconds": round(t3 - t0, 2),
        "baseline_rss_gb": round(base_kib / 1024**2, 3),
        "peak_rss_gb_self": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 3),
    }), flush=True)


def _last_json(log: str) -> dict:
    for line in reversed(Path(log).read_text().strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {}


def _base(label: str, accounts: int, events: int | None, bench_id: str, machine: dict, cmd: list[str]) -> dict:
    return {
        "bench_id": bench_id, "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "size": label, "accounts": accounts, "events": events, "machine": machine,
        "command": shlex.join(cmd),
    }


def bench_size(label: str, accounts: int, args, bench_id: str, machine: dict) -> bool:
    """Run the steps for one size; False when the pipeline failed (later steps skipped)."""
    work = args.workdir / label
    world, out, proj = work / "world", work / "out", work / "projection"
    logs = work / "logs"
    end = args.end_date
    timeout_s = args.timeout_minutes * 60

    # 1. the world (reused when its summary matches)
    summary = world_matches(world, accounts, args.days, end, args.seed)
    if summary is None:
        cmd = [str(BIN / "ringfence"), "generate", "--out", str(world), "--accounts", str(accounts),
               "--days", str(args.days), "--end-date", end.isoformat(), "--seed", str(args.seed)]
        m = run_measured(cmd, logs / "generate.log", timeout_s)
        summary = world_matches(world, accounts, args.days, end, args.seed)
        if summary is None:
            raise SystemExit(f"generate failed, see {logs / 'generate.log'}")
        append_result({**_base(label, accounts, summary["events"], bench_id, machine, cmd),
                       "measurement": "generate", **m, "rows": summary["rows"]})
    else:
        print(f"[{label}] reusing world {world} ({summary['events']:,} events)", flush=True)
    events = summary["events"]

    # 2. the pipeline stages that exist today
    if out.exists():
        shutil.rmtree(out)
    conf = write_bench_conf(args.workdir, args.driver_memory)
    cmd = [str(BIN / "ringfence"), "run", "--input", str(world), "--output", str(out), "--ds", end.isoformat(),
           "--stages", *args.stages, "--conf", str(conf)]
    print(f"[{label}] pipeline: {shlex.join(cmd)}", flush=True)
    m = run_measured(cmd, logs / "run.log", timeout_s)
    run_summary_path = out / f"ds={end.isoformat()}" / "run_summary.json"
    run_summary = json.loads(run_summary_path.read_text()) if run_summary_path.is_file() else {}
    stages = {name: s["seconds"] for name, s in run_summary.get("stages", {}).items()}
    graph_stats = run_summary.get("stages", {}).get("graph", {})
    ok = m["exit_code"] == 0 and all(s in stages for s in args.stages)
    append_result({
        **_base(label, accounts, events, bench_id, machine, cmd), "measurement": "pipeline", **m,
        "status": "ok" if ok else ("timeout" if m["timed_out"] else "failed"),
        "driver_memory": args.driver_memory, "stages_requested": args.stages, "stage_seconds": stages,
        "startup_and_overhead_seconds": round(m["wall_seconds"] - sum(stages.values()), 1),
        "blocked_stages": BLOCKED_STAGES, "graph_stats": graph_stats,
        "signals_entities": run_summary.get("stages", {}).get("signals", {}).get("entities_by_type"),
        "running_stage": None if ok else running_stage(logs / "run.log"),
    })
    if not ok or "graph" not in args.stages:
        return ok
    run_dir = out / f"ds={end.isoformat()}"

    # 3a. the account projection, computed once with Spark
    cmd = [sys.executable, str(Path(__file__).resolve()), "_projection", str(run_dir), str(conf), str(proj)]
    m = run_measured(cmd, logs / "projection.log", timeout_s)
    child = _last_json(m["log"]) if m["exit_code"] == 0 else {}
    append_result({**_base(label, accounts, events, bench_id, machine, cmd), "measurement": "projection_spark",
                   **m, "status": "ok" if child else "failed", **child})
    if not child:
        return False

    # 3b. the single-machine limit: scipy connected components on the projection
    cmd = [sys.executable, str(Path(__file__).resolve()), "_scipy_cc", str(proj)]
    m = run_measured(cmd, logs / "scipy_cc.log", timeout_s)
    child = _last_json(m["log"]) if m["exit_code"] == 0 else {}
    append_result({**_base(label, accounts, events, bench_id, machine, cmd), "measurement": "scipy_cc",
                   **m, "status": "ok" if child else "failed", **child})
    return True


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # Internal: the measured child processes of step 3 (see bench_size).
    if argv[:1] == ["_projection"]:
        child_projection(*argv[1:4])
        return 0
    if argv[:1] == ["_scipy_cc"]:
        child_scipy_cc(argv[1])
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", type=parse_size, default=[parse_size("1M"), parse_size("10M")],
                   help="target events per size, e.g. 1M 10M 250k (default 1M 10M)")
    p.add_argument("--quick", action="store_true", help=f"only a smoke size ({QUICK_ACCOUNTS} accounts)")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/ringfence-bench"),
                   help="worlds, run outputs and logs (default /tmp/ringfence-bench)")
    p.add_argument("--days", type=int, default=30)
    p.add_argument("--end-date", type=dt.date.fromisoformat, default=dt.date(2026, 11, 24))
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--driver-memory", default="10g", help="spark.driver_memory in the bench conf")
    p.add_argument("--stages", nargs="+", default=PIPELINE_STAGES, help="pipeline stages to run")
    p.add_argument("--timeout-minutes", type=float, default=60.0, help="kill a step after this long")
    args = p.parse_args(argv)
    blocked = [s for s in args.stages if s in BLOCKED_STAGES]
    if blocked:
        p.error(f"stages {blocked} are blocked: " + "; ".join(BLOCKED_STAGES[s] for s in blocked))
    sizes = [parse_size("quick")] if args.quick else args.sizes
    args.workdir.mkdir(parents=True, exist_ok=True)
    bench_id = uuid.uuid4().hex[:12]
    machine = machine_info()
    ok = True
    for label, accounts in sizes:
        print(f"[{label}] {accounts:,} accounts x {args.days} days", flush=True)
        ok = bench_size(label, accounts, args, bench_id, machine) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
