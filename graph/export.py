"""Export the run's risk lists for online scorers: tokenised, checksummed, signed, chained.

Layout of one export, ``OUTPUT/ds=YYYY-MM-DD/export/``::

    lists/<entity_type>.parquet     one file per entity type (all five, possibly empty)
    lists/<entity_type>.jsonl.gz    the same rows as gzip JSON lines
    diff.parquet                    entity_type, token, change, old_score, new_score
    diff.json                       counts of added / removed / score_changed per type
    manifest.json                   rows, SHA-256 of every file, run id, input fingerprint,
                                    created_at, expires_at, SHA-256 of the previous manifest
    manifest.json.sig               Ed25519 signature (hex) of manifest.json's exact bytes
    _COMMITTED                      SHA-256 of manifest.json; written last

List rows: ``token`` (HMAC-SHA256 hex of ``"<entity_type>:<entity_id>"``, see
``graph.tokens``), ``score``, ``ring_id``, ``ring_type``, ``reasons``,
``expires_at``. No raw identifier leaves the internal risk table.

Atomicity: everything is written under ``ds=.../_staging/export-<token>/``,
the marker last, and the folder is renamed into place (``graph.io``), so a
reader sees the previous complete export or the new one. Readers (verify,
publish, the hash chain) ignore folders without ``_COMMITTED``. Re-running a
``ds`` replaces its export; it links to the latest committed export of an
earlier ``ds``, so the chain is the same on every re-run.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gzip
import hashlib
import json
import logging
import uuid
from collections.abc import Mapping
from pathlib import Path

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from graph import io
from graph.errors import RingfenceError, SchemaError, VerificationFailed
from graph.schema import CONTRACT_VERSION, ENTITY_TYPES, RISK_RING_TYPES, RISK_SCHEMA, spark_ddl
from graph.tokens import (
    TOKEN_ALGORITHM,
    TOKEN_MESSAGE,
    key_id,
    load_hmac_key,
    load_signing_key,
    load_verify_key,
    public_key_id,
    sign,
    signature_valid,
    tokenize_column,
)

log = logging.getLogger(__name__)

EXPORT_TABLE = "export"
RISK_TABLE = "risk"
LISTS_DIR = "lists"
MANIFEST = "manifest.json"
SIGNATURE = "manifest.json.sig"
COMMITTED = "_COMMITTED"
DIFF_FILE = "diff.parquet"
DIFF_SUMMARY = "diff.json"
MANIFEST_FORMAT = "ringfence-risk-lists"
SUPPORTED_SCHEMA_VERSIONS = ("1",)

ENTITY_TYPE, ENTITY_ID, SCORE = "entity_type", "entity_id", "score"
RING_ID, RING_TYPE, REASONS, EXPIRES_AT = "ring_id", "ring_type", "reasons", "expires_at"
TOKEN = "token"
LIST_COLUMNS = (TOKEN, SCORE, RING_ID, RING_TYPE, REASONS, EXPIRES_AT)
LIST_DDL = ("token STRING, score DOUBLE, ring_id STRING, ring_type STRING, "
            "reasons ARRAY<STRING>, expires_at TIMESTAMP")
CHANGE, OLD_SCORE, NEW_SCORE = "change", "old_score", "new_score"
CHANGES = ("added", "removed", "score_changed")
EXTENSIONS = {"parquet": "parquet", "jsonl.gz": "jsonl.gz"}
JSON_TIMESTAMP = "yyyy-MM-dd'T'HH:mm:ss.SSSSSSXXX"


# --- reading and checking the risk table -----------------------------------------


def read_risk(spark: SparkSession, output_root: str, ds: dt.date | str) -> DataFrame:
    """The internal risk table with the contract's columns and types (extra columns dropped)."""
    path = io.table_path(output_root, ds, RISK_TABLE)
    if not io.exists(spark, path):
        raise SchemaError(f"risk table not found: {path} (run the scoring stage first)")
    df = spark.read.parquet(path)
    missing = [f.name for f in RISK_SCHEMA if f.name not in df.columns]
    if missing:
        raise SchemaError(f"risk table {path} lacks columns {missing}; present: {sorted(df.columns)}")
    types = dict(part.strip().split(" ", 1) for part in spark_ddl(RISK_SCHEMA).replace("`", "").split(", "))
    return df.select(*[F.col(name).cast(types[name]).alias(name) for name in types])


