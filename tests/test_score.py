"""Ring typing, entity scores and the risk list on a small hand-made world.

The world (ds 2026-11-24, label cut-off 2026-11-24T00:00Z):

- ring RCT, card testing: accounts ct-1..ct-4 on one device and one IP,
  two test cards each, 75% of their attempts declined, mostly tiny;
- ring RMULE, mules: a collector (fan-in 12) and four new accounts that
  forward 90%+ of inflows, all on one device;
- ring RHON: a family of four sharing a device, ordinary behaviour;
- ring RBIG: twenty ordinary accounts, one of them wrongly labelled mule;
- a lone bot device d-bot (300 attempts, 90% declined, 120 cards), in no ring;
- a busy honest merchant all of them pay at.

Signals are written by hand (``signal_reasons`` adds their reason texts), so
every expectation below follows from the formulas in graph/score.py.
"""

from __future__ import annotations

import datetime as dt
import math
import re

import pytest

from graph import score as SC
from graph.errors import SchemaError
from graph.export import bad_row_counts
from graph.schema import INPUT_SCHEMAS, RISK_RING_TYPES, RISK_SCHEMA, spark_ddl
from graph.signals import SIGNAL_COLUMNS, signal_reasons

pytestmark = pytest.mark.spark

DS = dt.date(2026, 11, 24)
EDGES_DDL = "src STRING, dst STRING, edge_type STRING"
SIGNALS_DDL = ", ".join(f"`{n}` {t}" for n, t in SIGNAL_COLUMNS)


def ts(*a: int) -> dt.datetime:
    return dt.datetime(*a, tzinfo=dt.UTC)


def sig(etype: str, eid: str, **kw) -> tuple:
    unknown = set(kw) - {n for n, _ in SIGNAL_COLUMNS}
    assert not unknown, unknown
    return tuple({"entity_type": etype, "entity_id": eid, **kw}.get(n) for n, _ in SIGNAL_COLUMNS)


def card_tester(etype, eid, attempts, rate, cards, burst=2.0, span=30.0, tiny=0.9):
    return sig(etype, eid, attempts=attempts, declined=round(attempts * rate), decline_rate=rate,
               tiny_share=tiny, distinct_cards=cards, distinct_bins=1, top_bin_share=1.0,
               distinct_merchants=1, burst_attempts_per_min=burst, attempt_span_minutes=span)


def ordinary(eid, **kw):
    base = dict(attempts=10, declined=0, decline_rate=0.0, tiny_share=0.1, distinct_cards=1,
                distinct_merchants=3, burst_attempts_per_min=0.1, inflow_n=2, outflow_n=1, fan_in=1,
                fan_out=1, pass_through_ratio=0.1, account_age_days=400, kyc_level=2)
    return sig("account", eid, **{**base, **kw})


def mule(eid, inflows, pass_through, fan_in, fan_out, age):
    return sig("account", eid, inflow_n=inflows, outflow_n=inflows, fan_in=fan_in, fan_out=fan_out,
               pass_through_ratio=pass_through, median_dwell_hours=2.0, account_age_days=age, kyc_level=0)


CT = [f"ct-{i}" for i in range(1, 5)]
MU = [f"mu-{i}" for i in range(1, 6)]
HON = [f"h-{i}" for i in range(1, 5)]
BIG = [f"b-{i:02d}" for i in range(1, 21)]
CARDS = {a: [f"c-{a[-1]}a", f"c-{a[-1]}b"] for a in CT}


def signal_rows() -> list[tuple]:
    rows = [card_tester("account", a, 60, 0.75, 15) for a in CT]
    rows += [card_tester("device", "d-ct", 240, 0.75, 60, burst=4.0),
             card_tester("ip", "10.1.1.1", 240, 0.75, 60, burst=4.0)]
    rows += [sig("card", c, attempts=3, declined=3, decline_rate=1.0, tiny_share=1.0, distinct_merchants=1,
                 burst_attempts_per_min=0.3, attempt_span_minutes=5.0) for cs in CARDS.values() for c in cs]
    rows.append(mule("mu-1", 12, 0.95, 12, 3, 200))
    rows += [mule(a, 5, 0.9, 2, 2, 5) for a in MU[1:]]
    rows += [ordinary(a) for a in HON + BIG]
    rows.append(sig("merchant", "m-shop", attempts=5000, declined=300, decline_rate=0.06, tiny_share=0.2,
                    distinct_cards=900, distinct_accounts=800))
    rows.append(card_tester("device", "d-bot", 300, 0.9, 120, burst=5.0, span=9.0, tiny=0.95))
    rows.append(ordinary("trav", impossible_travel_n=1, fastest_hop_km=9000.0, fastest_hop_hours=2.0,
                         fastest_hop_from="KR", fastest_hop_to="US"))
    return rows


def ring_rows():
    return [
        ("RCT", 4, 4, 0, 0, 0, 0, 6, 1.0, "louvain", DS, DS),
        ("RMULE", 5, 5, 0, 0, 0, 0, 4, 0.4, "louvain", DS, DS),
        ("RHON", 4, 4, 0, 0, 0, 0, 6, 1.0, "louvain", DS, DS),
        ("RBIG", 20, 20, 0, 0, 0, 0, 38, 0.2, "louvain", DS, DS),
    ]


# Ring accounts each member is directly linked to: the card ring and the family are cliques,
# the mule ring a star around its collector mu-1, the big ring a loose mesh.
RING_LINKS = {**{a: 3 for a in CT + HON}, "mu-1": 4, **{a: 1 for a in MU[1:]},
              **{a: 1 + i % 4 for i, a in enumerate(BIG)}}


