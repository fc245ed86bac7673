"""Input validation against the data contract: fail fast, or quarantine with reasons.

Three levels, in this order:

1. **Table level** (:func:`read_inputs`, :func:`conform_table`): a missing
   table directory, a missing column or an incompatible type raises
   :class:`SchemaError` naming table, column, expected and found type. All
   problems of all tables are listed in one error. Extra columns are dropped.
   Compatible types are cast to the contract type; when a cast could lose
   information for a particular row (a string timestamp that does not parse,
   a bigint ``kyc_level`` beyond int range, an amount with more than two
   decimals) the row is quarantined as ``unparsable:<column>`` instead.
2. **Raw card numbers** (:func:`check_no_pans`): every string column of the
   contract -- the identifier columns of ``IDENTIFIER_COLUMNS`` and also the
   other strings (status, source, event_type, ...), because any of them could
   end up in a quarantine row or an output -- is scanned in Spark. A hit
   raises :class:`RawCardNumberFound` naming table, column and count. This
   runs before any row is tagged, so no quarantine row can carry a PAN.
3. **Row level** (:func:`tag_rows`): one pass per table computes an array of
   reason codes per row; rows with none are clean, the others go to the
   quarantine table with their reasons and the row as JSON. The report
   counts rows read, quarantined, and rows per reason; :func:`enforce_limits`
   fails the run when a table's quarantined fraction is over the limit.

Why hand-written Spark and not pandera's PySpark backend: pandera's
``pyspark.sql`` backend collects errors into ``df.pandera.errors`` and its
built-in checks stop at the first failing value (they do not produce a
per-row boolean); dropping or splitting out invalid rows is not supported
for PySpark (``drop_invalid_rows`` is pandas-only: pandera issue #1540, PR
#1639 still open). The job needs exactly that -- a reason per row and a
quarantine table -- plus checks pandera has no built-ins for (Luhn + brand,
window, duplicates, self-transfers). The schema part alone is a few lines
here, so the extra dependency would buy nothing.

Reason codes (stable strings, counted in the report)::

    null:<col>           required column is null
    blank:<col>          identifier is an empty/whitespace string
    unparsable:<col>     value present but not convertible to the contract type
    bad_enum:<col>       status / entity_type / label outside the contract enum
    non_positive:amount  amount <= 0
    unknown_currency     currency not in validation.currencies (case-sensitive ISO code)
    out_of_window:event_time   event outside [window start 00:00, ds+1 00:00) UTC
    self_transfer        src_account_id == dst_account_id
    out_of_range:<col>   kyc_level not in 0..3; ip_lat/ip_lon off the globe;
                         tap_interval_cv negative or NaN
    bad_format:card_bin  not exactly 6 digits
    bad_format:ip        not IPv4 dotted-quad / IPv6 text (no zone ids)
    duplicate:<key>      a later copy of an event_id / account_id; the kept row is
                         the earliest by (event_time|created_at, row hash)
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from functools import reduce
from typing import Any

import pyarrow as pa
from pyspark import StorageLevel
from pyspark.errors import AnalysisException
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from graph.config import RingfenceConfig
from graph.errors import QuarantineLimitExceeded, RawCardNumberFound, SchemaError
from graph.pan import contains_pan, may_hold_pan
from graph.schema import (
    AMOUNT,
    ENTITY_TYPES,
    EVENT_TABLES,
    IDENTIFIER_COLUMNS,
    INPUT_SCHEMAS,
    LABELS,
    REQUIRED_COLUMNS,
    STATUSES,
    TS,
    spark_ddl,
)

log = logging.getLogger(__name__)

TABLES = tuple(INPUT_SCHEMAS)
PARTITION_COL = "ds"
# Per-row "value present but not convertible" flags added by conform_table.
_BAD_PREFIX = "_rf_unparsable__"
_REASONS = "_rf_reasons"

QUARANTINE_DDL = "`table` STRING, `record_id` STRING, `reason` STRING, `reasons` ARRAY<STRING>, `row_json` STRING"

_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = rf"{_OCTET}(?:\.{_OCTET}){{3}}"
_H16 = r"[0-9a-fA-F]{1,4}"
_LS32 = rf"(?:{_H16}:{_H16}|{_IPV4})"


def _h16s(n: int) -> str:
    return f"(?:{_H16}:){{{n}}}"


# RFC 3986 IPv6address grammar, alternative by alternative.
_IPV6 = "(?:" + "|".join([
    rf"{_h16s(6)}{_LS32}",
    rf"::{_h16s(5)}{_LS32}",
    rf"(?:{_H16})?::{_h16s(4)}{_LS32}",
    rf"(?:(?:{_H16}:){{0,1}}{_H16})?::{_h16s(3)}{_LS32}",
    rf"(?:(?:{_H16}:){{0,2}}{_H16})?::{_h16s(2)}{_LS32}",
    rf"(?:(?:{_H16}:){{0,3}}{_H16})?::{_H16}:{_LS32}",
    rf"(?:(?:{_H16}:){{0,4}}{_H16})?::{_LS32}",
    rf"(?:(?:{_H16}:){{0,5}}{_H16})?::{_H16}",
    rf"(?:(?:{_H16}:){{0,6}}{_H16})?::",
]) + ")"
IP_PATTERN = rf"^(?:{_IPV4}|{_IPV6})$"
CARD_BIN_PATTERN = r"^[0-9]{6}$"

# Key per table for duplicates, and the column that orders copies (earliest kept).
_DEDUP: dict[str, tuple[str, str]] = {
    "payments": ("event_id", "event_time"),
    "transfers": ("event_id", "event_time"),
    "sessions": ("event_id", "event_time"),
    "accounts": ("account_id", "created_at"),
}


@dataclass
class ValidationResult:
    """Clean tables, quarantine rows and the report of one validation pass.

    ``clean`` and ``quarantine`` are lazy views over the tagged input tables,
    which stay persisted (memory, spilling to disk) until :meth:`release`, so
    writing both and the report reads the inputs once, not three times.
    """

    clean: dict[str, DataFrame]
    quarantine: DataFrame
    report: dict[str, Any] = field(default_factory=dict)
    _persisted: list[DataFrame] = field(default_factory=list, repr=False)

    def release(self) -> None:
        """Drop the persisted tagged tables (after the outputs are written)."""
        for df in self._persisted:
            df.unpersist()
        self._persisted.clear()


# --- table level --------------------------------------------------------------------


_ARROW_TO_SPARK: dict[pa.DataType, T.DataType] = {
    pa.string(): T.StringType(),
    pa.int32(): T.IntegerType(),
    pa.int64(): T.LongType(),
    pa.float64(): T.DoubleType(),
    TS: T.TimestampType(),
    AMOUNT: T.DecimalType(18, 2),
}


def _contract_types() -> dict[str, dict[str, T.DataType]]:
    # Built from the Arrow contract without a SparkContext, so importing is free.
    return {
        table: {f.name: _ARROW_TO_SPARK[f.type] for f in schema}
        for table, schema in INPUT_SCHEMAS.items()
    }


CONTRACT_TYPES = _contract_types()

_INTEGRAL = (T.ByteType, T.ShortType, T.IntegerType, T.LongType)
_NUMERIC = (*_INTEGRAL, T.FloatType, T.DoubleType, T.DecimalType)


def _convert(name: str, found: T.DataType, expected: T.DataType) -> tuple[Column, Column | None] | None:
    """(converted column, per-row 'lost information' flag or None), or None if incompatible."""
    c = F.col(name)
    if found == expected:
        return c, None
    if isinstance(expected, T.StringType):
        # varchar/char arrive as StringType already; numbers as ids are a contract breach.
        return None
    if isinstance(expected, T.TimestampType):
        if isinstance(found, T.TimestampNTZType | T.DateType):
            # Wall-clock values are read as UTC (the session time zone is UTC).
            return c.cast(expected), None
        if isinstance(found, T.StringType):
            parsed = c.try_cast(expected)
            return parsed, c.isNotNull() & parsed.isNull()
        return None
    if isinstance(expected, T.IntegerType):
        if isinstance(found, T.ByteType | T.ShortType):
            return c.cast(expected), None
        if isinstance(found, T.LongType) or (isinstance(found, T.DecimalType) and found.scale == 0):
            cast = c.try_cast(expected)
            return cast, c.isNotNull() & (cast.isNull() | (cast != c))
        return None
    if isinstance(expected, T.DoubleType):
        return (c.cast(expected), None) if isinstance(found, _NUMERIC) else None
    if isinstance(expected, T.DecimalType):
        if isinstance(found, (*_INTEGRAL, T.DecimalType)):
            cast = c.try_cast(expected)
            return cast, c.isNotNull() & (cast.isNull() | (cast != c))
        if isinstance(found, T.FloatType | T.DoubleType):
            cast = c.try_cast(expected)
            return cast, c.isNotNull() & (cast.isNull() | (cast.cast("double") != c) | F.isnan(c))
        return None
    return None


def conform_table(table: str, df: DataFrame, source: str = "") -> DataFrame:
    """Select the contract columns of ``table`` with contract types (idempotent).

    Raises SchemaError listing every missing column and incompatible type.
    Adds an ``_rf_unparsable__<col>`` flag for each lossy conversion.
    """
    problems = _schema_problems(table, df, source)
    if problems:
        raise SchemaError("input does not match the data contract:\n  " + "\n  ".join(problems))
    return _conform(table, df)


def _schema_problems(table: str, df: DataFrame, source: str) -> list[str]:
    found = {f.name: f.dataType for f in df.schema.fields}
    where = f" ({source})" if source else ""
    problems = []
    for name, expected in CONTRACT_TYPES[table].items():
        if name not in found:
            problems.append(
                f"table '{table}'{where}: missing column '{name}' (expected {expected.simpleString()}, "
                f"found no such column; columns present: {sorted(found)})"
            )
        elif _convert(name, found[name], expected) is None:
            problems.append(
                f"table '{table}'{where}: column '{name}' has incompatible type: expected "
                f"{expected.simpleString()}, found {found[name].simpleString()}"
            )
    return problems


def _conform(table: str, df: DataFrame) -> DataFrame:
    found = {f.name: f.dataType for f in df.schema.fields}
    cols, flags = [], []
    for name, expected in CONTRACT_TYPES[table].items():
        conv, lost = _convert(name, found[name], expected)  # type: ignore[misc]
        cols.append(conv.alias(name))
        if lost is not None:
            flags.append(F.coalesce(lost, F.lit(False)).alias(_BAD_PREFIX + name))
    # Flags from an earlier conform (idempotence) are carried over.
    flags += [F.col(n) for n in found if n.startswith(_BAD_PREFIX)]
    return df.select(*cols, *flags)


def _read_table(spark: SparkSession, path: str, table: str, ds: dt.date, lookback_days: int) -> DataFrame:
    try:
        df = spark.read.parquet(path)
    except AnalysisException as e:
        if "UNABLE_TO_INFER_SCHEMA" in str(e) or "Unable to infer schema" in str(e):
            # An existing directory without data files: an empty table.
            return spark.createDataFrame([], spark_ddl(INPUT_SCHEMAS[table]))
        raise SchemaError(f"table '{table}' ({path}): cannot be read as Parquet: {e}") from None
    if table not in EVENT_TABLES:
        return df
    start = ds - dt.timedelta(days=lookback_days - 1)
    if PARTITION_COL in df.columns:
        # A filter on the partition column only: Spark lists just these directories.
        return df.where(F.col(PARTITION_COL).cast("string").between(str(start), str(ds)))
    # Unpartitioned: rows outside the window are simply not part of this run (as
    # pruned partitions are not). Rows whose time is missing or unreadable stay,
    # to be quarantined with a reason.
    return df.where(_within_window_or_unknown(df, start, ds))


def window_bounds(start: dt.date, ds: dt.date) -> tuple[dt.datetime, dt.datetime]:
    lo = dt.datetime.combine(start, dt.time(0), tzinfo=dt.UTC)
    hi = dt.datetime.combine(ds + dt.timedelta(days=1), dt.time(0), tzinfo=dt.UTC)
    return lo, hi


def events_in_window(df: DataFrame, ds: dt.date, lookback_days: int) -> DataFrame:
    """Rows of ``df`` whose ``event_time`` lies in the run's window (null times are dropped)."""
    lo, hi = window_bounds(ds - dt.timedelta(days=lookback_days - 1), ds)
    t = F.col("event_time")
    return df.where((t >= F.lit(lo)) & (t < F.lit(hi)))


