"""ringfence evaluate: metrics on a hand-made truth and risk list, checked by hand."""

import datetime as dt

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from graph.evaluate import evaluate, format_report
from graph.schema import INPUT_SCHEMAS, RISK_SCHEMA, TRUTH_SCHEMAS

DS = dt.date(2026, 11, 24)
T0 = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)


def _write(path, rows, schema):
    path.mkdir(parents=True)
    cols = {f.name: [r.get(f.name) for r in rows] for f in schema}
    pq.write_table(pa.table(cols, schema=schema), path / "part-0.parquet")


@pytest.fixture()
def world(tmp_path):
    accounts = [f"a{i}" for i in range(20)]
    _write(tmp_path / "world/accounts", [{"account_id": a, "created_at": T0, "kyc_level": 1} for a in accounts],
           INPUT_SCHEMAS["accounts"])
    truth = (
        [("m1", "mule", "account", a) for a in ("a0", "a1", "a2", "a3")]
        + [("m2", "mule", "account", a) for a in ("a4", "a5")]
        + [("c1", "card_testing", "account", a) for a in ("a6", "a7")]
        + [("c1", "card_testing", "card", c) for c in ("k1", "k2", "k3", "k4")]
        + [("m1", "mule", "device", "d1")]
    )
    _write(tmp_path / "world/truth/rings",
           [dict(zip(("ring_id", "ring_type", "entity_type", "entity_id"), t, strict=True)) for t in truth],
           TRUTH_SCHEMAS["rings"])
    _write(tmp_path / "world/truth/confounders",
           [{"kind": "payroll_employer", "entity_type": "account", "entity_id": "a10"},
            {"kind": "cgnat_ip", "entity_type": "ip", "entity_id": "10.0.0.1"},
            {"kind": "family_device", "entity_type": "device", "entity_id": "d9"}],
           TRUTH_SCHEMAS["confounders"])
    exp = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    listed = [
        ("account", "a0", "mule"), ("account", "a1", "mule"), ("account", "a2", "mule"),  # m1: 3/4
        ("account", "a4", "card_testing"),  # a mule listed under the wrong type
        ("account", "a6", "card_testing"), ("account", "a7", "card_testing"),
        ("account", "a10", "mule"),  # payroll employer: a false positive
        ("account", "a11", None),  # unknown type, legit: a false positive
        ("card", "k1", "card_testing"), ("card", "k2", "card_testing"), ("card", "k3", "card_testing"),
        ("device", "d1", "mule"), ("ip", "10.0.0.1", "unknown"),
    ]
    _write(tmp_path / f"out/ds={DS}/risk",
           [{"entity_type": e, "entity_id": i, "score": 0.9, "ring_id": None, "ring_type": t,
             "reasons": ["x"], "expires_at": exp} for e, i, t in listed], RISK_SCHEMA)
    return tmp_path


@pytest.mark.spark
def test_evaluate_metrics_by_hand(spark, world):
    rep = evaluate(spark, str(world / "world/truth"), str(world / "out"), DS)
    mule = rep["by_ring_type"]["mule"]
    # listed as mule: a0 a1 a2 a10 -> 3 true of 4 listed; truth mule accounts: 6
    assert mule["accounts"]["tp"] == 3 and mule["accounts"]["listed"] == 4 and mule["accounts"]["truth"] == 6
    assert mule["accounts"]["precision"] == 0.75
    assert mule["accounts"]["recall"] == 0.5
    assert mule["accounts"]["f1"] == round(2 * 0.75 * 0.5 / 1.25, 4)
    assert mule["accounts"]["recall_any_type"] == round(4 / 6, 4)  # a4 counts under any type
    assert mule["devices"] == {"truth": 1, "listed": 1, "recall": 1.0}
    assert mule["rings"] == {"rings": 2, "detected": 2, "detection_rate": 1.0}  # m1 3/4, m2 1/2
    ct = rep["by_ring_type"]["card_testing"]
    assert ct["accounts"]["precision"] == round(2 / 3, 4) and ct["accounts"]["recall"] == 1.0
    assert ct["cards"] == {"truth": 4, "listed": 3, "recall": 0.75}
    o = rep["overall"]
    assert o["accounts"]["tp"] == 6 and o["accounts"]["listed"] == 8 and o["accounts"]["truth"] == 8
    assert o["legit_accounts"] == 12 and o["false_positive_accounts"] == 2
    assert o["false_positive_rate"] == round(2 / 12, 6)
    assert rep["false_positives_by_confounder"] == {"payroll_employer": 1, "cgnat_ip": 1}
    assert rep["listed_by_entity_type"] == {"account": 8, "card": 3, "device": 1, "ip": 1}
    text = format_report(rep)
    assert "payroll_employer=1" in text and "overall" in text