# Money each member moved on mule-like links over its ring's median mover's (graph/rings.py money_share):
# the mule ring's senders alike, its collector all of it; in the big ring one forwarded a little.
MONEY_SHARE = {**{a: 0.0 for a in CT + HON + BIG}, "mu-1": 4.0, **{a: 1.0 for a in MU[1:]},
               "b-03": 0.3}


def member_rows():
    rows = []
    for ring, accts in (("RCT", CT), ("RMULE", MU), ("RHON", HON), ("RBIG", BIG)):
        rows += [(ring, "account", a, f"account:{a}", "member", 1.0, 0.0, 0.0, MONEY_SHARE[a], RING_LINKS[a])
                 for a in accts]
    return rows


def edge_rows():
    rows = []
    for a in CT:
        rows += [(f"account:{a}", "device:d-ct", "account_device"), (f"account:{a}", "ip:10.1.1.1", "account_ip")]
        rows += [(f"account:{a}", f"card:{c}", "account_card") for c in CARDS[a]]
    rows += [(f"account:{a}", "device:d-mu", "account_device") for a in MU]
    rows += [(f"account:{a}", "device:d-fam", "account_device") for a in HON]
    # Everyone pays at the honest merchant.
    rows += [(f"account:{a}", "merchant:m-shop", "account_merchant") for a in CT + MU + HON + BIG]
    return rows


# Wrong labels come from customer reports and chargebacks (victims reported, friendly fraud).
WRONG_LABEL = ("account", "b-07", "mule", ts(2026, 11, 2, 15), "customer_report")


@pytest.fixture(scope="module")
def inputs(spark, config):
    signals = signal_reasons(spark.createDataFrame(signal_rows(), SIGNALS_DDL), config).cache()
    return {
        "rings": spark.createDataFrame(ring_rows(), SC.RINGS_DDL),
        "ring_members": spark.createDataFrame(member_rows(), SC.RING_MEMBERS_DDL),
        "edges": spark.createDataFrame(edge_rows(), EDGES_DDL),
        "signals": signals,
    }


def labels_df(spark, rows=()):
    return spark.createDataFrame(list(rows), spark_ddl(INPUT_SCHEMAS["labels"]))


def every_score(cfg):
    """``cfg`` keeping every scored entity in ``entity_scores`` (the tests read unremarkable ones too)."""
    return cfg.model_copy(update={"scoring": cfg.scoring.model_copy(update={"entity_scores_min_score": 0.0})})


def run(spark, config, inputs, labels=(), propagated=None, cfg=None):
    """(typed rings by id, entity score rows by (type, id), risk rows by (type, id)); all tiny; every score."""
    cfg = every_score(cfg or config)
    res = SC.score_run(inputs["rings"], inputs["ring_members"], inputs["edges"], inputs["signals"],
                       labels_df(spark, labels), propagated, cfg, DS)
    # Cached so the entity scores reuse the typed rings instead of recomputing them.
    rings, scores = res.rings.cache(), res.scores.cache()
    risk = SC.risk_list(scores, cfg, DS)
    out = ({r["ring_id"]: r for r in rings.collect()},
           {(r["entity_type"], r["entity_id"]): r for r in scores.collect()},
           {(r["entity_type"], r["entity_id"]): r for r in risk.collect()},
           risk.schema)
    scores.unpersist()
    rings.unpersist()
    return out


@pytest.fixture(scope="module")
def world(spark, config, inputs):
    return run(spark, config, inputs, labels=[WRONG_LABEL])


# --------------------------------------------------------------------------- rings


def test_card_testing_ring_typed_and_listed_with_its_infrastructure(world):
    rings, scores, risk, _ = world
    rct = rings["RCT"]
    assert rct["ring_type"] == "card_testing" and rct["ring_listed"] and rct["ring_score"] > 0.95
    assert rct["ring_reasons"][0] == ("240 card attempts by 4 ring accounts: 75% declined, 90% tiny, "
                                      "60 cards (15.0 per account)")
    assert "4 of 4 ring accounts share infrastructure (1 device, 1 IP, 0 cards)" in rct["ring_reasons"]
    for a in CT:
        row = risk[("account", a)]
        assert row["ring_id"] == "RCT" and row["ring_type"] == "card_testing"
        assert re.fullmatch(r"in ring RCT \(card_testing, 4 accounts\) with score (0\.9\d|1\.00)", row["reasons"][0])
        assert "75% of 60 card attempts declined within 30 minutes" in row["reasons"]
        assert "shares device d-ct with 3 other ring accounts" in row["reasons"]
        assert "shares IP 10.1.1.1 with 3 other ring accounts" in row["reasons"]
    for key in [("device", "d-ct"), ("ip", "10.1.1.1")]:
        assert risk[key]["ring_id"] == "RCT" and risk[key]["ring_type"] == "card_testing", key
    assert risk[("device", "d-ct")]["reasons"][0].startswith(
        "used by 4 ring accounts (of 4 accounts in all) of ring RCT (card_testing, 4 accounts) with score")
    # Each test card is one account's, with 3 attempts: attached to the ring as a link, with its reason,
    # but with the fitted weights (a weak link term) that is not enough to list it on its own.
    for c in (c for cs in CARDS.values() for c in cs):
        assert scores[("card", c)]["attached_ring_id"] == "RCT" and ("card", c) not in risk, c
    assert scores[("card", "c-1a")]["reasons"][0].startswith("used by 1 ring account (of 1 accounts in all)")
    # Every ring pays at the busy merchant; it is not the ring's infrastructure.
    assert ("merchant", "m-shop") not in risk