def _within_window_or_unknown(df: DataFrame, start: dt.date, ds: dt.date) -> Column:
    if "event_time" not in df.columns:
        return F.lit(True)  # the schema check reports the missing column
    conv = _convert("event_time", df.schema["event_time"].dataType, T.TimestampType())
    if conv is None:
        return F.lit(True)
    ts = conv[0]
    lo, hi = window_bounds(start, ds)
    return ts.isNull() | ((ts >= F.lit(lo)) & (ts < F.lit(hi)))


def read_inputs(spark: SparkSession, input_root: str, ds: dt.date, lookback_days: int) -> dict[str, DataFrame]:
    """Read the five input tables, conformed to the contract; table-level problems raise SchemaError.

    Event tables partitioned by ``ds=YYYY-MM-DD`` are pruned to the window
    ``[ds - lookback_days + 1, ds]``; unpartitioned ones are filtered on
    ``event_time`` to the same window.
    """
    root = str(input_root).rstrip("/")
    jvm = spark.sparkContext._jvm
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    problems: list[str] = []
    raw: dict[str, tuple[str, DataFrame]] = {}
    for table in TABLES:
        path = f"{root}/{table}"
        hpath = jvm.org.apache.hadoop.fs.Path(path)
        if not hpath.getFileSystem(conf).exists(hpath):
            problems.append(f"table '{table}': missing (no directory {path})")
            continue
        df = _read_table(spark, path, table, ds, lookback_days)
        problems += _schema_problems(table, df, path)
        raw[table] = (path, df)
    if problems:
        raise SchemaError("input does not match the data contract:\n  " + "\n  ".join(problems))
    return {t: _conform(t, df) for t, (_, df) in raw.items()}


