"""A hand-made run folder for the investigator tools: two nights of every table they read.

Real runs do not yet write ``rings/``, ``ring_members/`` or ``risk/`` (ring
discovery needs the GraphFrames jars), so the investigator library and
notebooks are tested on this folder instead. Everything is written with
pyarrow in the schemas the stages write (``graph.build``, ``graph.rings``,
``graph.schema.RISK_SCHEMA``, ``graph.hubs``), no Spark needed.

The story (night ``DS`` = 2026-11-24; the previous night ``PREV_DS`` has only
ring tables and an empty risk list; both runs are marked complete):

* ``R-mule``: a-01 and a-02 send to the collector a-03, all on device d-1
  (a member); a-03 forwards 240 EUR to a-07 of ``R-new``; outsider a-10 pays
  a-01. a-01 also shares ip 10.0.0.9 with a-04 of ``R-ct``. Listed (mule).
  Last night it had 3 members (no d-1): grown.
* ``R-ct``: a-04 and a-05 test cards c-1 and c-2 on device d-2 (all members)
  at merchants m-1/m-2, plus card c-3 (not a member; listed as a link).
  Outsider a-06 also used c-1. Listed (card_testing). Last night it also had
  a-06: shrunk.
* ``R-new``: a-07, a-08, a-09, linked only by ip 10.0.2.2 (not a member) and
  by the hub ip 10.9.9.9 (in ``hubs/``); a-09 logged in on d-2 of ``R-ct``.
  Not listed. New tonight.
* ``R-gone``: a-11, a-12, d-11: only last night (whose risk list is empty).
* device d-9 is listed alone (no ring).

Edges and vertices are derived from the events in plain Python the way
``graph.build`` does (one edge per (src, dst, edge_type); weight = ln(1 + events),
times the amount factor for transfers; no recency decay).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import statistics
from collections import defaultdict
from decimal import Decimal as D
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from graph.schema import INPUT_SCHEMAS, RISK_SCHEMA

DS = dt.date(2026, 11, 24)
PREV_DS = dt.date(2026, 11, 23)
UTC = dt.UTC
TS = pa.timestamp("us", tz="UTC")


def ts(day: int, hour: int = 0, minute: int = 0, second: int = 0) -> dt.datetime:
    return dt.datetime(2026, 11, day, hour, minute, second, tzinfo=UTC)


ACCOUNTS = [(f"a-{i:02d}", ts(1) - dt.timedelta(days=10 * i), i % 4) for i in range(1, 13)]

# event_id, time, account, card, bin, merchant, amount, currency, status, device, ip
PAYMENTS = [
    ("p-01", ts(22, 9), "a-01", "c-9", "411111", "m-3", D("20.00"), "EUR", "approved", "d-1", "10.0.0.1"),
    ("p-02", ts(24, 1, 0, 0), "a-04", "c-1", "400000", "m-1", D("0.50"), "USD", "declined", "d-2", "10.0.1.1"),
    ("p-03", ts(24, 1, 0, 30), "a-04", "c-2", "400000", "m-1", D("0.50"), "USD", "declined", "d-2", "10.0.1.1"),
    ("p-04", ts(24, 1, 1, 0), "a-05", "c-1", "400000", "m-2", D("0.50"), "USD", "approved", "d-2", "10.0.1.1"),
    ("p-05", ts(24, 1, 1, 30), "a-05", "c-2", "400000", "m-1", D("0.75"), "USD", "declined", "d-2", "10.0.1.1"),
    ("p-06", ts(24, 1, 2, 0), "a-05", "c-3", "400001", "m-2", D("0.50"), "USD", "declined", "d-2", "10.0.1.1"),
    ("p-07", ts(23, 12), "a-06", "c-1", "400000", "m-1", D("0.50"), "USD", "declined", "d-3", "10.0.1.6"),
    ("p-08", ts(23, 15), "a-08", "c-8", "422222", "m-3", D("10.00"), "EUR", "approved", "d-8", "10.0.2.2"),
]
# event_id, time, src, dst, amount, currency, status, device, ip
TRANSFERS = [
    ("t-01", ts(22, 10), "a-01", "a-03", D("100.00"), "EUR", "approved", "d-1", "10.0.0.1"),
    ("t-02", ts(22, 11), "a-02", "a-03", D("150.00"), "EUR", "approved", "d-1", "10.0.0.2"),
    ("t-03", ts(23, 9), "a-03", "a-07", D("240.00"), "EUR", "approved", "d-1", "10.0.0.3"),
    ("t-04", ts(24, 8), "a-02", "a-03", D("50.00"), "EUR", "declined", "d-1", "10.0.0.2"),
    ("t-05", ts(21, 7), "a-10", "a-01", D("80.00"), "EUR", "approved", "d-10", "10.0.3.1"),
    ("t-06", ts(20, 7), "a-11", "a-12", D("5.00"), "EUR", "approved", "d-11", "10.0.3.2"),
]
# event_id, time, account, event_type, device, ip
SESSIONS = [
    ("s-01", ts(21, 6), "a-01", "login", "d-1", "10.0.0.9"),
    ("s-02", ts(21, 6, 30), "a-04", "login", "d-4", "10.0.0.9"),
    ("s-03", ts(22, 6), "a-07", "login", "d-7", "10.0.2.2"),
    ("s-04", ts(22, 6, 10), "a-09", "login", "d-2", "10.0.2.2"),
    ("s-05", ts(22, 7), "a-07", "login", "d-7", "10.9.9.9"),
    ("s-06", ts(22, 7, 5), "a-09", "login", "d-9", "10.9.9.9"),
    ("s-07", ts(22, 7, 10), "a-04", "login", "d-4", "10.9.9.9"),
    ("s-08", ts(22, 7, 15), "a-12", "login", "d-12", "10.9.9.9"),
]
LABELS = [("account", "a-03", "mule", ts(20), "investigator")]
HUBS = [("ip:10.9.9.9", "ip", "10.9.9.9", 4, "degree_outlier", "4 accounts > 3.0", None, 3.0)]

# ring_id, size, n_accounts, n_devices, n_ips, n_cards, n_merchants, n_edges, density, method,
# first_seen, last_seen
RINGS = {
    DS: [
        ("R-mule", 4, 3, 1, 0, 0, 0, 5, 5 / 6, "louvain", dt.date(2026, 11, 20), DS),
        ("R-ct", 5, 2, 1, 0, 2, 0, 6, 0.6, "louvain", dt.date(2026, 11, 22), DS),
        ("R-new", 3, 3, 0, 0, 0, 0, 0, 0.0, "louvain", DS, DS),
    ],
    PREV_DS: [
        ("R-mule", 3, 3, 0, 0, 0, 0, 2, 2 / 3, "louvain", dt.date(2026, 11, 20), PREV_DS),
        ("R-ct", 6, 3, 1, 0, 2, 0, 7, 7 / 15, "louvain", dt.date(2026, 11, 22), PREV_DS),
        ("R-gone", 3, 2, 1, 0, 0, 0, 3, 1.0, "louvain", dt.date(2026, 11, 21), PREV_DS),
    ],
}
# ring_id, member_vertex, role, weighted_degree, net_flow
MEMBERS = {
    DS: [
        ("R-mule", "account:a-01", "sender", 2.1, -100.0),
        ("R-mule", "account:a-02", "sender", 2.4, -150.0),
        ("R-mule", "account:a-03", "collector", 3.5, 250.0),
        ("R-mule", "device:d-1", "shared_device", 3.0, 0.0),
        ("R-ct", "account:a-04", "hub", 3.0, 0.0),
        ("R-ct", "account:a-05", "member", 2.8, 0.0),
        ("R-ct", "card:c-1", "shared_card", 1.4, 0.0),
        ("R-ct", "card:c-2", "shared_card", 1.4, 0.0),
        ("R-ct", "device:d-2", "shared_device", 2.2, 0.0),
        ("R-new", "account:a-07", "hub", 1.0, 0.0),
        ("R-new", "account:a-08", "member", 1.0, 0.0),
        ("R-new", "account:a-09", "member", 1.0, 0.0),
    ],
    PREV_DS: [
        ("R-mule", "account:a-01", "sender", 1.0, -100.0),
        ("R-mule", "account:a-02", "sender", 1.0, -150.0),
        ("R-mule", "account:a-03", "collector", 2.0, 250.0),
        ("R-ct", "account:a-04", "hub", 3.0, 0.0),
        ("R-ct", "account:a-05", "member", 2.8, 0.0),
        ("R-ct", "account:a-06", "member", 1.0, 0.0),
        ("R-ct", "card:c-1", "shared_card", 1.4, 0.0),
        ("R-ct", "card:c-2", "shared_card", 1.4, 0.0),
        ("R-ct", "device:d-2", "shared_device", 2.2, 0.0),
        ("R-gone", "account:a-11", "sender", 1.0, -5.0),
        ("R-gone", "account:a-12", "receiver", 1.0, 5.0),
        ("R-gone", "device:d-11", "shared_device", 1.0, 0.0),
    ],
}
MULE_RING = "in ring R-mule (mule, 3 accounts) with score 0.88"
CT_RING = "in ring R-ct (card_testing, 2 accounts) with score 0.97"
PASS_THROUGH = "passed on 96% of its inflow within 48 h"
DECLINES = "declined 3 of 4 attempts"
# entity_type, entity_id, score, ring_id, ring_type, reasons
RISK = [
    ("account", "a-01", 0.91, "R-mule", "mule", [MULE_RING, "shares device d-1 with 2 other ring accounts"]),
    ("account", "a-02", 0.86, "R-mule", "mule", [MULE_RING, "shares device d-1 with 2 other ring accounts"]),
    ("account", "a-03", 0.95, "R-mule", "mule", [MULE_RING, PASS_THROUGH, "labelled mule by investigator"]),
    ("device", "d-1", 0.80, "R-mule", "mule", [MULE_RING]),
    ("account", "a-04", 0.72, "R-ct", "card_testing", [CT_RING]),
    ("account", "a-05", 0.97, "R-ct", "card_testing", [CT_RING, DECLINES]),
    ("card", "c-1", 0.93, "R-ct", "card_testing", [CT_RING]),
    ("card", "c-2", 0.90, "R-ct", "card_testing", [CT_RING]),
    ("card", "c-3", 0.66, "R-ct", "card_testing", ["used by 1 ring accounts (of 1 accounts in all) of ring R-ct"]),
    ("device", "d-2", 0.88, "R-ct", "card_testing", [CT_RING]),
    ("device", "d-9", 0.85, None, "card_testing", ["412 declined tiny attempts on 57 cards"]),
]
SIGNAL_REASONS = {("account", "a-03"): [PASS_THROUGH], ("account", "a-05"): [DECLINES]}


def _write(rows: list[dict], schema: pa.Schema, path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path / "part-00000.parquet")


def _clean(run: Path) -> None:
    def rows(table: str, tuples: list[tuple]) -> list[dict]:
        names = INPUT_SCHEMAS[table].names
        return [dict(zip(names, t, strict=False)) for t in tuples]

    sessions = [(*s, "KR", None, None, None) for s in SESSIONS]
    for table, data in (("accounts", ACCOUNTS), ("payments", PAYMENTS), ("transfers", TRANSFERS),
                        ("sessions", sessions), ("labels", LABELS)):
        _write(rows(table, data), INPUT_SCHEMAS[table], run / "clean" / table)


def _events() -> list[dict]:
    """Payments, transfers and sessions in one shape, as graph.build._events does."""
    out = []
    for _e, t, a, card, bin_, m, amt, _cur, st, d, ip in PAYMENTS:
        out.append(dict(src="payments", time=t, acct=a, cp=None, device=d, ip=ip, card=card,
                        merchant=m, bin=bin_, amount=amt, declined=st == "declined"))
    for _e, t, s, dst, amt, _cur, st, d, ip in TRANSFERS:
        out.append(dict(src="transfers", time=t, acct=s, cp=dst, device=d, ip=ip, card=None,
                        merchant=None, bin=None, amount=amt, declined=st == "declined"))
    for _e, t, a, _typ, d, ip in SESSIONS:
        out.append(dict(src="sessions", time=t, acct=a, cp=None, device=d, ip=ip, card=None,
                        merchant=None, bin=None, amount=None, declined=False))
    return out


def _graph(run: Path) -> None:
    edges: dict[tuple[str, str, str], dict] = {}
    activity: dict[tuple[str, str], dict] = {}
    for ev in _events():
        def v(kind: str, value: str | None) -> str | None:
            return None if value is None else f"{kind}:{value}"

        acct = v("account", ev["acct"])
        specs = [("account_device", acct, v("device", ev["device"])), ("account_ip", acct, v("ip", ev["ip"])),
                 ("account_card", acct, v("card", ev["card"])),
                 ("card_merchant", v("card", ev["card"]), v("merchant", ev["merchant"])),
                 ("account_merchant", acct, v("merchant", ev["merchant"])),
                 ("transfer", acct, v("account", ev["cp"]))]
        for etype, src, dst in specs:
            if src is None or dst is None:
                continue
            e = edges.setdefault((src, dst, etype), dict(n=0, amount=D("0.00"), declined=0, times=[]))
            e["n"] += 1
            e["amount"] += ev["amount"] or D("0.00")
            e["declined"] += int(ev["declined"])
            e["times"].append(ev["time"])
        ents = {("account", ev["acct"]), ("account", ev["cp"]), ("device", ev["device"]), ("ip", ev["ip"]),
                ("card", ev["card"]), ("merchant", ev["merchant"])}
        for kind, value in ents:
            if value is None:
                continue
            a = activity.setdefault((kind, value), defaultdict(int, times=[], bin=None))
            a["times"].append(ev["time"])
            a["n_payments"] += ev["src"] == "payments"
            a["n_transfers"] += ev["src"] == "transfers"
            a["n_declined"] += int(ev["declined"])
            if kind == "card":
                a["bin"] = ev["bin"]
    edge_rows = []
    for (src, dst, etype), e in sorted(edges.items()):
        factor = 1 + math.log10(1 + float(e["amount"])) if etype == "transfer" else 1.0
        edge_rows.append(dict(src=src, dst=dst, edge_type=etype, directed=etype == "transfer", n_events=e["n"],
                              amount_sum=e["amount"], n_declined=e["declined"], first_time=min(e["times"]),
                              last_time=max(e["times"]), weight=math.log1p(e["n"]) * factor))
    edge_schema = pa.schema([("src", pa.string()), ("dst", pa.string()), ("edge_type", pa.string()),
                             ("directed", pa.bool_()), ("n_events", pa.int64()),
                             ("amount_sum", pa.decimal128(28, 2)), ("n_declined", pa.int64()),
                             ("first_time", TS), ("last_time", TS), ("weight", pa.float64())])
    _write(edge_rows, edge_schema, run / "graph" / "edges")
    opened = {a: (created, kyc) for a, created, kyc in ACCOUNTS}
    end = dt.datetime.combine(DS + dt.timedelta(days=1), dt.time(0), tzinfo=UTC)
    vertex_rows = []
    for (kind, value), a in sorted(activity.items()):
        created, kyc = opened.get(value, (None, None)) if kind == "account" else (None, None)
        vertex_rows.append(dict(
            id=f"{kind}:{value}", entity_type=kind, entity_id=value, first_seen=min(a["times"]),
            last_seen=max(a["times"]), n_events=len(a["times"]), n_payments=a["n_payments"],
            n_transfers=a["n_transfers"], n_declined=a["n_declined"], created_at=created, kyc_level=kyc,
            account_age_days=None if created is None else (end - created).days, card_bin=a["bin"]))
    vertex_schema = pa.schema([("id", pa.string()), ("entity_type", pa.string()), ("entity_id", pa.string()),
                               ("first_seen", TS), ("last_seen", TS), ("n_events", pa.int64()),
                               ("n_payments", pa.int64()), ("n_transfers", pa.int64()),
                               ("n_declined", pa.int64()), ("created_at", TS), ("kyc_level", pa.int32()),
                               ("account_age_days", pa.int32()), ("card_bin", pa.string())])
    _write(vertex_rows, vertex_schema, run / "graph" / "vertices")
    hub_schema = pa.schema([("id", pa.string()), ("entity_type", pa.string()), ("entity_id", pa.string()),
                            ("degree", pa.int64()), ("rule", pa.string()), ("reason", pa.string()),
                            ("cap", pa.int32()), ("threshold", pa.float64())])
    names = hub_schema.names
    _write([dict(zip(names, h, strict=True)) for h in HUBS], hub_schema, run / "hubs")
    signal_schema = pa.schema([("entity_type", pa.string()), ("entity_id", pa.string()),
                               ("events_n", pa.int64()), ("signal_reasons", pa.list_(pa.string()))])
    _write([dict(entity_type=k, entity_id=v, events_n=len(a["times"]),
                 signal_reasons=SIGNAL_REASONS.get((k, v), []))
            for (k, v), a in sorted(activity.items())], signal_schema, run / "signals")


RINGS_SCHEMA = pa.schema(
    [("ring_id", pa.string()), ("size", pa.int64()), ("n_accounts", pa.int64()), ("n_devices", pa.int64()),
     ("n_ips", pa.int64()), ("n_cards", pa.int64()), ("n_merchants", pa.int64()), ("n_edges", pa.int64()),
     ("density", pa.float64()), ("method", pa.string()), ("first_seen", pa.date32()),
     ("last_seen", pa.date32())])
MEMBERS_SCHEMA = pa.schema(
    [("ring_id", pa.string()), ("entity_type", pa.string()), ("entity_id", pa.string()),
     ("member_vertex", pa.string()), ("role", pa.string()), ("weighted_degree", pa.float64()),
     ("net_flow", pa.float64()), ("gross_flow", pa.float64()), ("money_share", pa.float64()),
     ("ring_links", pa.int64())])


def _rings(run: Path, ds: dt.date) -> None:
    _write([dict(zip(RINGS_SCHEMA.names, r, strict=True)) for r in RINGS[ds]], RINGS_SCHEMA, run / "rings")
    # Every ring a clique: an account is linked to the ring's other accounts, an identifier to all of them.
    n_acc = {r: sum(v.startswith("account:") for r2, v, *_ in MEMBERS[ds] if r2 == r) for r, *_ in MEMBERS[ds]}
    # Each account's only money link is its net flow; the share is over the ring's median mover's.
    movers = {r: [abs(f) for r2, _, _, _, f in MEMBERS[ds] if r2 == r and f] for r, *_ in MEMBERS[ds]}
    median = {r: statistics.median(m) if m else 0.0 for r, m in movers.items()}
    _write([dict(ring_id=r, entity_type=v.split(":", 1)[0], entity_id=v.split(":", 1)[1], member_vertex=v,
                 role=role, weighted_degree=w, net_flow=f, gross_flow=abs(f),
                 money_share=abs(f) / median[r] if median[r] else 0.0, ring_links=n_acc[r] - v.startswith("account:"))
            for r, v, role, w, f in MEMBERS[ds]],
           MEMBERS_SCHEMA, run / "ring_members")


def _risk(run: Path, rows: list[tuple]) -> None:
    expires = ts(24) + dt.timedelta(days=8)
    _write([dict(zip(RISK_SCHEMA.names, (*r, expires), strict=True)) for r in rows], RISK_SCHEMA, run / "risk")


def write_run_folder(output_root: str | Path) -> Path:
    """Write both nights under ``output_root``; return it."""
    root = Path(output_root)
    run = root / f"ds={DS}"
    _clean(run)
    _graph(run)
    _rings(run, DS)
    _risk(run, RISK)
    _rings(root / f"ds={PREV_DS}", PREV_DS)
    _risk(root / f"ds={PREV_DS}", [])
    for night in (DS, PREV_DS):
        (root / f"ds={night}" / "_RUN_COMPLETE").write_text(json.dumps({"run_id": f"{night}-handmade"}))
    return root
