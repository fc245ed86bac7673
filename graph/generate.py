"""``ringfence generate``: a synthetic micropayment world with planted fraud rings.

The world is hard on purpose: a Korean micropayment platform's legitimate
background (Zipf merchants, daily and weekly rhythm, families, carrier NAT,
offices, friends), benign look-alikes (payroll fan-out, dues fan-in,
marketplace pass-through, travellers' geo jumps, shared family devices),
mule rings of four typologies and card-testing rings (bot bursts and
low-and-slow), whose members also behave normally part of the time.

No Spark: numpy draws integer codes day by day, pyarrow turns them into the
contract's tables (graph/schema.py). The same seed gives the same tables.
The world is written into a temporary sibling folder and renamed into place,
then ``_WORLD_COMPLETE`` is written, so a half-written world is never used.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from graph.generate_common import (
    CURRENCIES,
    DAY_US,
    HOUR_US,
    SESSION_TYPES,
    concat_columns,
    day_code,
    decimal_from_minor,
    digit_ids,
    hex_ids,
    ipv4_text,
    rng_for,
    take_nullable,
    take_rows,
    timestamps,
)
from graph.generate_events import Planted, background_day, plant_all
from graph.generate_population import COUNTRIES, World, build_world
from graph.schema import EVENT_TABLES, INPUT_SCHEMAS, TRUTH_SCHEMAS

log = logging.getLogger(__name__)

COMPLETE_MARKER = "_WORLD_COMPLETE"
EVENT_ID_PREFIX = {"payments": "p", "transfers": "t", "sessions": "s"}
_EPOCH = dt.date(1970, 1, 1)
# Dictionary-encode only columns with few distinct values per day: on unique ids (event_id,
# card_token) the dictionary is pure cost, doubling write time for nothing.
_DICTIONARY_COLUMNS = ["account_id", "src_account_id", "dst_account_id", "merchant_id", "card_bin",
                       "currency", "status", "event_type", "ip_country"]


def window_start_us(end_date: dt.date, days: int) -> int:
    """Microseconds of the first event day's midnight UTC (days are inclusive)."""
    return ((end_date - _EPOCH).days - (days - 1)) * DAY_US


def plan_world(accounts: int, days: int, end_date: dt.date, seed: int) -> tuple[World, Planted]:
    """The population and the planted flows (deterministic per seed); events come from
    these plus :func:`background_day`. Exposed so tests can see roles (victims, mules)."""
    if days < 1:
        raise ValueError("days must be >= 1")
    world = build_world(accounts, days, window_start_us(end_date, days), seed)
    return world, plant_all(world)


class _Pools:
    """Text of every code, built once per world."""

    def __init__(self, w: World):
        rng = rng_for(w.seed, 9)
        acc_num = rng.permutation(w.n) + 1 + int(rng.integers(0, 10**7))
        self.account_num = acc_num
        self.account = digit_ids("a-", acc_num, 8)
        self.device = hex_ids("d-", np.arange(w.n_devices), salt=int(rng.integers(0, 2**47)))
        self.card = hex_ids("ct-", np.arange(w.n_cards), salt=int(rng.integers(0, 2**47)),
                            letters_at=(2, 5, 8, 11))
        self.merchant = digit_ids("m-", np.arange(1, w.n_merchants + 1), 6)
        self.ip = ipv4_text(w.ip_addr)
        self.bin = pa.array(w.bins, type=pa.string())
        self.country = pa.array(COUNTRIES, type=pa.string())
        self.currency = pa.array(CURRENCIES, type=pa.string())
        self.status = pa.array(["approved", "declined"], type=pa.string())
        self.session_type = pa.array(SESSION_TYPES, type=pa.string())

    def entity(self, entity_type: str, codes: np.ndarray) -> pa.Array:
        pool = {"account": self.account, "device": self.device, "card": self.card, "ip": self.ip,
                "merchant": self.merchant}[entity_type]
        return pool.take(pa.array(np.asarray(codes, dtype=np.int64)))