# --- raw card numbers --------------------------------------------------------------


def pan_scan_columns(table: str) -> list[str]:
    """String columns of ``table`` scanned for PANs: identifiers first, then the other strings."""
    strings = [n for n, t in CONTRACT_TYPES[table].items() if isinstance(t, T.StringType)]
    ids = list(IDENTIFIER_COLUMNS[table])
    return ids + [n for n in strings if n not in ids]


def count_pans(tables: dict[str, DataFrame]) -> dict[tuple[str, str], int]:
    """Rows holding a PAN per (table, column), for every scanned column, in one Spark job."""
    parts = []
    for table, df in tables.items():
        cols = [c for c in pan_scan_columns(table) if c in df.columns]
        if not cols:
            continue
        # Rows that cannot hold a PAN (nearly all) are filtered out by a cheap test first.
        suspects = df.where(reduce(lambda a, b: a | b, [may_hold_pan(F.col(c)) for c in cols]))
        sums = suspects.agg(*[F.sum(contains_pan(c).cast("long")).alias(c) for c in cols])
        parts.append(sums.select(F.explode(F.array(*[
            F.struct(F.lit(table).alias("table"), F.lit(c).alias("column"),
                     F.coalesce(F.col(c), F.lit(0)).alias("n"))
            for c in cols
        ])).alias("hit")).select("hit.*"))
    if not parts:
        return {}
    return {(r["table"], r["column"]): int(r["n"]) for r in reduce(DataFrame.unionByName, parts).collect()}


