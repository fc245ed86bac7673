"""Scorer-side lookups in the published risk lists (Redis) or an export folder (offline).

The Redis layout (written by ``graph.publish``, read here; one place defines it):

- ``{ns}:live``                    the live version id (the one pointer switched atomically)
- ``{ns}:history``                 list of versions that were live, newest first (rollback)
- ``{ns}:versions``                sorted set version -> sequence number (GC)
- ``{ns}:v:{ver}:meta``            hash: state, manifest, signature, bucket bits per type, counts
- ``{ns}:v:{ver}:reasons``         hash: reason-set id -> reasons joined by U+001F (per-version dictionary)
- ``{ns}:v:{ver}:rings``           hash: ring number -> ring_id (per-version dictionary)
- ``{ns}:v:{ver}:{type}:{bucket}`` hash: token bytes 4..16 -> packed value (``VALUE``)

The bucket is the top ``bits`` bits of the token's first four bytes; ``bits``
is chosen per type so buckets hold at most 3/8 of the server's
``hash-max-listpack-entries`` on average (192 for Redis 7's default 512), so
even the fullest bucket stays a compact listpack instead of a hash table. A value packs score (float64, exact like the
files), ring number, reason-set id, expiry (epoch seconds) and ring type into
21 bytes. Fields keep 96 bits of the token beyond the bucket bits: an
accidental collision among millions of entries is ~1e-17 likely, and the
publisher checks that every field was new.

A version is read only after its ``meta.state`` is ``complete``; readers
follow ``{ns}:live`` (per call, or every ``refresh_ms``), so a reader sees the
old version or the new one, never a mix. Entries past their ``expires_at`` are
absent; version keys carry a TTL as well.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import struct
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from graph.errors import RingfenceError
from graph.tokens import (
    REDIS_PASSWORD_ENV,
    key_id,
    load_hmac_key,
    load_verify_key,
    signature_valid,
    token_bytes,
)

log = logging.getLogger(__name__)

VALUE = struct.Struct("<dIIIB")  # score, ring number (0 = none), reason-set id, expires (epoch s), ring type
VALUE_FORMAT = "ringfence-v1:<dIIIB"
RING_TYPE_CODES: dict[str | None, int] = {None: 0, "mule": 1, "card_testing": 2, "unknown": 3}
RING_TYPE_NAMES = {v: k for k, v in RING_TYPE_CODES.items()}
REASON_SEP = "\x1f"
FIELD_START, FIELD_END = 4, 16
STATE_LOADING, STATE_COMPLETE = "loading", "complete"


class KeySpace:
    """Key names of one namespace."""

    def __init__(self, namespace: str):
        self.ns = namespace
        self.live = f"{namespace}:live"
        self.history = f"{namespace}:history"
        self.versions = f"{namespace}:versions"
        self.seq = f"{namespace}:seq"

    def prefix(self, version: str) -> str:
        return f"{self.ns}:v:{version}:"

    def meta(self, version: str) -> str:
        return f"{self.ns}:v:{version}:meta"

    def reasons(self, version: str) -> str:
        return f"{self.ns}:v:{version}:reasons"

    def rings(self, version: str) -> str:
        return f"{self.ns}:v:{version}:rings"

    def bucket(self, version: str, entity_type: str, bucket: int) -> str:
        return f"{self.ns}:v:{version}:{entity_type}:{bucket:x}"


def bucket_of(token: bytes, bits: int) -> int:
    return int.from_bytes(token[:4], "big") >> (32 - bits) if bits else 0


def field_of(token: bytes) -> bytes:
    return token[FIELD_START:FIELD_END]


def connect(conf, env: Mapping[str, str] | None = None):
    """A ``redis.Redis`` for a ``RedisConf``: AUTH password from the environment, TLS from config."""
    import os

    import redis

    env = os.environ if env is None else env
    password = env.get(REDIS_PASSWORD_ENV) or None
    if conf.username and not password:
        raise RingfenceError(f"redis.username is set but secret {REDIS_PASSWORD_ENV} is not")
    kwargs: dict[str, Any] = dict(
        host=conf.host, port=conf.port, db=conf.db, username=conf.username, password=password,
        socket_timeout=conf.socket_timeout_s, socket_connect_timeout=conf.socket_timeout_s,
    )
    if conf.tls:
        kwargs.update(ssl=True, ssl_ca_certs=conf.tls_ca_file)
    return redis.Redis(**kwargs)


def _s(v) -> str:
    return v.decode() if isinstance(v, bytes) else v


@dataclass
class _Version:
    """What a client caches about one version."""

    version: str | None
    bits: dict[str, int] = field(default_factory=dict)
    reasons: list[list[str]] = field(default_factory=list)
    rings: dict[int, str] = field(default_factory=dict)
    usable: bool = False


def _decode(raw: bytes, version: _Version, ring_name, now: float) -> dict | None:
    score, ring, reason_id, expires, rtype = VALUE.unpack(raw)
    if expires <= now:
        return None
    return {
        "score": score,
        "ring_id": ring_name(version, ring) if ring else None,
        "ring_type": RING_TYPE_NAMES.get(rtype),
        "reasons": list(version.reasons[reason_id]) if reason_id < len(version.reasons) else [],
        "expires_at": dt.datetime.fromtimestamp(expires, dt.UTC),
        "list_version": version.version,
    }


class RiskListClient:
    """``lookup(entity_type, raw_id)`` against the live published lists.

    Online (Redis): ``refresh_ms=0`` checks the live pointer on every call (in
    the same round trip as the lookup, so it costs no extra latency);
    ``refresh_ms>0`` re-reads it at most that often (one round trip per lookup,
    switches seen within ``refresh_ms``). Offline (``RiskListClient.offline``):
    the same API over an export folder, no Redis.

    With ``verify=True`` (the default) a version is trusted only if its
    manifest's signature checks out against ``RINGFENCE_VERIFY_KEY`` and was
    tokenised with the same HMAC key as ours (else every lookup would silently
    miss).
    """

    def __init__(self, redis_client=None, *, namespace: str = "ringfence", hmac_key: bytes | None = None,
                 verify: bool = True, verify_key=None, refresh_ms: int = 1000,
                 env: Mapping[str, str] | None = None, clock=time.time):
        self._redis = redis_client
        self._keys = KeySpace(namespace)
        self._key = hmac_key if hmac_key is not None else load_hmac_key(env)
        self._key_id = key_id(self._key)
        self._verify = verify
        self._verify_key = (verify_key if verify_key is not None else load_verify_key(env)) if verify else None
        self._refresh_s = refresh_ms / 1000.0
        self._clock = clock
        self._state = _Version(None)
        self._checked_at = float("-inf")
        self._lock = threading.Lock()
        self._offline: dict[str, tuple[dict[bytes, int], dict[str, list]]] | None = None
        self._offline_version: str | None = None

    # --- construction -----------------------------------------------------------

    @classmethod
    def from_config(cls, cfg, *, env: Mapping[str, str] | None = None, refresh_ms: int | None = None,
                    **kwargs) -> RiskListClient:
        rc = cfg.redis
        return cls(connect(rc, env), namespace=rc.namespace, env=env,
                   refresh_ms=rc.client_refresh_ms if refresh_ms is None else refresh_ms, **kwargs)

    @classmethod
    def offline(cls, export_dir: str | Path, *, hmac_key: bytes | None = None, verify: bool = True,
                env: Mapping[str, str] | None = None, clock=time.time) -> RiskListClient:
        """The same API over an export folder (``verify`` runs ``verify_export`` first)."""
        import pyarrow.parquet as pq

        export_dir = Path(export_dir)
        if verify:
            from graph.export import verify_export

            verify_export(export_dir, env=env)
        client = cls(None, hmac_key=hmac_key, verify=False, env=env, clock=clock)
        manifest = json.loads((export_dir / "manifest.json").read_bytes())
        if manifest["token"]["key_id"] != client._key_id:
            raise RingfenceError(f"{export_dir}: export was tokenised with another HMAC key "
                                 f"(key id {manifest['token']['key_id']}, ours {client._key_id})")
        client._offline = {}
        for et, entry in manifest["lists"].items():
            table = pq.read_table(export_dir / entry["files"]["parquet"]["path"])
            cols = table.to_pydict()
            index = {bytes.fromhex(t): i for i, t in enumerate(cols["token"])}
            client._offline[et] = (index, cols)
        client._offline_version = f"offline:{manifest['run_id']}"
        return client

    # --- public API -------------------------------------------------------------

    @property
    def version(self) -> str | None:
        """The list version the last lookup used."""
        return self._offline_version if self._offline is not None else self._state.version

    def tokenize(self, entity_type: str, raw_id: str) -> bytes:
        return token_bytes(self._key, entity_type, raw_id)

    def lookup(self, entity_type: str, raw_id: str) -> dict | None:
        """Risk of one entity, or None when it is not on the live list (or expired).

        Returns ``{score, ring_id, ring_type, reasons, expires_at, list_version}``.
        """
        return self.lookup_token(entity_type, token_bytes(self._key, entity_type, raw_id))

    def lookup_token(self, entity_type: str, token: bytes | str) -> dict | None:
        if isinstance(token, str):
            token = bytes.fromhex(token)
        if self._offline is not None:
            return self._offline_lookup(entity_type, token)
        now = self._clock()
        if self._refresh_s <= 0:
            state, raw = self._get_following(entity_type, token)
        else:
            if now - self._checked_at >= self._refresh_s:
                self._refresh()
            state = self._state
            raw = self._hget(state, entity_type, token) if state.usable else None
        if raw is None or not state.usable:
            return None
        return _decode(raw, state, self._ring_name, now)

    def lookup_many(self, entity_type: str, raw_ids: Sequence[str]) -> list[dict | None]:
        """Several lookups answered from one version in one round trip (MULTI/EXEC)."""
        tokens = [token_bytes(self._key, entity_type, r) for r in raw_ids]
        if self._offline is not None:
            return [self._offline_lookup(entity_type, t) for t in tokens]
        now = self._clock()
        for _ in range(5):
            state = self._state
            pipe = self._redis.pipeline(transaction=True)
            pipe.get(self._keys.live)
            if state.usable:
                for t in tokens:
                    bits = state.bits.get(entity_type, 0)
                    pipe.hget(self._keys.bucket(state.version, entity_type, bucket_of(t, bits)), field_of(t))
            live, *raws = pipe.execute()
            live = _s(live)
            if live != state.version:
                self._switch(live)
                continue
            if not state.usable:
                return [None] * len(tokens)
            return [None if r is None else _decode(r, state, self._ring_name, now) for r in raws]
        raise RingfenceError("live version kept changing during lookup_many")

    # --- online internals -------------------------------------------------------

    def _hget(self, state: _Version, entity_type: str, token: bytes):
        if entity_type not in state.bits:
            return None
        key = self._keys.bucket(state.version, entity_type, bucket_of(token, state.bits[entity_type]))
        return self._redis.hget(key, field_of(token))

    def _get_following(self, entity_type: str, token: bytes):
        """Pointer check and lookup in one round trip; redo when the pointer moved."""
        for _ in range(5):
            state = self._state
            if not state.usable or entity_type not in state.bits:
                live = _s(self._redis.get(self._keys.live))
                if live != state.version:
                    self._switch(live)
                    continue
                return state, None
            pipe = self._redis.pipeline(transaction=False)
            pipe.get(self._keys.live)
            key = self._keys.bucket(state.version, entity_type, bucket_of(token, state.bits[entity_type]))
            pipe.hget(key, field_of(token))
            live, raw = pipe.execute()
            live = _s(live)
            if live == state.version:
                return state, raw
            self._switch(live)
        raise RingfenceError("live version kept changing during lookup")

    def _refresh(self) -> None:
        live = _s(self._redis.get(self._keys.live))
        self._checked_at = self._clock()
        if live != self._state.version:
            self._switch(live)

    def _switch(self, live: str | None) -> None:
        with self._lock:
            if live == self._state.version:
                return
            self._state = self._load_version(live)
            log.info("risk lists: following version %s", live)

    def _load_version(self, version: str | None) -> _Version:
        if version is None:
            return _Version(None)
        k = self._keys
        meta = {_s(a): b for a, b in self._redis.hgetall(k.meta(version)).items()}
        if _s(meta.get("state")) != STATE_COMPLETE:
            # An expired (TTL) or vanished version: nothing is on the list.
            log.warning("risk lists: live version %s is not available (expired or deleted)", version)
            return _Version(version)
        manifest_bytes = meta["manifest"]
        if self._verify:
            if not signature_valid(self._verify_key, manifest_bytes, _s(meta["signature"])):
                raise RingfenceError(f"risk lists: version {version}: manifest signature does not verify "
                                     "against RINGFENCE_VERIFY_KEY")
        manifest = json.loads(manifest_bytes)
        if manifest["token"]["key_id"] != self._key_id:
            raise RingfenceError(f"risk lists: version {version} was tokenised with another HMAC key "
                                 f"(key id {manifest['token']['key_id']}, ours {self._key_id})")
        reasons_raw = {int(a): _s(b) for a, b in self._redis.hgetall(k.reasons(version)).items()}
        reasons = [[] for _ in range(max(reasons_raw, default=-1) + 1)]
        for i, joined in reasons_raw.items():
            reasons[i] = joined.split(REASON_SEP) if joined else []
        return _Version(version, bits={a: int(b) for a, b in json.loads(meta["bits"]).items()},
                        reasons=reasons, usable=True)

    def _ring_name(self, state: _Version, ring: int) -> str | None:
        name = state.rings.get(ring)
        if name is None:
            name = _s(self._redis.hget(self._keys.rings(state.version), ring))
            if name is not None:
                state.rings[ring] = name
        return name

    # --- offline ----------------------------------------------------------------

    def _offline_lookup(self, entity_type: str, token: bytes) -> dict | None:
        found = self._offline.get(entity_type)
        if found is None:
            return None
        index, cols = found
        i = index.get(token)
        if i is None:
            return None
        expires = cols["expires_at"][i]
        if int(expires.timestamp()) <= self._clock():  # whole seconds, as in Redis
            return None
        return {
            "score": cols["score"][i],
            "ring_id": cols["ring_id"][i],
            "ring_type": cols["ring_type"][i],
            "reasons": list(cols["reasons"][i] or []),
            "expires_at": expires.replace(microsecond=0).astimezone(dt.UTC),
            "list_version": self._offline_version,
        }
