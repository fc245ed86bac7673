"""Scoring: ring types and ring scores, entity scores, and the ``risk/`` list (issue 6).

Inputs are the tables earlier stages write, plus one that only GraphFrames can
make:

- ``signals`` (graph/signals.py): behavioural signals and ``signal_reasons``;
- ``rings`` / ``ring_members`` (graph/rings.py): the night's communities;
- ``edges``: the identity graph's edges *with hubs removed*
  (``graph.hubs.remove_hubs``), to see which devices, IPs, cards and
  merchants ring accounts used (``ring_infrastructure``);
- ``labels`` (data contract): only labels with ``labeled_at`` strictly before
  the cut-off (start of ``ds``, UTC) are used, and per entity only the latest
  one (a later ``legit`` overrides an earlier ``mule``; on a tie ``legit``
  wins, because a false listing is the costlier mistake);
- ``propagated``: ``(id, risk)`` with ``id`` a vertex id ("account:a-1") and
  ``risk`` in [0, 1]. The product fills it from GraphFrames risk propagation
  (personalised PageRank from labelled seeds, ``scoring.propagation_*``) when
  the jars are available. It may be empty or ``None``: scores then rest on
  signals, ring membership and labels only. Nothing here propagates risk.

Evidence features
-----------------
Every signal becomes a feature in [0, 1] that never falls as the signal gets
more suspicious: ``ramp(x, [lo, hi]) = clamp((x - lo) / (hi - lo), 0, 1)``
(``scoring.evidence``), "falling" ramps ``1 - ramp`` for signals where lower
is worse (account age, inter-event CV), and rates are damped by a confidence
``n / (n + half)`` in the count behind them. Missing signals count 0.

=====================  ==============================================================
feature                from (entity types)
=====================  ==============================================================
f_ct_decline           ramp(decline_rate) x conf(attempts)              (all)
f_ct_tiny              ramp(tiny_share) x conf(attempts)                (all)
f_ct_cards             ramp(distinct_cards)                             (account, device, ip)
f_ct_merchants         ramp(distinct_merchants)                         (card)
f_ct_burst             ramp(burst_attempts_per_min)                     (all but merchant)
f_mule_pass            ramp(pass_through_ratio) x conf(inflow_n)        (account)
f_mule_fan_in          ramp(fan_in)                                     (account)
f_mule_fan_out         ramp(fan_out)                                    (account)
f_mule_new             falling(account_age_days) x conf(inflow_n)       (account)
f_bot_taps             ramp(bot_session_share) x conf(tap_cv_sessions)  (account, device)
f_bot_timing           falling(event_gap_cv) x conf(events_n)           (account, device, ip, card)
f_bot_travel           ramp(impossible_travel_n)                        (account, device)
f_bot_burst            ramp(day_burst_ratio) x conf(peak_day_events)    (account, device, ip, card)
=====================  ==============================================================

A family's *points* are ``sum(weight_i x f_i)`` over its features
(``scoring.weights.ct_* / mule_* / bot_*``) and its *evidence* is points over
the sum of its weights, in [0, 1]: ``card_testing_evidence``,
``mule_evidence``, ``bot_evidence``.

Ring score
----------
Per ring (``ring_features``), the ring accounts' card and transfer signals are
pooled — card attempts, declines and tiny attempts summed (so a distributed
attack of a few attempts per account still adds up), cards per attempting
account, the strongest burst, the inflow-weighted pass-through ratio, the
largest fan-in and fan-out, the mean "new account" feature and the mean bot
evidence — and run through the same features, giving the ring's card-testing,
mule and bot evidence (merchants per card has no ring analogue and counts 0,
so pooled card-testing evidence tops out at 1 - ct_merchants_per_card / the
sum of the ct weights; the fitted ct_merchants_per_card is 0, so at 1). With
``r = scoring.ring``::

    z_ring = r.bias + r.density x density + r.shared_infrastructure x shared_share
           + r.card_testing x E_ct + r.mule x E_mule + r.bot x E_bot
           + r.money_flow x money_flow_evidence
           + r.money_accounts x money_flow_evidence x ramp(money_flow_accounts)
           + r.propagated x mean propagated risk of the ring's accounts
           + r.fraud_labels x n_fraud / (size + r.label_prior)
           - r.legit_labels x n_legit / (size + r.label_prior)
    ring_score = sigmoid(z_ring)

``shared_share`` is the share of ring accounts that share a (non-hub) device,
IP or card with another ring account. ``money_flow_share`` is the share of
ring accounts on a mule-like transfer link of the candidate graph (the
``money_forward`` rule of graph/candidates.py: fresh money received and passed
on within ``scoring.signals.pass_through_hours``), read from
``ring_members.net_flow != 0`` (graph/rings.py sums money moved on those links,
the only candidate links that carry flow). Pooled pass-through and fan-in/out
miss it when each member forwards only a few transfers; a family, a card
testing ring or a household sharing a device has none. The score uses
``money_flow_evidence``, the share ranked against the night's other rings
(``money_flow_features``): where ordinary customers pass money on within
hours too (AMLSim's simulated bank), every ring built from money links has a
share of 1 and the share alone would list every one of them; there the
evidence falls towards 0 and only labels, behaviour and propagated risk count.
``f_money_accounts = money_flow_evidence x ramp(money_flow_accounts,
scoring.evidence.money_flow_accounts)`` adds the ring's size in money: a
layering tree moves the money of many accounts (each hop once, so little
behaviour per member), while honest pairs that pass money on are two or three
accounts. It is scaled by the same evidence, so it fades where passing money
on is ordinary.
``n_fraud`` /
``n_legit`` count members whose latest usable label is fraud/mule/card_testing
/ legit; the prior in the denominator is why one wrong label cannot taint a
big community. Structure alone (a family sharing devices: density 1, every
account sharing) reaches ``sigmoid(r.bias + r.density + r.shared_infrastructure)``,
0.0009 with the fitted weights, far below ``r.threshold``: rings are listed for
behaviour, money flow, labels or propagated risk, never for being tight.

Ring type: ``v_ct = E_ct + n_ct_labels / (size + label_prior)`` and
``v_mule = E_mule + scoring.type_money_flow x money_flow_evidence + n_mule_labels
/ (size + label_prior)``; the larger one wins if it is at least
``scoring.type_min_evidence``, otherwise (or on a tie) ``unknown``.

Entity score
------------
Each entity is attached to at most one ring: as a *member* (``ring_members``),
else as a *link* — an identifier that ring accounts used, with
``link_strength = (ring accounts using it / accounts using it) x (1 - 0.5 ^ ring
accounts using it)`` (a device only ring accounts use, by seven of them, is
~1; one ring account's own card is 0.5; a device the ring shares with many
outsiders is small). With ``w = scoring.weights``::

    z = w.bias
      + card-testing points + mule points + bot points            (own behaviour)
      + w.ring_member x ring_score                                 (member)
        + w.ring_shared x f_ring_shared x ring_score
        + w.ring_tied x f_ring_tied x ring_score
        + w.ring_money x f_ring_money x ring_score
      | w.ring_link x link_strength x ring_score                   (link)
      + w.propagated x propagated risk
      + w.fraud_label  if the latest usable label is fraud/mule/card_testing
      - w.legit_label  if it is legit
    score = sigmoid(z)

``f_ring_shared = ramp(shared_ring_accounts, scoring.evidence.ring_shared_accounts)``,
where ``shared_ring_accounts`` is the most accounts of the member's ring
(itself included) that used one of its non-hub devices, IPs or cards. A
family shares one device and home IP among its few members; a device farm
or a proxy pool serves a whole ring, including members who moved no money
tonight and so have no behaviour of their own to show.

``f_ring_tied = ramp(ring_links, scoring.evidence.ring_links)``, where
``ring_links`` (``ring_members``, graph/rings.py) is the number of the ring's
accounts the member is directly linked to in the candidate graph. A ring
member is tied to the ring by several of its links; a household member or a
friend pulled into a ring is typically tied to it by one: a shared family
device, or one transfer.

``f_ring_money = ramp(money_share, scoring.evidence.ring_money_share)``, where
``money_share`` (``ring_members``, graph/rings.py) is the money the member
moved on mule-like transfer links (in and out) over the median of what its
ring's money-moving accounts moved. The mules of a fan-in ring or the hops
of a layering chain each move about the same sums, whatever the currency or
the scale of the fraud; a friend who got one forwarded transfer moves a
small part of it, and a member who moved nothing (a household member on a
shared device, a dormant mule) gets nothing from this term. A mule sending
to its collector is tied to the ring by that one link, so this is the term
that separates it from the friend, who is tied by one link too.

Meaning: ``score`` is a monotone estimate of the probability that the entity
takes part in fraud; ``w.bias`` is the log-odds with no evidence (0.0002 with
the fitted weights) and each term is the log-odds the evidence adds. Every
weight but the bias is >= 0 (enforced by the config), so more fraud evidence
never lowers a score and a legit label never raises it. A labelled entity is a
propagation seed whose propagated risk is its own label (graph/propagate.py),
so a fraud label weighs ``w.fraud_label + w.propagated`` in all; with the
fitted weights that alone stays below ``lone_min_score``: a label from an
untrusted source (a customer report, a chargeback: friendly fraud and reported
victims make these wrong now and then) lists an entity together with its ring
or its own behaviour, not on its own. A label from one of
``scoring.trusted_label_sources`` (investigator by default) is a confirmed
case: ``score = max(score, scoring.trusted_label_score)`` and the entity is
listed whatever its ring, with the label as a reason. Symmetrically, an
entity whose latest usable label is ``legit`` from a trusted source was
cleared by an investigator and is not listed, whatever its score: online
systems must not block a customer the fraud team cleared (a landlord whose
tenant pays rent with a mule's money stays in that ring's component). Its
score and reasons stay in ``entity_scores``; a later fraud label lists it
again.

Calibration: the weights here and of the ring score, the thresholds and the
type parameters in conf/default.yaml are fitted by bench/calibrate_scores.py
against generated-world truth (non-negative logistic regressions of ring and
entity truth, then a threshold search under the false-positive target);
``entity_scores`` and ``ring_scores`` keep every feature and each term
(``c_*``) for that (the bench writes every scored entity for it, see below).

Listing
-------
A ring is listed when ``ring_score >= scoring.ring.threshold``. An entity
attached to a listed ring is listed when ``score >= scoring.thresholds[type]``
and carries that ring's id and type. Any other entity — in no ring, or in a
ring that is not listed — takes the entity-level path: it is listed only when
``score >= max(thresholds[type], scoring.lone_min_score)``, with ``ring_id``
null and ``ring_type`` from its own label (mule/card_testing) or else its own
evidence as for rings. A lone bot device with hundreds of declined tiny
attempts on many cards is listed this way. An entity with a trusted fraud
label (above) is listed on either path.

Entities scored: those with signals in the window, ring members, identifiers
ring accounts used, and entities with propagated risk > 0. A label alone does
not put an entity without activity on the list.

Reasons
-------
Every listed entity and ring carries >= 1 human-readable reason: the ring
("in ring R1 (card_testing, 12 accounts) with score 0.93", or for a link
"used by 7 ring accounts (of 7 accounts in all) of ring R1 ..."), shared
infrastructure on accounts ("shares device d-81f with 6 other ring
accounts"), the label ("labelled mule by investigator on 2026-11-02"), the
entity's ``signal_reasons``, propagated risk, and, only when nothing else
applies, the evidence values themselves.

Stored scores
-------------
``entity_scores/`` keeps what an investigator or a later night can use:
every entity with ``score >= scoring.entity_scores_min_score`` (0.01), every
listed or labelled entity, and every member or link of a listed ring, with
all its features, terms and reasons. The rest are entities of which nothing
is known beyond their activity (on the 10M-event world 2.4M of 2.57M, with
scores near ``sigmoid(bias)``, about 0.0002): writing them took about 30
of the score stage's 118 s there (docs/benchmarks.md). ``risk/`` is
unaffected, as every listed entity is kept. With the setting at 0 every
scored entity is kept; ``bench/bench_quality.py`` writes that full table
apart, for calibration.

Everything is Spark SQL over DataFrames; nothing grows on the driver.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from functools import reduce

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from graph import signals as S
from graph.build import ACCOUNT_CARD, ACCOUNT_DEVICE, ACCOUNT_IP, ACCOUNT_MERCHANT, DST, EDGE_TYPE, SRC
from graph.config import RingfenceConfig
from graph.errors import SchemaError
from graph.schema import FRAUD_LABELS, INPUT_SCHEMAS, LABELS, RISK_SCHEMA, spark_ddl

ENTITY_TYPE, ENTITY_ID = S.ENTITY_TYPE, S.ENTITY_ID
KEYS = S.KEYS

# Rings and members (graph/rings.py).
RING_ID = "ring_id"
SIZE = "size"
N_ACCOUNTS = "n_accounts"
N_EDGES = "n_edges"
DENSITY = "density"
MEMBER_VERTEX = "member_vertex"
NET_FLOW = "net_flow"  # money moved on the candidate graph's mule-like transfer links (graph/rings.py)
# Propagated risk (GraphFrames).
ID = "id"
RISK = "risk"
# Labels.
LABEL, LABELED_AT, SOURCE = "label", "labeled_at", "source"
# Ring infrastructure.
ACCOUNT_VERTEX = "account_vertex"
VIA_VERTEX = "via_vertex"
VIA_TYPE = "via_type"
VIA_ID = "via_id"
RING_ACCOUNTS = "ring_accounts"
ACCOUNTS = "accounts"
INFRA_COLUMNS = (RING_ID, ACCOUNT_VERTEX, VIA_VERTEX, VIA_TYPE, VIA_ID, RING_ACCOUNTS, ACCOUNTS)
INFRA_EDGE_TYPES = (ACCOUNT_DEVICE, ACCOUNT_IP, ACCOUNT_CARD, ACCOUNT_MERCHANT)
# Sharing one of these with another ring account is "shared infrastructure"; a merchant is not.
SHARED_TYPES = ("device", "ip", "card")

# Evidence features.
F_CT_DECLINE, F_CT_TINY, F_CT_CARDS = "f_ct_decline", "f_ct_tiny", "f_ct_cards"
F_CT_MERCHANTS, F_CT_BURST = "f_ct_merchants", "f_ct_burst"
F_MULE_PASS, F_MULE_FAN_IN, F_MULE_FAN_OUT, F_MULE_NEW = (
    "f_mule_pass", "f_mule_fan_in", "f_mule_fan_out", "f_mule_new")
F_BOT_TAPS, F_BOT_TIMING, F_BOT_TRAVEL, F_BOT_BURST = (
    "f_bot_taps", "f_bot_timing", "f_bot_travel", "f_bot_burst")
# (feature, weight key in scoring.weights) per family.
CT_FEATURES = ((F_CT_DECLINE, "ct_decline"), (F_CT_TINY, "ct_tiny"), (F_CT_CARDS, "ct_cards"),
               (F_CT_MERCHANTS, "ct_merchants_per_card"), (F_CT_BURST, "ct_burst"))
MULE_FEATURES = ((F_MULE_PASS, "mule_pass_through"), (F_MULE_FAN_IN, "mule_fan_in"),
                 (F_MULE_FAN_OUT, "mule_fan_out"), (F_MULE_NEW, "mule_new_account"))
BOT_FEATURES = ((F_BOT_TAPS, "bot_taps"), (F_BOT_TIMING, "bot_timing"), (F_BOT_TRAVEL, "bot_travel"),
                (F_BOT_BURST, "bot_burst"))
FEATURES = tuple(f for fam in (CT_FEATURES, MULE_FEATURES, BOT_FEATURES) for f, _ in fam)
CT_EVIDENCE, MULE_EVIDENCE, BOT_EVIDENCE = "card_testing_evidence", "mule_evidence", "bot_evidence"
CT_POINTS, MULE_POINTS, BOT_POINTS = "card_testing_points", "mule_points", "bot_points"
EVIDENCE_TYPE = "evidence_type"

# Ring features and typed rings.
SHARED_ACCOUNTS = "shared_accounts"
SHARED_SHARE = "shared_share"
SHARED_DEVICES, SHARED_IPS, SHARED_CARDS = "shared_devices", "shared_ips", "shared_cards"
POOL_ATTEMPTS, POOL_DECLINED, POOL_TINY = "pool_attempts", "pool_declined", "pool_tiny"
POOL_DECLINE_RATE, POOL_TINY_SHARE = "pool_decline_rate", "pool_tiny_share"
POOL_CARDS, ATTEMPTING_ACCOUNTS, CARDS_PER_ACCOUNT = "pool_cards", "attempting_accounts", "cards_per_account"
MAX_BURST = "max_burst_per_min"
POOL_INFLOWS, POOL_PASS_THROUGH = "pool_inflows", "pool_pass_through"
MAX_FAN_IN, MAX_FAN_OUT, MEAN_NEW = "max_fan_in", "max_fan_out", "mean_new_account"
MEAN_BOT = "mean_bot_evidence"
PASS_ACCOUNTS, BOT_ACCOUNTS = "pass_through_accounts", "bot_accounts"
MEAN_PROPAGATED = "mean_propagated"
MONEY_FLOW_ACCOUNTS, MONEY_FLOW_SHARE = "money_flow_accounts", "money_flow_share"
F_MONEY_ACCOUNTS = "f_money_accounts"  # money_flow_evidence x ramp(money_flow_accounts)
MONEY_FLOW_EVIDENCE = "money_flow_evidence"
MONEY_FLOW_BINS = 1000  # money_flow_share is ranked in bins of 0.001
N_FRAUD_LABELS, N_LEGIT_LABELS = "n_fraud_labels", "n_legit_labels"
N_MULE_LABELS, N_CT_LABELS = "n_mule_labels", "n_card_testing_labels"
LATEST_FRAUD_LABEL = "latest_fraud_label"
RING_TYPE, RING_SCORE, RING_REASONS = "ring_type", "ring_score", "ring_reasons"
RING_LOGIT, RING_LISTED = "ring_logit", "ring_listed"
TYPED_RING_COLUMNS = (RING_ID, RING_TYPE, RING_SCORE, RING_REASONS, RING_LISTED, RING_LOGIT,
                      SIZE, N_ACCOUNTS)

# Entity scores.
ATTACHED_RING = "attached_ring_id"
ATTACHMENT = "attachment"  # "member", "link" or null
LINK_STRENGTH = "link_strength"
SHARED_RING_ACCOUNTS = "shared_ring_accounts"  # most ring accounts on one device/IP/card a member used
F_RING_SHARED = "f_ring_shared"
RING_LINKS = "ring_links"  # ring_members: accounts of its ring a member is directly linked to
F_RING_TIED = "f_ring_tied"
MONEY_SHARE = "money_share"  # ring_members: money a member moved on mule-like links / its ring's median mover's
F_RING_MONEY = "f_ring_money"
PROPAGATED_RISK = "propagated_risk"
C_BEHAVIOUR, C_RING, C_PROPAGATED, C_LABEL = "c_behaviour", "c_ring", "c_propagated", "c_label"
LOGIT, SCORE, THRESHOLD, LISTED = "logit", "score", "threshold", "listed"
REASONS, EXPIRES_AT = "reasons", "expires_at"
MEMBER, LINK = "member", "link"

# Input columns each step reads (checked at the boundary).
RINGS_REQUIRED = (RING_ID, SIZE, N_ACCOUNTS, N_EDGES, DENSITY)
MEMBERS_REQUIRED = (RING_ID, ENTITY_TYPE, ENTITY_ID, MEMBER_VERTEX)
EDGES_REQUIRED = (SRC, DST, EDGE_TYPE)
LABELS_REQUIRED = (ENTITY_TYPE, ENTITY_ID, LABEL, LABELED_AT, SOURCE)
PROPAGATED_REQUIRED = (ID, RISK)
SIGNALS_USED = (
    S.ATTEMPTS, S.DECLINED, S.DECLINE_RATE, S.TINY_SHARE, S.DISTINCT_CARDS, S.DISTINCT_MERCHANTS,
    S.BURST_ATTEMPTS_PER_MIN, S.INFLOW_N, S.PASS_THROUGH_RATIO, S.FAN_IN, S.FAN_OUT,
    S.ACCOUNT_AGE_DAYS, S.TAP_CV_SESSIONS, S.TAP_CV_MEAN, S.BOT_SESSION_SHARE, S.EVENTS_N,
    S.EVENT_GAP_CV, S.IMPOSSIBLE_TRAVEL_N, S.DAY_BURST_RATIO, S.PEAK_DAY_EVENTS,
)
SIGNALS_REQUIRED = (*KEYS, *SIGNALS_USED, S.SIGNAL_REASONS)

RINGS_DDL = ("ring_id STRING, size BIGINT, n_accounts BIGINT, n_devices BIGINT, n_ips BIGINT, "
             "n_cards BIGINT, n_merchants BIGINT, n_edges BIGINT, density DOUBLE, method STRING, "
             "first_seen DATE, last_seen DATE")
RING_MEMBERS_DDL = ("ring_id STRING, entity_type STRING, entity_id STRING, member_vertex STRING, "
                    "role STRING, weighted_degree DOUBLE, net_flow DOUBLE, gross_flow DOUBLE, "
                    "money_share DOUBLE, ring_links BIGINT")
PROPAGATED_DDL = "id STRING, risk DOUBLE"


def _require(df: DataFrame, what: str, columns: tuple[str, ...]) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise SchemaError(f"{what} lacks columns {missing}; present: {sorted(df.columns)}")


def empty_rings(spark: SparkSession) -> DataFrame:
    """A ``rings`` table with no rows: scoring without ring discovery (lone path and labels only)."""
    return spark.createDataFrame([], RINGS_DDL)


def empty_ring_members(spark: SparkSession) -> DataFrame:
    return spark.createDataFrame([], RING_MEMBERS_DDL)


def empty_labels(spark: SparkSession) -> DataFrame:
    return spark.createDataFrame([], spark_ddl(INPUT_SCHEMAS["labels"]))


def empty_propagated(spark: SparkSession) -> DataFrame:
    """No propagated risk (GraphFrames unavailable): scores rest on signals, rings and labels."""
    return spark.createDataFrame([], PROPAGATED_DDL)


def label_cutoff(ds: dt.date) -> dt.datetime:
    """Labels known strictly before this instant may be used: the start of ``ds``, UTC."""
    return dt.datetime.combine(ds, dt.time(0), tzinfo=dt.UTC)


# --------------------------------------------------------------------------- small columns


def _sigmoid(z: Column) -> Column:
    return F.lit(1.0) / (F.lit(1.0) + F.exp(-z))


def _ramp(x: Column, bounds: tuple[float, float]) -> Column:
    lo, hi = bounds
    r = (x.cast("double") - F.lit(lo)) / F.lit(hi - lo)
    return F.coalesce(F.least(F.greatest(r, F.lit(0.0)), F.lit(1.0)), F.lit(0.0))


def _falling(x: Column, bounds: tuple[float, float]) -> Column:
    """1 below ``low``, 0 above ``high``, and 0 when the signal is missing (no evidence)."""
    return F.when(x.isNotNull(), F.lit(1.0) - _ramp(x, bounds)).otherwise(F.lit(0.0))


def _confidence(n: Column, half: float) -> Column:
    n = F.greatest(F.coalesce(n.cast("double"), F.lit(0.0)), F.lit(0.0))
    return n / (n + F.lit(half))


def _ratio(num: Column, den: Column) -> Column:
    return F.try_divide(num.cast("double"), den.cast("double"))


def _points(weights, family: tuple[tuple[str, str], ...]) -> Column:
    return reduce(lambda a, b: a + b, [F.col(f) * F.lit(float(getattr(weights, k))) for f, k in family])


def _weight_sum(weights, family: tuple[tuple[str, str], ...]) -> float:
    return float(sum(getattr(weights, k) for _, k in family))


def _evidence(weights, family: tuple[tuple[str, str], ...]) -> Column:
    total = _weight_sum(weights, family)
    return _points(weights, family) / F.lit(total) if total > 0 else F.lit(0.0)


def _type_vote(ct: Column, mule: Column, min_evidence: float) -> Column:
    """card_testing / mule for the clearly larger family evidence, else unknown."""
    return (F.when((ct > mule) & (ct >= min_evidence), F.lit("card_testing"))
            .when((mule > ct) & (mule >= min_evidence), F.lit("mule"))
            .otherwise(F.lit("unknown")))


def _day(ts: Column) -> Column:
    """The UTC date of a timestamp, whatever the session time zone."""
    return F.date_from_unix_date(F.floor(F.unix_micros(ts) / S.DAY_US).cast("int")).cast("string")


def _label_text(label: Column, source: Column, at: Column) -> Column:
    # "customer_report" reads "by customer report".
    by = (F.when(source.isNotNull() & (source != ""), F.concat(F.lit(" by "), F.regexp_replace(source, "_", " ")))
          .otherwise(F.lit("")))
    return F.concat(F.lit("labelled "), label, by, F.lit(" on "), _day(at))


# --------------------------------------------------------------------------- evidence


def _features(cfg: RingfenceConfig, *, attempts: Column, decline_rate: Column, tiny_share: Column,
              cards: Column, merchants_per_card: Column, burst: Column, inflows: Column,
              pass_through: Column, fan_in: Column, fan_out: Column, age_days: Column,
              tap_sessions: Column, bot_share: Column, events: Column, gap_cv: Column,
              impossible: Column, day_burst: Column, peak_day: Column) -> dict[str, Column]:
    """The evidence features (module docstring), shared by entities and pooled rings."""
    ev = cfg.scoring.evidence
    c_att = _confidence(attempts, ev.attempts_half)
    c_in = _confidence(inflows, ev.inflows_half)
    return {
        F_CT_DECLINE: _ramp(decline_rate, ev.decline_rate) * c_att,
        F_CT_TINY: _ramp(tiny_share, ev.tiny_share) * c_att,
        F_CT_CARDS: _ramp(cards, ev.cards),
        F_CT_MERCHANTS: _ramp(merchants_per_card, ev.merchants_per_card),
        F_CT_BURST: _ramp(burst, ev.burst_per_min),
        F_MULE_PASS: _ramp(pass_through, ev.pass_through) * c_in,
        F_MULE_FAN_IN: _ramp(fan_in, ev.fan),
        F_MULE_FAN_OUT: _ramp(fan_out, ev.fan),
        F_MULE_NEW: _falling(age_days, ev.new_account_days) * c_in,
        F_BOT_TAPS: _ramp(bot_share, ev.bot_session_share) * _confidence(tap_sessions, ev.sessions_half),
        F_BOT_TIMING: _falling(gap_cv, ev.gap_cv) * _confidence(events, ev.events_half),
        F_BOT_TRAVEL: _ramp(impossible, ev.impossible_travel),
        F_BOT_BURST: _ramp(day_burst, ev.day_burst_ratio) * _confidence(peak_day, ev.events_half),
    }


def behaviour_evidence(cfg: RingfenceConfig) -> Callable[[DataFrame], DataFrame]:
    """``signals -> signals + f_* features, family points and evidence, evidence_type``.

    Type gates follow the signals' meaning: many cards on one merchant is
    normal trade (so ``f_ct_cards`` is for the tester's side), merchants are
    busy by nature (no burst feature), and merchants per card only means
    something for a card.
    """
    w = cfg.scoring.weights

    def step(signals: DataFrame) -> DataFrame:
        _require(signals, "signals", (*KEYS, *SIGNALS_USED))
        c, t = F.col, F.col(ENTITY_TYPE)
        feats = _features(
            cfg,
            attempts=c(S.ATTEMPTS), decline_rate=c(S.DECLINE_RATE), tiny_share=c(S.TINY_SHARE),
            cards=F.when(t.isin("account", "device", "ip"), c(S.DISTINCT_CARDS)),
            merchants_per_card=F.when(t == "card", c(S.DISTINCT_MERCHANTS)),
            burst=F.when(t != "merchant", c(S.BURST_ATTEMPTS_PER_MIN)),
            inflows=F.when(t == "account", c(S.INFLOW_N)),
            pass_through=F.when(t == "account", c(S.PASS_THROUGH_RATIO)),
            fan_in=F.when(t == "account", c(S.FAN_IN)), fan_out=F.when(t == "account", c(S.FAN_OUT)),
            age_days=F.when(t == "account", c(S.ACCOUNT_AGE_DAYS)),
            tap_sessions=c(S.TAP_CV_SESSIONS), bot_share=c(S.BOT_SESSION_SHARE),
            events=c(S.EVENTS_N), gap_cv=c(S.EVENT_GAP_CV), impossible=c(S.IMPOSSIBLE_TRAVEL_N),
            day_burst=c(S.DAY_BURST_RATIO), peak_day=c(S.PEAK_DAY_EVENTS),
        )
        return (
            signals.withColumns(feats)
            .withColumns({CT_POINTS: _points(w, CT_FEATURES), MULE_POINTS: _points(w, MULE_FEATURES),
                          BOT_POINTS: _points(w, BOT_FEATURES),
                          CT_EVIDENCE: _evidence(w, CT_FEATURES), MULE_EVIDENCE: _evidence(w, MULE_FEATURES),
                          BOT_EVIDENCE: _evidence(w, BOT_FEATURES)})
            .withColumn(EVIDENCE_TYPE, _type_vote(F.col(CT_EVIDENCE), F.col(MULE_EVIDENCE),
                                                  cfg.scoring.type_min_evidence))
        )

    return step


def usable_labels(labels: DataFrame, cutoff: dt.datetime) -> DataFrame:
    """The latest label per entity among those known strictly before ``cutoff``.

    Returns (entity_type, entity_id, label, labeled_at, source). Labels outside
    the contract's values are ignored. On a timestamp tie ``legit`` wins.
    """
    _require(labels, "labels", LABELS_REQUIRED)
    latest = Window.partitionBy(*KEYS).orderBy(
        F.desc(LABELED_AT), F.desc(F.col(LABEL) == "legit"), LABEL, SOURCE)
    return (
        labels.where((F.col(LABELED_AT) < F.lit(cutoff)) & F.col(LABEL).isin(*LABELS)
                     & F.col(ENTITY_ID).isNotNull())
        .withColumn("_n", F.row_number().over(latest))
        .where(F.col("_n") == 1)
        .select(*KEYS, LABEL, LABELED_AT, SOURCE)
    )


def _propagated(propagated: DataFrame | None) -> DataFrame | None:
    """(entity_type, entity_id, propagated_risk) from vertex ids; risk clamped to [0, 1]."""
    if propagated is None:
        return None
    _require(propagated, "propagated", PROPAGATED_REQUIRED)
    parts = F.split(F.col(ID), ":", 2)
    return (propagated.where(F.col(ID).isNotNull())
            .groupBy(parts[0].alias(ENTITY_TYPE), parts[1].alias(ENTITY_ID))
            .agg(F.max(F.least(F.greatest(F.col(RISK).cast("double"), F.lit(0.0)), F.lit(1.0)))
                 .alias(PROPAGATED_RISK)))


# --------------------------------------------------------------------------- rings


def ring_infrastructure(ring_members: DataFrame, edges: DataFrame) -> DataFrame:
    """Which devices, IPs, cards and merchants each ring account used (``INFRA_COLUMNS``).

    One row per (ring, ring account, identifier it used), with how many of the
    ring's accounts used that identifier (``ring_accounts``) and how many
    accounts in all (``accounts``). ``edges`` must be hub-free: a carrier NAT
    IP shared with hundreds of strangers is not the ring's infrastructure.
    """
    _require(ring_members, "ring_members", MEMBERS_REQUIRED)
    _require(edges, "edges", EDGES_REQUIRED)
    # No distinct: graph.build groups edges by (src, dst, edge_type) and each of these types has its own
    # kind of dst, so an (account, identifier) pair is one edge already (hub removal only drops edges).
    uses = (edges.where(F.col(EDGE_TYPE).isin(*INFRA_EDGE_TYPES))
            .select(F.col(SRC).alias(ACCOUNT_VERTEX), F.col(DST).alias(VIA_VERTEX)))
    totals = uses.groupBy(VIA_VERTEX).agg(F.count(F.lit(1)).alias(ACCOUNTS))
    ring_accounts = ring_members.where(F.col(ENTITY_TYPE) == "account").select(
        RING_ID, F.col(MEMBER_VERTEX).alias(ACCOUNT_VERTEX)).distinct()
    per_ring_via = Window.partitionBy(RING_ID, VIA_VERTEX)
    parts = F.split(F.col(VIA_VERTEX), ":", 2)
    return (
        uses.join(ring_accounts, ACCOUNT_VERTEX)
        .withColumn(RING_ACCOUNTS, F.count(F.lit(1)).over(per_ring_via))
        .join(totals, VIA_VERTEX)
        .select(RING_ID, ACCOUNT_VERTEX, VIA_VERTEX, parts[0].alias(VIA_TYPE), parts[1].alias(VIA_ID),
                F.col(RING_ACCOUNTS).cast("bigint"), F.col(ACCOUNTS).cast("bigint"))
    )


def ring_features(
    rings: DataFrame, ring_members: DataFrame, infrastructure: DataFrame, signals: DataFrame,
    labels: DataFrame, cutoff: dt.datetime, cfg: RingfenceConfig, propagated: DataFrame | None = None,
) -> DataFrame:
    """Per ring: structure, pooled behaviour of its accounts, labels and propagated risk.

    One row per ring of ``rings`` with the pooled counts, the ring's family
    evidence (``card_testing_evidence``, ``mule_evidence``, ``bot_evidence``,
    computed with the entity features on pooled values) and the label counts —
    the raw evidence ``type_rings`` scores, kept for calibration.
    """
    _require(rings, "rings", RINGS_REQUIRED)
    _require(ring_members, "ring_members", (*MEMBERS_REQUIRED, NET_FLOW))
    _require(infrastructure, "ring infrastructure", INFRA_COLUMNS)
    _require(signals, "signals", (*KEYS, *SIGNALS_USED))
    sc, w = cfg.scoring, cfg.scoring.weights
    c = F.col

    accounts = ring_members.where(c(ENTITY_TYPE) == "account").select(RING_ID, *KEYS, MEMBER_VERTEX).distinct()
    acct = (accounts.join(signals.select(*KEYS, *SIGNALS_USED), list(KEYS), "left")
            .transform(behaviour_evidence(cfg)))
    prop = _propagated(propagated)
    if prop is not None:
        acct = acct.join(prop, list(KEYS), "left")
    else:
        acct = acct.withColumn(PROPAGATED_RISK, F.lit(None).cast("double"))
    sig = sc.signals
    has_pt = c(S.PASS_THROUGH_RATIO).isNotNull() & (c(S.INFLOW_N) > 0)
    pooled = acct.groupBy(RING_ID).agg(
        F.sum(c(S.ATTEMPTS)).cast("bigint").alias(POOL_ATTEMPTS),
        F.sum(c(S.DECLINED)).cast("bigint").alias(POOL_DECLINED),
        F.sum(c(S.TINY_SHARE) * c(S.ATTEMPTS)).alias(POOL_TINY),
        F.sum(c(S.DISTINCT_CARDS)).cast("bigint").alias(POOL_CARDS),
        F.count(F.when(c(S.ATTEMPTS) > 0, 1)).alias(ATTEMPTING_ACCOUNTS),
        F.max(c(S.BURST_ATTEMPTS_PER_MIN)).alias(MAX_BURST),
        F.sum(F.when(has_pt, c(S.INFLOW_N))).cast("bigint").alias(POOL_INFLOWS),
        _ratio(F.sum(F.when(has_pt, c(S.PASS_THROUGH_RATIO) * c(S.INFLOW_N))),
               F.sum(F.when(has_pt, c(S.INFLOW_N)))).alias(POOL_PASS_THROUGH),
        F.max(c(S.FAN_IN)).alias(MAX_FAN_IN),
        F.max(c(S.FAN_OUT)).alias(MAX_FAN_OUT),
        F.avg(c(F_MULE_NEW)).alias(MEAN_NEW),
        F.avg(c(BOT_EVIDENCE)).alias(MEAN_BOT),
        F.count(F.when((c(S.INFLOW_N) >= sig.reason_pass_through_min_inflows)
                       & (c(S.PASS_THROUGH_RATIO) >= sig.reason_pass_through), 1)).alias(PASS_ACCOUNTS),
        F.count(F.when((c(S.TAP_CV_SESSIONS) >= sig.reason_bot_min_sessions)
                       & (c(S.TAP_CV_MEAN) < sig.bot_tap_cv), 1)).alias(BOT_ACCOUNTS),
        F.avg(F.coalesce(c(PROPAGATED_RISK), F.lit(0.0))).alias(MEAN_PROPAGATED),
    )

    labelled = ring_members.select(RING_ID, *KEYS).distinct().join(usable_labels(labels, cutoff), list(KEYS))
    is_fraud = c(LABEL).isin(*FRAUD_LABELS)
    label_counts = labelled.groupBy(RING_ID).agg(
        F.count(F.when(is_fraud, 1)).alias(N_FRAUD_LABELS),
        F.count(F.when(c(LABEL) == "legit", 1)).alias(N_LEGIT_LABELS),
        F.count(F.when(c(LABEL) == "mule", 1)).alias(N_MULE_LABELS),
        F.count(F.when(c(LABEL) == "card_testing", 1)).alias(N_CT_LABELS),
        F.max_by(F.when(is_fraud, _label_text(c(LABEL), c(SOURCE), c(LABELED_AT))),
                 F.when(is_fraud, c(LABELED_AT))).alias(LATEST_FRAUD_LABEL),
    )

    money_flow = money_flow_features(rings, ring_members, sc.ring.money_flow_prior)

    shared = infrastructure.where(c(VIA_TYPE).isin(*SHARED_TYPES) & (c(RING_ACCOUNTS) >= 2))
    shared_counts = shared.groupBy(RING_ID).agg(
        F.count_distinct(ACCOUNT_VERTEX).alias(SHARED_ACCOUNTS),
        F.count_distinct(F.when(c(VIA_TYPE) == "device", c(VIA_VERTEX))).alias(SHARED_DEVICES),
        F.count_distinct(F.when(c(VIA_TYPE) == "ip", c(VIA_VERTEX))).alias(SHARED_IPS),
        F.count_distinct(F.when(c(VIA_TYPE) == "card", c(VIA_VERTEX))).alias(SHARED_CARDS),
    )

    zero_if_null = [POOL_ATTEMPTS, POOL_DECLINED, POOL_CARDS, ATTEMPTING_ACCOUNTS, POOL_INFLOWS,
                    PASS_ACCOUNTS, BOT_ACCOUNTS, N_FRAUD_LABELS, N_LEGIT_LABELS, N_MULE_LABELS,
                    N_CT_LABELS, SHARED_ACCOUNTS, SHARED_DEVICES, SHARED_IPS, SHARED_CARDS]
    base = (rings.select(RING_ID, c(SIZE).cast("bigint").alias(SIZE), c(N_ACCOUNTS).cast("bigint").alias(N_ACCOUNTS),
                         c(N_EDGES).cast("bigint").alias(N_EDGES),
                         F.coalesce(c(DENSITY).cast("double"), F.lit(0.0)).alias(DENSITY))
            .join(pooled, RING_ID, "left").join(label_counts, RING_ID, "left").join(shared_counts, RING_ID, "left")
            .join(money_flow, RING_ID, "left"))
    base = base.withColumns({k: F.coalesce(c(k), F.lit(0)).cast("bigint") for k in zero_if_null})
    base = base.withColumns({
        POOL_DECLINE_RATE: _ratio(c(POOL_DECLINED), c(POOL_ATTEMPTS)),
        POOL_TINY_SHARE: _ratio(c(POOL_TINY), c(POOL_ATTEMPTS)),
        CARDS_PER_ACCOUNT: _ratio(c(POOL_CARDS), c(ATTEMPTING_ACCOUNTS)),
        SHARED_SHARE: F.coalesce(_ratio(c(SHARED_ACCOUNTS), c(N_ACCOUNTS)), F.lit(0.0)),
        MEAN_PROPAGATED: F.coalesce(c(MEAN_PROPAGATED), F.lit(0.0)),
        MEAN_BOT: F.coalesce(c(MEAN_BOT), F.lit(0.0)),
    })
    feats = _features(
        cfg, attempts=c(POOL_ATTEMPTS), decline_rate=c(POOL_DECLINE_RATE), tiny_share=c(POOL_TINY_SHARE),
        cards=c(CARDS_PER_ACCOUNT), merchants_per_card=F.lit(None), burst=c(MAX_BURST),
        inflows=c(POOL_INFLOWS), pass_through=c(POOL_PASS_THROUGH), fan_in=c(MAX_FAN_IN),
        fan_out=c(MAX_FAN_OUT), age_days=F.lit(None), tap_sessions=F.lit(None), bot_share=F.lit(None),
        events=F.lit(None), gap_cv=F.lit(None), impossible=F.lit(None), day_burst=F.lit(None),
        peak_day=F.lit(None),
    )
    # The pooled "new account" feature is the members' mean, not one age.
    feats[F_MULE_NEW] = F.coalesce(c(MEAN_NEW), F.lit(0.0))
    return (base.withColumns(feats)
            .withColumns({CT_EVIDENCE: _evidence(w, CT_FEATURES), MULE_EVIDENCE: _evidence(w, MULE_FEATURES),
                          BOT_EVIDENCE: c(MEAN_BOT)})
            # Ring bot evidence is the members' mean, so per-feature bot columns would only mislead.
            .drop(POOL_TINY, MEAN_NEW, *[f for f, _ in BOT_FEATURES]))


def money_flow_features(rings: DataFrame, ring_members: DataFrame, prior_accounts: float) -> DataFrame:
    """Per ring: ``money_flow_accounts``, ``money_flow_share`` and ``money_flow_evidence``.

    The accounts are the ring accounts on a mule-like transfer link of the
    candidate graph (``net_flow != 0``: the only links that carry flow), the
    share is those over ``n_accounts``, and the evidence is how rare that
    share is tonight: ``(accounts in rings with a smaller share + prior) /
    (accounts in rings + prior)`` for a ring with some money flow, 0 without
    (shares ranked in bins of 1 / ``MONEY_FLOW_BINS``; ``prior`` =
    ``scoring.ring.money_flow_prior`` pseudo-accounts in rings without money
    flow). Where ordinary customers pass money on too, every ring the
    candidate graph forms from money links has a share near 1 and the
    evidence falls towards 0; on a night where money flow sets a few rings
    apart it stays near 1. Built from ``rings`` and ``ring_members`` alone, so
    the ranking does not recompute the pooled signals: one aggregation to at
    most ``MONEY_FLOW_BINS + 1`` rows, ranked in one partition and broadcast.
    """
    c = F.col
    flowing = (ring_members.where((c(ENTITY_TYPE) == "account") & (F.abs(c(NET_FLOW)) > 0))
               .groupBy(RING_ID).agg(F.count_distinct(MEMBER_VERTEX).alias(MONEY_FLOW_ACCOUNTS)))
    shares = (rings.select(RING_ID, c(N_ACCOUNTS).cast("bigint").alias(N_ACCOUNTS))
              .join(flowing, RING_ID, "left")
              .withColumn(MONEY_FLOW_ACCOUNTS, F.coalesce(c(MONEY_FLOW_ACCOUNTS), F.lit(0)).cast("bigint"))
              .withColumn(MONEY_FLOW_SHARE, F.least(F.coalesce(_ratio(c(MONEY_FLOW_ACCOUNTS), c(N_ACCOUNTS)),
                                                               F.lit(0.0)), F.lit(1.0))))
    b, n, below, total = "_mf_bin", "_mf_n", "_mf_below", "_mf_total"
    binned = shares.withColumn(b, F.floor(c(MONEY_FLOW_SHARE) * MONEY_FLOW_BINS).cast("int"))
    rank = Window.orderBy(b)
    hist = (binned.groupBy(b).agg(F.sum(N_ACCOUNTS).cast("double").alias(n))
            .withColumn(below, F.coalesce(F.sum(n).over(rank.rowsBetween(Window.unboundedPreceding, -1)),
                                          F.lit(0.0)))
            .withColumn(total, F.sum(n).over(rank.rowsBetween(Window.unboundedPreceding,
                                                              Window.unboundedFollowing)))
            .drop(n))
    prior = F.lit(float(prior_accounts))
    return (binned.join(F.broadcast(hist), b, "left")
            .withColumn(MONEY_FLOW_EVIDENCE, F.when(c(MONEY_FLOW_SHARE) > 0, (c(below) + prior) / (c(total) + prior))
                        .otherwise(F.lit(0.0)))
            .drop(N_ACCOUNTS, b, below, total))


def _ring_reasons(cfg: RingfenceConfig) -> Column:
    sig, c = cfg.scoring.signals, F.col
    texts = [
        F.when((c(POOL_ATTEMPTS) >= sig.reason_min_attempts)
               & ((c(POOL_DECLINE_RATE) >= sig.reason_decline_rate) | (c(POOL_TINY_SHARE) >= sig.reason_tiny_share)),
               F.format_string("%,d card attempts by %,d ring accounts: %d%% declined, %d%% tiny, "
                               "%,d cards (%.1f per account)",
                               c(POOL_ATTEMPTS), c(ATTEMPTING_ACCOUNTS), S._pct(c(POOL_DECLINE_RATE)),
                               S._pct(c(POOL_TINY_SHARE)), c(POOL_CARDS), c(CARDS_PER_ACCOUNT))),
        F.when(c(PASS_ACCOUNTS) >= 1, F.format_string(
            f"%,d of %,d ring accounts forwarded >= %d%% of inflows within {sig.pass_through_hours:g} h "
            "(%d%% of %,d inflows overall)", c(PASS_ACCOUNTS), c(N_ACCOUNTS), S._pct(F.lit(sig.reason_pass_through)),
            S._pct(c(POOL_PASS_THROUGH)), c(POOL_INFLOWS))),
        # Only where money flow sets the ring apart from tonight's other rings (money_flow_evidence).
        F.when((c(MONEY_FLOW_ACCOUNTS) >= 2) & (c(MONEY_FLOW_EVIDENCE) >= 0.5), F.format_string(
            "%,d of %,d ring accounts sent or received mule-like transfers (fresh money passed on within "
            f"{sig.pass_through_hours:g} h), rare among tonight's rings (evidence %.2f)",
            c(MONEY_FLOW_ACCOUNTS), c(N_ACCOUNTS), c(MONEY_FLOW_EVIDENCE))),
        F.when(c(MAX_FAN_IN) >= sig.reason_fan,
               F.format_string("a ring account received transfers from %,d distinct senders", c(MAX_FAN_IN))),
        F.when(c(MAX_FAN_OUT) >= sig.reason_fan,
               F.format_string("a ring account sent transfers to %,d distinct receivers", c(MAX_FAN_OUT))),
        F.when(c(BOT_ACCOUNTS) >= 1, F.format_string(
            "%,d of %,d ring accounts show bot-like taps", c(BOT_ACCOUNTS), c(N_ACCOUNTS))),
        F.when(c(SHARED_ACCOUNTS) >= 2, F.format_string(
            "%,d of %,d ring accounts share infrastructure (%s, %s, %s)", c(SHARED_ACCOUNTS), c(N_ACCOUNTS),
            S._count_of(c(SHARED_DEVICES), "device"), S._count_of(c(SHARED_IPS), "IP"),
            S._count_of(c(SHARED_CARDS), "card"))),
        F.when(c(N_FRAUD_LABELS) >= 1, F.format_string(
            "%,d of %,d members labelled fraudulent (latest: %s)", c(N_FRAUD_LABELS), c(SIZE),
            c(LATEST_FRAUD_LABEL))),
        F.when(c(N_LEGIT_LABELS) >= 1, F.format_string(
            "%,d of %,d members labelled legit", c(N_LEGIT_LABELS), c(SIZE))),
        F.when(c(MEAN_PROPAGATED) >= cfg.scoring.reason_min_propagated, F.format_string(
            "mean propagated risk %.2f over ring accounts", c(MEAN_PROPAGATED))),
    ]
    reasons = F.filter(F.array(*texts), lambda x: x.isNotNull())
    structure = F.format_string("%,d members (%,d accounts), %,d links, density %.2f",
                                c(SIZE), c(N_ACCOUNTS), c(N_EDGES), c(DENSITY))
    # Never empty: the structure line is the last resort.
    return F.when(F.size(reasons) > 0, reasons).otherwise(F.array(structure))


def type_rings(features: DataFrame, cfg: RingfenceConfig) -> DataFrame:
    """Ring type, ring score and reasons from ``ring_features`` (formula in the module docstring).

    Returns ``TYPED_RING_COLUMNS`` first, then every feature column (for
    calibration and investigators).
    """
    _require(features, "ring features", (RING_ID, SIZE, N_ACCOUNTS, DENSITY, SHARED_SHARE, CT_EVIDENCE,
                                         MULE_EVIDENCE, BOT_EVIDENCE, MEAN_PROPAGATED, N_FRAUD_LABELS,
                                         N_LEGIT_LABELS, N_MULE_LABELS, N_CT_LABELS, MONEY_FLOW_SHARE,
                                         MONEY_FLOW_EVIDENCE, MONEY_FLOW_ACCOUNTS))
    r, c = cfg.scoring.ring, F.col
    denom = c(SIZE).cast("double") + F.lit(r.label_prior)
    features = features.withColumn(F_MONEY_ACCOUNTS, c(MONEY_FLOW_EVIDENCE) * _ramp(
        c(MONEY_FLOW_ACCOUNTS), cfg.scoring.evidence.money_flow_accounts))

    def share(n: str) -> Column:
        return F.coalesce(_ratio(c(n), denom), F.lit(0.0))

    z = (F.lit(r.bias) + F.lit(r.density) * c(DENSITY) + F.lit(r.shared_infrastructure) * c(SHARED_SHARE)
         + F.lit(r.card_testing) * c(CT_EVIDENCE) + F.lit(r.mule) * c(MULE_EVIDENCE)
         + F.lit(r.bot) * c(BOT_EVIDENCE) + F.lit(r.money_flow) * c(MONEY_FLOW_EVIDENCE)
         + F.lit(r.money_accounts) * c(F_MONEY_ACCOUNTS)
         + F.lit(r.propagated) * c(MEAN_PROPAGATED)
         + F.lit(r.fraud_labels) * share(N_FRAUD_LABELS) - F.lit(r.legit_labels) * share(N_LEGIT_LABELS))
    ring_type = _type_vote(c(CT_EVIDENCE) + share(N_CT_LABELS),
                           c(MULE_EVIDENCE) + F.lit(cfg.scoring.type_money_flow) * c(MONEY_FLOW_EVIDENCE)
                           + share(N_MULE_LABELS), cfg.scoring.type_min_evidence)
    out = (features.withColumn(RING_LOGIT, z)
           .withColumn(RING_SCORE, _sigmoid(c(RING_LOGIT)))
           .withColumn(RING_TYPE, ring_type)
           .withColumn(RING_LISTED, c(RING_SCORE) >= F.lit(r.threshold))
           .withColumn(RING_REASONS, _ring_reasons(cfg)))
    rest = [x for x in out.columns if x not in TYPED_RING_COLUMNS]
    return out.select(*TYPED_RING_COLUMNS, *rest)


def listed_rings(typed_rings: DataFrame) -> DataFrame:
    """The rings worth publishing (``ring_score >= scoring.ring.threshold``)."""
    return typed_rings.where(F.col(RING_LISTED))


# --------------------------------------------------------------------------- entities


def _attachments(ring_members: DataFrame, typed_rings: DataFrame, infrastructure: DataFrame,
                 cfg: RingfenceConfig) -> DataFrame:
    """At most one ring per entity: membership first, else the strongest link (ties: ring id).

    Every candidate (each membership, and each use of an identifier by a ring
    account) goes into one aggregation per entity that keeps the least of
    ``(not a member, -pull, ring id)`` with its columns: no distinct and no
    window over the candidates (docs/benchmarks.md, "Scoring cost against ring discovery").
    """
    w = cfg.scoring.weights
    c = F.col
    rings = typed_rings.select(RING_ID, RING_TYPE, RING_SCORE, RING_LISTED, N_ACCOUNTS)
    no_count = F.lit(None).cast("bigint")
    members = ring_members.select(*KEYS, RING_ID, RING_LINKS, MONEY_SHARE, F.lit(MEMBER).alias(ATTACHMENT),
                                  F.lit(1.0).alias(LINK_STRENGTH), no_count.alias(RING_ACCOUNTS),
                                  no_count.alias(ACCOUNTS))
    strength = (_ratio(c(RING_ACCOUNTS), c(ACCOUNTS))
                * (F.lit(1.0) - F.pow(F.lit(0.5), c(RING_ACCOUNTS).cast("double"))))
    links = infrastructure.select(c(VIA_TYPE).alias(ENTITY_TYPE), c(VIA_ID).alias(ENTITY_ID), RING_ID,
                                  no_count.alias(RING_LINKS), F.lit(None).cast("double").alias(MONEY_SHARE),
                                  F.lit(LINK).alias(ATTACHMENT), strength.alias(LINK_STRENGTH),
                                  RING_ACCOUNTS, ACCOUNTS)
    pull = F.when(c(ATTACHMENT) == MEMBER, F.lit(w.ring_member)).otherwise(F.lit(w.ring_link)) \
        * c(LINK_STRENGTH) * c(RING_SCORE)
    # The order of the choice, least first; a missing pull comes last, as in a descending sort.
    order = [(c(ATTACHMENT) != MEMBER).alias("_o_link"),
             F.coalesce(-pull, F.lit(float("inf"))).alias("_o_pull"), c(RING_ID).alias("_o_ring")]
    chosen = {ATTACHED_RING: c(RING_ID), ATTACHMENT: c(ATTACHMENT), LINK_STRENGTH: c(LINK_STRENGTH),
              RING_LINKS: c(RING_LINKS), MONEY_SHARE: c(MONEY_SHARE),
              "link_ring_accounts": c(RING_ACCOUNTS), "link_accounts": c(ACCOUNTS),
              "attached_ring_type": c(RING_TYPE), RING_SCORE: c(RING_SCORE), RING_LISTED: c(RING_LISTED),
              "ring_n_accounts": c(N_ACCOUNTS), C_RING: pull}
    best = F.min(F.struct(*order, *[col.alias(name) for name, col in chosen.items()]))
    return (members.unionByName(links).join(rings, RING_ID)
            .groupBy(*KEYS).agg(best.alias("_best"))
            .select(*KEYS, *[c("_best")[name].alias(name) for name in chosen]))


def _shared_reasons(infrastructure: DataFrame) -> DataFrame:
    """Per account: its 'shares device X with N other ring accounts' texts, most shared first.

    Keyed by the entity alone (each text carries its ring in ``r``), so joining
    it does not reshuffle the entity frame; ``_entity_reasons`` keeps the
    attached ring's first two.
    """
    c = F.col
    noun = F.when(c(VIA_TYPE) == "ip", F.lit("IP")).otherwise(c(VIA_TYPE))
    text = F.format_string("shares %s %s with %,d other ring account%s", noun, c(VIA_ID),
                           c(RING_ACCOUNTS) - 1, F.when(c(RING_ACCOUNTS) == 2, F.lit("")).otherwise(F.lit("s")))
    parts = F.split(c(ACCOUNT_VERTEX), ":", 2)
    return (infrastructure.where(c(VIA_TYPE).isin(*SHARED_TYPES) & (c(RING_ACCOUNTS) >= 2))
            .groupBy(parts[0].alias(ENTITY_TYPE), parts[1].alias(ENTITY_ID))
            .agg(F.sort_array(F.collect_list(F.struct(
                (-c(RING_ACCOUNTS)).alias("k"), c(VIA_VERTEX).alias("v"), c(RING_ID).alias("r"),
                text.alias("t")))).alias("_shared")))


def entity_scores(
    signals: DataFrame, ring_members: DataFrame, typed_rings: DataFrame, infrastructure: DataFrame,
    labels: DataFrame, propagated: DataFrame | None, cfg: RingfenceConfig, ds: dt.date,
    cutoff: dt.datetime | None = None,
) -> DataFrame:
    """Every scored entity with its evidence, terms, score, threshold and reasons — unthresholded.

    The internal table a calibration bench fits against truth: the ``f_*``
    features, family evidence, ring attachment, propagated risk, label, each
    logit term (``c_behaviour``, ``c_ring``, ``c_propagated``, ``c_label``),
    ``logit``, ``score``, the ``threshold`` that applies and ``listed``, plus
    the output ``ring_id`` / ``ring_type`` / ``reasons``. ``risk_list`` keeps
    the listed rows. ``ds`` is unused beyond the default cut-off.
    """
    _require(signals, "signals", SIGNALS_REQUIRED)
    _require(ring_members, "ring_members", (*MEMBERS_REQUIRED, RING_LINKS, MONEY_SHARE))
    _require(typed_rings, "typed rings", TYPED_RING_COLUMNS)
    _require(infrastructure, "ring infrastructure", INFRA_COLUMNS)
    sc, w, c = cfg.scoring, cfg.scoring.weights, F.col
    cutoff = cutoff or label_cutoff(ds)

    attached = _attachments(ring_members, typed_rings, infrastructure, cfg)
    prop = _propagated(propagated)
    # The scored entities: those with signals, a ring attachment or propagated risk. Each source has
    # one row per entity, so full outer joins list them without a distinct over all of them. The
    # graph side (attachment, shared-infrastructure texts, propagated risk) is joined first, so the
    # wide signals table (every entity of the window) is shuffled once, not once per join.
    known = c(ENTITY_ID).isNotNull()
    # Texts are only for ring accounts (ring_infrastructure), each of them a member with an attachment,
    # and only the attached ring's are read: a left join from the attachments loses none that is used.
    # Both sides come grouped by entity and a left join keeps that partitioning (a full outer join does
    # not), so nothing is shuffled before the propagated risk is joined.
    graph_side = attached.where(known).join(_shared_reasons(infrastructure), list(KEYS), "left")
    graph_side = (graph_side.join(prop.where(known & (c(PROPAGATED_RISK) > 0)), list(KEYS), "full_outer")
                  if prop is not None else graph_side.withColumn(PROPAGATED_RISK, F.lit(None).cast("double")))
    df = (signals.select(*KEYS, *SIGNALS_USED, S.SIGNAL_REASONS, F.lit(True).alias("_signalled")).where(known)
          .join(graph_side, list(KEYS), "full_outer")
          .where(c("_signalled") | c(ATTACHMENT).isNotNull() | c(PROPAGATED_RISK).isNotNull()))
    df = (df.transform(behaviour_evidence(cfg))
          .join(usable_labels(labels, cutoff), list(KEYS), "left"))
    df = df.select(*[x for x in df.columns if x not in ("_signalled", "_shared")], "_shared")
    shared_n = F.array_max(F.transform(F.filter(c("_shared"), lambda x: x["r"] == c(ATTACHED_RING)),
                                       lambda x: -x["k"]))
    df = df.withColumn(SHARED_RING_ACCOUNTS, F.when(c(ATTACHMENT) == MEMBER, F.coalesce(shared_n, F.lit(1))))
    df = df.withColumn(F_RING_SHARED, _ramp(c(SHARED_RING_ACCOUNTS), sc.evidence.ring_shared_accounts))
    df = df.withColumn(F_RING_TIED, _ramp(F.when(c(ATTACHMENT) == MEMBER, c(RING_LINKS)), sc.evidence.ring_links))
    df = df.withColumn(F_RING_MONEY, _ramp(F.when(c(ATTACHMENT) == MEMBER, c(MONEY_SHARE)),
                                           sc.evidence.ring_money_share))

    in_listed_ring = F.coalesce(c(RING_LISTED), F.lit(False))
    from_trusted = c(SOURCE).isin(*sc.trusted_label_sources) if sc.trusted_label_sources else F.lit(False)
    trusted = F.coalesce(c(LABEL).isin(*FRAUD_LABELS) & from_trusted, F.lit(False))
    # Cleared: an investigator (a trusted source) found the entity legit, and no later label says otherwise.
    cleared = F.coalesce((c(LABEL) == "legit") & from_trusted, F.lit(False))
    own_type = (F.when(c(LABEL).isin("mule", "card_testing"), c(LABEL)).otherwise(c(EVIDENCE_TYPE)))
    type_threshold = F.create_map(*[x for t, v in sorted(sc.thresholds.items()) for x in (F.lit(t), F.lit(v))])
    df = df.withColumns({
        PROPAGATED_RISK: F.coalesce(c(PROPAGATED_RISK), F.lit(0.0)),
        C_BEHAVIOUR: c(CT_POINTS) + c(MULE_POINTS) + c(BOT_POINTS),
        C_RING: F.coalesce(c(C_RING), F.lit(0.0))
        + (F.lit(w.ring_shared) * c(F_RING_SHARED) + F.lit(w.ring_tied) * c(F_RING_TIED)
           + F.lit(w.ring_money) * c(F_RING_MONEY))
        * F.coalesce(c(RING_SCORE), F.lit(0.0)),
        C_LABEL: (F.when(c(LABEL).isin(*FRAUD_LABELS), F.lit(w.fraud_label))
                  .when(c(LABEL) == "legit", F.lit(-w.legit_label)).otherwise(F.lit(0.0))),
    })
    df = df.withColumn(C_PROPAGATED, F.lit(w.propagated) * c(PROPAGATED_RISK))
    df = df.withColumn(LOGIT, F.lit(w.bias) + c(C_BEHAVIOUR) + c(C_RING) + c(C_PROPAGATED) + c(C_LABEL))
    df = df.withColumns({
        # greatest() skips the null of an untrusted row: the floor applies to trusted labels only.
        SCORE: F.greatest(_sigmoid(c(LOGIT)), F.when(trusted, F.lit(sc.trusted_label_score))),
        THRESHOLD: F.when(in_listed_ring, type_threshold[c(ENTITY_TYPE)])
        .otherwise(F.greatest(type_threshold[c(ENTITY_TYPE)], F.lit(sc.lone_min_score))),
        RING_ID: F.when(in_listed_ring, c(ATTACHED_RING)),
        RING_TYPE: F.when(in_listed_ring, c("attached_ring_type")).otherwise(own_type),
    })
    df = df.withColumn(LISTED, (F.coalesce(c(SCORE) >= c(THRESHOLD), F.lit(False)) & ~cleared) | trusted)
    return df.withColumn(REASONS, _entity_reasons(cfg, in_listed_ring))


def _entity_reasons(cfg: RingfenceConfig, in_listed_ring: Column) -> Column:
    c = F.col
    ring_text = F.when(in_listed_ring & (c(ATTACHMENT) == MEMBER), F.format_string(
        "in ring %s (%s, %,d accounts) with score %.2f",
        c(ATTACHED_RING), c("attached_ring_type"), c("ring_n_accounts"), c(RING_SCORE)))
    link_text = F.when(in_listed_ring & (c(ATTACHMENT) == LINK), F.format_string(
        "used by %,d ring account%s (of %,d accounts in all) of ring %s (%s, %,d accounts) with score %.2f",
        c("link_ring_accounts"), F.when(c("link_ring_accounts") == 1, F.lit("")).otherwise(F.lit("s")),
        c("link_accounts"), c(ATTACHED_RING), c("attached_ring_type"), c("ring_n_accounts"), c(RING_SCORE)))
    money_text = F.when(in_listed_ring & (c(ATTACHMENT) == MEMBER)
                        & (c(MONEY_SHARE) >= cfg.scoring.evidence.ring_money_share[0]), F.format_string(
        "moved %.1fx the money of its ring's median mover on mule-like transfers", c(MONEY_SHARE)))
    label_text = F.when(c(LABEL).isNotNull(), _label_text(c(LABEL), c(SOURCE), c(LABELED_AT)))
    prop_text = F.when(c(PROPAGATED_RISK) >= cfg.scoring.reason_min_propagated, F.format_string(
        "propagated risk %.2f from labelled entities nearby in the graph", c(PROPAGATED_RISK)))
    empty = F.array().cast("array<string>")
    reasons = F.concat(
        F.filter(F.array(ring_text, link_text, money_text, label_text), lambda x: x.isNotNull()),
        F.coalesce(c(S.SIGNAL_REASONS), empty),
        F.when(in_listed_ring, F.coalesce(F.transform(F.slice(F.filter(
            c("_shared"), lambda x: x["r"] == c(ATTACHED_RING)), 1, 2), lambda x: x["t"]), empty))
        .otherwise(empty),
        F.filter(F.array(prop_text), lambda x: x.isNotNull()),
    )
    fallback = F.format_string("behavioural evidence: card testing %.2f, mule %.2f, automation %.2f",
                               c(CT_EVIDENCE), c(MULE_EVIDENCE), c(BOT_EVIDENCE))
    # Never empty: the evidence values themselves are the last resort.
    return F.when(F.size(reasons) > 0, reasons).otherwise(F.array(fallback))


def stored_scores(scores: DataFrame, cfg: RingfenceConfig) -> DataFrame:
    """The rows of ``entity_scores`` worth storing (module docstring, "Stored scores"); every listed one."""
    floor = cfg.scoring.entity_scores_min_score
    if floor <= 0:
        return scores
    c = F.col
    return scores.where((c(SCORE) >= floor) | c(LISTED) | c(LABEL).isNotNull() | c(RING_ID).isNotNull())


def risk_list(scores: DataFrame, cfg: RingfenceConfig, ds: dt.date) -> DataFrame:
    """The ``risk/`` table: listed rows of ``entity_scores`` in ``RISK_SCHEMA``; expiry = end of ds + TTL."""
    _require(scores, "entity scores", (*KEYS, SCORE, RING_ID, RING_TYPE, REASONS, LISTED))
    expires = dt.datetime.combine(ds + dt.timedelta(days=1 + cfg.scoring.list_ttl_days), dt.time(0),
                                  tzinfo=dt.UTC)
    types = dict(part.strip().split(" ", 1) for part in spark_ddl(RISK_SCHEMA).replace("`", "").split(", "))
    values = {EXPIRES_AT: F.lit(expires)}
    return scores.where(F.col(LISTED)).select(
        *[values.get(name, F.col(name)).cast(t).alias(name) for name, t in types.items()])


def score_entities(
    signals: DataFrame, ring_members: DataFrame, typed_rings: DataFrame, infrastructure: DataFrame,
    labels: DataFrame, propagated: DataFrame | None, cfg: RingfenceConfig, ds: dt.date,
) -> DataFrame:
    """The ``risk/`` table: one row per listed entity (``RISK_SCHEMA``); unlisted entities are absent."""
    return risk_list(entity_scores(signals, ring_members, typed_rings, infrastructure, labels, propagated,
                                   cfg, ds), cfg, ds)


@dataclass(frozen=True)
class ScoreResult:
    rings: DataFrame          # typed_rings: every ring with type, score, reasons, evidence
    scores: DataFrame         # entity_scores: the stored entity scores (stored_scores), unthresholded
    risk: DataFrame           # the risk/ table (RISK_SCHEMA)


def score_run(
    rings: DataFrame, ring_members: DataFrame, edges: DataFrame, signals: DataFrame, labels: DataFrame,
    propagated: DataFrame | None, cfg: RingfenceConfig, ds: dt.date,
    materialise: Callable[[DataFrame, str], DataFrame] | None = None,
) -> ScoreResult:
    """All of scoring for one ``ds``, for the pipeline's ``score`` stage.

    ``edges`` must be the hub-free identity graph edges; ``propagated`` may be
    ``None`` or empty until GraphFrames propagation is available.

    ``materialise(df, name)`` writes a table and returns it read back. The ring
    infrastructure (``score/infrastructure``), the typed rings (``ring_scores``)
    and the entity scores (``entity_scores``) each feed later tables; the
    stage passes it so that each is computed once, instead of again inside
    every table built on it. Without it the result stays lazy (tests): the
    caller should then cache or write ``rings``/``scores`` if it uses them more
    than once.
    """
    keep = materialise or (lambda df, _name: df)
    cutoff = label_cutoff(ds)
    infra = keep(ring_infrastructure(ring_members, edges), "score/infrastructure")
    typed = keep(type_rings(ring_features(rings, ring_members, infra, signals, labels, cutoff, cfg, propagated),
                            cfg), "ring_scores")
    scores = keep(stored_scores(entity_scores(signals, ring_members, typed, infra, labels, propagated, cfg, ds,
                                              cutoff), cfg), "entity_scores")
    return ScoreResult(rings=typed, scores=scores, risk=risk_list(scores, cfg, ds))
