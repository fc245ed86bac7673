"""Benchmark: publish N risk-list entries to Redis vs `redis-cli --pipe`, memory, lookup latency.

    .venv/bin/python bench/bench_publish.py --entries 1000000

Starts its own redis-server on a free loopback port, writes a synthetic risk
table, exports it with Spark (the real ``export_lists``: tokenise, sign),
then in the same run:

1. ``publish`` the export (verify + bulk load + atomic switch) and report the
   load rate (entries/s) and the used_memory delta per entry;
2. write the identical command stream (same keys' shape, fields and values,
   under another namespace) to a file and time ``redis-cli --pipe`` on it;
3. time ``RiskListClient.lookup`` (HMAC + Redis round trip) for hits and
   misses, following the pointer per call and every 1000 ms, plus offline mode.

Secrets are generated for the run (never read from disk). Results are printed
and written to bench/results/publish.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(workdir: str) -> tuple[subprocess.Popen, int]:
    import redis

    exe = shutil.which("redis-server")
    if exe is None:
        sys.exit("redis-server not found: `apt-get install -y redis-server` (or `make setup`)")
    port = free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", workdir],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    for _ in range(200):
        try:
            client.ping()
            return proc, port
        except redis.ConnectionError:
            time.sleep(0.05)
    proc.kill()
    sys.exit("redis-server did not start")


def make_secrets() -> dict[str, str]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    k = Ed25519PrivateKey.generate()
    raw = serialization.Encoding.Raw
    return {
        "RINGFENCE_HMAC_KEY": os.urandom(32).hex(),
        "RINGFENCE_SIGNING_KEY": k.private_bytes(raw, serialization.PrivateFormat.Raw,
                                                 serialization.NoEncryption()).hex(),
        "RINGFENCE_VERIFY_KEY": k.public_key().public_bytes(raw, serialization.PublicFormat.Raw).hex(),
    }


def synthetic_risk(spark, n: int):
    """n entities: 70% accounts, the rest spread over the other types; 30% in rings."""
    from pyspark.sql import functions as F

    et = (F.when(F.col("id") % 10 < 7, "account").when(F.col("id") % 10 == 7, "device")
          .when(F.col("id") % 10 == 8, "ip").otherwise(F.when(F.col("id") % 20 == 9, "card").otherwise("merchant")))
    in_ring = F.col("id") % 10 < 3
    reasons = F.array(F.lit("shared_device"), F.lit("fan_in"), F.lit("tiny_amounts"), F.lit("bot_cadence"))
    return spark.range(n).select(
        et.alias("entity_type"),
        F.concat(F.lit("id-"), F.col("id").cast("string")).alias("entity_id"),
        F.rand(7).alias("score"),
        F.when(in_ring, F.concat(F.lit("ring-"), (F.col("id") % 20000).cast("string"))).alias("ring_id"),
        F.when(in_ring, F.when(F.col("id") % 2 == 0, "mule").otherwise("card_testing")).alias("ring_type"),
        F.slice(reasons, 1, (F.col("id") % 4).cast("int")).alias("reasons"),
        (F.current_timestamp() + F.expr("INTERVAL 7 DAYS")).alias("expires_at"),
    )


def percentiles(samples_ns: list[int]) -> dict[str, float]:
    s = sorted(samples_ns)

    def p(q):
        return round(s[min(len(s) - 1, int(q * len(s)))] / 1000, 1)

    return {"p50_us": p(0.50), "p99_us": p(0.99), "p999_us": p(0.999), "n": len(s)}


def time_lookups(client, probes) -> dict[str, float]:
    samples = []
    for et, rid in probes:
        t = time.perf_counter_ns()
        client.lookup(et, rid)
        samples.append(time.perf_counter_ns() - t)
    return percentiles(samples)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--lookups", type=int, default=50_000)
    ap.add_argument("--workdir", help="keep the export here (default: a temp dir, removed)")
    args = ap.parse_args()

    import redis

    from graph.client import KeySpace, RiskListClient
    from graph.config import SparkConf, load_config
    from graph.export import export_lists
    from graph.publish import _listpack_target, encode_commands, publish, read_export
    from graph.session import build_session

    secrets = make_secrets()
    os.environ.update(secrets)
    work = args.workdir or tempfile.mkdtemp(prefix="ringfence-bench-")
    proc, port = start_redis(work)
    results: dict = {"entries": args.entries, "redis_port": port,
                     "redis_version": redis.Redis(port=port).info("server")["redis_version"]}
    try:
        base = load_config()
        cfg = base.model_copy(update={"redis": base.redis.model_copy(update={"port": port, "host": "127.0.0.1"})})
        spark = build_session(SparkConf(master="local[2]", shuffle_partitions=4, driver_memory="4g",
                                        extra_conf={"spark.ui.enabled": "false"}, log_level="ERROR"))
        ds = dt.date(2026, 11, 24)
        out = f"{work}/output"
        t = time.perf_counter()
        synthetic_risk(spark, args.entries).write.mode("overwrite").parquet(f"{out}/ds={ds}/risk")
        results["risk_table_seconds"] = round(time.perf_counter() - t, 1)
        t = time.perf_counter()
        exp = export_lists(spark, cfg, out, ds)
        results["export_seconds"] = round(time.perf_counter() - t, 1)
        spark.stop()
        export_dir = Path(exp["export_dir"])

        r = redis.Redis(port=port)
        t = time.perf_counter()
        pub = publish(cfg, export_dir, False)
        results["publish_total_seconds"] = round(time.perf_counter() - t, 2)
        results["publish"] = {k: pub[k] for k in ("rows", "buckets", "verify_seconds", "load_seconds",
                                                  "entries_per_second", "bytes_per_entry", "commands")}

        # The same entries as a RESP file for redis-cli --pipe (another namespace, same shapes).
        content = read_export(export_dir)
        _, commands = encode_commands(content.table, KeySpace("clipipe"), "1",
                                      int(time.time()) + 86400, _listpack_target(r))
        resp = Path(work) / "entries.resp"
        with resp.open("wb") as f:
            for payload, _ in commands:
                f.write(payload)
        before = int(r.info("memory")["used_memory"])
        t = time.perf_counter()
        with resp.open("rb") as f:
            cli = subprocess.run(["redis-cli", "-p", str(port), "--pipe"], stdin=f, capture_output=True, text=True)
        cli_s = time.perf_counter() - t
        if cli.returncode != 0 or "errors: 0" not in cli.stdout:
            sys.exit(f"redis-cli --pipe failed: {cli.stdout} {cli.stderr}")
        results["redis_cli_pipe"] = {
            "seconds": round(cli_s, 3), "entries_per_second": round(pub["rows"] / cli_s),
            "bytes_per_entry": round((int(r.info("memory")["used_memory"]) - before) / pub["rows"], 1),
            "resp_file_mb": round(resp.stat().st_size / 1e6, 1), "summary": cli.stdout.strip().splitlines()[-1],
        }
        results["publish_vs_cli_pipe"] = round(pub["entries_per_second"] / results["redis_cli_pipe"]["entries_per_second"], 2)

        # Lookups: half hits (ids on the list), half misses.
        rng = random.Random(7)
        types = ["account"] * 7 + ["device", "ip", "card"]
        probes = []
        for _ in range(args.lookups):
            i = rng.randrange(args.entries)
            hit = rng.random() < 0.5
            et = "account" if i % 10 < 7 else ("device" if i % 10 == 7 else "ip" if i % 10 == 8 else
                                                ("card" if i % 20 == 9 else "merchant"))
            probes.append((et, f"id-{i}") if hit else (rng.choice(types), f"absent-{i}"))
        per_call = RiskListClient(redis.Redis(port=port), refresh_ms=0)
        periodic = RiskListClient(redis.Redis(port=port), refresh_ms=1000)
        for c in (per_call, periodic):  # warm up: load version metadata, connect
            time_lookups(c, probes[:1000])
        hits = sum(per_call.lookup(*p) is not None for p in probes[:2000])
        results["lookup_hit_rate_sample"] = round(hits / 2000, 3)
        results["lookup_follow_per_call"] = time_lookups(per_call, probes)
        results["lookup_follow_every_1000ms"] = time_lookups(periodic, probes)
        t = time.perf_counter()
        offline = RiskListClient.offline(export_dir)
        results["offline_load_seconds"] = round(time.perf_counter() - t, 1)
        results["lookup_offline"] = time_lookups(offline, probes)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=2))
    dest = REPO / "bench" / "results"
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "publish.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