def check_no_pans(tables: dict[str, DataFrame]) -> None:
    """Raise RawCardNumberFound naming every table.column with a PAN and the row count (never a value)."""
    counts = count_pans(tables)
    hits = [
        f"{table}.{col} ({n} row{'s' if n != 1 else ''})"
        for table in tables for col in pan_scan_columns(table)
        if (n := counts.get((table, col), 0))
    ]
    if hits:
        raise RawCardNumberFound(
            "raw card numbers (Luhn-valid, known brand prefix) found in: " + ", ".join(hits)
            + ". The values are not shown. Tokenise card numbers before extraction; nothing was written."
        )


# --- row level ------------------------------------------------------------------------


def _blank(c: Column) -> Column:
    # Not F.trim: it strips spaces only, and a tab-only id is just as empty.
    return c.rlike(r"^\s*$")


def _reason(cond: Column, code: str) -> Column:
    return F.when(cond, F.lit(code))


def _row_reasons(table: str, df: DataFrame, cfg: RingfenceConfig, start: dt.date, ds: dt.date) -> list[Column]:
    """One nullable-string Column per check; non-null means the row fails it."""
    cols = set(df.columns)

    def bad(name: str) -> Column:
        flag = _BAD_PREFIX + name
        return F.col(flag) if flag in cols else F.lit(False)

    out: list[Column] = []
    for name in CONTRACT_TYPES[table]:
        out.append(_reason(bad(name), f"unparsable:{name}"))
    for name in REQUIRED_COLUMNS[table]:
        out.append(_reason(F.col(name).isNull() & ~bad(name), f"null:{name}"))
    string_ids = [c for c in IDENTIFIER_COLUMNS[table]]
    string_required = [c for c in REQUIRED_COLUMNS[table]
                       if isinstance(CONTRACT_TYPES[table][c], T.StringType)]
    for name in dict.fromkeys(string_ids + string_required):
        out.append(_reason(_blank(F.col(name)), f"blank:{name}"))

    if "status" in cols:
        out.append(_reason(~F.col("status").isin(*STATUSES), "bad_enum:status"))
    if "amount" in cols:
        out.append(_reason(F.col("amount") <= 0, "non_positive:amount"))
    if "currency" in cols:
        out.append(_reason(~F.col("currency").isin(*cfg.validation.currencies), "unknown_currency"))
    if table in EVENT_TABLES:
        lo, hi = window_bounds(start, ds)
        t = F.col("event_time")
        out.append(_reason((t < F.lit(lo)) | (t >= F.lit(hi)), "out_of_window:event_time"))
    if "ip" in cols:
        out.append(_reason(~F.col("ip").rlike(IP_PATTERN) & ~_blank(F.col("ip")), "bad_format:ip"))
    if "card_bin" in cols:
        out.append(_reason(~F.col("card_bin").rlike(CARD_BIN_PATTERN), "bad_format:card_bin"))
    if table == "transfers":
        out.append(_reason(F.col("src_account_id") == F.col("dst_account_id"), "self_transfer"))
    if table == "accounts":
        out.append(_reason(~F.col("kyc_level").between(0, 3), "out_of_range:kyc_level"))
    if table == "sessions":
        for name, limit in (("ip_lat", 90.0), ("ip_lon", 180.0)):
            c = F.col(name)
            out.append(_reason(F.isnan(c) | (F.abs(c) > limit), f"out_of_range:{name}"))
        cv = F.col("tap_interval_cv")
        out.append(_reason(F.isnan(cv) | (cv < 0), "out_of_range:tap_interval_cv"))
    if table == "labels":
        out.append(_reason(~F.col("entity_type").isin(*ENTITY_TYPES), "bad_enum:entity_type"))
        out.append(_reason(~F.col("label").isin(*LABELS), "bad_enum:label"))
    return out


