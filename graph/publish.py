"""Publish a verified export to Redis: versioned bulk load, then one atomic pointer switch.

Key layout and value format: see ``graph.client`` (the reader defines them).

``publish`` (1) verifies the export (signature, chain, checksums), (2) runs
the circuit breaker against the live version, (3) loads a new version under
``{ns}:v:{ver}:`` while ``meta.state`` is ``loading``, (4) marks it
``complete`` and (5) switches ``{ns}:live`` in a Lua script that also checks
the live version did not move meanwhile. Readers only follow ``{ns}:live``, so
a load that dies halfway leaves the live version untouched; its leftovers are
removed by the next ``garbage_collect`` once a newer version is complete.

The bulk load writes Redis protocol (RESP) directly: entries are packed with
numpy into fixed-width records, one multi-field HSET per bucket, and sent in
batches of ``redis.pipeline_batch`` commands on one connection, replies read
and checked per batch (every HSET must report all its fields new, so a token
collision or a half-applied batch cannot pass silently).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from graph.client import (
    FIELD_END,
    FIELD_START,
    REASON_SEP,
    RING_TYPE_CODES,
    STATE_COMPLETE,
    STATE_LOADING,
    VALUE,
    VALUE_FORMAT,
    KeySpace,
    connect,
)
from graph.errors import PublishRefused, RingfenceError
from graph.export import MANIFEST, SIGNATURE, verify_export

log = logging.getLogger(__name__)

HISTORY_MAX = 100
DICT_CHUNK = 1000  # fields per HSET for the reason/ring dictionaries
MIN_VERSION_TTL_S = 3600
VALUE_DTYPE = np.dtype([("score", "<f8"), ("ring", "<u4"), ("reasons", "<u4"),
                        ("expires", "<u4"), ("ring_type", "u1")])
assert VALUE_DTYPE.itemsize == VALUE.size
FIELD_LEN = FIELD_END - FIELD_START
# One entry of a multi-field HSET: $12\r\n<field>\r\n$21\r\n<value>\r\n
_ENTRY_HEAD = f"${FIELD_LEN}\r\n".encode()
_ENTRY_MID = f"\r\n${VALUE.size}\r\n".encode()
ENTRY_LEN = len(_ENTRY_HEAD) + FIELD_LEN + len(_ENTRY_MID) + VALUE.size + 2

# Switch only if the live version is still the one the circuit breaker saw,
# and the new version is complete. KEYS: live, new meta, history; ARGV: new
# version, expected live ('' = none), history length.
SWITCH_LUA = """
local cur = redis.call('GET', KEYS[1])
if (cur or '') ~= ARGV[2] then
  return redis.error_reply('CONFLICT live version moved to ' .. tostring(cur) .. ' during publish')
end
if redis.call('HGET', KEYS[2], 'state') ~= 'complete' then
  return redis.error_reply('INCOMPLETE version ' .. ARGV[1] .. ' is not complete')
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('LPUSH', KEYS[3], ARGV[1])
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[3]) - 1)
return cur or ''
"""

# Back to the newest complete version that was live before the current one.
# KEYS: live, history; ARGV: meta key prefix ('{ns}:v:'), meta key suffix (':meta').
ROLLBACK_LUA = """
local cur = redis.call('GET', KEYS[1])
if not cur then return redis.error_reply('NOLIVE no live version to roll back from') end
local hist = redis.call('LRANGE', KEYS[2], 0, -1)
local at = nil
for i, v in ipairs(hist) do if v == cur then at = i break end end
if not at then return redis.error_reply('NOHISTORY live version ' .. cur .. ' is not in the history') end
for j = at + 1, #hist do
  local v = hist[j]
  if redis.call('HGET', ARGV[1] .. v .. ARGV[2], 'state') == 'complete' then
    redis.call('SET', KEYS[1], v)
    redis.call('LTRIM', KEYS[2], j - 1, -1)
    return {cur, v}
  end