def test_mule_ring_typed_mule(world):
    rings, scores, risk, _ = world
    rm = rings["RMULE"]
    assert rm["ring_type"] == "mule" and rm["ring_listed"]
    assert "5 of 5 ring accounts forwarded >= 80% of inflows within 48 h (92% of 32 inflows overall)" \
        in rm["ring_reasons"]
    assert "a ring account received transfers from 12 distinct senders" in rm["ring_reasons"]
    assert {a for (t, a), r in risk.items() if r["ring_id"] == "RMULE" and t == "account"} == set(MU)
    assert all(risk[("account", a)]["ring_type"] == "mule" for a in MU)
    assert any(x.startswith("forwarded 95% of inflows within 48 h") for x in risk[("account", "mu-1")]["reasons"])
    assert risk[("account", "mu-2")]["reasons"][1] == \
        "moved 1.0x the money of its ring's median mover on mule-like transfers"
    # The shared device has no behaviour of its own: a link of the ring, not listed on the link alone.
    assert scores[("device", "d-mu")]["attached_ring_id"] == "RMULE" and ("device", "d-mu") not in risk


def test_honest_ring_without_signals_or_labels_not_listed(world, config):
    rings, scores, risk, _ = world
    assert not rings["RHON"]["ring_listed"] and rings["RHON"]["ring_type"] == "unknown"
    # Structure alone: density 1 and every account sharing the family device, no behaviour.
    r = config.scoring.ring
    z = r.bias + r.density * 1.0 + r.shared_infrastructure * 1.0
    assert rings["RHON"]["ring_score"] == pytest.approx(1 / (1 + math.exp(-z)), abs=1e-9)
    assert rings["RHON"]["ring_score"] < r.threshold
    assert not any(k in risk for k in [("account", a) for a in HON] + [("device", "d-fam")])
    assert all(not scores[("account", a)]["listed"] for a in HON)


def test_one_wrong_label_does_not_taint_a_big_community(world, config):
    rings, scores, risk, _ = world
    assert not rings["RBIG"]["ring_listed"]
    assert rings["RBIG"]["ring_score"] < 0.05
    assert rings["RBIG"]["n_fraud_labels"] == 1
    # Nobody is listed, the labelled account included: with the fitted weights an untrusted label alone
    # (no ring, no behaviour of its own) stays below the lone-entity minimum.
    assert not any(a in BIG for (t, a) in risk)
    row = scores[("account", "b-07")]
    assert row["label"] == "mule" and row["ring_type"] == "mule" and not row["listed"]
    assert row["score"] < config.scoring.lone_min_score
    assert row["reasons"] == ["labelled mule by customer report on 2026-11-02"]


def test_investigator_label_lists_the_entity_alone_not_its_community(spark, config, inputs, world):
    _, scores0, _, _ = world
    confirmed = ("account", "b-07", "mule", ts(2026, 11, 2, 15), "investigator")
    rings, scores, risk, _ = run(spark, config, inputs, labels=[confirmed])
    assert "investigator" in config.scoring.trusted_label_sources
    row = risk[("account", "b-07")]
    assert row["ring_id"] is None and row["ring_type"] == "mule"
    assert row["reasons"][0] == "labelled mule by investigator on 2026-11-02"
    # Its own evidence is the same as under the untrusted label; the confirmation sets the floor.
    assert scores[("account", "b-07")]["logit"] == pytest.approx(scores0[("account", "b-07")]["logit"], abs=1e-12)
    assert row["score"] == pytest.approx(config.scoring.trusted_label_score)
    # The community stays unlisted and nobody else in it is listed.
    assert not rings["RBIG"]["ring_listed"]
    assert {a for (t, a) in risk if a in BIG} == {"b-07"}
    # A later legit review by an investigator (before the cut-off) takes it off again.
    cleared = ("account", "b-07", "legit", ts(2026, 11, 10), "investigator")
    _, _, risk_cleared, _ = run(spark, config, inputs, labels=[confirmed, cleared])
    assert ("account", "b-07") not in risk_cleared
    # With no trusted source configured the label is evidence only.
    untrusting = config.model_copy(update={"scoring": config.scoring.model_copy(
        update={"trusted_label_sources": []})})
    _, _, risk_untrusting, _ = run(spark, config, inputs, labels=[confirmed], cfg=untrusting)
    assert ("account", "b-07") not in risk_untrusting


def ramp(n: float, bounds: tuple[float, float]) -> float:
    lo, hi = bounds
    return min(max((n - lo) / (hi - lo), 0.0), 1.0)


def assert_member_term(spark, config, inputs, scores0, weight: str, f: dict[str, float]) -> dict:
    """Raising ``weight`` by 5 moves each member's c_ring and logit by exactly 5 x f x its ring score,
    and never a device's; returns the raised run's entity scores."""
    weighted = config.model_copy(update={"scoring": config.scoring.model_copy(update={
        "weights": config.scoring.weights.model_copy(update={
            weight: getattr(config.scoring.weights, weight) + 5.0})})})
    rings, scores, _, _ = run(spark, config, inputs, labels=[WRONG_LABEL], cfg=weighted)
    for a in CT + MU + HON + BIG:
        gain = 5.0 * f[a] * rings[scores[("account", a)]["attached_ring_id"]]["ring_score"]
        assert scores[("account", a)]["c_ring"] - scores0[("account", a)]["c_ring"] == pytest.approx(gain), a
        assert scores[("account", a)]["logit"] - scores0[("account", a)]["logit"] == pytest.approx(gain), a
    assert scores[("device", "d-mu")]["logit"] == pytest.approx(scores0[("device", "d-mu")]["logit"])
    return scores


