"""Tiny input worlds for tests: a handful of rows per table, written with pyarrow.

The tables follow ``graph.schema.INPUT_SCHEMAS`` exactly and the on-disk
layout of the data contract: ``accounts/`` and ``labels/`` unpartitioned,
``payments/``, ``transfers/`` and ``sessions/`` partitioned by ``ds=YYYY-MM-DD``.
Rows are derived from their index only (no randomness), so two calls with
the same arguments write identical files. Every identifier carries at most
12 decimal digits, so none can look like a card number to the PAN check.

A world can carry deliberately bad rows (``bad_payments``): a payment with a
non-positive amount and one with an unknown currency, so validation has
something to quarantine. Keep them under ``validation.max_quarantine_fraction``
of the payments (default 5 %) unless the test wants the run to fail.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from graph.schema import EVENT_TABLES, INPUT_SCHEMAS

UTC = dt.UTC


def _ts(day: dt.date, seconds: int) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(0), tzinfo=UTC) + dt.timedelta(seconds=seconds)


def _write(table: str, rows: list[dict], path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    schema = INPUT_SCHEMAS[table]
    data = pa.Table.from_pylist(rows, schema=schema)
    pq.write_table(data, path / "part-00000.parquet")


def account_id(i: int) -> str:
    return f"acc-{i:04d}"


def accounts_rows(n: int, ds: dt.date) -> list[dict]:
    opened = ds - dt.timedelta(days=90)
    return [
        {"account_id": account_id(i), "created_at": _ts(opened, 60 * i), "kyc_level": i % 4}
        for i in range(n)
    ]


def payments_rows(n_accounts: int, day: dt.date, per_account: int = 3, bad: int = 0) -> list[dict]:
    rows = []
    for i in range(n_accounts):
        for k in range(per_account):
            j = i * per_account + k
            rows.append({
                "event_id": f"pay-{day:%m%d}-{j:04d}",
                "event_time": _ts(day, 600 + 37 * j),
                "account_id": account_id(i),
                "card_token": f"ctok-{i:04d}",
                "card_bin": "411111",
                "merchant_id": f"merch-{j % 5:02d}",
                "amount": Decimal(f"{5 + j % 20}.{j % 100:02d}"),
                "currency": "KRW" if j % 3 else "USD",
                "status": "approved" if j % 7 else "declined",
                "device_id": f"dev-{i % 7:03d}",
                "ip": f"10.0.{i % 3}.{i % 11 + 1}",
            })
    # Faults validation must quarantine, each with its own reason.
    faults = [
        {"amount": Decimal("-1.00")},   # amounts must be > 0
        {"currency": "XXX"},            # not an allowed currency
    ]
    for b in range(bad):
        row = dict(rows[b % len(rows)])
        row.update(faults[b % len(faults)])
        row["event_id"] = f"pay-{day:%m%d}-bad-{b:03d}"
        rows.append(row)
    return rows


def transfers_rows(n_accounts: int, day: dt.date) -> list[dict]:
    return [
        {
            "event_id": f"trf-{day:%m%d}-{i:04d}",
            "event_time": _ts(day, 3600 + 91 * i),
            "src_account_id": account_id(i),
            "dst_account_id": account_id((i + 1) % n_accounts),
            "amount": Decimal(f"{100 + i}.00"),
            "currency": "KRW",
            "status": "approved",
            "device_id": f"dev-{i % 7:03d}",
            "ip": f"10.0.{i % 3}.{i % 11 + 1}",
        }
        for i in range(n_accounts)
    ]


def sessions_rows(n_accounts: int, day: dt.date) -> list[dict]:
    return [
        {
            "event_id": f"ses-{day:%m%d}-{i:04d}",
            "event_time": _ts(day, 300 + 53 * i),
            "account_id": account_id(i),
            "event_type": "login",
            "device_id": f"dev-{i % 7:03d}",
            "ip": f"10.0.{i % 3}.{i % 11 + 1}",
            "ip_country": "KR",
            "ip_lat": 37.5 + i / 1000,
            "ip_lon": 127.0 + i / 1000,
            "tap_interval_cv": 0.4 + (i % 5) / 10,
        }
        for i in range(n_accounts)
    ]


def labels_rows(ds: dt.date) -> list[dict]:
    known = _ts(ds - dt.timedelta(days=2), 0)
    return [
        {"entity_type": "account", "entity_id": account_id(0), "label": "mule",
         "labeled_at": known, "source": "investigator"},
        {"entity_type": "account", "entity_id": account_id(1), "label": "legit",
         "labeled_at": known, "source": "customer_report"},
    ]


def write_world(root: str | Path, ds: dt.date, days: int = 1, accounts: int = 12,
                bad_payments: int = 0) -> dict[str, int]:
    """Write a tiny world under ``root`` whose last event day is ``ds``; return rows per table.

    ``days`` event partitions are written, ``ds`` and the days before it.
    ``bad_payments`` extra payment rows on ``ds`` carry contract faults.
    """
    root = Path(root)
    counts: dict[str, int] = {}
    rows = accounts_rows(accounts, ds)
    _write("accounts", rows, root / "accounts")
    counts["accounts"] = len(rows)
    rows = labels_rows(ds)
    _write("labels", rows, root / "labels")
    counts["labels"] = len(rows)
    for table in EVENT_TABLES:
        counts[table] = 0
    for back in range(days):
        day = ds - dt.timedelta(days=back)
        per_day = {
            "payments": payments_rows(accounts, day, bad=bad_payments if day == ds else 0),
            "transfers": transfers_rows(accounts, day),
            "sessions": sessions_rows(accounts, day),
        }
        for table, table_rows in per_day.items():
            _write(table, table_rows, root / table / f"ds={day}")
            counts[table] += len(table_rows)
    return counts