def bad_row_counts(risk: DataFrame) -> dict[str, int]:
    """Counts of rows that would make a wrong list, by reason (one pass; no ids reported)."""
    checks: dict[str, Column] = {
        "unknown_entity_type": F.col(ENTITY_TYPE).isNull() | ~F.col(ENTITY_TYPE).isin(*ENTITY_TYPES),
        "null_entity_id": F.col(ENTITY_ID).isNull() | (F.col(ENTITY_ID) == ""),
        "score_not_in_0_1": F.col(SCORE).isNull() | F.isnan(SCORE) | (F.col(SCORE) < 0) | (F.col(SCORE) > 1),
        "unknown_ring_type": F.col(RING_TYPE).isNotNull() & ~F.col(RING_TYPE).isin(*RISK_RING_TYPES),
        "null_expires_at": F.col(EXPIRES_AT).isNull(),
    }
    aggs = [F.sum(F.when(cond, 1).otherwise(0)).alias(name) for name, cond in checks.items()]
    aggs += [F.count(F.lit(1)).alias("_rows"),
             F.count_distinct(F.col(ENTITY_TYPE), F.col(ENTITY_ID)).alias("_keys")]
    row = risk.agg(*aggs).first().asDict()
    counts = {name: int(row[name] or 0) for name in checks}
    counts["duplicate_entity"] = int(row["_rows"]) - int(row["_keys"])
    return {k: v for k, v in counts.items() if v}


def tokenise(hmac_key: bytes):
    """``risk -> (entity_type, token, score, ...)``: the raw id is replaced by its keyed token."""

    def apply(risk: DataFrame) -> DataFrame:
        return risk.select(
            ENTITY_TYPE,
            tokenize_column(F.col(ENTITY_TYPE), F.col(ENTITY_ID), hmac_key).alias(TOKEN),
            SCORE, RING_ID, RING_TYPE,
            F.coalesce(F.col(REASONS), F.array().cast("array<string>")).alias(REASONS),
            EXPIRES_AT,
        )

    return apply


def diff_lists(new: DataFrame, old: DataFrame, epsilon: float) -> DataFrame:
    """Tokens added, removed, or whose score moved by more than ``epsilon``."""
    n = new.select(ENTITY_TYPE, TOKEN, F.col(SCORE).alias(NEW_SCORE))
    o = old.select(ENTITY_TYPE, TOKEN, F.col(SCORE).alias(OLD_SCORE))
    change = (F.when(F.col(OLD_SCORE).isNull(), "added")
              .when(F.col(NEW_SCORE).isNull(), "removed")
              .when(F.abs(F.col(NEW_SCORE) - F.col(OLD_SCORE)) > epsilon, "score_changed"))
    return (n.join(o, [ENTITY_TYPE, TOKEN], "full_outer")
            .select(ENTITY_TYPE, TOKEN, change.alias(CHANGE), OLD_SCORE, NEW_SCORE)
            .where(F.col(CHANGE).isNotNull()))


def previous_export(spark: SparkSession, output_root: str, ds: dt.date | str) -> str | None:
    """The latest committed export of an earlier ``ds`` (the hash chain's previous link)."""
    prev = io.latest_ds_before(spark, output_root, ds, f"{EXPORT_TABLE}/{COMMITTED}")
    return io.table_path(output_root, prev, EXPORT_TABLE) if prev else None


def _run_identity(spark: SparkSession, output_root: str, ds) -> tuple[str, str]:
    summary = io.read_json(spark, f"{io.run_dir(output_root, ds)}/run_summary.json") or {}
    run_id = summary.get("run_id") or f"ringfence-{ds}"
    fingerprint = summary.get("input_fingerprint")
    if not fingerprint:
        # No run summary (export run on its own): fingerprint the risk table's content.
        fs, hpath, _ = io.filesystem(spark, io.table_path(output_root, ds, RISK_TABLE))
        files = fs.listFiles(hpath, True)
        parts = []
        while files.hasNext():
            p = files.next().getPath()
            if not p.getName().startswith(("_", ".")):
                digest, size = io.file_digest(spark, p.toString())
                parts.append(f"{p.getParent().getName()}/{p.getName()}:{size}:{digest}")
        fingerprint = "risk-sha256:" + hashlib.sha256("\n".join(sorted(parts)).encode()).hexdigest()
    return str(run_id), str(fingerprint)


# --- the export -------------------------------------------------------------------


