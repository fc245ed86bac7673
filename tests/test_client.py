"""The scorer-side client: same answers online and offline, follows switches, trusts only signed lists."""

from __future__ import annotations

import datetime as dt

import pytest
from test_export import make_env
from test_publish import ACCOUNTS, DEVICES, cfg, client_for, exports, r  # noqa: F401 (fixtures)

from graph.client import RiskListClient
from graph.errors import RingfenceError, VerificationFailed

pytestmark = [pytest.mark.redis, pytest.mark.spark]

PROBES = [("account", a) for a in ACCOUNTS] + [("device", d) for d in DEVICES] + [
    ("account", "acc-expired"), ("account", "nobody"), ("ip", "acc-1"), ("merchant", "m-1")]


def test_offline_mode_answers_like_redis(cfg, r, exports):  # noqa: F811
    from graph.publish import publish

    env = exports["env"]
    publish(cfg, exports["B"], False, env=env)
    online = client_for(cfg, r, env)
    offline = RiskListClient.offline(exports["B"], env=env)

    def strip(v):
        return None if v is None else {k: x for k, x in v.items() if k != "list_version"}

    answers = [(strip(online.lookup(*p)), strip(offline.lookup(*p))) for p in PROBES]
    assert all(a == b for a, b in answers), [a for a in answers if a[0] != a[1]][:3]
    assert answers[0][0] == {"score": 0.75, "ring_id": "ring-B", "ring_type": "mule",
                             "reasons": ["r_b1", "r_b2"], "expires_at": dt.datetime(2090, 1, 1, tzinfo=dt.UTC)}
    assert sum(a is not None for a, _ in answers) == 80  # expired and unknown ids are absent
    assert offline.lookup_many("device", ["dev-1", "nope"])[1] is None
    # Far in the future everything has expired, in both modes.
    later = dt.datetime(2095, 1, 1, tzinfo=dt.UTC).timestamp()
    assert RiskListClient.offline(exports["B"], env=env, clock=lambda: later).lookup("account", "acc-1") is None
    assert RiskListClient(r, namespace=cfg.redis.namespace, env=env, refresh_ms=0,
                          clock=lambda: later).lookup("account", "acc-1") is None


def test_offline_mode_refuses_a_tampered_export(exports, tmp_path):  # noqa: F811
    import shutil

    copy = tmp_path / "ds=2026-04-02" / "export"
    shutil.copytree(exports["B"].parent, copy.parent)
    shutil.copytree(exports["A"].parent, tmp_path / "ds=2026-04-01")
    assert RiskListClient.offline(copy, env=exports["env"]).lookup("account", "acc-1")["score"] == 0.75
    data = bytearray((copy / "lists" / "account.parquet").read_bytes())
    data[-20] ^= 1
    (copy / "lists" / "account.parquet").write_bytes(bytes(data))
    with pytest.raises(VerificationFailed):
        RiskListClient.offline(copy, env=exports["env"])


def test_client_follows_switches_without_restart(cfg, r, exports):  # noqa: F811
    from graph.publish import publish, rollback

    env = exports["env"]
    publish(cfg, exports["A"], False, env=env)
    now = [1_000.0]
    periodic = RiskListClient(r, namespace=cfg.redis.namespace, env=env, refresh_ms=1000,
                              clock=lambda: now[0])
    per_call = client_for(cfg, r, env, refresh_ms=0)
    assert periodic.lookup("account", "acc-1")["score"] == per_call.lookup("account", "acc-1")["score"] == 0.25
    publish(cfg, exports["B"], False, env=env)
    assert per_call.lookup("account", "acc-1")["score"] == 0.75  # checks the pointer every call
    now[0] += 0.5
    assert periodic.lookup("account", "acc-1")["score"] == 0.25  # within refresh_ms: still the old one
    now[0] += 0.6
    assert periodic.lookup("account", "acc-1")["score"] == 0.75
    assert periodic.version == "2"
    rollback(cfg)
    assert per_call.lookup("device", "dev-2")["ring_id"] == "ring-A" and per_call.version == "1"


def test_client_trusts_only_signed_versions_and_its_own_key(cfg, r, exports):  # noqa: F811
    from graph.publish import publish

    env = exports["env"]
    publish(cfg, exports["A"], False, env=env)
    ns = cfg.redis.namespace
    other_key = {**env, "RINGFENCE_HMAC_KEY": "22" * 32}
    with pytest.raises(RingfenceError, match="another HMAC key"):
        RiskListClient(r, namespace=ns, env=other_key, refresh_ms=0).lookup("account", "acc-1")
    with pytest.raises(RingfenceError, match="another HMAC key"):
        RiskListClient.offline(exports["A"], env=other_key)
    stranger = {**env, "RINGFENCE_VERIFY_KEY": make_env()["RINGFENCE_VERIFY_KEY"]}
    with pytest.raises(RingfenceError, match="signature does not verify"):
        RiskListClient(r, namespace=ns, env=stranger, refresh_ms=0).lookup("account", "acc-1")
    manifest = r.hget(f"{ns}:v:1:meta", "manifest")
    r.hset(f"{ns}:v:1:meta", "manifest", manifest.replace(b'"ds": "2026-04-01"', b'"ds": "2026-04-09"'))
    with pytest.raises(RingfenceError, match="signature does not verify"):
        RiskListClient(r, namespace=ns, env=env, refresh_ms=0).lookup("account", "acc-1")
    without = {k: v for k, v in env.items() if k != "RINGFENCE_VERIFY_KEY"}
    with pytest.raises(RingfenceError, match="RINGFENCE_VERIFY_KEY"):
        RiskListClient(r, namespace=ns, env=without)