def _row_hash(table: str) -> Column:
    # 64-bit xxhash of the contract columns: a tie-break among copies of a key with
    # the same time (a collision only matters between two different such copies).
    # sha2 of the row as JSON cost a quarter of the tagging scan.
    return F.xxhash64(*[F.col(c) for c in CONTRACT_TYPES[table]])


def tag_rows(table: str, cfg: RingfenceConfig, start: dt.date, ds: dt.date):
    """A ``DataFrame -> DataFrame`` step adding ``_rf_reasons`` (array of reason codes) per row."""

    def step(df: DataFrame) -> DataFrame:
        checks = _row_reasons(table, df, cfg, start, ds)
        reasons = F.filter(F.array(*checks), lambda r: r.isNotNull())
        tagged = df.withColumn(_REASONS, reasons)
        if table not in _DEDUP:
            return tagged
        key, order = _DEDUP[table]
        # Among rows that pass every other check, the earliest copy of a key is kept;
        # the row hash breaks ties so the choice never depends on partitioning.
        ok = F.size(F.col(_REASONS)) == 0
        w = Window.partitionBy(F.col(key), ok).orderBy(F.col(order).asc_nulls_last(), _row_hash(table))
        dup = ok & (F.row_number().over(w) > 1)
        return tagged.withColumn(
            _REASONS,
            F.when(dup, F.array(F.lit(f"duplicate:{key}"))).otherwise(F.col(_REASONS)),
        )

    return step


def _record_id(table: str) -> Column:
    if table == "labels":
        return F.concat_ws(":", F.col("entity_type"), F.col("entity_id"))
    return F.col(_DEDUP[table][0]).cast("string")


def _quarantine_rows(table: str, tagged: DataFrame) -> DataFrame:
    row = F.struct(*[F.col(c) for c in CONTRACT_TYPES[table]])
    return tagged.where(F.size(F.col(_REASONS)) > 0).select(
        F.lit(table).alias("table"),
        _record_id(table).alias("record_id"),
        F.col(_REASONS)[0].alias("reason"),
        F.col(_REASONS).alias("reasons"),
        F.to_json(row, {"ignoreNullFields": "false"}).alias("row_json"),
    )