end
return redis.error_reply('NOPREVIOUS no earlier complete version to roll back to')
"""


# --- reading an export -------------------------------------------------------------


@dataclass
class ExportContent:
    manifest: dict
    manifest_bytes: bytes
    signature: str
    table: pa.Table  # all lists, with an entity_type column


def read_export(export_dir: Path) -> ExportContent:
    manifest_bytes = (export_dir / MANIFEST).read_bytes()
    manifest = json.loads(manifest_bytes)
    parts = []
    for et, entry in manifest["lists"].items():
        t = pq.read_table(export_dir / entry["files"]["parquet"]["path"],
                          columns=["token", "score", "ring_id", "ring_type", "reasons", "expires_at"])
        parts.append(t.append_column("entity_type", pa.array([et] * t.num_rows, pa.string())))
    table = pa.concat_tables(parts).combine_chunks() if parts else pa.table({})
    return ExportContent(manifest, manifest_bytes, (export_dir / SIGNATURE).read_text().strip(), table)


# --- the circuit breaker ---------------------------------------------------------------


def _shares(counts: Mapping[str, int]) -> dict[str, float]:
    total = sum(counts.values())
    return {k: v / total for k, v in counts.items()} if total else {}


def _distance(a: Mapping[str, int], b: Mapping[str, int]) -> float:
    """Total variation distance between two count vectors' shares (0 = same mix, 1 = disjoint)."""
    sa, sb = _shares(a), _shares(b)
    if not sa or not sb:
        return 0.0 if not sa and not sb else 1.0
    return 0.5 * sum(abs(sa.get(k, 0.0) - sb.get(k, 0.0)) for k in set(sa) | set(sb))


def breaker_findings(live_by_type: Mapping[str, int], new_by_type: Mapping[str, int],
                     live_by_ring_type: Mapping[str, int], new_by_ring_type: Mapping[str, int],
                     max_change_fraction: float, max_composition_change: float) -> dict:
    """Size and composition change versus the live version, and what exceeds its limit."""
    live_n, new_n = sum(live_by_type.values()), sum(new_by_type.values())
    size_change = abs(new_n - live_n) / live_n if live_n else (0.0 if new_n == 0 else math.inf)
    by_type = _distance(live_by_type, new_by_type)
    by_ring = _distance(live_by_ring_type, new_by_ring_type)
    tripped = []
    if size_change > max_change_fraction:
        tripped.append(f"list size {live_n} -> {new_n} changes by {size_change:.1%} "
                       f"(limit redis.max_change_fraction={max_change_fraction:.1%})")
    if by_type > max_composition_change:
        tripped.append(f"entity-type mix shifts by {by_type:.1%} "
                       f"(limit redis.max_composition_change={max_composition_change:.1%})")
    if by_ring > max_composition_change:
        tripped.append(f"ring-type mix shifts by {by_ring:.1%} "
                       f"(limit redis.max_composition_change={max_composition_change:.1%})")
    return {"live_rows": live_n, "new_rows": new_n, "size_change": size_change,
            "entity_type_shift": by_type, "ring_type_shift": by_ring, "tripped": tripped}


def _counts(manifest: dict) -> tuple[dict[str, int], dict[str, int]]:
    by_type = {et: e["rows"] for et, e in manifest["lists"].items()}
    by_ring: dict[str, int] = {}
    for e in manifest["lists"].values():
        for rt, n in e["ring_types"].items():
            by_ring[rt] = by_ring.get(rt, 0) + n
    return by_type, by_ring


# --- encoding a version as Redis protocol ------------------------------------------------


def _bulk(b: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(b), b)


