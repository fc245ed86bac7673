"""Publish to a real redis-server: atomic switch, rollback, circuit breaker, killed loads, GC."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import pytest
import redis
from test_export import do_export, make_env, row, write_risk

from graph.client import RiskListClient
from graph.config import REPO_ROOT
from graph.errors import PublishRefused, RingfenceError

pytestmark = [pytest.mark.redis, pytest.mark.spark]

ACCOUNTS = [f"acc-{i}" for i in range(60)]
DEVICES = [f"dev-{i}" for i in range(20)]
PAST = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)


def _version_rows(score: float, ring: str, reasons: list[str]) -> list[tuple]:
    rows = [row("account", a, score, ring, "mule", reasons) for a in ACCOUNTS]
    rows += [row("device", d, score, ring, "mule", reasons) for d in DEVICES]
    rows.append(row("account", "acc-expired", score, None, None, [], exp=PAST))
    return rows


@pytest.fixture(scope="session")
def exports(spark, tmp_path_factory):
    """Three chained exports: A, B (same entities, other scores), C (a much smaller list)."""
    from graph.config import load_config

    root = tmp_path_factory.mktemp("publish-out")
    env = make_env()
    cfg = load_config()
    specs = {
        "A": ("2026-04-01", _version_rows(0.25, "ring-A", ["r_a"])),
        "B": ("2026-04-02", _version_rows(0.75, "ring-B", ["r_b1", "r_b2"])),
        "C": ("2026-04-03", [row("account", a, 0.5, None, None, []) for a in ACCOUNTS[:10]]),
    }
    dirs = {}
    for name, (ds, rows) in specs.items():
        write_risk(spark, root, ds, rows)
        do_export(spark, cfg, root, ds, env)
        dirs[name] = root / f"ds={ds}" / "export"
    return {"env": env, **dirs}


@pytest.fixture()
def cfg(config, redis_server):
    """The default config pointed at the test server, in a namespace of its own."""
    rc = config.redis.model_copy(update={"host": redis_server["host"], "port": redis_server["port"],
                                         "namespace": f"t{uuid.uuid4().hex[:8]}", "keep_versions": 10})
    return config.model_copy(update={"redis": rc})


@pytest.fixture()
def r(redis_server):
    return redis.Redis(host=redis_server["host"], port=redis_server["port"])


def client_for(cfg, r, env, refresh_ms=0) -> RiskListClient:
    return RiskListClient(r, namespace=cfg.redis.namespace, env=env, refresh_ms=refresh_ms)


def test_publish_loads_a_lean_versioned_layout(cfg, r, exports):
    from graph.publish import publish

    env = exports["env"]
    s = publish(cfg, exports["A"], False, env=env)
    ns = cfg.redis.namespace
    assert s["status"] == "published" and s["version"] == "1" and s["previous_version"] is None
    assert s["rows"] == 81 and s["rows_by_type"]["account"] == 61
    assert r.get(f"{ns}:live") == b"1"
    buckets = [k for k in r.scan_iter(match=f"{ns}:v:1:account:*")]
    assert buckets and all(r.object("encoding", k) == b"listpack" for k in buckets)
    assert sum(r.hlen(k) for k in buckets) == 61
    assert all(0 < r.ttl(k) for k in buckets)  # versions expire
    c = client_for(cfg, r, env)
    hit = c.lookup("account", "acc-3")
    assert hit == {"score": 0.25, "ring_id": "ring-A", "ring_type": "mule", "reasons": ["r_a"],
                   "expires_at": dt.datetime(2090, 1, 1, tzinfo=dt.UTC), "list_version": "1"}
    assert c.lookup("device", "dev-19")["score"] == 0.25
    assert c.lookup("account", "dev-19") is None  # same id, other type: another token
    assert c.lookup("account", "acc-expired") is None  # expired entries are absent
    assert c.lookup("ip", "acc-3") is None
    # Publishing the live export again is a no-op.
    assert publish(cfg, exports["A"], False, env=env)["status"] == "already live"
    assert r.get(f"{ns}:live") == b"1"


def test_circuit_breaker_refuses_then_force_switches(cfg, r, exports):
    from graph.publish import publish

    env = exports["env"]
    publish(cfg, exports["A"], False, env=env)
    ns = cfg.redis.namespace
    keys_before = sorted(r.scan_iter(match=f"{ns}:*"))
    with pytest.raises(PublishRefused, match=r"list size 81 -> 10 .*--force") as e:
        publish(cfg, exports["C"], False, env=env)
    assert "ring-type mix" in str(e.value)
    assert r.get(f"{ns}:live") == b"1"
    assert sorted(r.scan_iter(match=f"{ns}:*")) == keys_before  # nothing loaded, nothing switched
    assert client_for(cfg, r, env).lookup("account", "acc-0")["score"] == 0.25
    s = publish(cfg, exports["C"], True, env=env)
    assert s["forced"] and s["circuit_breaker"]["tripped"]
    assert r.get(f"{ns}:live") == s["version"].encode()
    c = client_for(cfg, r, env)
    assert c.lookup("account", "acc-0")["score"] == 0.5 and c.lookup("device", "dev-0") is None


def test_cli_publish_refusal_exits_non_zero(cfg, r, exports, monkeypatch, tmp_path):
    """The operator path: `ringfence publish` refuses with a message and exit code 1."""
    from graph.cli import main
    from graph.publish import publish

    env = exports["env"]
    publish(cfg, exports["A"], False, env=env)
    rc = cfg.redis
    for k, v in {**env, "RINGFENCE_REDIS_HOST": rc.host, "RINGFENCE_REDIS_PORT": str(rc.port)}.items():
        monkeypatch.setenv(k, v)
    conf = tmp_path / "ns.yaml"
    conf.write_text(f"redis:\n  namespace: {rc.namespace}\n")
    assert main(["publish", str(exports["C"]), "--conf", str(conf)]) == 1
    assert r.get(f"{rc.namespace}:live") == b"1"
    assert main(["publish", str(exports["C"]), "--force", "--conf", str(conf)]) == 0
    assert r.get(f"{rc.namespace}:live") == b"2"
    assert main(["rollback", "--conf", str(conf)]) == 0
    assert r.get(f"{rc.namespace}:live") == b"1"


def test_rollback_returns_to_previous_version(cfg, r, exports):
    from graph.publish import publish, rollback

    env = exports["env"]
    publish(cfg, exports["A"], False, env=env)
    publish(cfg, exports["B"], False, env=env)
    c = client_for(cfg, r, env)
    assert c.lookup("account", "acc-1")["ring_id"] == "ring-B"
    out = rollback(cfg)
    assert (out["from_version"], out["to_version"], out["ds"]) == ("2", "1", "2026-04-01")
    assert c.lookup("account", "acc-1")["ring_id"] == "ring-A"
    with pytest.raises(RingfenceError, match="no earlier complete version"):
        rollback(cfg)
    assert r.get(f"{cfg.redis.namespace}:live") == b"1"


def test_gc_unlinks_old_versions_and_keeps_live(cfg, r, exports):
    from graph.publish import garbage_collect, publish, rollback

    env = exports["env"]
    for name in ("A", "B", "A", "B"):
        publish(cfg, exports[name], False, env=env)
    rollback(cfg)  # live: 3 (A)
    ns = cfg.redis.namespace
    stats = r.info("commandstats")
    unlinks, dels = (stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in ("unlink", "del"))
    out = garbage_collect(cfg, keep=1)
    assert out["deleted"] == ["1", "2"] and out["kept"] == ["3", "4"]
    assert not list(r.scan_iter(match=f"{ns}:v:1:*")) and not list(r.scan_iter(match=f"{ns}:v:2:*"))
    assert r.zrange(f"{ns}:versions", 0, -1) == [b"3", b"4"]
    stats = r.info("commandstats")
    assert stats["cmdstat_unlink"]["calls"] > unlinks
    assert stats.get("cmdstat_del", {}).get("calls", 0) == dels
    assert client_for(cfg, r, env).lookup("account", "acc-1")["ring_id"] == "ring-A"


def test_exception_mid_load_leaves_live_version_intact(cfg, r, exports, monkeypatch):
    import graph.publish as pub

    env = exports["env"]
    pub.publish(cfg, exports["A"], False, env=env)
    calls = {"n": 0}
    real = pub._send_batch

    def failing(conn, payloads, expected):
        calls["n"] += 1
        if calls["n"] == 3:
            raise ConnectionError("injected: network died mid-load")
        real(conn, payloads, expected)

    monkeypatch.setattr(pub, "_send_batch", failing)
    small = cfg.model_copy(update={"redis": cfg.redis.model_copy(update={"pipeline_batch": 1})})
    with pytest.raises(ConnectionError, match="injected"):
        pub.publish(small, exports["B"], False, env=env)
    ns = cfg.redis.namespace
    assert r.get(f"{ns}:live") == b"1"
    assert not list(r.scan_iter(match=f"{ns}:v:2:*"))  # the partial version was cleaned up
    c = client_for(cfg, r, env)
    assert all(c.lookup("account", a)["score"] == 0.25 for a in ACCOUNTS)


def test_load_killed_halfway_leaves_live_version_intact(cfg, r, exports):
    from graph.publish import garbage_collect, publish

    env = exports["env"]
    publish(cfg, exports["A"], False, env=env)
    ns = cfg.redis.namespace
    rc = cfg.redis
    child = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        import graph.publish as pub
        from graph.config import load_config
        real = pub._send_batch
        def slow(conn, payloads, expected):
            real(conn, payloads, expected)
            time.sleep(0.3)
        pub._send_batch = slow
        cfg = load_config()
        rc = cfg.redis.model_copy(update={{"host": {rc.host!r}, "port": {rc.port}, "namespace": {ns!r},
                                           "pipeline_batch": 1}})
        pub.publish(cfg.model_copy(update={{"redis": rc}}), Path(sys.argv[1]), False)
    """)
    proc = subprocess.Popen([sys.executable, "-c", child, str(exports["B"])], cwd=REPO_ROOT,
                            env={**os.environ, **env})
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            if r.hget(f"{ns}:v:2:meta", "state") == b"loading" and list(r.scan_iter(match=f"{ns}:v:2:account:*")):
                break
            assert proc.poll() is None, "the publisher ended before it could be killed"
            time.sleep(0.02)
        else:
            pytest.fail("the child publisher never started loading")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert r.get(f"{ns}:live") == b"1"
    assert r.hget(f"{ns}:v:2:meta", "state") == b"loading"  # the half version is there ...
    c = client_for(cfg, r, env)
    assert all(c.lookup("account", a)["score"] == 0.25 for a in ACCOUNTS)  # ... but never read
    assert garbage_collect(cfg, keep=1)["in_flight"] == ["2"]  # newest: might still be running
    publish(cfg, exports["B"], False, env=env)  # version 3 completes; gc runs after the switch
    assert not list(r.scan_iter(match=f"{ns}:v:2:*"))
    assert c.lookup("account", "acc-0")["score"] == 0.75


