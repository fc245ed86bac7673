"""The candidate graph: the links connected components may follow, so that components isolate rings.

Why not the plain account projection (``graph.hubs.account_projection``)? It
links two accounts through any shared non-hub identifier and any transfer. On
the 1M-event generated world its largest component held 97% of its accounts:
friends' transfers, households and travellers meeting on the same hotspots
chain everybody together, so per-component refinement (graph/rings.py) never
sees a ring on its own. Here every link type must carry its own evidence, and
``links`` says for every considered pair why it was kept or dropped.
Measurements of these rules and of the alternatives that lost:
docs/candidates.md (bench/bench_candidates.py).

Link rules (``rule`` column; one ``links`` row per considered account pair and
``via_type``, ``src < dst``):

``shared_device`` / ``shared_card``
    The two accounts used one device / card that is not a hub (default caps
    50 accounts). Farm devices and stolen cards are what rings share;
    families share a device too, but a family stays a small component of its
    own once money links no longer chain households together.
``tiny_merchant``
    Both paid at a merchant with at most ``hubs.merchant_link_max_accounts``
    accounts (as in the projection; 0 = never).
``ip_footprint``
    The two share at least ``candidates.ip_min_shared`` non-hub IPs, and the
    shared IPs are at least ``candidates.ip_min_jaccard`` of all non-hub IPs
    the two used (Jaccard). Ring members cycle through the same few proxy
    exits, so their IP sets nearly coincide; travellers meet on one hotel or
    airport hotspot among many; a household shares one home IP (and links
    through its device anyway). Co-use of an IP within an hour or a day was
    measured too: it loses mule rings, whose members use their proxies at
    unrelated times.
``ip_exit``
    The two share a non-hub IP that is a group's proxy exit: at least
    ``candidates.ip_exit_min_accounts`` of its accounts, and at least
    ``candidates.ip_exit_min_share`` of all of them, have a kept
    ``ip_footprint`` link through it. A ring member who went through the
    ring's proxy once shares one IP with each mate and fails the footprint
    rule; here it joins them. A hotspot or an office, where most users share
    nothing else, is no exit; two couples meeting at a café are too few.
``money_forward``
    Transfers between the two (either direction), at least one of them
    *mule-like*. Transfer ``a -> b`` of amount ``x`` at time ``t`` is
    mule-like when both hold (``H = scoring.signals.pass_through_hours``,
    ``f = candidates.forward_share``):

    1. *a passes on fresh money*: a's approved inflows in ``[t - H, t)``
       minus a's approved outflows in the same span are at least ``f x``;
    2. *b moves it on*: b's approved outflows and approved payments in
       ``(t, t + H]`` add up to at least ``f x``; or b received transfers
       passing test 1 from at least ``candidates.collector_min_senders``
       distinct senders in the window (a collector who cashes out later); or
       ``t + H`` is after the window end, so b has not had ``H`` hours yet
       and test 1 alone decides.

    Victims paying a mule fail 1 (they did not just receive that money), so
    do payroll, rent and dues; a mule's payment to a friend fails 2. Amounts
    are compared within one currency. Transfers before the window are not
    seen, so a hop in the first ``H`` hours of the window can fail test 1.

Hubs: ``hubs/`` vertices link nothing, as in the projection, except the
``degree_outlier`` hubs of the types in ``candidates.outlier_hubs_link``
(default account, device, card): their links pass their own test above, and
the outlier rule (a multiple of this run's p99 degree) would otherwise set
aside exactly the busiest mule collectors and the largest device farms.
``excluded`` and ``degree_cap`` hubs never link, with one exception: an IP
over ``hubs.max_accounts_per_ip`` but with at most
``candidates.ip_footprint_max_accounts`` accounts takes part in the
``ip_footprint`` rule (the only rule IPs link by). A mule ring bigger than the
IP cap shares its few proxy exits among all its members; carrier NATs and
offices have hundreds of users and stay set aside. A transfer pair touching a
hub account appears in ``links`` as dropped, with the hub's reason.

Edges (``edges``, what connected components run on): the kept links
(``edge_kind = "link"``, account - account) plus ``attach`` edges (account -
identifier) that bring the evidence into the components without ever
joining two of them:

``linking_identifier``
    An identifier of kept identifier links, to its *anchor* (the account
    with the most kept links through it; ties: smallest id) and to the
    accounts of the anchor's kept links through it - all already linked to
    the anchor. For devices, cards and tiny merchants every pair links, so
    that is all their accounts; an IP whose users pass the footprint rule
    only in part joins the anchor's side only.
``test_card`` / ``bot_device``
    On an account with a kept link: a card only it used whose attempts look
    tested (``signals`` tiny share >= ``test_card_min_tiny_share`` or decline
    rate >= ``test_card_min_decline_rate``), a device only it used whose
    sessions look scripted (bot session share >= ``bot_device_min_share``).

A card-testing ring's component then holds its accounts, farm devices,
proxy IPs and tested cards: the entity types ``truth/rings`` lists.
``via_ids`` lists every shared identifier of a link (the identifier itself
for an attach edge).

Weights: identifier links carry the projection's Adamic-Adar sum
(``min(w_a, w_b) / log2(k)`` per shared identifier of ``k`` accounts); money
links the sum of the ``graph/edges`` transfer weights of the directions with
a mule-like transfer, and ``flow`` = mule-like amount ``src -> dst`` minus
``dst -> src``; attach edges the account - identifier edge weight.

Cost: identifier pairs are bounded by the hub caps exactly as in the
projection; the money tests are three range-window sums over one
``(account, currency)`` partitioning of transfers and payments. Nothing is
collected to the driver except ``candidate_stats`` (a few dozen rows).

Use: ``candidate_graph`` (links and edges) is the entry point of the rings
stage; ``candidate_links`` and ``edges_from_links`` are its two halves, so a
caller can write ``links`` and build ``edges`` from the table read back.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from graph.build import (
    ACCOUNT,
    ACCOUNT_CARD,
    ACCOUNT_DEVICE,
    ACCOUNT_IP,
    ACCOUNT_MERCHANT,
    CARD,
    DEVICE,
    DST,
    EDGE_TYPE,
    ENTITY_TYPE,
    ID,
    IP,
    MERCHANT,
    SRC,
    TRANSFER,
    WEIGHT,
    IdentityGraph,
    vertex_id,
)
from graph.config import CandidateConf, RingfenceConfig
from graph.errors import SchemaError
from graph.hubs import (
    DEGREE,
    DEGREE_CAP,
    DEGREE_OUTLIER,
    HUB_REASON,
    HUB_RULE,
    SHARED_COUNT,
    VIA_IDS,
    VIA_TYPE,
)
from graph.signals import BOT_SESSION_SHARE, DECLINE_RATE, ENTITY_ID, TINY_SHARE

# Link and edge columns (SRC, DST, WEIGHT, VIA_TYPE, VIA_IDS, SHARED_COUNT as in the projection).
RULE = "rule"
KEPT = "kept"
REASON = "reason"
FLOW = "flow"
EDGE_KIND = "edge_kind"
LINK_COLUMNS = (SRC, DST, VIA_TYPE, RULE, KEPT, REASON, SHARED_COUNT, VIA_IDS, WEIGHT, FLOW)
EDGE_COLUMNS = (SRC, DST, EDGE_KIND, VIA_TYPE, RULE, VIA_IDS, SHARED_COUNT, WEIGHT, FLOW)

# Rules.
SHARED_DEVICE = "shared_device"
SHARED_CARD = "shared_card"
TINY_MERCHANT = "tiny_merchant"
IP_FOOTPRINT = "ip_footprint"
MONEY_FORWARD = "money_forward"
LINKING_IDENTIFIER = "linking_identifier"
TEST_CARD = "test_card"
BOT_DEVICE = "bot_device"
IP_EXIT = "ip_exit"
IDENTIFIER_RULE = {DEVICE: SHARED_DEVICE, CARD: SHARED_CARD, MERCHANT: TINY_MERCHANT, IP: IP_FOOTPRINT}

# Edge kinds.
LINK = "link"
ATTACH = "attach"

_VIA_OF_EDGE = {ACCOUNT_DEVICE: DEVICE, ACCOUNT_IP: IP, ACCOUNT_CARD: CARD, ACCOUNT_MERCHANT: MERCHANT}
_HUB = "_hub"
_ACCT, _IDENT, _W, _K = "_acct", "_ident", "_w", "_k"
_US = "_us"
_MICROS_PER_HOUR = 3_600_000_000
_MICROS_PER_DAY = 24 * _MICROS_PER_HOUR
TRANSFER_COLUMNS = ("event_id", "event_time", "src_account_id", "dst_account_id", "amount", "currency", "status")
PAYMENT_COLUMNS = ("event_time", "account_id", "amount", "currency", "status")


@dataclass(frozen=True)
class CandidateGraph:
    """``links``: every considered pair with its decision (``LINK_COLUMNS``);
    ``edges``: what connected components run on (``EDGE_COLUMNS``)."""

    links: DataFrame
    edges: DataFrame


# --------------------------------------------------------------------------- hubs


def candidate_hubs(cfg: RingfenceConfig, hubs: DataFrame) -> DataFrame:
    """The hub rows that stay set aside in the candidate graph (see the module docstring)."""
    waived = F.lit(False)
    waived_types = list(cfg.candidates.outlier_hubs_link)
    if waived_types:
        waived = waived | ((F.col(HUB_RULE) == DEGREE_OUTLIER) & F.col(ENTITY_TYPE).isin(*waived_types))
    ip_max = cfg.candidates.ip_footprint_max_accounts
    if ip_max is not None:
        # IPs link only through the footprint rule, so a waived IP is a footprint-only IP.
        waived = waived | ((F.col(HUB_RULE) == DEGREE_CAP) & (F.col(ENTITY_TYPE) == IP)
                           & (F.col(DEGREE) <= F.lit(ip_max)))
    return hubs.where(~waived)


def _hub_ids(hubs: DataFrame) -> DataFrame:
    return hubs.select(F.col(ID).alias(_HUB)).distinct()


def _without(ids: DataFrame, col: str):
    def step(df: DataFrame) -> DataFrame:
        return df.join(ids, df[col] == ids[_HUB], "left_anti")
    return step


# --------------------------------------------------------------------------- identifier links


def _incidence(cfg: RingfenceConfig, g: IdentityGraph, hub_ids: DataFrame) -> DataFrame:
    """Account - identifier incidences without hubs: ``_acct, _ident, via_type, _w, _k``.

    ``_k`` counts every account on the identifier, hub accounts included (its
    hub degree), so one hub account does not make an identifier look rarer.
    """
    via = F.lit(None).cast("string")
    for edge_type, kind in _VIA_OF_EDGE.items():
        via = F.when(F.col(EDGE_TYPE) == edge_type, F.lit(kind)).otherwise(via)
    inc = (
        g.edges.where(F.col(EDGE_TYPE).isin(*_VIA_OF_EDGE))
        .select(F.col(SRC).alias(_ACCT), F.col(DST).alias(_IDENT), via.alias(VIA_TYPE), F.col(WEIGHT).alias(_W))
        .transform(_without(hub_ids, _IDENT))
    )
    k = inc.groupBy(_IDENT).agg(F.count(F.lit(1)).alias(_K))
    merchant_max = cfg.hubs.merchant_link_max_accounts
    return (
        inc.join(k, _IDENT)
        .where((F.col(VIA_TYPE) != MERCHANT) | (F.col(_K) <= F.lit(merchant_max)))
        .transform(_without(hub_ids, _ACCT))
    )


def _identifier_pairs(inc: DataFrame) -> DataFrame:
    """One row per (src, dst, via_type) sharing at least one identifier, with the Adamic-Adar weight."""
    shared = inc.where(F.col(_K) >= 2)
    a = shared.select(_IDENT, F.col(_ACCT).alias("_a"), F.col(_W).alias("_wa"), _K, VIA_TYPE)
    b = shared.select(F.col(_IDENT).alias("_ident_b"), F.col(_ACCT).alias("_b"), F.col(_W).alias("_wb"))
    return (
        a.join(b, (F.col(_IDENT) == F.col("_ident_b")) & (F.col("_a") < F.col("_b")))
        .groupBy(F.col("_a").alias(SRC), F.col("_b").alias(DST), VIA_TYPE)
        .agg(
            F.array_sort(F.collect_list(_IDENT)).alias(VIA_IDS),
            F.count(F.lit(1)).alias(SHARED_COUNT),
            F.sum(F.least("_wa", "_wb") / F.log2(F.col(_K))).alias(WEIGHT),
        )
    )


def identifier_links(cfg: RingfenceConfig, g: IdentityGraph, hubs: DataFrame) -> DataFrame:
    """Identifier links with their decision (``LINK_COLUMNS``; ``via_ids`` = every shared identifier)."""
    return _identifier_links(cfg, _incidence(cfg, g, _hub_ids(candidate_hubs(cfg, hubs))))


def _identifier_links(cfg: RingfenceConfig, inc: DataFrame) -> DataFrame:
    c = cfg.candidates
    # Every non-hub IP an account used, shared or not: the Jaccard denominator.
    n_ips = (inc.where(F.col(VIA_TYPE) == IP).groupBy(_ACCT).agg(F.count(F.lit(1)).alias("_n")))
    na = n_ips.select(F.col(_ACCT).alias(SRC), F.col("_n").alias("_na"))
    nb = n_ips.select(F.col(_ACCT).alias(DST), F.col("_n").alias("_nb"))
    is_ip = F.col(VIA_TYPE) == IP
    pairs = (
        _identifier_pairs(inc)
        .join(na, SRC, "left")
        .join(nb, DST, "left")
        .withColumn("_jaccard", F.when(is_ip, F.col(SHARED_COUNT)
                                       / (F.col("_na") + F.col("_nb") - F.col(SHARED_COUNT))))
    )
    ip_ok = (F.col(SHARED_COUNT) >= c.ip_min_shared) & (F.col("_jaccard") >= c.ip_min_jaccard)
    pairs = _with_exit(c, inc, pairs.withColumn("_ip_ok", is_ip & ip_ok))
    by_exit = F.col("_exit").isNotNull()  # set only on IP pairs the footprint rule dropped
    rule = F.when(by_exit, F.lit(IP_EXIT))
    for kind, name in IDENTIFIER_RULE.items():
        rule = rule.when(F.col(VIA_TYPE) == kind, F.lit(name))
    noun = F.when(is_ip, F.lit("IP")).otherwise(F.col(VIA_TYPE))
    reason = (
        F.when(by_exit, F.format_string(
            "shares %s, a proxy exit: %d of its %d accounts have footprint links through it "
            "(an exit needs >= %d and >= %d%%)", F.col("_exit"), F.col("_exit_fp"), F.col("_exit_k"),
            F.lit(c.ip_exit_min_accounts), F.lit(round(c.ip_exit_min_share * 100))))
        .when(is_ip, F.format_string(
            "%d shared non-hub IP(s) of %d and %d used (Jaccard %.2f); an IP link needs >= %d shared "
            "and Jaccard >= %.2f", F.col(SHARED_COUNT), F.col("_na"), F.col("_nb"), F.col("_jaccard"),
            F.lit(c.ip_min_shared), F.lit(float(c.ip_min_jaccard))))
        .when(F.col(VIA_TYPE) == MERCHANT, F.format_string(
            "%d shared merchant(s) with at most %d accounts", F.col(SHARED_COUNT),
            F.lit(cfg.hubs.merchant_link_max_accounts)))
        .otherwise(F.format_string("%d shared non-hub %s(s)", F.col(SHARED_COUNT), noun))
    )
    return pairs.select(
        SRC, DST, VIA_TYPE, rule.alias(RULE),
        F.when(is_ip, F.col("_ip_ok") | by_exit).otherwise(F.lit(True)).alias(KEPT),
        reason.alias(REASON), SHARED_COUNT, VIA_IDS, WEIGHT, F.lit(0.0).alias(FLOW),
    )


def _with_exit(c: CandidateConf, inc: DataFrame, pairs: DataFrame) -> DataFrame:
    """``pairs`` with ``_exit`` (the smallest proxy exit IP the pair shares and fails the footprint
    rule on, else null), ``_exit_fp`` (its accounts with a footprint link through it) and
    ``_exit_k`` (all its accounts).

    ``pairs`` carries ``_ip_ok`` (the footprint rule's decision). The exit counts
    come from the footprint links alone, so an exit link never makes another IP an exit.
    One pass: each IP pair row is exploded to its shared IPs, a window over each
    IP collects the ends of its footprint links (at most the IP cap's accounts),
    and the rows are grouped back to pairs. A join of ``pairs`` with an exit table
    derived from ``pairs`` made Spark's optimizer run out of memory on the
    candidate graph's plan (CombineFilters, 2 GB driver, a test world of 80 rows).
    """
    if c.ip_exit_min_accounts is None:
        return (pairs.withColumn("_exit", F.lit(None).cast("string"))
                .withColumn("_exit_fp", F.lit(None).cast("long")).withColumn("_exit_k", F.lit(None).cast("long")))
    keys = [SRC, DST, VIA_TYPE]
    rest = [col for col in pairs.columns if col not in keys]
    is_ip = F.col(VIA_TYPE) == IP
    k = inc.where(is_ip).select(_IDENT, F.col(_K).alias("_exit_k")).distinct()
    # Non-IP rows keep one row (null IP) and a window partition of their own.
    per_ip = Window.partitionBy(F.coalesce(F.col(_IDENT), F.concat_ws("|", *keys)))
    ends = F.flatten(F.collect_list(F.when(F.col("_ip_ok"), F.array(SRC, DST))).over(per_ip))
    x = (pairs.select("*", F.explode_outer(F.when(is_ip, F.col(VIA_IDS))).alias(_IDENT))
         .join(k, _IDENT, "left")
         .withColumn("_exit_fp", F.size(F.array_distinct(ends)).cast("long")))
    exit_here = (is_ip & ~F.col("_ip_ok") & (F.col("_exit_fp") >= F.lit(c.ip_exit_min_accounts))
                 & (F.col("_exit_fp") >= F.lit(float(c.ip_exit_min_share)) * F.col("_exit_k")))
    best = F.min(F.when(exit_here, F.struct(F.col(_IDENT).alias("ip"), "_exit_fp", "_exit_k")))
    return (x.groupBy(*keys).agg(*[F.first(col).alias(col) for col in rest], best.alias("_best"))
            .select(*keys, *rest, F.col("_best.ip").alias("_exit"), F.col("_best._exit_fp").alias("_exit_fp"),
                    F.col("_best._exit_k").alias("_exit_k")))


# --------------------------------------------------------------------------- money links


def _window_micros(ds: dt.date, lookback_days: int) -> tuple[int, int]:
    end = dt.datetime.combine(ds + dt.timedelta(days=1), dt.time(0), tzinfo=dt.UTC)
    end_us = int(end.timestamp()) * 1_000_000
    return end_us - lookback_days * _MICROS_PER_DAY, end_us


def _check_columns(name: str, df: DataFrame, needed: tuple[str, ...]) -> None:
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise SchemaError(f"candidate graph: table {name} lacks columns {missing}; present: {df.columns}")


def _approved(df: DataFrame, start_us: int, end_us: int) -> DataFrame:
    us = F.unix_micros(F.col("event_time"))
    return (df.where((F.col("status") == "approved") & (us >= start_us) & (us < end_us))
            .withColumn(_US, us))


def transfer_tests(cfg: RingfenceConfig, transfers: DataFrame, payments: DataFrame,
                   ds: dt.date, lookback_days: int) -> DataFrame:
    """Per approved transfer in the window: the two money tests of the module docstring.

    Columns: ``event_id, src, dst`` (account vertex ids), ``currency, amount,
    _us, fresh_share`` (test 1: a's fresh money / amount, capped at 1),
    ``moved_share`` (test 2: what b moved on within H / amount, capped at 1),
    ``fresh_senders`` (distinct senders of fresh money to b), ``censored``,
    ``mule_like``. Self-transfers are left out.
    """
    _check_columns("transfers", transfers, TRANSFER_COLUMNS)
    _check_columns("payments", payments, PAYMENT_COLUMNS)
    c = cfg.candidates
    h_us = int(round(cfg.scoring.signals.pass_through_hours * _MICROS_PER_HOUR))
    start_us, end_us = _window_micros(ds, lookback_days)
    t = (_approved(transfers, start_us, end_us)
         .where(F.col("src_account_id") != F.col("dst_account_id"))
         .select("event_id", "src_account_id", "dst_account_id", "currency", _US,
                 F.col("amount").cast("double").alias("amount")))
    zero = F.lit(0.0)
    # Each transfer as the sender's outflow and the receiver's inflow; payments as spending.
    flows = (
        t.select(F.col("src_account_id").alias(_ACCT), "currency", _US, "event_id", F.lit("out").alias("_side"),
                 zero.alias("_in"), F.col("amount").alias("_out"), zero.alias("_pay"))
        .unionByName(t.select(F.col("dst_account_id").alias(_ACCT), "currency", _US, "event_id",
                              F.lit("in").alias("_side"), F.col("amount").alias("_in"), zero.alias("_out"),
                              zero.alias("_pay")))
        .unionByName(_approved(payments, start_us, end_us).select(
            F.col("account_id").alias(_ACCT), "currency", _US, F.lit(None).cast("string").alias("event_id"),
            F.lit("pay").alias("_side"), zero.alias("_in"), zero.alias("_out"),
            F.col("amount").cast("double").alias("_pay")))
    )
    # One partitioning and one order serve all three sums.
    w = Window.partitionBy(_ACCT, "currency").orderBy(_US)
    before, after = w.rangeBetween(-h_us, -1), w.rangeBetween(1, h_us)
    timed = (
        flows.withColumn("_fresh", F.coalesce(F.sum("_in").over(before), zero)
                         - F.coalesce(F.sum("_out").over(before), zero))
        .withColumn("_moved", F.coalesce(F.sum(F.col("_out") + F.col("_pay")).over(after), zero))
    )
    out = timed.where(F.col("_side") == "out").select("event_id", "_fresh")
    inn = timed.where(F.col("_side") == "in").select("event_id", "_moved")
    amount = F.col("amount")
    tested = (
        t.join(out, "event_id").join(inn, "event_id")
        .select(
            "event_id",
            vertex_id(ACCOUNT, F.col("src_account_id")).alias(SRC),
            vertex_id(ACCOUNT, F.col("dst_account_id")).alias(DST),
            "currency", "amount", _US,
            F.least(F.lit(1.0), F.greatest(F.col("_fresh"), zero) / amount).alias("fresh_share"),
            F.least(F.lit(1.0), F.col("_moved") / amount).alias("moved_share"),
            (F.col(_US) + F.lit(h_us) > F.lit(end_us)).alias("censored"),
        )
    )
    fresh = F.col("fresh_share") >= c.forward_share
    senders = (tested.where(fresh).groupBy(F.col(DST).alias("_r"))
               .agg(F.countDistinct(SRC).alias("fresh_senders")))
    return (
        tested.join(senders, tested[DST] == senders["_r"], "left").drop("_r")
        .withColumn("fresh_senders", F.coalesce(F.col("fresh_senders"), F.lit(0)).cast("long"))
        .withColumn("mule_like", fresh & (
            (F.col("moved_share") >= c.forward_share) | F.col("censored")
            | (F.col("fresh_senders") >= c.collector_min_senders)))
    )


def money_links(cfg: RingfenceConfig, g: IdentityGraph, hubs: DataFrame, tests: DataFrame) -> DataFrame:
    """Money links with their decision (``LINK_COLUMNS``), from ``transfer_tests`` rows."""
    c = cfg.candidates
    hours = cfg.scoring.signals.pass_through_hours
    pct = round(c.forward_share * 100)
    fresh = F.col("fresh_share") >= c.forward_share
    ml = F.col("mule_like")
    # Directed first: the graph/edges weight belongs to one direction.
    directed = tests.groupBy(SRC, DST).agg(
        F.count(F.lit(1)).alias("_n"),
        F.sum(ml.cast("int")).alias("_n_ml"),
        F.sum(fresh.cast("int")).alias("_n_fresh"),
        F.sum((ml & (F.col("moved_share") >= c.forward_share)).cast("int")).alias("_n_moved"),
        F.sum((ml & (F.col("moved_share") < c.forward_share)
               & (F.col("fresh_senders") >= c.collector_min_senders)).cast("int")).alias("_n_coll"),
        F.sum((ml & (F.col("moved_share") < c.forward_share)
               & (F.col("fresh_senders") < c.collector_min_senders)).cast("int")).alias("_n_cens"),
        F.sum(F.when(ml, F.col("amount")).otherwise(0.0)).alias("_ml_amount"),
        F.max("fresh_share").alias("_best_fresh"),
        F.max(F.when(fresh, F.col("moved_share"))).alias("_best_moved"),
        F.max("fresh_senders").alias("_senders"),
    )
    edge_w = g.edges.where(F.col(EDGE_TYPE) == TRANSFER).select(SRC, DST, F.col(WEIGHT).alias("_ew"))
    lo, hi = F.least(SRC, DST), F.greatest(SRC, DST)
    pairs = (
        directed.join(edge_w, [SRC, DST], "left")
        .groupBy(lo.alias("_a"), hi.alias("_b"))
        .agg(
            F.sum("_n").alias(SHARED_COUNT), F.sum("_n_ml").alias("_n_ml"), F.sum("_n_fresh").alias("_n_fresh"),
            F.sum("_n_moved").alias("_n_moved"), F.sum("_n_coll").alias("_n_coll"),
            F.sum("_n_cens").alias("_n_cens"),
            F.sum(F.when(F.col("_n_ml") > 0, F.coalesce(F.col("_ew"), F.lit(0.0))).otherwise(0.0)).alias(WEIGHT),
            F.sum(F.when(F.col(SRC) == lo, F.col("_ml_amount")).otherwise(-F.col("_ml_amount"))).alias(FLOW),
            F.max("_best_fresh").alias("_best_fresh"), F.max("_best_moved").alias("_best_moved"),
            F.max("_senders").alias("_senders"),
        )
        .withColumnRenamed("_a", SRC).withColumnRenamed("_b", DST)
    )
    hub_reason = candidate_hubs(cfg, hubs).select(F.col(ID).alias(_HUB), F.col(HUB_REASON).alias("_hr"))
    ha = hub_reason.select(F.col(_HUB).alias(SRC), F.col("_hr").alias("_hr_a"))
    hb = hub_reason.select(F.col(_HUB).alias(DST), F.col("_hr").alias("_hr_b"))
    pairs = pairs.join(ha, SRC, "left").join(hb, DST, "left")
    hub_text = F.when(F.col("_hr_a").isNotNull(), F.format_string("%s is a hub: %s", F.col(SRC), F.col("_hr_a"))) \
        .otherwise(F.format_string("%s is a hub: %s", F.col(DST), F.col("_hr_b")))
    is_hub = F.col("_hr_a").isNotNull() | F.col("_hr_b").isNotNull()
    reason = (
        F.when(is_hub, hub_text)
        .when(F.col("_n_ml") > 0, F.format_string(
            f"%d of %d transfers passed on fresh money within {hours:g} h and the receiver moved it on "
            "(%d), collects from %d+ forwarders (%d) or had not had the time yet (%d)",
            F.col("_n_ml"), F.col(SHARED_COUNT), F.col("_n_moved"), F.lit(c.collector_min_senders),
            F.col("_n_coll"), F.col("_n_cens")))
        .when(F.col("_n_fresh") == 0, F.format_string(
            f"none of %d transfers passed on fresh money: the sender's inflow of the last {hours:g} h, "
            f"net of what it sent, covered at most %d%% of an amount (needs {pct}%%)",
            F.col(SHARED_COUNT), F.round(F.col("_best_fresh") * 100).cast("int")))
        .otherwise(F.format_string(
            f"%d of %d transfers passed on fresh money, but the receiver moved at most %d%% on within "
            f"{hours:g} h (needs {pct}%%) and collects from %d forwarders (needs %d)",
            F.col("_n_fresh"), F.col(SHARED_COUNT), F.round(F.col("_best_moved") * 100).cast("int"),
            F.col("_senders"), F.lit(c.collector_min_senders)))
    )
    return pairs.select(
        SRC, DST, F.lit(TRANSFER).alias(VIA_TYPE), F.lit(MONEY_FORWARD).alias(RULE),
        ((F.col("_n_ml") > 0) & ~is_hub).alias(KEPT), reason.alias(REASON),
        F.col(SHARED_COUNT).cast("long").alias(SHARED_COUNT), F.array().cast("array<string>").alias(VIA_IDS),
        F.col(WEIGHT).cast("double").alias(WEIGHT), F.col(FLOW).cast("double").alias(FLOW),
    )


# --------------------------------------------------------------------------- the graph


def _attach(inc: DataFrame, rows: DataFrame) -> DataFrame:
    """Attach edges (account -> identifier) for ``rows`` (``_acct, _ident, rule``), weighted like the incidence."""
    return (
        rows.distinct().join(inc.select(_ACCT, _IDENT, VIA_TYPE, _W), [_ACCT, _IDENT])
        .select(F.col(_ACCT).alias(SRC), F.col(_IDENT).alias(DST), F.lit(ATTACH).alias(EDGE_KIND), VIA_TYPE,
                RULE, F.array(F.col(_IDENT)).alias(VIA_IDS),
                F.lit(1).cast("long").alias(SHARED_COUNT), F.col(_W).alias(WEIGHT), F.lit(0.0).alias(FLOW))
    )


def _lone_evidence(cfg: RingfenceConfig, inc: DataFrame, signals: DataFrame, linked: DataFrame) -> DataFrame:
    """``_acct, _ident, rule`` of one-account cards that look tested and one-account devices that
    look scripted, on accounts with a kept link (so they join a component, never two)."""
    c = cfg.candidates
    _check_columns("signals", signals, (ENTITY_TYPE, ENTITY_ID, TINY_SHARE, DECLINE_RATE, BOT_SESSION_SHARE))
    kind = F.col(ENTITY_TYPE)
    tested = (kind == CARD) & ((F.col(TINY_SHARE) >= c.test_card_min_tiny_share)
                               | (F.col(DECLINE_RATE) >= c.test_card_min_decline_rate))
    scripted = (kind == DEVICE) & (F.col(BOT_SESSION_SHARE) >= c.bot_device_min_share)
    flagged = signals.where(tested | scripted).select(
        F.concat(kind, F.lit(":"), F.col(ENTITY_ID)).alias(_IDENT),
        F.when(kind == CARD, F.lit(TEST_CARD)).otherwise(F.lit(BOT_DEVICE)).alias(RULE))
    return (
        inc.where(F.col(VIA_TYPE).isin(CARD, DEVICE) & (F.col(_K) == 1))
        .join(flagged, _IDENT)
        .join(linked, _ACCT, "left_semi")
        .select(_ACCT, _IDENT, RULE)
    )


def candidate_graph(cfg: RingfenceConfig, g: IdentityGraph, hubs: DataFrame, signals: DataFrame | None,
                    tables: dict[str, DataFrame], ds: dt.date, lookback_days: int | None = None
                    ) -> CandidateGraph:
    """The candidate graph of the run: the one entry point of the rings stage.

    ``g`` and ``hubs`` as written by the graph stage, ``signals`` as written by
    the signals stage (None: no tested-card or scripted-device attachments),
    ``tables`` the validated inputs (``transfers`` and ``payments`` are used),
    the window of ``lookback_days`` (default ``cfg.pipeline.lookback_days``)
    ending with ``ds``. ``edges`` is computed from ``links``: a caller that
    writes ``links`` and reads it back can call :func:`edges_from_links` on
    the read-back table instead of recomputing the money tests.
    """
    links = candidate_links(cfg, g, hubs, tables, ds, lookback_days)
    return CandidateGraph(links=links, edges=edges_from_links(cfg, g, hubs, signals, links))


def candidate_links(cfg: RingfenceConfig, g: IdentityGraph, hubs: DataFrame, tables: dict[str, DataFrame],
                    ds: dt.date, lookback_days: int | None = None) -> DataFrame:
    """Every considered account pair with its decision (``LINK_COLUMNS``)."""
    lookback = lookback_days or cfg.pipeline.lookback_days
    for name in ("transfers", "payments"):
        if name not in tables:
            raise SchemaError(f"candidate graph needs table {name}; given: {sorted(tables)}")
    ident = identifier_links(cfg, g, hubs)
    tests = transfer_tests(cfg, tables["transfers"], tables["payments"], ds, lookback)
    return ident.unionByName(money_links(cfg, g, hubs, tests)).select(*LINK_COLUMNS)


def edges_from_links(cfg: RingfenceConfig, g: IdentityGraph, hubs: DataFrame, signals: DataFrame | None,
                     links: DataFrame) -> DataFrame:
    """The candidate edges (``EDGE_COLUMNS``): the kept ``links`` plus the attach edges."""
    missing = [c for c in LINK_COLUMNS if c not in links.columns]
    if missing:
        raise SchemaError(f"candidate links lack columns {missing}; present: {links.columns}")
    kept = links.where(F.col(KEPT))
    link_edges = kept.select(SRC, DST, F.lit(LINK).alias(EDGE_KIND), VIA_TYPE, RULE, VIA_IDS, SHARED_COUNT,
                             WEIGHT, FLOW)
    inc = _incidence(cfg, g, _hub_ids(candidate_hubs(cfg, hubs)))
    # An identifier joins the graph through one anchor: the account with the most kept links
    # through it (ties: smallest id), and the accounts of the anchor's kept links through it.
    # All of them are linked to the anchor already, so the identifier cannot join two
    # components. For devices, cards and tiny merchants every pair is a kept link, so that is
    # all their accounts; for an IP whose users pass the footprint rule only in part (two
    # couples who each share it and one more IP), only the anchor's side.
    shared = kept.where(F.col(VIA_TYPE) != TRANSFER).select(SRC, DST, F.explode(VIA_IDS).alias(_IDENT))
    ends = shared.select(_IDENT, F.col(SRC).alias(_ACCT), F.col(DST).alias("_other")).unionByName(
        shared.select(_IDENT, F.col(DST).alias(_ACCT), F.col(SRC).alias("_other")))
    by_links = Window.partitionBy(_IDENT).orderBy(F.desc("_n"), _ACCT)
    anchors = (ends.groupBy(_IDENT, _ACCT).agg(F.count(F.lit(1)).alias("_n"))
               .withColumn("_rank", F.row_number().over(by_links)).where(F.col("_rank") == 1)
               .select(_IDENT, F.col(_ACCT).alias("_anchor")))
    evidence = (ends.join(anchors, _IDENT).where(F.col(_ACCT) == F.col("_anchor"))
                .select(_IDENT, F.col("_other").alias(_ACCT))
                .unionByName(anchors.select(_IDENT, F.col("_anchor").alias(_ACCT))))
    edges = link_edges.unionByName(_attach(inc, evidence.withColumn(RULE, F.lit(LINKING_IDENTIFIER))))
    if signals is not None:
        linked = kept.select(F.col(SRC).alias(_ACCT)).unionByName(kept.select(F.col(DST).alias(_ACCT)))
        edges = edges.unionByName(_attach(inc, _lone_evidence(cfg, inc, signals, linked)))
    return edges.select(*EDGE_COLUMNS)


def candidate_edges(cfg: RingfenceConfig, g: IdentityGraph, hubs: DataFrame, signals: DataFrame | None,
                    tables: dict[str, DataFrame], ds: dt.date, lookback_days: int | None = None) -> DataFrame:
    """Only the edges of :func:`candidate_graph` (``EDGE_COLUMNS``)."""
    return candidate_graph(cfg, g, hubs, signals, tables, ds, lookback_days).edges


def candidate_stats(cg: CandidateGraph) -> dict[str, Any]:
    """Counts of considered / kept links per rule and of edges per kind and rule (a few dozen rows)."""
    links: dict[str, dict[str, int]] = {}
    for r in cg.links.groupBy(RULE, KEPT).count().collect():
        links.setdefault(r[RULE], {})["kept" if r[KEPT] else "dropped"] = int(r["count"])
    edges: dict[str, int] = {}
    for r in cg.edges.groupBy(EDGE_KIND, RULE).count().collect():
        edges[f"{r[EDGE_KIND]}:{r[RULE]}"] = int(r["count"])
    return {"links_by_rule": dict(sorted(links.items())), "edges_by_kind_and_rule": dict(sorted(edges.items()))}
