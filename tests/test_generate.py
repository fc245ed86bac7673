"""The synthetic world generator: determinism, the data contract, planted rings and look-alikes.

Tiny worlds (a few thousand accounts, a few days), read back with pyarrow/pandas: no Spark.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from graph.generate import COMPLETE_MARKER, _Pools, generate_world, plan_world, window_start_us
from graph.generate_population import CONFOUNDER_KINDS, build_world
from graph.schema import (
    ENTITY_TYPES,
    EVENT_TABLES,
    FRAUD_LABELS,
    IDENTIFIER_COLUMNS,
    INPUT_SCHEMAS,
    LABELS,
    REQUIRED_COLUMNS,
    STATUSES,
    TRUTH_SCHEMAS,
)

END = dt.date(2026, 11, 24)
ACCOUNTS, DAYS, SEED = 2500, 5, 11
WINDOW_START = pd.Timestamp(END - dt.timedelta(days=DAYS - 1), tz="UTC")
CUTOFF = pd.Timestamp(END, tz="UTC")
WINDOW_END = CUTOFF + pd.Timedelta(days=1)


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gen") / "world"
    generate_world(out, ACCOUNTS, DAYS, END, SEED, label_fraction=0.3)
    return out


@pytest.fixture(scope="module")
def tables(world_dir) -> dict[str, pd.DataFrame]:
    names = ["accounts", "labels", *EVENT_TABLES, "truth/rings", "truth/confounders"]
    out = {}
    for name in names:
        d = pads.dataset(world_dir / name, format="parquet", partitioning="hive").to_table().to_pandas()
        for col in ("amount",):
            if col in d:
                d[col] = d[col].astype(float)
        out[name] = d
    return out


@pytest.fixture(scope="module")
def plan():
    world, planted = plan_world(ACCOUNTS, DAYS, END, SEED)
    return world, planted, _Pools(world)


def _ids(pools, codes) -> set[str]:
    return set(pools.account.take(np.array(sorted(codes), dtype=np.int64)).to_pylist())


def _utc(times: pd.Series) -> np.ndarray:
    return times.dt.tz_convert(None).to_numpy()


def _read_files(root: Path) -> dict[str, object]:
    return {str(p.relative_to(root)): pq.read_table(p) for p in sorted(root.rglob("*.parquet"))}


# --- determinism --------------------------------------------------------------


def test_same_seed_same_world_other_seed_other_world(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate_world(a, 1200, 3, END, 5, 0.3)
    generate_world(b, 1200, 3, END, 5, 0.3)
    generate_world(c, 1200, 3, END, 6, 0.3)
    fa, fb, fc = _read_files(a), _read_files(b), _read_files(c)
    assert fa.keys() == fb.keys()
    for name in fa:
        assert fa[name].equals(fb[name]), name
    assert not fa["payments/ds=2026-11-24/part-00000.parquet"].equals(fc["payments/ds=2026-11-24/part-00000.parquet"])
    assert not fa["truth/rings/part-00000.parquet"].equals(fc["truth/rings/part-00000.parquet"])


def test_rewrite_replaces_existing_world(tmp_path):
    out = tmp_path / "w"
    (out / "payments").mkdir(parents=True)
    (out / "stale.txt").write_text("old")
    summary = generate_world(out, 800, 1, END, 1, 0.3)
    assert not (out / "stale.txt").exists()
    assert (out / COMPLETE_MARKER).exists()
    assert summary["path"] == str(out)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left over


# --- the data contract --------------------------------------------------------


def test_files_have_exact_contract_schemas(world_dir):
    for table, schema in [*INPUT_SCHEMAS.items(), *((f"truth/{k}", v) for k, v in TRUTH_SCHEMAS.items())]:
        files = sorted((world_dir / table).rglob("*.parquet"))
        assert files, table
        for f in files:
            assert pq.read_schema(f).remove_metadata() == schema, f


def test_event_tables_partitioned_by_utc_event_day(world_dir, tables):
    expected = [f"ds={(END - dt.timedelta(days=i)).isoformat()}" for i in reversed(range(DAYS))]
    for table in EVENT_TABLES:
        assert sorted(p.name for p in (world_dir / table).iterdir()) == expected
        df = tables[table]
        assert "ds" not in pq.read_schema(next((world_dir / table).rglob("*.parquet"))).names
        assert (df["event_time"].dt.strftime("%Y-%m-%d") == df["ds"].astype(str)).all(), table
        assert df["event_time"].min() >= WINDOW_START and df["event_time"].max() < WINDOW_END


def test_rows_respect_contract_values(tables):
    for table, cols in REQUIRED_COLUMNS.items():
        df = tables[table]
        assert len(df) > 0, table
        assert df[list(cols)].notna().all().all(), table
    for table in EVENT_TABLES:
        assert tables[table]["event_id"].is_unique, table
    assert tables["accounts"]["account_id"].is_unique
    for table in ("payments", "transfers"):
        df = tables[table]
        assert (df["amount"] > 0).all()
        assert set(df["status"]) == set(STATUSES)
        assert (df["currency"] == "KRW").mean() > 0.95
    assert set(tables["sessions"]["event_type"]) <= {"signup", "login", "password_reset", "app_open"}
    assert {"signup", "login", "app_open"} <= set(tables["sessions"]["event_type"])
    # every account referenced by an event exists
    known = set(tables["accounts"]["account_id"])
    assert set(tables["payments"]["account_id"]) <= known
    assert set(tables["transfers"]["src_account_id"]) | set(tables["transfers"]["dst_account_id"]) <= known


def test_no_identifier_looks_like_a_card_number(tables):
    def luhn_ok(digits: str) -> bool:
        total = 0
        for i, ch in enumerate(reversed(digits)):
            d = int(ch) * (2 if i % 2 else 1)
            total += d - 9 if d > 9 else d
        return total % 10 == 0

    run = re.compile(r"(?:\d[ -]?){13,19}")
    cols = {**IDENTIFIER_COLUMNS, "truth/rings": ("entity_id",), "truth/confounders": ("entity_id",)}
    for table, names in cols.items():
        for col in names:
            values = tables[table][col].dropna().astype(str)
            # at most 12 digits in any id: no separator-stripping detector can find a PAN
            assert values.str.count(r"\d").max() <= 12, (table, col)
            hits = [v for v in values for m in run.findall(v) if luhn_ok(re.sub(r"\D", "", m))]
            assert not hits, (table, col, hits[:3])
    pay = tables["payments"]
    assert pay["card_token"].str.fullmatch(r"ct-[0-9a-f]{16}").all()
    assert pay["card_bin"].dropna().str.fullmatch(r"\d{6}").all()
    assert pay["card_bin"].isna().any()  # nullable, as in real extracts
    assert tables["accounts"]["account_id"].str.startswith("a-").all()
    assert pay["device_id"].dropna().str.startswith("d-").all()
    assert pay["merchant_id"].str.startswith("m-").all()
    assert pay["ip"].dropna().str.fullmatch(r"\d{1,3}(\.\d{1,3}){3}").all()


# --- planted card-testing rings ----------------------------------------------


def test_card_testing_rings_have_their_signature(tables, plan):
    world, _, _ = plan
    pay, rings, sess = tables["payments"], tables["truth/rings"], tables["sessions"]
    ct = rings[rings.ring_type == "card_testing"]
    typology = {r.ring_id: r.typology for r in world.rings}
    stolen = pay.merge(ct[ct.entity_type == "card"][["ring_id", "entity_id"]],
                       left_on="card_token", right_on="entity_id")
    tests = stolen[stolen.amount <= 1000]
    assert set(tests.ring_id) == set(ct.ring_id)
    for ring_id, g in tests.groupby("ring_id"):
        assert (g.status == "declined").mean() >= 0.5, ring_id
        assert g.card_bin.nunique() <= 3, ring_id  # stolen cards concentrate in a few BINs
        members = set(ct[(ct.ring_id == ring_id) & (ct.entity_type == "account")].entity_id)
        assert set(g.account_id) <= members
        if typology[ring_id] == "bot_burst":
            assert g.merchant_id.nunique() <= 3
            per_day = g.groupby(g.event_time.dt.date).event_time.agg(lambda t: t.max() - t.min())
            assert (per_day < pd.Timedelta(hours=2)).all(), ring_id  # bursts last minutes
            cv = sess[sess.account_id.isin(members)].tap_interval_cv.dropna()
            assert cv.median() < 0.08, ring_id
        else:
            assert g.merchant_id.nunique() >= 10 and g.ip.nunique() >= 5, ring_id
    # cards that passed a test are monetised later with larger purchases
    first_ok = tests[tests.status == "approved"].groupby("card_token").event_time.min()
    later = stolen[(stolen.amount > 10_000)]
    assert len(later) > 0
    assert (_utc(later.event_time) > _utc(first_ok.reindex(later.card_token))).all()
    # legitimate background looks human
    ring_accounts = set(rings[rings.entity_type == "account"].entity_id)
    legit_pay = pay[~pay.account_id.isin(ring_accounts)]
    assert 0.01 < (legit_pay.status == "declined").mean() < 0.06
    assert 3000 < legit_pay.amount.median() < 10000
    legit_cv = sess[~sess.account_id.isin(ring_accounts)].tap_interval_cv.dropna()
    assert 0.3 < legit_cv.median() < 1.2 and (legit_cv < 0.08).mean() < 0.001


# --- planted mule rings --------------------------------------------------------


def test_mules_pass_money_through_fast(tables, plan):
    _, planted, pools = plan
    tr = tables["transfers"]
    tr = tr[tr.status == "approved"]
    mules = _ids(pools, planted.pass_through)
    assert len(mules) >= 5
    inflow = tr[tr.dst_account_id.isin(mules)].groupby("dst_account_id").amount.sum()
    outflow = tr[tr.src_account_id.isin(mules)].groupby("src_account_id").amount.sum()
    ratio = outflow.reindex(inflow.index).fillna(0) / inflow
    # friend transfers on the side blur a few accounts; most keep only a small margin
    assert ratio.median() >= 0.8 and ratio.between(0.5, 1.2).mean() >= 0.8
    dwell = []
    for a in mules:
        ins = np.sort(_utc(tr[tr.dst_account_id == a].event_time))
        outs = np.sort(_utc(tr[tr.src_account_id == a].event_time))
        j = np.searchsorted(outs, ins)
        dwell += [(outs[k] - t) / np.timedelta64(1, "h") for t, k in zip(ins, j, strict=True) if k < len(outs)]
    assert np.median(dwell) <= 24


def test_victims_are_not_ring_members(tables, plan):
    _, planted, pools = plan
    rings = tables["truth/rings"]
    victims = _ids(pools, planted.victims)
    assert victims and not victims & set(rings.entity_id)
    assert victims <= set(tables["accounts"].account_id)
    # victims really sent money to ring accounts
    ring_accounts = set(rings[rings.entity_type == "account"].entity_id)
    tr = tables["transfers"]
    assert victims <= set(tr[tr.dst_account_id.isin(ring_accounts)].src_account_id)


def test_rings_are_varied_new_and_low_kyc(tables, plan):
    world, _, _ = plan
    rings, acc = tables["truth/rings"], tables["accounts"]
    sizes = rings[rings.entity_type == "account"].groupby("ring_id").size()
    assert sizes.between(3, 40).all() and sizes.nunique() > 1
    assert set(rings.ring_type) == {"mule", "card_testing"}
    assert {r.typology for r in world.rings} == {"fan_in_out", "scatter_gather", "layering", "cycle",
                                                 "bot_burst", "low_and_slow"}
    # some mule rings are linked by money only: no device farm, no proxy exits
    infra = rings[rings.entity_type.isin(["device", "ip"])].ring_id.unique()
    assert set(rings[rings.ring_type == "mule"].ring_id) - set(infra)
    members = set(rings[rings.entity_type == "account"].entity_id)
    ring_acc, legit_acc = acc[acc.account_id.isin(members)], acc[~acc.account_id.isin(members)]
    assert ring_acc.created_at.median() > CUTOFF - pd.Timedelta(days=365) > legit_acc.created_at.median()
    assert ring_acc.kyc_level.mean() < legit_acc.kyc_level.mean() - 0.8
    # camouflage: ring accounts also pay at ordinary merchants with their own cards
    pay = tables["payments"]
    own = pay[pay.account_id.isin(members) & ~pay.card_token.isin(rings.entity_id)]
    assert own.account_id.nunique() >= 0.3 * len(members)


def test_ring_count_and_share_scale_with_accounts():
    w = build_world(20_000, 30, window_start_us(END, 30), 7)
    n_ring_accounts = sum(len(r.members) for r in w.rings)
    assert 25 <= len(w.rings) <= 50
    assert 0.02 <= n_ring_accounts / 20_000 <= 0.04


# --- benign look-alikes and labels --------------------------------------------


def test_confounders_present_and_look_alike(tables):
    conf, rings = tables["truth/confounders"], tables["truth/rings"]
    assert set(conf.kind) == set(CONFOUNDER_KINDS)
    assert not set(conf.entity_id) & set(rings.entity_id)
    events = pd.concat([tables["payments"][["account_id", "ip", "device_id"]],
                        tables["sessions"][["account_id", "ip", "device_id"]]])
    per_ip = events.groupby("ip").account_id.nunique()
    assert per_ip.reindex(conf[conf.kind == "cgnat_ip"].entity_id).median() >= 50  # NAT: many honest users
    per_dev = events.groupby("device_id").account_id.nunique()
    assert per_dev.reindex(conf[conf.kind == "family_device"].entity_id).max() >= 2
    tr = tables["transfers"]
    fan_out = tr[tr.src_account_id.isin(conf[conf.kind == "payroll_employer"].entity_id)]
    assert fan_out.groupby("src_account_id").dst_account_id.nunique().min() >= 20
    fan_in = tr[tr.dst_account_id.isin(conf[conf.kind == "marketplace"].entity_id)]
    assert fan_in.src_account_id.nunique() >= 50
    travellers = conf[conf.kind == "traveller"].entity_id
    abroad = tables["sessions"][tables["sessions"].account_id.isin(travellers)]
    assert (abroad.ip_country != "KR").any() and (abroad.ip_country == "KR").any()


def test_labels_before_and_after_cutoff_with_noise(tables):
    lab, rings = tables["labels"], tables["truth/rings"]
    assert set(lab.label) <= set(LABELS) and set(lab.entity_type) <= set(ENTITY_TYPES)
    before, after = lab[lab.labeled_at < CUTOFF], lab[lab.labeled_at >= CUTOFF]
    assert len(before) and len(after)
    assert {"mule", "card_testing", "legit"} <= set(before.label)
    ring_type = dict(zip(rings.entity_id, rings.ring_type, strict=False))
    fraud = lab[lab.label.isin(FRAUD_LABELS)]
    on_rings = fraud[fraud.entity_id.isin(ring_type)]
    assert (on_rings.label == on_rings.entity_id.map(ring_type)).all()
    noise = fraud[~fraud.entity_id.isin(ring_type)]
    assert len(noise) >= 3 and (noise.labeled_at < CUTOFF).all()
    assert len(noise) < 0.2 * len(fraud[fraud.labeled_at < CUTOFF])
    legit = lab[lab.label == "legit"]
    biz = tables["truth/confounders"]
    assert set(biz[biz.kind == "payroll_employer"].entity_id) <= set(legit.entity_id)
    # about label_fraction of ring accounts are known before the cut-off
    members = rings[rings.entity_type == "account"].entity_id
    known = set(before[before.label.isin(FRAUD_LABELS)].entity_id)
    assert 0.15 <= members.isin(known).mean() <= 0.45


@pytest.mark.spark
def test_spark_reads_the_world_with_contract_types(spark, world_dir):
    """The job reads these files with Spark: types must map to the contract's DDL, ds a partition."""
    from pyspark.sql.types import _parse_datatype_string

    from graph.schema import spark_ddl

    for table in EVENT_TABLES:
        df = spark.read.parquet(str(world_dir / table))
        expected = _parse_datatype_string(spark_ddl(INPUT_SCHEMAS[table]))
        got = {f.name: f.dataType for f in df.schema.fields}
        assert {f.name: f.dataType for f in expected.fields}.items() <= got.items(), table
        assert "ds" in got
        assert df.select("ds").distinct().count() == DAYS