def test_members_on_a_device_of_many_ring_accounts_gain_the_shared_term(spark, config, inputs, world):
    _, scores0, _, _ = world
    # Most ring accounts (itself included) on one device/IP/card a member used; members only.
    shared = {a: scores0[("account", a)]["shared_ring_accounts"] for a in CT + MU + HON + BIG}
    assert {shared[a] for a in CT} == {4} and {shared[a] for a in MU} == {5}
    assert {shared[a] for a in HON} == {4} and {shared[a] for a in BIG} == {1}
    assert scores0[("device", "d-mu")]["shared_ring_accounts"] is None
    f = {a: ramp(n, config.scoring.evidence.ring_shared_accounts) for a, n in shared.items()}
    assert all(scores0[("account", a)]["f_ring_shared"] == pytest.approx(f[a]) for a in f)
    assert f["mu-1"] > 0 and f["h-1"] == 0.0  # five on the mule device, a family of four on theirs
    scores = assert_member_term(spark, config, inputs, scores0, "ring_shared", f)
    assert scores[("account", "mu-1")]["logit"] > scores0[("account", "mu-1")]["logit"]


def test_members_tied_to_several_ring_accounts_gain_the_tied_term(spark, config, inputs, world):
    _, scores0, _, _ = world
    f = {a: ramp(n, config.scoring.evidence.ring_links) for a, n in RING_LINKS.items()}
    assert all(scores0[("account", a)]["f_ring_tied"] == pytest.approx(f[a]) for a in f)
    assert f["mu-1"] == 1.0 and f["mu-2"] == 0.0  # the collector against a one-link sender
    assert scores0[("device", "d-mu")]["f_ring_tied"] == 0.0  # identifiers are not members
    scores = assert_member_term(spark, config, inputs, scores0, "ring_tied", f)
    assert scores[("account", "mu-1")]["logit"] > scores0[("account", "mu-1")]["logit"]
    assert scores[("account", "mu-2")]["logit"] == pytest.approx(scores0[("account", "mu-2")]["logit"])
    assert scores[("device", "d-mu")]["logit"] == pytest.approx(scores0[("device", "d-mu")]["logit"])


def test_members_moving_as_much_money_as_their_mates_gain_the_money_term(spark, config, inputs, world):
    _, scores0, _, _ = world
    f = {a: ramp(s, config.scoring.evidence.ring_money_share) for a, s in MONEY_SHARE.items()}
    assert all(scores0[("account", a)]["f_ring_money"] == pytest.approx(f[a]) for a in f)
    assert f["mu-2"] == 1.0 and 0.0 < f["b-03"] < 1.0 and f["h-1"] == 0.0
    assert scores0[("device", "d-mu")]["f_ring_money"] == 0.0  # identifiers are not members
    scores = assert_member_term(spark, config, inputs, scores0, "ring_money", f)
    assert scores[("account", "mu-2")]["logit"] > scores0[("account", "mu-2")]["logit"]
    assert scores[("account", "h-1")]["logit"] == pytest.approx(scores0[("account", "h-1")]["logit"])


def test_materialised_tables_are_each_written_once_and_change_nothing(spark, config, inputs, world,
                                                                      materialise_to_parquet):
    # The score stage passes a write-and-read-back, so each table that feeds later ones is computed once.
    materialise, written = materialise_to_parquet
    res = SC.score_run(inputs["rings"], inputs["ring_members"], inputs["edges"], inputs["signals"],
                       labels_df(spark, [WRONG_LABEL]), None, every_score(config), DS, materialise=materialise)
    assert written == ["score/infrastructure", "ring_scores", "entity_scores"]
    rings, scores, risk, _ = world
    assert {r["ring_id"]: r.asDict() for r in res.rings.collect()} == {k: r.asDict() for k, r in rings.items()}
    assert {(r["entity_type"], r["entity_id"]): r.asDict() for r in res.risk.collect()} == {
        k: r.asDict() for k, r in risk.items()}
    assert res.scores.count() == len(scores) > len(risk) > 0


def test_stored_scores_leave_out_only_unremarkable_entities(spark, config, inputs, world):
    _, scores, risk, _ = world  # every scored entity
    floor = config.scoring.entity_scores_min_score
    assert floor > 0  # the default stores a part
    res = SC.score_run(inputs["rings"], inputs["ring_members"], inputs["edges"], inputs["signals"],
                       labels_df(spark, [WRONG_LABEL]), None, config, DS)
    stored = {(r["entity_type"], r["entity_id"]) for r in res.scores.collect()}
    left_out = set(scores) - stored
    assert stored <= set(scores) and left_out  # the tiny world has entities nothing is known of
    for k in left_out:
        r = scores[k]
        assert r["score"] < floor and not r["listed"] and r["label"] is None and r["ring_id"] is None
    # Kept below the floor, among others: members or links of listed rings.
    kept_low = {k for k in stored if scores[k]["score"] < floor}
    assert any(scores[k]["ring_id"] is not None for k in kept_low)
    assert {(r["entity_type"], r["entity_id"]) for r in res.risk.collect()} == set(risk)


@pytest.mark.parametrize("column", ["ring_links", "money_share"])
def test_ring_members_from_before_a_member_column_is_a_clear_error(spark, config, inputs, column):
    old = inputs["ring_members"].drop(column)  # ring_members written before the column existed
    with pytest.raises(SchemaError, match=rf"ring_members lacks columns \['{column}'\]"):
        SC.score_run(inputs["rings"], old, inputs["edges"], inputs["signals"], labels_df(spark), None, config, DS)