def _write_lists(spark: SparkSession, tokens: DataFrame, staging: str, formats: list[str]) -> None:
    """One file per entity type and format: partition by type so each type lands in one task."""
    by_type = tokens.repartition(F.col(ENTITY_TYPE)).sortWithinPartitions(ENTITY_TYPE, TOKEN)
    for fmt in formats:
        out = f"{staging}/_work/{fmt}"
        writer = by_type.write.mode("overwrite").partitionBy(ENTITY_TYPE)
        if fmt == "parquet":
            writer.parquet(out)
        else:
            (writer.option("compression", "gzip").option("ignoreNullFields", "false")
             .option("timestampFormat", JSON_TIMESTAMP).json(out))
        for et in ENTITY_TYPES:
            final = f"{staging}/{LISTS_DIR}/{et}.{EXTENSIONS[fmt]}"
            parts = io.part_files(spark, f"{out}/{ENTITY_TYPE}={et}")
            if len(parts) > 1:
                raise RingfenceError(f"export: expected one {fmt} file for {et}, Spark wrote {len(parts)}")
            if parts:
                io.move(spark, parts[0], final)
            elif fmt == "parquet":
                # An entity type with no rows still gets a (typed, empty) list.
                empty = f"{staging}/_work/empty-{et}"
                spark.createDataFrame([], LIST_DDL).coalesce(1).write.parquet(empty)
                io.move(spark, io.part_files(spark, empty)[0], final)
            else:
                io.write_bytes(spark, final, gzip.compress(b"", mtime=0))


def _canonical(obj) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode()


def _iso(ts: dt.datetime | None) -> str | None:
    if ts is None:
        return None
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=dt.UTC)
    return ts.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def export_lists(spark: SparkSession, cfg, output_root: str, ds: dt.date,
                 env: Mapping[str, str] | None = None) -> dict:
    """Write ``OUTPUT/ds=.../export/`` from the run's risk table; return a summary.

    Raises ``SchemaError`` for a missing or bad risk table (counts by reason)
    and ``RingfenceError`` when a secret is missing, before any work is done.
    """
    hmac_key = load_hmac_key(env)
    signer = load_signing_key(env)
    formats = list(dict.fromkeys(cfg.export.formats))
    if "parquet" not in formats:
        raise RingfenceError("export.formats must include parquet (publish and the offline client read it)")
    root = str(output_root).rstrip("/")
    risk = read_risk(spark, root, ds)
    bad = bad_row_counts(risk)
    if bad:
        raise SchemaError(f"risk table ds={ds}: rows that cannot be exported, by reason: {bad}")
    run_id, fingerprint = _run_identity(spark, root, ds)

    staging = f"{io.run_dir(root, ds)}/{io.STAGING}/{EXPORT_TABLE}-{uuid.uuid4().hex[:12]}"
    with _utc_micros_timestamps(spark):
        summary = _export(spark, cfg, root, ds, risk, hmac_key, signer, formats, run_id, fingerprint, staging)
    return summary


@contextlib.contextmanager
def _utc_micros_timestamps(spark: SparkSession):
    """Parquet TIMESTAMP_MICROS (UTC-adjusted) instead of Spark's legacy INT96, for any reader."""
    key = "spark.sql.parquet.outputTimestampType"
    before = spark.conf.get(key, None)
    spark.conf.set(key, "TIMESTAMP_MICROS")
    try:
        yield
    finally:
        if before is None:
            spark.conf.unset(key)
        else:
            spark.conf.set(key, before)