def _event_table(table: str, c: dict[str, np.ndarray], w: World, p: _Pools, day_number: int) -> pa.Table:
    order = np.argsort(c["t"], kind="stable")
    c = take_rows(c, order)
    n = len(order)
    ids = digit_ids(f"{EVENT_ID_PREFIX[table]}{day_code(day_number)}-", np.arange(n), 8)
    if table == "payments":
        arrays = [ids, timestamps(c["t"]), p.account.take(pa.array(c["acc"])), p.card.take(pa.array(c["card"])),
                  take_nullable(p.bin, w.card_bin[c["card"]]), p.merchant.take(pa.array(c["merch"])),
                  decimal_from_minor(c["amt"]), p.currency.take(pa.array(c["cur"])),
                  p.status.take(pa.array(c["dec"].astype(np.int8))), take_nullable(p.device, c["dev"]),
                  take_nullable(p.ip, c["ip"])]
    elif table == "transfers":
        arrays = [ids, timestamps(c["t"]), p.account.take(pa.array(c["src"])),
                  p.account.take(pa.array(c["dst"])), decimal_from_minor(c["amt"]),
                  p.currency.take(pa.array(c["cur"])), p.status.take(pa.array(c["dec"].astype(np.int8))),
                  take_nullable(p.device, c["dev"]), take_nullable(p.ip, c["ip"])]
    else:
        ip = c["ip"]
        no_ip = ip < 0
        safe = np.where(no_ip, 0, ip)
        mask = no_ip if no_ip.any() else None
        arrays = [ids, timestamps(c["t"]), p.account.take(pa.array(c["acc"])),
                  p.session_type.take(pa.array(c["etype"])), take_nullable(p.device, c["dev"]),
                  take_nullable(p.ip, ip), take_nullable(p.country, np.where(no_ip, -1, w.ip_country[safe])),
                  pa.array(w.ip_lat[safe], mask=mask), pa.array(w.ip_lon[safe], mask=mask),
                  pa.array(c["cv"], mask=np.isnan(c["cv"]), type=pa.float64())]
    return pa.Table.from_arrays(arrays, schema=INPUT_SCHEMAS[table])


def _split_planted_by_day(w: World, planted: Planted) -> dict[str, tuple[dict, np.ndarray]]:
    """Planted events sorted by day, with the row offsets of each day (outside the window: dropped)."""
    out = {}
    for table in EVENT_TABLES:
        c = getattr(planted, table).columns()
        inside = (c["t"] >= w.start_us) & (c["t"] < w.end_us)
        c = take_rows(c, inside)
        day = (c["t"] - w.start_us) // DAY_US
        order = np.argsort(day, kind="stable")
        c = take_rows(c, order)
        out[table] = (c, np.searchsorted(day[order], np.arange(w.days + 1)))
    return out


def _accounts_table(w: World, p: _Pools) -> pa.Table:
    order = np.argsort(p.account_num)
    kyc = w.kyc[order]
    return pa.Table.from_arrays(
        [p.account.take(pa.array(order)), timestamps(w.created_us[order]),
         pa.array(kyc, mask=kyc < 0, type=pa.int32())],
        schema=INPUT_SCHEMAS["accounts"])