def test_an_entity_cleared_by_an_investigator_is_not_listed(spark, config, inputs, world):
    _, scores0, risk0, _ = world
    assert ("account", "ct-1") in risk0 and scores0[("account", "ct-1")]["score"] > 0.99
    cleared = ("account", "ct-1", "legit", ts(2026, 11, 10), "investigator")
    _, scores, risk, _ = run(spark, config, inputs, labels=[WRONG_LABEL, cleared])
    assert ("account", "ct-1") not in risk
    # The score is kept (only the legit-label term moves it), for review; its ring is still listed.
    row = scores[("account", "ct-1")]
    assert row["logit"] == pytest.approx(scores0[("account", "ct-1")]["logit"] - config.scoring.weights.legit_label)
    assert not row["listed"] and "labelled legit by investigator on 2026-11-10" in row["reasons"]
    assert all(k in risk for k in [("account", a) for a in CT[1:]] + [("device", "d-ct")])
    # The same label from a customer report is evidence only; a later fraud label overrides the clearing.
    reported = ("account", "ct-1", "legit", ts(2026, 11, 10), "customer_report")
    _, _, risk2, _ = run(spark, config, inputs, labels=[WRONG_LABEL, reported])
    assert ("account", "ct-1") in risk2
    later = ("account", "ct-1", "card_testing", ts(2026, 11, 20), "chargeback")
    _, _, risk3, _ = run(spark, config, inputs, labels=[WRONG_LABEL, cleared, later])
    assert ("account", "ct-1") in risk3


def test_lone_bot_device_listed_without_ring(world, config):
    _, scores, risk, _ = world
    row = risk[("device", "d-bot")]
    assert row["ring_id"] is None and row["ring_type"] == "card_testing"
    assert "90% of 300 card attempts declined within 9 minutes" in row["reasons"]
    assert "120 distinct cards from 1 BIN on one device (100% of attempts on one BIN)" in row["reasons"]
    assert scores[("device", "d-bot")]["threshold"] == max(config.scoring.thresholds["device"],
                                                           config.scoring.lone_min_score)
    # A traveller with one impossible hop and ordinary payments stays off the list.
    assert ("account", "trav") not in risk and scores[("account", "trav")]["score"] < 0.2


# --------------------------------------------------------------------------- output contract


def test_risk_schema_reasons_expiry_and_thresholds(spark, world, config):
    _, scores, risk, schema = world
    expected = spark.createDataFrame([], spark_ddl(RISK_SCHEMA)).schema
    assert [(f.name, f.dataType) for f in schema] == [(f.name, f.dataType) for f in expected]
    assert risk, "something must be listed"
    # The export stage's own checks find nothing wrong with the table.
    assert bad_row_counts(spark.createDataFrame(list(risk.values()), spark_ddl(RISK_SCHEMA))) == {}
    for key, row in risk.items():
        assert row["reasons"] and all(isinstance(x, str) and x for x in row["reasons"]), key
        assert row["ring_type"] in RISK_RING_TYPES, key
        assert row["expires_at"] == dt.datetime(2026, 12, 2)  # end of ds + 7 days, UTC (session tz)
        minimum = config.scoring.thresholds[key[0]]
        if row["ring_id"] is None:
            minimum = max(minimum, config.scoring.lone_min_score)
        assert minimum <= row["score"] <= 1.0, key
    for key, row in scores.items():
        assert 0.0 <= row["score"] <= 1.0, key
        assert row["listed"] == (key in risk) == (row["score"] >= row["threshold"]), key


def test_thresholds_per_entity_type(spark, config, inputs, world):
    _, scores0, risk0, _ = world
    lenient_cards = config.model_copy(update={"scoring": config.scoring.model_copy(update={
        "thresholds": {**config.scoring.thresholds, "card": 0.01}})})
    _, scores, risk, _ = run(spark, config, inputs, cfg=lenient_cards)
    card_scores = [r["score"] for (t, _), r in scores.items() if t == "card" and r["ring_id"] == "RCT"]
    # The card threshold alone decides: the ring's eight cards (scores between the two thresholds) are
    # listed under the lenient one, none under the default; the accounts are listed either way.
    assert len(card_scores) == 8 and all(0.01 <= s < config.scoring.thresholds["card"] for s in card_scores)
    assert sum(t == "card" for t, _ in risk) == 8 and not any(t == "card" for t, _ in risk0)
    assert all(("account", a) in risk and ("account", a) in risk0 for a in CT)


def test_schema_errors_list_present_columns(spark, config, inputs):
    with pytest.raises(SchemaError, match=r"ring_members lacks columns \['member_vertex'\]; present: "
                                          r"\['entity_id', 'entity_type', 'ring_id'\]"):
        SC.ring_infrastructure(inputs["ring_members"].select("ring_id", "entity_type", "entity_id"),
                               inputs["edges"])


# --------------------------------------------------------------------------- labels


def test_legit_label_on_a_member_lowers_ring_and_member(spark, config, inputs, world):
    rings0, scores0, risk0, _ = world
    legit = ("account", "mu-3", "legit", ts(2026, 11, 20), "investigator")
    rings1, scores1, risk1, _ = run(spark, config, inputs, labels=[WRONG_LABEL, legit])
    assert rings1["RMULE"]["ring_score"] < rings0["RMULE"]["ring_score"]
    assert rings1["RMULE"]["n_legit_labels"] == 1
    assert scores1[("account", "mu-3")]["score"] < scores0[("account", "mu-3")]["score"]
    # With the fitted (small) legit-label weight one label lowers, but does not outweigh, a mule's own
    # forwarding and its ring: the generated worlds' legit labels on ring accounts are label noise.
    assert scores0[("account", "mu-3")]["logit"] - scores1[("account", "mu-3")]["logit"] \
        >= config.scoring.weights.legit_label
    # The rest of the ring is still listed.
    assert all(("account", a) in risk1 for a in MU if a != "mu-3")


def test_labels_after_cutoff_ignored(spark, config, inputs, world):
    _, scores0, _, _ = world
    late = [
        ("account", "h-1", "mule", ts(2026, 11, 24, 6), "investigator"),           # during ds
        ("account", "mu-3", "legit", ts(2026, 11, 24), "investigator"),           # exactly the cut-off
    ]
    _, scores1, risk1, _ = run(spark, config, inputs, labels=[WRONG_LABEL, *late])
    for key in [("account", "h-1"), ("account", "mu-3")]:
        assert scores1[key]["label"] is None
        assert scores1[key]["score"] == pytest.approx(scores0[key]["score"], abs=1e-12)
    assert ("account", "h-1") not in risk1 and ("account", "mu-3") in risk1