def build_report(tagged: dict[str, DataFrame]) -> dict[str, Any]:
    """Rows read / quarantined / per reason for every table, in one distributed job."""
    parts = [
        df.select(
            F.lit(t).alias("table"),
            F.explode(F.concat(
                F.array(F.lit("__rows__")),
                F.when(F.size(F.col(_REASONS)) > 0, F.array(F.lit("__quarantined__")))
                .otherwise(F.array().cast("array<string>")),
                F.col(_REASONS),
            )).alias("tag"),
        )
        for t, df in tagged.items()
    ]
    counts = reduce(DataFrame.unionByName, parts).groupBy("table", "tag").count().collect()
    report: dict[str, Any] = {
        t: {"rows_read": 0, "rows_clean": 0, "rows_quarantined": 0, "fraction": 0.0, "reasons": {}}
        for t in tagged
    }
    for r in counts:
        entry = report[r["table"]]
        if r["tag"] == "__rows__":
            entry["rows_read"] = r["count"]
        elif r["tag"] == "__quarantined__":
            entry["rows_quarantined"] = r["count"]
        else:
            entry["reasons"][r["tag"]] = r["count"]
    for entry in report.values():
        entry["rows_clean"] = entry["rows_read"] - entry["rows_quarantined"]
        entry["fraction"] = round(entry["rows_quarantined"] / entry["rows_read"], 6) if entry["rows_read"] else 0.0
        entry["reasons"] = dict(sorted(entry["reasons"].items(), key=lambda kv: (-kv[1], kv[0])))
    return report


def validate_inputs(
    spark: SparkSession, cfg: RingfenceConfig, tables: dict[str, DataFrame], ds: dt.date, lookback_days: int
) -> ValidationResult:
    """PAN check (raises), then per-row reasons; returns clean tables, quarantine rows and the report."""
    missing = [t for t in TABLES if t not in tables]
    if missing:
        raise SchemaError(f"input tables missing: {missing}")
    conformed = {t: conform_table(t, tables[t]) for t in TABLES}
    start = ds - dt.timedelta(days=lookback_days - 1)
    # Tagging is computed once and persisted: the PAN scan below materialises it,
    # and the report, the quarantine and the clean tables are then read from it.
    # Nothing is written before the PAN scan has passed.
    tagged = {t: df.transform(tag_rows(t, cfg, start, ds)).persist(StorageLevel.MEMORY_AND_DISK)
              for t, df in conformed.items()}
    try:
        check_no_pans(tagged)
    except RawCardNumberFound:
        for df in tagged.values():
            df.unpersist()
        raise
    clean = {
        t: df.where(F.size(F.col(_REASONS)) == 0).select(*CONTRACT_TYPES[t])
        for t, df in tagged.items()
    }
    quarantine = reduce(DataFrame.unionByName, [_quarantine_rows(t, df) for t, df in tagged.items()])
    report = build_report(tagged)
    for t, entry in report.items():
        if entry["rows_quarantined"]:
            log.warning("validate: %s: %d of %d rows quarantined (%s)", t, entry["rows_quarantined"],
                        entry["rows_read"], ", ".join(f"{k}={v}" for k, v in entry["reasons"].items()))
    return ValidationResult(clean=clean, quarantine=quarantine, report=report,
                            _persisted=list(tagged.values()))


def enforce_limits(cfg: RingfenceConfig, report: dict[str, Any]) -> None:
    """Raise QuarantineLimitExceeded naming every table over validation.max_quarantine_fraction."""
    limit = cfg.validation.max_quarantine_fraction
    over = []
    for table, entry in sorted(report.items()):
        if not isinstance(entry, dict) or "fraction" not in entry:
            continue
        if entry["fraction"] > limit:
            top = ", ".join(f"{k} ({v})" for k, v in list(entry["reasons"].items())[:3])
            over.append(
                f"{table}: {entry['rows_quarantined']} of {entry['rows_read']} rows quarantined "
                f"({entry['fraction']:.2%} > limit {limit:.2%}); top reasons: {top}"
            )
    if over:
        raise QuarantineLimitExceeded(
            "too many bad rows (see quarantine/ and validation.json):\n  " + "\n  ".join(over)
        )