@pytest.mark.spark
def test_evaluate_without_confounders_table(spark, world):
    import shutil

    shutil.rmtree(world / "world/truth/confounders")
    rep = evaluate(spark, str(world / "world/truth"), str(world / "out"), DS)
    assert rep["false_positives_by_confounder"] == {}


@pytest.mark.spark
def test_evaluate_recall_by_activity_in_the_window(spark, world):
    day = dt.datetime(2026, 11, 20, 12, tzinfo=dt.UTC)
    after = dt.datetime(2026, 11, 25, 0, tzinfo=dt.UTC)  # the end of ds: outside the window
    before = dt.datetime(2026, 10, 25, 23, tzinfo=dt.UTC)  # ds - 30 days: outside a 30-day window
    transfers = [("t1", "a0", "a1", day), ("t2", "a1", "a2", day), ("t3", "a1", "a2", day),
                 ("t4", "a0", "a9", after), ("t5", "a3", "a3", day),  # a self-transfer counts once
                 ("t6", "a5", "a9", day), ("t7", "a9", "a5", day)]
    _write(world / "world/transfers",
           [{"event_id": e, "src_account_id": s, "dst_account_id": d, "event_time": t, "amount": 1}
            for e, s, d, t in transfers], INPUT_SCHEMAS["transfers"])
    payments = [("p1", "a6", day), ("p2", "a6", day), ("p3", "a6", day), ("p4", "a7", day), ("p5", "a7", before)]
    _write(world / "world/payments", [{"event_id": e, "account_id": a, "event_time": t, "amount": 1}
                                      for e, a, t in payments], INPUT_SCHEMAS["payments"])

    rep = evaluate(spark, str(world / "world/truth"), str(world / "out"), DS, lookback_days=30)
    mule = rep["by_ring_type"]["mule"]["activity"]
    # transfers in the window: a0 1, a1 3, a2 2, a3 1, a4 0, a5 2; listed as mule: a0 a1 a2 (+ a10, legit)
    assert mule["recall_by_events"] == {"0": {"truth": 1, "listed": 0, "recall": 0.0},
                                        "1": {"truth": 2, "listed": 1, "recall": 0.5},
                                        "2+": {"truth": 3, "listed": 2, "recall": round(2 / 3, 4)}}
    # acting: a0 (listed, 1 transfer) leaves both sides -> 2 of 3 listed, 2 of 3 acting truth
    assert mule["acting"] == {"tp": 2, "listed": 3, "truth": 3, "precision": round(2 / 3, 4),
                              "recall": round(2 / 3, 4), "f1": round(2 / 3, 4)}
    ct = rep["by_ring_type"]["card_testing"]["activity"]
    # payment attempts in the window: a6 3, a7 1 (its other attempt is before the window)
    assert ct["recall_by_events"] == {"0": {"truth": 0, "listed": 0, "recall": None},
                                      "1": {"truth": 1, "listed": 1, "recall": 1.0},
                                      "2+": {"truth": 1, "listed": 1, "recall": 1.0}}
    # listed as card testing: a4 (a mule), a6, a7 (1 attempt: left out) -> P 1/2, R 1/1
    assert ct["acting"]["precision"] == 0.5 and ct["acting"]["recall"] == 1.0
    assert "mule recall by transfers in the window (0: 0/1, 1: 1/2, 2+: 2/3)" in format_report(rep)

    # A shorter window drops the day-20 events: every member is dormant.
    short = evaluate(spark, str(world / "world/truth"), str(world / "out"), DS, lookback_days=2)
    assert short["by_ring_type"]["mule"]["activity"]["recall_by_events"]["0"]["truth"] == 6