def test_usable_labels_latest_before_cutoff_wins(spark):
    rows = [
        ("account", "x", "mule", ts(2026, 11, 1), "chargeback"),
        ("account", "x", "legit", ts(2026, 11, 5), "investigator"),
        ("account", "y", "legit", ts(2026, 11, 1), "investigator"),
        ("account", "y", "mule", ts(2026, 11, 1), "chargeback"),     # tie: legit wins
        ("account", "z", "card_testing", ts(2026, 11, 3), "chargeback"),
        ("account", "z", "legit", ts(2026, 11, 30), "investigator"),  # after the cut-off
        ("account", "w", "suspicious", ts(2026, 11, 3), "rule"),      # not a contract label
    ]
    got = {r["entity_id"]: r["label"]
           for r in SC.usable_labels(labels_df(spark, rows), SC.label_cutoff(DS)).collect()}
    assert got == {"x": "legit", "y": "legit", "z": "card_testing"}


# --------------------------------------------------------------------------- monotonicity


def test_scores_monotone_in_evidence(spark, config):
    """Lone devices with more (or more often declined) attempts, and accounts with more propagated
    risk or a fraud label, never score lower; a legit label never scores higher.

    Compared on the logit: these devices' scores round to the same double near 1. The decline
    weight is set to 1 here: the fit may leave it at 0 (decline rate is collinear with the tiny
    share in the generated worlds), and then the rate would not move the score at all."""
    config = config.model_copy(update={"scoring": config.scoring.model_copy(update={
        "weights": config.scoring.weights.model_copy(update={
            "ct_decline": max(config.scoring.weights.ct_decline, 1.0)})})})
    rates = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    volumes = [1, 5, 20, 80, 320]
    rows = [card_tester("device", f"rate-{i}", 50, r, 5) for i, r in enumerate(rates)]
    rows += [card_tester("device", f"vol-{i}", n, 0.7, 5) for i, n in enumerate(volumes)]
    rows += [ordinary(f"acct-{i}") for i in range(5)]
    signals = signal_reasons(spark.createDataFrame(rows, SIGNALS_DDL), config)
    propagated = spark.createDataFrame(
        [("account:acct-0", 0.0), ("account:acct-1", 0.5), ("account:acct-2", 1.0)], SC.PROPAGATED_DDL)
    labels = labels_df(spark, [("account", "acct-3", "fraud", ts(2026, 11, 1), "chargeback"),
                               ("account", "acct-4", "legit", ts(2026, 11, 1), "investigator")])
    infra = SC.ring_infrastructure(SC.empty_ring_members(spark), spark.createDataFrame([], EDGES_DDL))
    typed = SC.type_rings(SC.ring_features(SC.empty_rings(spark), SC.empty_ring_members(spark), infra, signals,
                                           labels, SC.label_cutoff(DS), config, propagated), config)
    rows = SC.entity_scores(signals, SC.empty_ring_members(spark), typed, infra, labels, propagated,
                            config, DS).collect()
    assert all(0.0 <= r["score"] <= 1.0 for r in rows)
    scores = {r["entity_id"]: r["logit"] for r in rows}
    by_rate = [scores[f"rate-{i}"] for i in range(len(rates))]
    by_volume = [scores[f"vol-{i}"] for i in range(len(volumes))]
    assert by_rate == sorted(by_rate) and by_rate[-1] > by_rate[0]
    assert by_volume == sorted(by_volume) and by_volume[-1] > by_volume[0]
    # Strictly inside the decline-rate ramp [0.2, 0.8].
    assert by_rate[1] < by_rate[2] < by_rate[3] < by_rate[4]
    assert scores["acct-0"] < scores["acct-1"] < scores["acct-2"]
    assert scores["acct-4"] < scores["acct-0"] < scores["acct-3"]
    # The two extreme propagated accounts differ by exactly the propagated weight in log-odds.
    assert scores["acct-2"] - scores["acct-0"] == pytest.approx(config.scoring.weights.propagated, abs=1e-9)


def test_scored_entities_are_those_with_signals_a_ring_or_propagated_risk(spark, config):
    """Shared-infrastructure texts only describe scored entities: an account that appears in them alone
    (no signals, no ring attachment, no propagated risk) is not scored; one with only propagated risk is."""
    signals = signal_reasons(spark.createDataFrame([ordinary("acct-0")], SIGNALS_DDL), config)
    propagated = spark.createDataFrame([("account:prop-only", 0.4), ("account:acct-0", 0.2)], SC.PROPAGATED_DDL)
    infra = spark.createDataFrame(
        [("R9", f"account:{a}", "device:d-9", "device", "d-9", 3, 3) for a in ("acct-0", "ghost")],
        "ring_id string, account_vertex string, via_vertex string, via_type string, via_id string, "
        "ring_accounts bigint, accounts bigint")
    labels = labels_df(spark)
    typed = SC.type_rings(SC.ring_features(SC.empty_rings(spark), SC.empty_ring_members(spark), infra, signals,
                                           labels, SC.label_cutoff(DS), config, propagated), config)
    rows = SC.entity_scores(signals, SC.empty_ring_members(spark), typed, infra, labels, propagated,
                            config, DS).collect()
    by_key = {(r["entity_type"], r["entity_id"]): r for r in rows}
    assert set(by_key) == {("account", "acct-0"), ("account", "prop-only")}
    assert by_key[("account", "acct-0")]["propagated_risk"] == pytest.approx(0.2)
    assert by_key[("account", "prop-only")]["propagated_risk"] == pytest.approx(0.4)
    assert by_key[("account", "prop-only")]["events_n"] is None


