"""Data contract v1: the input tables, the ground truth and the output tables.

Column names and types are written once, here. The generator writes these
schemas, validation checks inputs against them, and every stage refers to
columns through these constants. Producers may add columns; readers select
the ones listed here and ignore the rest.
"""

from __future__ import annotations

import pyarrow as pa

CONTRACT_VERSION = "v1"

# Identifiers and enums of the contract.
ENTITY_TYPES = ("account", "device", "ip", "card", "merchant")
LABELS = ("fraud", "mule", "card_testing", "legit")
FRAUD_LABELS = ("fraud", "mule", "card_testing")
STATUSES = ("approved", "declined")
RING_TYPES = ("mule", "card_testing")
RISK_RING_TYPES = ("mule", "card_testing", "unknown")

TS = pa.timestamp("us", tz="UTC")
AMOUNT = pa.decimal128(18, 2)

INPUT_SCHEMAS: dict[str, pa.Schema] = {
    "accounts": pa.schema(
        [
            ("account_id", pa.string()),
            ("created_at", TS),
            ("kyc_level", pa.int32()),
        ]
    ),
    "payments": pa.schema(
        [
            ("event_id", pa.string()),
            ("event_time", TS),
            ("account_id", pa.string()),
            ("card_token", pa.string()),
            ("card_bin", pa.string()),
            ("merchant_id", pa.string()),
            ("amount", AMOUNT),
            ("currency", pa.string()),
            ("status", pa.string()),
            ("device_id", pa.string()),
            ("ip", pa.string()),
        ]
    ),
    "transfers": pa.schema(
        [
            ("event_id", pa.string()),
            ("event_time", TS),
            ("src_account_id", pa.string()),
            ("dst_account_id", pa.string()),
            ("amount", AMOUNT),
            ("currency", pa.string()),
            ("status", pa.string()),
            ("device_id", pa.string()),
            ("ip", pa.string()),
        ]
    ),
    "sessions": pa.schema(
        [
            ("event_id", pa.string()),
            ("event_time", TS),
            ("account_id", pa.string()),
            ("event_type", pa.string()),
            ("device_id", pa.string()),
            ("ip", pa.string()),
            ("ip_country", pa.string()),
            ("ip_lat", pa.float64()),
            ("ip_lon", pa.float64()),
            ("tap_interval_cv", pa.float64()),
        ]
    ),
    "labels": pa.schema(
        [
            ("entity_type", pa.string()),
            ("entity_id", pa.string()),
            ("label", pa.string()),
            ("labeled_at", TS),
            ("source", pa.string()),
        ]
    ),
}

# Tables partitioned by the event day (``ds=YYYY-MM-DD``).
EVENT_TABLES = ("payments", "transfers", "sessions")

# Columns that must never be null in each input table (row-level keys).
REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "accounts": ("account_id",),
    "payments": ("event_id", "event_time", "account_id", "card_token", "merchant_id",
                 "amount", "currency", "status"),
    "transfers": ("event_id", "event_time", "src_account_id", "dst_account_id",
                  "amount", "currency", "status"),
    "sessions": ("event_id", "event_time", "account_id", "event_type"),
    "labels": ("entity_type", "entity_id", "label", "labeled_at"),
}

# Identifier columns: a raw card number in any of them is a hard error.
IDENTIFIER_COLUMNS: dict[str, tuple[str, ...]] = {
    "accounts": ("account_id",),
    "payments": ("event_id", "account_id", "card_token", "merchant_id", "device_id", "ip"),
    "transfers": ("event_id", "src_account_id", "dst_account_id", "device_id", "ip"),
    "sessions": ("event_id", "account_id", "device_id", "ip"),
    "labels": ("entity_id",),
}

TRUTH_SCHEMAS: dict[str, pa.Schema] = {
    "rings": pa.schema(
        [
            ("ring_id", pa.string()),
            ("ring_type", pa.string()),
            ("entity_type", pa.string()),
            ("entity_id", pa.string()),
        ]
    ),
    # Benign look-alikes planted by the generator (evaluation only).
    "confounders": pa.schema(
        [
            ("kind", pa.string()),
            ("entity_type", pa.string()),
            ("entity_id", pa.string()),
        ]
    ),
}

# Output tables under OUTPUT/ds=YYYY-MM-DD/ (internal: raw ids).
RISK_SCHEMA = pa.schema(
    [
        ("entity_type", pa.string()),
        ("entity_id", pa.string()),
        ("score", pa.float64()),
        ("ring_id", pa.string()),
        ("ring_type", pa.string()),
        ("reasons", pa.list_(pa.string())),
        ("expires_at", TS),
    ]
)


def spark_ddl(schema: pa.Schema) -> str:
    """Spark DDL string for an Arrow schema of the contract (for readers and empty tables)."""
    names = {
        pa.string(): "STRING",
        pa.int32(): "INT",
        pa.int64(): "BIGINT",
        pa.float64(): "DOUBLE",
        TS: "TIMESTAMP",
        AMOUNT: "DECIMAL(18,2)",
        pa.list_(pa.string()): "ARRAY<STRING>",
    }
    return ", ".join(f"`{f.name}` {names[f.type]}" for f in schema)