def _export(spark, cfg, root, ds, risk, hmac_key, signer, formats, run_id, fingerprint, staging) -> dict:
    # Tokenise once into staging; every later step reads these files (the UDF runs once).
    risk.transform(tokenise(hmac_key)).write.partitionBy(ENTITY_TYPE).parquet(f"{staging}/_work/tokens")
    tokens = spark.read.parquet(f"{staging}/_work/tokens")
    _write_lists(spark, tokens, staging, formats)

    stats = tokens.groupBy(ENTITY_TYPE, RING_TYPE).agg(
        F.count(F.lit(1)).alias("n"), F.max(EXPIRES_AT).alias("max_expires")).collect()
    rows = dict.fromkeys(ENTITY_TYPES, 0)
    ring_types: dict[str, dict[str, int]] = {et: {} for et in ENTITY_TYPES}
    max_expires = None
    for r in stats:
        rows[r[ENTITY_TYPE]] += r["n"]
        ring_types[r[ENTITY_TYPE]][r[RING_TYPE] or "none"] = r["n"]
        max_expires = r["max_expires"] if max_expires is None else max(max_expires, r["max_expires"])

    prev_dir = previous_export(spark, root, ds)
    prev_sha, prev_manifest = None, None
    if prev_dir is not None:
        prev_bytes = io.read_bytes(spark, f"{prev_dir}/{MANIFEST}")
        prev_sha = hashlib.sha256(prev_bytes).hexdigest()
        prev_manifest = json.loads(prev_bytes)
        old = None
        for et, entry in prev_manifest["lists"].items():
            part = spark.read.parquet(f"{prev_dir}/{entry['files']['parquet']['path']}").select(
                F.lit(et).alias(ENTITY_TYPE), TOKEN, SCORE)
            old = part if old is None else old.unionByName(part)
    else:
        old = spark.createDataFrame([], "entity_type STRING, token STRING, score DOUBLE")
    diff = diff_lists(tokens, old, cfg.export.score_change_epsilon)
    diff.coalesce(1).sortWithinPartitions(ENTITY_TYPE, TOKEN).write.parquet(f"{staging}/_work/diff")
    io.move(spark, io.part_files(spark, f"{staging}/_work/diff")[0], f"{staging}/{DIFF_FILE}")
    diff_counts = {et: dict.fromkeys(CHANGES, 0) for et in ENTITY_TYPES}
    for r in spark.read.parquet(f"{staging}/{DIFF_FILE}").groupBy(ENTITY_TYPE, CHANGE).count().collect():
        diff_counts.setdefault(r[ENTITY_TYPE], dict.fromkeys(CHANGES, 0))[r[CHANGE]] = r["count"]
    same_key = prev_manifest is None or prev_manifest["token"]["key_id"] == key_id(hmac_key)
    diff_summary = {
        "previous_ds": prev_manifest["ds"] if prev_manifest else None,
        "previous_manifest_sha256": prev_sha,
        "comparable": same_key,  # False after an HMAC key rotation: every token changes
        "by_type": diff_counts,
        "total": {c: sum(v[c] for v in diff_counts.values()) for c in CHANGES},
    }
    io.write_bytes(spark, f"{staging}/{DIFF_SUMMARY}", _canonical(diff_summary))
    io.delete(spark, f"{staging}/_work")

    def described(rel: str) -> dict:
        digest, size = io.file_digest(spark, f"{staging}/{rel}")
        return {"path": rel, "sha256": digest, "bytes": size}

    created = dt.datetime.now(dt.UTC).replace(microsecond=0)
    manifest = {
        "format": MANIFEST_FORMAT,
        "schema_version": cfg.export.schema_version,
        "contract_version": CONTRACT_VERSION,
        "ds": str(ds),
        "run_id": run_id,
        "input_fingerprint": fingerprint,
        "created_at": _iso(created),
        "expires_at": _iso(max_expires) or _iso(created + dt.timedelta(days=cfg.scoring.list_ttl_days)),
        "token": {"algorithm": TOKEN_ALGORITHM, "message": TOKEN_MESSAGE, "encoding": "hex",
                  "key_id": key_id(hmac_key)},
        "columns": LIST_DDL,
        "lists": {
            et: {"rows": rows[et], "ring_types": ring_types[et],
                 "files": {fmt: described(f"{LISTS_DIR}/{et}.{EXTENSIONS[fmt]}") for fmt in formats}}
            for et in ENTITY_TYPES
        },
        "total_rows": sum(rows.values()),
        "diff": {"counts": diff_summary["total"], "comparable": same_key,
                 "files": {"parquet": described(DIFF_FILE), "summary": described(DIFF_SUMMARY)}},
        "previous_ds": prev_manifest["ds"] if prev_manifest else None,
        "previous_manifest_sha256": prev_sha,
        "signature": {"algorithm": "Ed25519", "public_key_id": public_key_id(signer.public_key()),
                      "file": SIGNATURE},
    }
    manifest_bytes = _canonical(manifest)
    manifest_sha = hashlib.sha256(manifest_bytes).hexdigest()
    io.write_bytes(spark, f"{staging}/{MANIFEST}", manifest_bytes)
    io.write_bytes(spark, f"{staging}/{SIGNATURE}", (sign(signer, manifest_bytes) + "\n").encode())
    io.write_bytes(spark, f"{staging}/{COMMITTED}", (manifest_sha + "\n").encode())
    final = io.table_path(root, ds, EXPORT_TABLE)
    io.replace(spark, staging, final)
    log.info("export ds=%s committed at %s (%d rows)", ds, final, manifest["total_rows"])
    return {
        "export_dir": final, "run_id": run_id, "rows": rows, "total_rows": manifest["total_rows"],
        "diff": diff_summary["total"], "previous_ds": manifest["previous_ds"],
        "manifest_sha256": manifest_sha, "expires_at": manifest["expires_at"],
    }