def _command(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(_bulk(a) for a in args)


def bucket_bits(rows: int, target: int) -> int:
    """Bucket bits so that buckets hold at most ``target`` entries on average."""
    return 0 if rows <= target else math.ceil(math.log2(rows / target))


@dataclass
class EncodedVersion:
    """What a version's load consists of: dictionaries, bucket layout, and the entry records."""

    bits: dict[str, int]
    rings: list[str]
    reasons: list[str]
    rows: int
    buckets: int


def encode_commands(table: pa.Table, ks: KeySpace, version: str, expire_at: int,
                    bucket_target: int) -> tuple[EncodedVersion, Iterator[tuple[bytes, int]]]:
    """The RESP commands that load one version, with the integer reply each must return.

    Entries are packed column-wise with numpy into fixed-width HSET records,
    so encoding costs a few numpy passes, not a Python loop per entry.
    """
    n = table.num_rows
    ver = version.encode()
    if n:
        hexes = "".join(table["token"].to_pylist())
        if len(hexes) != 64 * n:
            raise RingfenceError("export holds tokens that are not 64 hex characters")
        tokens = np.frombuffer(bytes.fromhex(hexes), dtype=np.uint8).reshape(n, 32)
    else:
        tokens = np.zeros((0, 32), dtype=np.uint8)

    ring_enc = pc.dictionary_encode(table["ring_id"]).combine_chunks() if n else None
    rings = ring_enc.dictionary.to_pylist() if n else []
    joined = pc.fill_null(pc.binary_join(table["reasons"], REASON_SEP), "") if n else None
    reason_enc = pc.dictionary_encode(joined).combine_chunks() if n else None
    reasons = reason_enc.dictionary.to_pylist() if n else []

    values = np.zeros(n, dtype=VALUE_DTYPE)
    if n:
        values["score"] = table["score"].to_numpy()
        values["ring"] = pc.fill_null(pc.add(ring_enc.indices.cast(pa.int64()), 1), 0).to_numpy()
        values["reasons"] = reason_enc.indices.to_numpy()
        unit = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}[table["expires_at"].type.unit]
        seconds = table["expires_at"].cast(pa.int64()).to_numpy() // unit
        values["expires"] = np.clip(seconds, 0, 2**32 - 1)
        rt = np.zeros(n, dtype=np.uint8)
        ring_types = table["ring_type"]
        for name, code in RING_TYPE_CODES.items():
            if name is not None:
                rt[pc.fill_null(pc.equal(ring_types, name), False).to_numpy()] = code
        values["ring_type"] = rt

    records = np.empty((n, ENTRY_LEN), dtype=np.uint8)
    pos = 0
    for part in (_ENTRY_HEAD, None, _ENTRY_MID, "value", b"\r\n"):
        if part is None:
            records[:, pos:pos + FIELD_LEN] = tokens[:, FIELD_START:FIELD_END]
            pos += FIELD_LEN
        elif part == "value":
            records[:, pos:pos + VALUE.size] = values.view(np.uint8).reshape(n, VALUE.size)
            pos += VALUE.size
        else:
            records[:, pos:pos + len(part)] = np.frombuffer(part, dtype=np.uint8)
            pos += len(part)

    types = table["entity_type"].to_numpy(zero_copy_only=False) if n else np.array([], dtype=object)
    type_names = sorted(set(types.tolist()))
    counts = {et: int((types == et).sum()) for et in type_names}
    bits = {et: bucket_bits(counts[et], bucket_target) for et in type_names}
    prefix = tokens[:, 0:4].copy().view(">u4").reshape(n).astype(np.uint64)
    type_code = np.zeros(n, dtype=np.uint64)
    bucket = np.zeros(n, dtype=np.uint64)
    for i, et in enumerate(type_names):
        mask = types == et
        type_code[mask] = i
        bucket[mask] = prefix[mask] >> np.uint64(32 - bits[et]) if bits[et] else 0
    group = (type_code << np.uint64(32)) | bucket
    order = np.argsort(group, kind="stable")
    records = records[order]
    group = group[order]
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]]) if n else np.array([], dtype=np.int64)
    ends = np.r_[starts[1:], n] if n else starts
    data = memoryview(records.reshape(-1)) if n else memoryview(b"")
    exp = str(expire_at).encode()
    encoded = EncodedVersion(bits=bits, rings=rings, reasons=reasons, rows=n, buckets=len(starts))

    def commands() -> Iterator[tuple[bytes, int]]:
        for name, entries, offset in ((ks.reasons(version), reasons, 0), (ks.rings(version), rings, 1)):
            key = name.encode()
            for lo in range(0, len(entries), DICT_CHUNK):
                chunk = entries[lo:lo + DICT_CHUNK]
                args = [b"HSET", key]
                for i, value in enumerate(chunk, start=lo + offset):
                    args += [str(i).encode(), value.encode()]
                yield _command(*args), len(chunk)
            if entries:
                yield _command(b"EXPIREAT", key, exp), 1
        for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
            g = int(group[s])
            et = type_names[g >> 32]
            key = b"%s:v:%s:%s:%x" % (ks.ns.encode(), ver, et.encode(), g & 0xFFFFFFFF)
            m = e - s
            head = b"*%d\r\n$4\r\nHSET\r\n" % (2 + 2 * m) + _bulk(key)
            yield head + data[s * ENTRY_LEN:e * ENTRY_LEN].tobytes(), m
            yield _command(b"EXPIREAT", key, exp), 1

    return encoded, commands()