def _truth_tables(w: World, p: _Pools) -> tuple[pa.Table, pa.Table, Counter]:
    ring_rows: dict[str, list] = {"ring_id": [], "ring_type": [], "entity_type": [], "entity_id": []}
    members = Counter()
    for ring in w.rings:
        for etype, codes in (("account", ring.members), ("device", ring.farm_devices),
                             ("ip", ring.proxy_ips), ("card", ring.cards)):
            if len(codes):
                ring_rows["ring_id"] += [ring.ring_id] * len(codes)
                ring_rows["ring_type"] += [ring.ring_type] * len(codes)
                ring_rows["entity_type"] += [etype] * len(codes)
                ring_rows["entity_id"] += p.entity(etype, codes).to_pylist()
                members[etype] += len(codes)
    rings = pa.Table.from_pydict(ring_rows, schema=TRUTH_SCHEMAS["rings"])
    parts = [pa.table({"kind": pa.array([kind] * len(codes), pa.string()),
                       "entity_type": pa.array([etype] * len(codes), pa.string()),
                       "entity_id": p.entity(etype, codes)})
             for kind, etype, codes in w.confounders]
    conf = pa.concat_tables(parts).cast(TRUTH_SCHEMAS["confounders"])
    return rings, conf, members


def _labels_table(w: World, planted: Planted, p: _Pools, label_fraction: float) -> tuple[pa.Table, dict]:
    """Known outcomes: a fraction of ring entities before the cut-off, more after it (future
    knowledge), some wrong fraud labels on legitimate entities and some ``legit`` reviews."""
    rng = rng_for(w.seed, 4)
    cutoff = w.end_us - DAY_US  # the run's cut-off: start of the end date
    rows: list[tuple[str, int, str, int, str]] = []
    stats = Counter()
    labelled_accounts = set()

    def at_before(lo: int) -> int:
        lo = min(lo, cutoff - HOUR_US)
        return int(rng.integers(lo, cutoff))

    for ring in w.rings:
        first = planted.first_activity.get(ring.ring_id, w.start_us)
        label = ring.ring_type
        for etype, codes in (("account", ring.members), ("device", ring.farm_devices),
                             ("card", ring.cards), ("ip", ring.proxy_ips)):
            frac = label_fraction * (0.3 if etype == "ip" else 1.0)
            for code in codes:
                u = rng.random()
                if etype == "card":
                    source = "chargeback"
                elif label == "mule" and etype == "account":
                    source = "customer_report" if rng.random() < 0.5 else "investigator"
                else:
                    source = "investigator"
                if u < frac:
                    rows.append((etype, int(code), label, at_before(first + HOUR_US), source))
                    stats["ring_before_cutoff"] += 1
                    if etype == "account":
                        labelled_accounts.add(int(code))
                elif u < frac + 0.25:
                    rows.append((etype, int(code), label, cutoff + int(rng.integers(HOUR_US, 45 * DAY_US)), source))
                    stats["ring_after_cutoff"] += 1
                elif etype == "account" and rng.random() < 0.02:
                    # a mule that passed a review: wrong ``legit`` label
                    rows.append((etype, int(code), "legit", at_before(w.start_us - 30 * DAY_US), "kyc_review"))
                    stats["noise_legit_on_ring"] += 1
    # label noise: honest accounts (often victims) reported as fraud, friendly-fraud chargebacks
    n_noise = max(3, round(0.04 * stats["ring_before_cutoff"]))
    victims = np.array(sorted(planted.victims), dtype=np.int64)
    legit = np.arange(w.n_legit)
    for i in range(n_noise):
        if i % 3 == 2:
            acc = int(rng.choice(legit))
            rows.append(("card", int(w.card1[acc]), "fraud", at_before(w.start_us), "chargeback"))
        else:
            acc = int(rng.choice(victims)) if len(victims) and i % 2 == 0 else int(rng.choice(legit))
            rows.append(("account", acc, "mule" if i % 2 else "fraud", at_before(w.start_us), "customer_report"))
        stats["noise_fraud_on_legit"] += 1
    # reviewed and cleared: the benign look-alike businesses and a sample of ordinary accounts
    biz = [a for a, _ in w.payroll] + [c for c, _, _ in w.rent] + [m for m, _, _ in w.markets]
    cleared = np.unique(np.concatenate([np.array(biz, dtype=np.int64),
                                        rng.choice(legit, max(5, w.n // 300), replace=False)]))
    for acc in cleared:
        rows.append(("account", int(acc), "legit", at_before(w.start_us - 90 * DAY_US), "investigator"))
        stats["legit"] += 1
    rows.sort(key=lambda r: (r[3], r[0], r[1]))
    by_type: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_type.setdefault(r[0], []).append(i)
    entity_ids: list = [None] * len(rows)
    for etype, idx in by_type.items():
        for i, text in zip(idx, p.entity(etype, np.array([rows[i][1] for i in idx])).to_pylist(), strict=True):
            entity_ids[i] = text
    table = pa.Table.from_arrays(
        [pa.array([r[0] for r in rows], pa.string()), pa.array(entity_ids, pa.string()),
         pa.array([r[2] for r in rows], pa.string()), timestamps(np.array([r[3] for r in rows], dtype=np.int64)),
         pa.array([r[4] for r in rows], pa.string())],
        schema=INPUT_SCHEMAS["labels"])
    return table, dict(stats)


def _replace_dir(tmp: Path, out: Path) -> None:
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    if old.exists():
        shutil.rmtree(old)


def generate_world(out: Path, accounts: int, days: int, end_date: dt.date, seed: int,
                   label_fraction: float) -> dict:
    """Write inputs (accounts, payments, transfers, sessions, labels) and ground truth
    (truth/rings, truth/confounders) under ``out``; returns a summary."""
    out = Path(out)
    if not 0.0 <= label_fraction <= 1.0:
        raise ValueError("label_fraction must be within [0, 1]")
    world, planted = plan_world(accounts, days, end_date, seed)
    pools = _Pools(world)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()

    rows = Counter()
    planted_days = _split_planted_by_day(world, planted)
    first_day_number = world.start_us // DAY_US
    for day in range(days):
        ds = (end_date - dt.timedelta(days=days - 1 - day)).isoformat()
        background = background_day(world, day)
        for table in EVENT_TABLES:
            pc, bounds = planted_days[table]
            cols = concat_columns(table, [background[table], take_rows(pc, slice(bounds[day], bounds[day + 1]))])
            t = _event_table(table, cols, world, pools, first_day_number + day)
            part = tmp / table / f"ds={ds}"
            part.mkdir(parents=True)
            pq.write_table(t, part / "part-00000.parquet", use_dictionary=_DICTIONARY_COLUMNS)
            rows[table] += t.num_rows
        log.info("generated %s", ds)

    accounts_t = _accounts_table(world, pools)
    labels_t, label_stats = _labels_table(world, planted, pools, label_fraction)
    rings_t, conf_t, members = _truth_tables(world, pools)
    for name, t in (("accounts", accounts_t), ("labels", labels_t), ("truth/rings", rings_t),
                    ("truth/confounders", conf_t)):
        (tmp / name).mkdir(parents=True)
        pq.write_table(t, tmp / name / "part-00000.parquet")
        rows[name] = t.num_rows
    _replace_dir(tmp, out)

    summary = {
        "path": str(out),
        "window": [(end_date - dt.timedelta(days=days - 1)).isoformat(), end_date.isoformat()],
        "seed": seed,
        "rows": dict(rows),
        "events": rows["payments"] + rows["transfers"] + rows["sessions"],
        "rings": dict(Counter(r.ring_type for r in world.rings)),
        "ring_typologies": dict(Counter(r.typology for r in world.rings)),
        "ring_members": dict(members),
        "ring_accounts_fraction": round(members["account"] / accounts, 4),
        "rings_without_shared_infrastructure": sum(1 for r in world.rings
                                                   if not len(r.farm_devices) and not len(r.proxy_ips)),
        "confounders": {kind: len(codes) for kind, _, codes in world.confounders},
        "labels": label_stats,
        "victims": len(planted.victims),
    }
    (out / COMPLETE_MARKER).write_text(json.dumps(summary, indent=2) + "\n")
    return summary
