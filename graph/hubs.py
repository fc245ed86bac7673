"""Hubs: shared infrastructure that must not glue strangers into one ring.

Carrier NAT and office Wi-Fi put hundreds of honest accounts on one IP,
giant merchants touch everyone, payroll accounts pay hundreds. Linking
accounts through such vertices would put every active account in one
component, so they are set aside before ring discovery, and each one is
recorded with the rule and the numbers that made it a hub (``hubs/``).

Degree = the number of distinct accounts an identifier (device, ip, card,
merchant) was used by; for an account, the number of distinct accounts it
transferred money to or from. Rules, first match wins (one row per hub):

``excluded``
    The vertex is on ``hubs.exclude`` ("ip:10.0.0.1", "merchant:m-1").
``degree_cap``
    Degree above the static cap of its type (``hubs.max_accounts_per_*``,
    ``hubs.max_transfer_degree``). The cap bounds the cost of the account
    projection (below), so it always applies.
``degree_outlier``
    Degree above ``max(outlier_min_degree, outlier_multiplier x q)`` where
    ``q`` is the ``outlier_quantile`` of the degrees of the same type in this
    run. In a world where almost every IP serves one or two accounts, an IP
    serving 20 is infrastructure even under the static cap of 25; the floor
    keeps families and small rings (a handful of accounts) from ever being
    outliers. The rule can only lower a cap, never raise it.

Merchants: a merchant links strangers far more often than it links a ring,
so in the account projection a merchant links accounts only when it has at
most ``merchant_link_max_accounts`` of them (a tiny, possibly collusive
merchant); bigger merchants stay in the graph (for scoring) but create no
account-account link. Merchants above the merchant cap are hubs as usual.

Account projection weights are IDF-style (Adamic-Adar): an identifier
shared by ``k`` accounts contributes ``min(w_a, w_b) / log2(k)`` to each of
its ``k(k-1)/2`` pairs, so a device shared by two accounts counts fully and
one shared by 25 about a fifth. Cost bound: an identifier of type ``t``
yields at most ``cap_t (cap_t - 1) / 2`` pairs, so the projection has at
most ``(cap_t - 1) / 2`` pair rows per account-identifier edge of type
``t`` (12 per account-ip edge with the default ip cap of 25, 3.5 per
account-device edge with the device cap of 8).

Ring discovery does not run on this projection: hubs alone leave 97% of its
accounts in one component on a generated 1M-event world (friends' transfers,
households, travellers' hotspots). ``graph/candidates.py`` builds the
candidate graph from the same hubs with an evidence test per link type, and
explains every dropped pair; the projection stays as the simple baseline
(bench/bench_pipeline.py, bench/bench_candidates.py).
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
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
    ENTITY_ID,
    ENTITY_TYPE,
    ID,
    IDENTIFIER_EDGE,
    IP,
    MERCHANT,
    N_EVENTS,
    SRC,
    TRANSFER,
    WEIGHT,
    IdentityGraph,
    type_of_id,
)
from graph.config import ConfigError, RingfenceConfig
from graph.schema import ENTITY_TYPES

# Hub table columns.
DEGREE = "degree"
HUB_RULE = "rule"
HUB_REASON = "reason"
CAP = "cap"
THRESHOLD = "threshold"
HUB_COLUMNS = (ID, ENTITY_TYPE, ENTITY_ID, DEGREE, HUB_RULE, HUB_REASON, CAP, THRESHOLD)

EXCLUDED = "excluded"
DEGREE_CAP = "degree_cap"
DEGREE_OUTLIER = "degree_outlier"

# Account projection columns.
VIA_TYPE = "via_type"
VIA_IDS = "via_ids"
SHARED_COUNT = "shared_count"
PROJECTION_COLUMNS = (SRC, DST, VIA_TYPE, VIA_IDS, SHARED_COUNT, WEIGHT)
# via_ids keeps the first few shared identifiers (sorted): enough to explain a link.
MAX_VIA_IDS = 10

_VIA = {ACCOUNT_DEVICE: DEVICE, ACCOUNT_IP: IP, ACCOUNT_CARD: CARD, ACCOUNT_MERCHANT: MERCHANT}
_Q = "_q"


def parse_exclusions(entries: list[str]) -> list[str]:
    """Vertex ids of ``hubs.exclude`` entries ("type:id"); a malformed entry is a config error."""
    ids = []
    for e in entries:
        kind, sep, ident = e.partition(":")
        if not sep or not ident or kind not in ENTITY_TYPES:
            raise ConfigError(
                f"key 'hubs.exclude': entry {e!r} must look like 'type:id' with type in {list(ENTITY_TYPES)}"
            )
        ids.append(e)
    return ids


def entity_degrees(g: IdentityGraph) -> DataFrame:
    """``id, entity_type, degree`` for every vertex with at least one account neighbour."""
    ident = (
        g.edges.where(F.col(EDGE_TYPE).isin(*IDENTIFIER_EDGE.values()))
        # Edges are unique per (src, dst, edge_type): counting them counts distinct accounts.
        .groupBy(F.col(DST).alias(ID)).agg(F.count(F.lit(1)).alias(DEGREE))
    )
    t = g.edges.where((F.col(EDGE_TYPE) == TRANSFER) & (F.col(SRC) != F.col(DST)))
    acct = (
        t.select(F.col(SRC).alias(ID), F.col(DST).alias("_other"))
        .unionByName(t.select(F.col(DST).alias(ID), F.col(SRC).alias("_other")))
        .distinct()
        .groupBy(ID).agg(F.count(F.lit(1)).alias(DEGREE))
    )
    return ident.unionByName(acct).withColumn(ENTITY_TYPE, type_of_id(F.col(ID)))


def _static_cap(cfg: RingfenceConfig) -> Column:
    h = cfg.hubs
    caps = {DEVICE: h.max_accounts_per_device, IP: h.max_accounts_per_ip, CARD: h.max_accounts_per_card,
            MERCHANT: h.max_accounts_per_merchant, ACCOUNT: h.max_transfer_degree}
    col = F.lit(None).cast("int")
    for kind, cap in caps.items():
        col = F.when(F.col(ENTITY_TYPE) == kind, F.lit(cap)).otherwise(col)
    return col


def _degree_phrase() -> Column:
    return F.when(
        F.col(ENTITY_TYPE) == ACCOUNT,
        F.format_string("account transfers with %d distinct accounts", F.col(DEGREE)),
    ).otherwise(F.format_string("%s shared by %d accounts", F.col(ENTITY_TYPE), F.col(DEGREE)))


def _outlier_thresholds(cfg: RingfenceConfig, degrees: DataFrame) -> DataFrame:
    """Per entity type: the distribution-aware threshold (one row per type, tiny)."""
    h = cfg.hubs
    if h.outlier_multiplier is None:
        return degrees.select(ENTITY_TYPE).distinct().withColumn(_Q, F.lit(None).cast("double")) \
            .withColumn(THRESHOLD, F.lit(None).cast("double"))
    return (
        degrees.groupBy(ENTITY_TYPE)
        .agg(F.percentile_approx(DEGREE, h.outlier_quantile, 10_000).cast("double").alias(_Q))
        .withColumn(THRESHOLD, F.greatest(F.lit(float(h.outlier_min_degree)),
                                          F.lit(h.outlier_multiplier) * F.col(_Q)))
    )


def find_hubs(cfg: RingfenceConfig, g: IdentityGraph) -> DataFrame:
    """The hub vertices of ``g``: one row each with the rule, a readable reason and the numbers used."""
    excluded = parse_exclusions(cfg.hubs.exclude)
    h = cfg.hubs
    degrees = entity_degrees(g)
    per_type = _outlier_thresholds(cfg, degrees)
    pct = f"p{h.outlier_quantile * 100:g}"
    is_excluded = F.col(ID).isin(*excluded) if excluded else F.lit(False)
    rule = (
        F.when(is_excluded, F.lit(EXCLUDED))
        .when(F.col(DEGREE) > F.col(CAP), F.lit(DEGREE_CAP))
        .when(F.col(DEGREE) > F.col(THRESHOLD), F.lit(DEGREE_OUTLIER))
    )
    reason = (
        F.when(F.col(HUB_RULE) == EXCLUDED,
               F.format_string("listed in hubs.exclude (%s)", _degree_phrase()))
        .when(F.col(HUB_RULE) == DEGREE_CAP,
              F.format_string("%s > cap %d", _degree_phrase(), F.col(CAP)))
        .otherwise(F.format_string(
            f"%s > outlier threshold %.1f = max(%d, %.1f x {pct} of %s degrees %.1f); cap %d",
            _degree_phrase(), F.col(THRESHOLD), F.lit(h.outlier_min_degree),
            F.lit(float(h.outlier_multiplier or 0.0)), F.col(ENTITY_TYPE), F.col(_Q), F.col(CAP)))
    )
    return (
        # From the vertices so that an excluded vertex without account neighbours is still found.
        g.vertices.select(ID, ENTITY_TYPE, ENTITY_ID)
        .join(degrees.drop(ENTITY_TYPE), ID, "left")
        .withColumn(DEGREE, F.coalesce(F.col(DEGREE), F.lit(0)).cast("long"))
        .join(F.broadcast(per_type), ENTITY_TYPE, "left")
        .withColumn(CAP, _static_cap(cfg))
        .withColumn(HUB_RULE, rule)
        .where(F.col(HUB_RULE).isNotNull())
        .withColumn(HUB_REASON, reason)
        .select(*HUB_COLUMNS)
    )


def _hub_ids(hubs: DataFrame) -> DataFrame:
    return hubs.select(F.col(ID).alias("_hub")).distinct()


def _without(ids: DataFrame, col: str):
    def step(df: DataFrame) -> DataFrame:
        return df.join(ids, df[col] == ids["_hub"], "left_anti")
    return step


def remove_hubs(g: IdentityGraph, hubs: DataFrame) -> IdentityGraph:
    """``g`` without the hub vertices and every edge touching one."""
    ids = _hub_ids(hubs)
    return IdentityGraph(
        vertices=g.vertices.transform(_without(ids, ID)),
        edges=g.edges.transform(_without(ids, SRC)).transform(_without(ids, DST)),
    )


def _identifier_pairs(g: IdentityGraph, ids: DataFrame, max_merchant_accounts: int) -> DataFrame:
    via_edges = [ACCOUNT_DEVICE, ACCOUNT_IP, ACCOUNT_CARD]
    if max_merchant_accounts > 0:
        via_edges.append(ACCOUNT_MERCHANT)
    via = F.lit(None).cast("string")
    for edge_type, kind in _VIA.items():
        via = F.when(F.col(EDGE_TYPE) == edge_type, F.lit(kind)).otherwise(via)
    inc = (
        g.edges.where(F.col(EDGE_TYPE).isin(*via_edges))
        .select(F.col(SRC).alias("_acct"), F.col(DST).alias("_ident"), via.alias(VIA_TYPE),
                F.col(WEIGHT).alias("_w"))
        .transform(_without(ids, "_ident"))
    )
    # k = all accounts on the identifier (its hub degree), counted before hub accounts go.
    k = inc.groupBy("_ident").agg(F.count(F.lit(1)).alias("_k"))
    inc = (
        inc.join(k, "_ident")
        .where((F.col("_k") >= 2)
               & ((F.col(VIA_TYPE) != MERCHANT) | (F.col("_k") <= F.lit(max_merchant_accounts))))
        .transform(_without(ids, "_acct"))
    )
    # Both sides renamed so the self-join has no ambiguous columns.
    a = inc.select("_ident", F.col("_acct").alias("_a"), F.col("_w").alias("_wa"), "_k", VIA_TYPE)
    b = inc.select(F.col("_ident").alias("_ident_b"), F.col("_acct").alias("_b"), F.col("_w").alias("_wb"))
    return (
        a.join(b, (F.col("_ident") == F.col("_ident_b")) & (F.col("_a") < F.col("_b")))
        .select(
            F.col("_a").alias(SRC), F.col("_b").alias(DST), VIA_TYPE, "_ident",
            (F.least("_wa", "_wb") / F.log2(F.col("_k"))).alias("_c"),
        )
        .groupBy(SRC, DST, VIA_TYPE)
        .agg(
            F.slice(F.array_sort(F.collect_list("_ident")), 1, MAX_VIA_IDS).alias(VIA_IDS),
            F.count(F.lit(1)).alias(SHARED_COUNT),
            F.sum("_c").alias(WEIGHT),
        )
    )


def _transfer_pairs(g: IdentityGraph, ids: DataFrame) -> DataFrame:
    return (
        g.edges.where((F.col(EDGE_TYPE) == TRANSFER) & (F.col(SRC) != F.col(DST)))
        .transform(_without(ids, SRC)).transform(_without(ids, DST))
        .select(F.least(SRC, DST).alias(SRC), F.greatest(SRC, DST).alias(DST), N_EVENTS, WEIGHT)
        .groupBy(SRC, DST)
        .agg(F.sum(N_EVENTS).alias(SHARED_COUNT), F.sum(WEIGHT).alias(WEIGHT))
        .select(SRC, DST, F.lit(TRANSFER).alias(VIA_TYPE),
                F.array().cast("array<string>").alias(VIA_IDS), SHARED_COUNT, WEIGHT)
    )


def account_projection(g: IdentityGraph, hubs: DataFrame, max_merchant_accounts: int = 0) -> DataFrame:
    """Account-account links through shared non-hub identifiers and through transfers.

    One row per (src, dst, via_type) with ``src < dst`` (account vertex ids).
    For identifiers: ``shared_count`` = number of shared identifiers of that
    type, ``via_ids`` = the first ``MAX_VIA_IDS`` of them, ``weight`` = the
    Adamic-Adar sum described in the module docstring. For ``transfer``:
    ``shared_count`` = transfer events in both directions, ``via_ids`` empty,
    ``weight`` = sum of the transfer edge weights. Hub vertices (identifiers
    and accounts) link nothing. Merchants link only when they have at most
    ``max_merchant_accounts`` accounts (pass ``cfg.hubs.merchant_link_max_accounts``;
    0 = never).
    """
    ids = _hub_ids(hubs)
    return (
        _identifier_pairs(g, ids, max_merchant_accounts)
        .select(*PROJECTION_COLUMNS)
        .unionByName(_transfer_pairs(g, ids))
    )