def test_propagated_risk_raises_score_with_reason(spark, config, inputs, world):
    _, scores0, _, _ = world
    propagated = spark.createDataFrame([("account:h-2", 0.9)], SC.PROPAGATED_DDL)
    rings1, scores1, risk1, _ = run(spark, config, inputs, labels=[WRONG_LABEL], propagated=propagated)
    assert scores1[("account", "h-2")]["score"] > scores0[("account", "h-2")]["score"]
    assert rings1["RHON"]["mean_propagated"] == pytest.approx(0.9 / 4)
    w = config.scoring.weights
    # The family of four is a clique, so h-2 is tied to three ring accounts (f_ring_tied 1).
    tied = scores1[("account", "h-2")]["f_ring_tied"]
    assert tied == 1.0
    z = w.bias + (w.ring_member + w.ring_tied * tied) * rings1["RHON"]["ring_score"] + w.propagated * 0.9
    assert scores1[("account", "h-2")]["score"] == pytest.approx(1 / (1 + math.exp(-z)), abs=1e-9)
    # With the fitted weights propagated risk alone does not list; it does under a low enough threshold,
    # outside any ring, with the propagated risk as its reason.
    assert ("account", "h-2") not in risk1
    assert scores1[("account", "h-2")]["reasons"] == ["propagated risk 0.90 from labelled entities nearby in the graph"]
    half = scores1[("account", "h-2")]["score"] / 2
    low = config.model_copy(update={"scoring": config.scoring.model_copy(update={
        "thresholds": {**config.scoring.thresholds, "account": half}, "lone_min_score": half})})
    _, _, risk2, _ = run(spark, config, inputs, labels=[WRONG_LABEL], propagated=propagated, cfg=low)
    row = risk2[("account", "h-2")]
    assert row["ring_id"] is None
    assert row["reasons"] == ["propagated risk 0.90 from labelled entities nearby in the graph"]


def with_flow(spark, inputs, flow_of):
    """``inputs`` with ``flow_of(ring, account)`` as each member's net_flow (mule-like transfer links)."""
    members = [(ring, t, e, v, role, wd, flow_of(ring, e), g, s, n)
               for ring, t, e, v, role, wd, _, g, s, n in member_rows()]
    return {**inputs, "ring_members": spark.createDataFrame(members, SC.RING_MEMBERS_DDL)}


def with_flow_prior(config, prior):
    return config.model_copy(update={"scoring": config.scoring.model_copy(update={
        "ring": config.scoring.ring.model_copy(update={"money_flow_prior": prior})})})


RINGS = ("RCT", "RMULE", "RHON", "RBIG")
RING_ACCOUNTS_TONIGHT = len(CT) + len(MU) + len(HON) + len(BIG)


def test_money_flow_raises_ring_score_and_votes_mule(spark, config, inputs, world):
    rings0, _, _, _ = world
    # The family's four accounts also passed fresh money on to each other (net_flow on mule-like links).
    flowing = with_flow(spark, inputs, lambda ring, _: 2500.0 if ring == "RHON" else 0.0)
    rings1, _, _, _ = run(spark, config, flowing, labels=[WRONG_LABEL])
    r0, r1 = rings0["RHON"], rings1["RHON"]
    assert (r0["money_flow_share"], r0["money_flow_accounts"], r0["money_flow_evidence"]) == (0.0, 0, 0.0)
    assert (r1["money_flow_share"], r1["money_flow_accounts"]) == (1.0, 4)
    # The 29 accounts of the other rings have less money flow; the prior adds pseudo-accounts without.
    prior = config.scoring.ring.money_flow_prior
    evidence = (RING_ACCOUNTS_TONIGHT - len(HON) + prior) / (RING_ACCOUNTS_TONIGHT + prior)
    assert r1["money_flow_evidence"] == pytest.approx(evidence, abs=1e-12)
    # Four accounts on money links, on the ramp of scoring.evidence.money_flow_accounts.
    f_accounts = evidence * ramp(4, config.scoring.evidence.money_flow_accounts)
    assert r1["f_money_accounts"] == pytest.approx(f_accounts, abs=1e-12) and r0["f_money_accounts"] == 0.0
    r = config.scoring.ring
    assert r1["ring_logit"] - r0["ring_logit"] == pytest.approx(r.money_flow * evidence
                                                               + r.money_accounts * f_accounts, abs=1e-9)
    # The money-accounts weight moves the ring logit by exactly weight x f_money_accounts.
    heavier = config.model_copy(update={"scoring": config.scoring.model_copy(update={
        "ring": r.model_copy(update={"money_accounts": r.money_accounts + 5.0})})})
    rings2, _, _, _ = run(spark, config, flowing, labels=[WRONG_LABEL], cfg=heavier)
    assert rings2["RHON"]["ring_logit"] - r1["ring_logit"] == pytest.approx(5.0 * f_accounts, abs=1e-9)
    assert 0 < f_accounts < evidence  # four is inside the ramp
    # No mule or card-testing behaviour: the money flow alone makes the vote.
    assert r0["ring_type"] == "unknown" and r1["ring_type"] == "mule"
    assert (f"4 of 4 ring accounts sent or received mule-like transfers (fresh money passed on within 48 h), "
            f"rare among tonight's rings (evidence {evidence:.2f})") in r1["ring_reasons"]