# --- verification (local files; what a consumer runs) --------------------------------


def _sha256_file(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def _count_rows(path: Path, fmt: str) -> int:
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    with gzip.open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def _check_one(export_dir: Path, verify_key) -> tuple[dict | None, list[str]]:
    """Signature, marker, files and row counts of one export; (manifest, problems)."""
    problems: list[str] = []
    for name in (MANIFEST, SIGNATURE, COMMITTED):
        if not (export_dir / name).is_file():
            problems.append(f"{name} missing (export not committed or damaged)")
    if problems:
        return None, problems
    manifest_bytes = (export_dir / MANIFEST).read_bytes()
    sha = hashlib.sha256(manifest_bytes).hexdigest()
    if not signature_valid(verify_key, manifest_bytes, (export_dir / SIGNATURE).read_text()):
        problems.append("manifest signature does not verify against RINGFENCE_VERIFY_KEY")
    if (export_dir / COMMITTED).read_text().strip() != sha:
        problems.append("_COMMITTED does not name this manifest's SHA-256")
    try:
        manifest = json.loads(manifest_bytes)
        files = [(et, fmt, f, entry["rows"]) for et, entry in manifest["lists"].items()
                 for fmt, f in entry["files"].items()]
        files += [(None, fmt, f, None) for fmt, f in manifest["diff"]["files"].items()]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        return None, problems + [f"manifest unreadable: {e!r}"]
    if manifest.get("schema_version") not in SUPPORTED_SCHEMA_VERSIONS:
        problems.append(f"unsupported schema_version {manifest.get('schema_version')!r}")
    listed = set()
    for et, fmt, f, rows in files:
        path = export_dir / f["path"]
        listed.add(path.resolve())
        if not path.is_file():
            problems.append(f"{f['path']}: missing")
            continue
        digest, size = _sha256_file(path)
        if size != f["bytes"] or digest != f["sha256"]:
            problems.append(f"{f['path']}: checksum mismatch (sha256 {digest}, manifest {f['sha256']})")
            continue
        if rows is not None and (found := _count_rows(path, fmt)) != rows:
            problems.append(f"{f['path']}: {found} rows, manifest says {rows} ({et})")
    lists = export_dir / LISTS_DIR
    # Hidden names are file-system sidecars (Hadoop's .crc files), not data.
    extra = sorted(p.name for p in lists.iterdir() if p.resolve() not in listed
                   and not p.name.startswith((".", "_"))) if lists.is_dir() else []
    if extra:
        problems.append(f"{LISTS_DIR}/ holds files the manifest does not list: {extra}")
    return manifest, problems


def verify_export(export_dir: Path, *, env: Mapping[str, str] | None = None,
                  full_chain: bool = False) -> dict:
    """Check an export's signature, checksums, row counts and its link to the previous manifest.

    The public key comes from ``RINGFENCE_VERIFY_KEY`` only. Every problem is
    collected and raised together as ``VerificationFailed``. ``full_chain``
    follows the chain back to its first export, checking each link.
    """
    export_dir = Path(export_dir)
    verify_key = load_verify_key(env)
    problems: list[str] = []
    checked = []
    current = export_dir
    while True:
        manifest, found = _check_one(current, verify_key)
        problems += [f"{current}: {p}" for p in found]
        checked.append(str(current))
        if manifest is None or manifest.get("previous_manifest_sha256") is None:
            break
        prev = current.parent.parent / f"ds={manifest['previous_ds']}" / EXPORT_TABLE
        if not (prev / MANIFEST).is_file():
            problems.append(f"{current}: previous export {prev} is missing; the chain cannot be checked")
            break
        if hashlib.sha256((prev / MANIFEST).read_bytes()).hexdigest() != manifest["previous_manifest_sha256"]:
            problems.append(f"{current}: hash chain broken: {prev / MANIFEST} is not the manifest it links to")
        if not full_chain:
            break
        current = prev
    if problems:
        raise VerificationFailed("export verification failed:\n  " + "\n  ".join(problems))
    manifest = json.loads((export_dir / MANIFEST).read_bytes())
    return {
        "export_dir": str(export_dir), "ds": manifest["ds"], "run_id": manifest["run_id"],
        "total_rows": manifest["total_rows"], "signature": "ok", "checksums": "ok",
        "chain": "ok" if manifest["previous_manifest_sha256"] else "first export",
        "exports_checked": len(checked),
        "manifest_sha256": hashlib.sha256((export_dir / MANIFEST).read_bytes()).hexdigest(),
    }