# --- talking to Redis -----------------------------------------------------------------------


def _send_batch(conn, payloads: list[bytes], expected: list[int]) -> None:
    """Send one batch of commands and check every reply (the unit a killed load stops in)."""
    conn.send_packed_command(payloads, check_health=False)
    bad = []
    for want in expected:
        got = conn.read_response()
        if got != want:
            bad.append((want, got))
    if bad:
        raise RingfenceError(f"publish: {len(bad)} commands in a batch replied unexpectedly, "
                             f"first: expected {bad[0][0]!r}, got {bad[0][1]!r} "
                             "(a token collision, or another writer in this version's keys)")


def stream_commands(client, commands: Iterator[tuple[bytes, int]], batch: int) -> int:
    """Pipeline ``commands`` on one connection, ``batch`` per round trip; return commands sent."""
    pool = client.connection_pool
    conn = pool.get_connection()
    sent = 0
    ok = False
    try:
        payloads: list[bytes] = []
        expected: list[int] = []
        for payload, want in commands:
            payloads.append(payload)
            expected.append(want)
            if len(payloads) >= batch:
                _send_batch(conn, payloads, expected)
                sent += len(payloads)
                payloads, expected = [], []
        if payloads:
            _send_batch(conn, payloads, expected)
            sent += len(payloads)
        ok = True
    finally:
        if not ok:
            conn.disconnect()  # unread replies would poison the next user of this connection
        pool.release(conn)
    return sent