def test_money_flow_counts_only_as_far_as_it_is_rare_tonight(spark, config, inputs, world):
    """A night where every ring passes money on (ordinary customers forward money within hours, as in
    AMLSim's simulated bank): the share tells the rings apart no more, and without a prior the evidence
    is 0, so ring scores, types, listing and reasons are those of a night without money flow."""
    rings0, _, _, _ = world
    no_prior = with_flow_prior(config, 0.0)
    every = with_flow(spark, inputs, lambda *_: 100.0)
    rings1, _, _, _ = run(spark, config, every, labels=[WRONG_LABEL], cfg=no_prior)
    for ring in RINGS:
        r0, r1 = rings0[ring], rings1[ring]
        assert (r1["money_flow_share"], r1["money_flow_evidence"]) == (1.0, 0.0), ring
        assert r1["ring_logit"] == pytest.approx(r0["ring_logit"], abs=1e-9), ring
        assert (r1["ring_type"], r1["ring_listed"]) == (r0["ring_type"], r0["ring_listed"]), ring
        assert not any("mule-like transfers" in x for x in r1["ring_reasons"]), ring
    # The default prior (pseudo-accounts in rings without money flow) leaves a tiny night some evidence.
    rings2, _, _, _ = run(spark, config, every, labels=[WRONG_LABEL])
    prior = config.scoring.ring.money_flow_prior
    assert rings2["RHON"]["money_flow_evidence"] == pytest.approx(prior / (RING_ACCOUNTS_TONIGHT + prior))
    # All of RHON's accounts flow and half of RBIG's: RHON ranks above RBIG's 20 accounts and the 9 of
    # RCT and RMULE (no flow), RBIG above those 9 only.
    mixed = with_flow(spark, inputs, lambda ring, a: 100.0 if ring == "RHON" or a in BIG[:10] else 0.0)
    rings3, _, _, _ = run(spark, config, mixed, labels=[WRONG_LABEL], cfg=no_prior)
    assert rings3["RBIG"]["money_flow_share"] == 0.5
    assert rings3["RBIG"]["money_flow_evidence"] == pytest.approx(9 / RING_ACCOUNTS_TONIGHT)
    assert rings3["RHON"]["money_flow_evidence"] == pytest.approx(29 / RING_ACCOUNTS_TONIGHT)
    assert rings3["RCT"]["money_flow_evidence"] == 0.0


def test_each_entity_takes_its_membership_else_its_strongest_link(spark, config):
    """One ring per entity: a membership beats any link, then the strongest pull wins, ties going to the
    smaller ring id; an entity listed twice in a ring (or used by several of its accounts) counts once."""
    rings = spark.createDataFrame(
        [("R1", "mule", 0.9, True, 4), ("R2", "card_testing", 0.6, True, 4), ("R3", "mule", 0.6, False, 4)],
        f"{SC.RING_ID} STRING, {SC.RING_TYPE} STRING, {SC.RING_SCORE} DOUBLE, {SC.RING_LISTED} BOOLEAN, "
        f"{SC.N_ACCOUNTS} BIGINT")
    members = spark.createDataFrame(
        [("R2", "account", "a1", 2, 0.5), ("R2", "account", "a1", 2, 0.5), ("R1", "account", "a2", 3, 1.0)],
        f"{SC.RING_ID} STRING, entity_type STRING, entity_id STRING, {SC.RING_LINKS} BIGINT, "
        f"{SC.MONEY_SHARE} DOUBLE")
    # (ring, via, ring accounts using it, accounts in all): one row per ring account that used it.
    uses = [("R1", "device", "d-shared", 3, 3), ("R1", "device", "d-shared", 3, 3), ("R1", "device", "d-shared", 3, 3),
            ("R2", "device", "d-shared", 2, 3), ("R2", "device", "d-shared", 2, 3),   # pull 0.9 x s(3,3) wins
            ("R2", "ip", "i-tie", 2, 4), ("R3", "ip", "i-tie", 2, 4),                 # same pull: R2 first
            ("R1", "account", "a1", 1, 1),                 # a1 is R2's member: pull 0.06 against 1.1
            ("R2", "card", "c-pull", 1, 9), ("R3", "card", "c-pull", 2, 2)]           # R3's link is stronger
    infra = spark.createDataFrame(
        [(r, f"account:x{i}", f"{t}:{v}", t, v, n, m) for i, (r, t, v, n, m) in enumerate(uses)],
        f"{SC.RING_ID} STRING, account_vertex STRING, via_vertex STRING, {SC.VIA_TYPE} STRING, "
        f"{SC.VIA_ID} STRING, {SC.RING_ACCOUNTS} BIGINT, {SC.ACCOUNTS} BIGINT")
    # A membership's pull made weaker than a1's link to R1: membership must win all the same.
    w = config.scoring.weights.model_copy(update={"ring_member": 0.1})
    weak = config.model_copy(update={"scoring": config.scoring.model_copy(update={"weights": w})})
    got = {(r["entity_type"], r["entity_id"]): r.asDict()
           for r in SC._attachments(members, rings, infra, weak).collect()}
    assert {k: (v[SC.ATTACHED_RING], v[SC.ATTACHMENT]) for k, v in got.items()} == {
        ("account", "a1"): ("R2", SC.MEMBER), ("account", "a2"): ("R1", SC.MEMBER),
        ("device", "d-shared"): ("R1", SC.LINK), ("ip", "i-tie"): ("R2", SC.LINK),
        ("card", "c-pull"): ("R3", SC.LINK)}
    a1, shared = got[("account", "a1")], got[("device", "d-shared")]
    assert (a1[SC.RING_LINKS], a1[SC.MONEY_SHARE], a1["link_ring_accounts"]) == (2, 0.5, None)
    assert a1[SC.C_RING] == pytest.approx(w.ring_member * 0.6)
    assert (shared["link_ring_accounts"], shared["link_accounts"], shared["attached_ring_type"]) == (3, 3, "mule")
    assert shared[SC.LINK_STRENGTH] == pytest.approx(1.0 - 0.5 ** 3)
    assert shared[SC.C_RING] == pytest.approx(w.ring_link * (1.0 - 0.5 ** 3) * 0.9)