def test_atomic_switch_under_concurrent_readers(cfg, r, exports, redis_server):
    """Readers never see a mixed batch, an empty list, or a score from one version with another's ring."""
    from graph.publish import publish, rollback

    env = exports["env"]
    publish(cfg, exports["A"], False, env=env)
    expected = {0.25: "ring-A", 0.75: "ring-B"}
    stop = threading.Event()
    errors: list[str] = []
    seen: list[set] = []

    def reader(mode: str):
        conn = redis.Redis(host=redis_server["host"], port=redis_server["port"])
        c = client_for(cfg, conn, env, refresh_ms=0 if mode != "periodic" else 5)
        scores = set()
        seen.append(scores)
        n = 0
        while not stop.is_set() or n < 3:
            n += 1
            if mode == "batch":
                got = c.lookup_many("account", ACCOUNTS)
                if any(g is None for g in got):
                    errors.append("batch: empty entry")
                    continue
                batch_scores = {g["score"] for g in got}
                if len(batch_scores) != 1 or len({g["list_version"] for g in got}) != 1:
                    errors.append(f"batch: mixed versions {batch_scores}")
                    continue
            else:
                got = [c.lookup("account", a) for a in ACCOUNTS[n % 60: n % 60 + 3]]
                if any(g is None for g in got):
                    errors.append(f"{mode}: empty entry")
                    continue
            for g in got:
                scores.add(g["score"])
                if expected.get(g["score"]) != g["ring_id"] or len(g["reasons"]) != (2 if g["score"] > 0.5 else 1):
                    errors.append(f"{mode}: fields from two versions: {g}")

    threads = [threading.Thread(target=reader, args=(m,)) for m in ("batch", "batch", "per_call", "periodic")]
    for t in threads:
        t.start()
    try:
        for _ in range(3):
            time.sleep(0.15)
            publish(cfg, exports["B"], False, env=env)
            time.sleep(0.15)
            rollback(cfg)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert not errors, errors[:5]
    assert all(s == {0.25, 0.75} for s in seen), seen  # every reader saw both versions