def _listpack_target(client) -> int:
    """Average entries per bucket: 3/8 of the server's listpack limit, so buckets stay listpacks."""
    try:
        limit = int(client.config_get("hash-max-listpack-entries")["hash-max-listpack-entries"])
    except Exception:  # CONFIG may be disabled on managed Redis; 128 is the default
        limit = 128
    return max(1, limit * 3 // 8)


def _used_memory(client) -> int:
    return int(client.info("memory")["used_memory"])


def _s(v) -> str | None:
    return v.decode() if isinstance(v, bytes) else v


def _live_meta(client, ks: KeySpace) -> tuple[str | None, dict]:
    live = _s(client.get(ks.live))
    if live is None:
        return None, {}
    return live, {_s(k): _s(v) for k, v in client.hgetall(ks.meta(live)).items()}


def publish(cfg, export_dir: Path, force: bool, *, env: Mapping[str, str] | None = None,
            redis_client=None) -> dict:
    """Load a verified export as a new version and make it live; return a summary.

    Raises ``PublishRefused`` (nothing loaded, nothing switched) when the
    circuit breaker trips or the export has expired, unless ``force``.
    """
    rc = cfg.redis
    export_dir = Path(export_dir)
    t0 = time.perf_counter()
    verified = verify_export(export_dir, env=env)
    t_verified = time.perf_counter()
    content = read_export(export_dir)
    manifest = content.manifest
    client = redis_client if redis_client is not None else connect(rc, env)
    ks = KeySpace(rc.namespace)

    live, live_meta = _live_meta(client, ks)
    if live_meta.get("manifest_sha256") == verified["manifest_sha256"] and not force:
        return {"status": "already live", "version": live, "ds": manifest["ds"], "run_id": manifest["run_id"]}
    new_by_type, new_by_ring = _counts(manifest)
    breaker = None
    if live_meta.get("state") == STATE_COMPLETE:
        breaker = breaker_findings(json.loads(live_meta["counts"]), new_by_type,
                                   json.loads(live_meta["ring_type_counts"]), new_by_ring,
                                   rc.max_change_fraction, rc.max_composition_change)
        if breaker["tripped"] and not force:
            raise PublishRefused(
                f"publish refused, live version {live} kept: " + "; ".join(breaker["tripped"])
                + ". Check the run; `ringfence publish --force` overrides.")
    now = int(time.time())
    expires = int(np.datetime64(manifest["expires_at"].rstrip("Z"), "s").astype(np.int64))
    if expires <= now and not force:
        raise PublishRefused(f"publish refused: export ds={manifest['ds']} expired at {manifest['expires_at']}")
    expire_at = max(expires, now + MIN_VERSION_TTL_S)

    version = str(client.incr(ks.seq))
    memory_before = _used_memory(client)
    t_load = time.perf_counter()
    encoded, commands = encode_commands(content.table, ks, version, expire_at, _listpack_target(client))
    meta = {
        "state": STATE_LOADING, "ds": manifest["ds"], "run_id": manifest["run_id"],
        "manifest": content.manifest_bytes, "signature": content.signature,
        "manifest_sha256": verified["manifest_sha256"], "value_format": VALUE_FORMAT,
        "bits": json.dumps(encoded.bits), "counts": json.dumps(new_by_type),
        "ring_type_counts": json.dumps(new_by_ring), "rows": encoded.rows,
        "expires_at": manifest["expires_at"], "started_at": now,
    }
    pipe = client.pipeline(transaction=True)
    pipe.hset(ks.meta(version), mapping=meta)
    pipe.expireat(ks.meta(version), expire_at)
    pipe.zadd(ks.versions, {version: int(version)})
    pipe.execute()
    try:
        sent = stream_commands(client, commands, rc.pipeline_batch)
    except BaseException:
        # Leave no half version behind when we can still say so; a SIGKILL leaves
        # it to garbage_collect. The live pointer was never touched.
        try:
            _unlink_versions(client, ks, {version})
        except Exception:
            log.warning("publish: could not clean up partial version %s; gc will", version)
        raise
    client.hset(ks.meta(version), "state", STATE_COMPLETE)
    load_s = time.perf_counter() - t_load
    memory_after = _used_memory(client)
    try:
        previous = _s(client.eval(SWITCH_LUA, 3, ks.live, ks.meta(version), ks.history,
                                  version, live or "", HISTORY_MAX)) or None
    except Exception as e:
        raise PublishRefused(f"publish: switch to version {version} refused: {e}") from e
    log.info("publish: version %s live (ds=%s, %d rows, %.1fs)", version, manifest["ds"], encoded.rows, load_s)
    gc = garbage_collect(cfg, None, env=env, redis_client=client)
    return {
        "status": "published", "version": version, "previous_version": previous,
        "ds": manifest["ds"], "run_id": manifest["run_id"], "rows": encoded.rows,
        "rows_by_type": new_by_type, "buckets": encoded.buckets, "bucket_bits": encoded.bits,
        "commands": sent, "verify_seconds": round(t_verified - t0, 3), "load_seconds": round(load_s, 3),
        "entries_per_second": round(encoded.rows / load_s) if load_s > 0 else None,
        "bytes_per_entry": round((memory_after - memory_before) / encoded.rows, 1) if encoded.rows else None,
        "expire_at": expire_at, "forced": force, "circuit_breaker": breaker, "gc": gc,
    }


def rollback(cfg, *, env: Mapping[str, str] | None = None, redis_client=None) -> dict:
    """Make the previously live complete version live again (one atomic script)."""
    rc = cfg.redis
    client = redis_client if redis_client is not None else connect(rc, env)
    ks = KeySpace(rc.namespace)
    import redis

    try:
        cur, prev = client.eval(ROLLBACK_LUA, 2, ks.live, ks.history, f"{ks.ns}:v:", ":meta")
    except redis.ResponseError as e:
        raise RingfenceError(f"rollback refused: {e}") from None
    ds, run_id = client.hmget(ks.meta(_s(prev)), ["ds", "run_id"])
    log.info("rollback: live version %s -> %s", _s(cur), _s(prev))
    return {"from_version": _s(cur), "to_version": _s(prev), "ds": _s(ds), "run_id": _s(run_id)}


def _unlink_versions(client, ks: KeySpace, versions: set[str]) -> int:
    """UNLINK (free memory off the main thread) every key of ``versions``; return keys removed."""
    if not versions:
        return 0
    removed = 0
    batch: list[bytes] = []
    start = len(ks.ns) + 3  # after "{ns}:v:"
    pattern = ks.ns.replace("\\", "\\\\").replace("*", "\\*").replace("?", "\\?").replace("[", "\\[")
    for key in client.scan_iter(match=f"{pattern}:v:*", count=2000):
        if _s(key)[start:].split(":", 1)[0] in versions:
            batch.append(key)
            if len(batch) >= 1000:
                removed += client.unlink(*batch)
                batch = []
    if batch:
        removed += client.unlink(*batch)
    pipe = client.pipeline(transaction=False)
    for v in versions:
        pipe.zrem(ks.versions, v)
        pipe.lrem(ks.history, 0, v)
    pipe.execute()
    return removed


def garbage_collect(cfg, keep: int | None, *, env: Mapping[str, str] | None = None,
                    redis_client=None) -> dict:
    """Delete versions beyond the newest ``keep`` complete ones (default ``redis.keep_versions``).

    Never deletes the live version, nor a loading version newer than every
    complete one (a publish may be running). Killed loads older than that,
    and versions whose keys expired, are removed.
    """
    rc = cfg.redis
    keep = rc.keep_versions if keep is None else keep
    if keep < 1:
        raise RingfenceError("gc: keep must be at least 1")
    client = redis_client if redis_client is not None else connect(rc, env)
    ks = KeySpace(rc.namespace)
    versions = [(_s(v), int(s)) for v, s in client.zrange(ks.versions, 0, -1, withscores=True)]
    live = _s(client.get(ks.live))
    pipe = client.pipeline(transaction=False)
    for v, _ in versions:
        pipe.hget(ks.meta(v), "state")
    states = {v: _s(st) for (v, _), st in zip(versions, pipe.execute(), strict=True)}
    complete = sorted((s, v) for v, s in versions if states[v] == STATE_COMPLETE)
    newest_complete = complete[-1][0] if complete else -1
    kept = {v for _, v in complete[-keep:]} | ({live} if live else set())
    in_flight = {v for v, s in versions if states[v] == STATE_LOADING and s > newest_complete}
    doomed = {v for v, _ in versions} - kept - in_flight
    removed = _unlink_versions(client, ks, doomed)
    if doomed:
        log.info("gc: removed versions %s (%d keys)", sorted(doomed, key=int), removed)
    return {"kept": sorted(kept, key=int), "in_flight": sorted(in_flight, key=int),
            "deleted": sorted(doomed, key=int), "keys_unlinked": removed}
