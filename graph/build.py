"""The typed identity graph of one run: who used which device, IP, card and merchant.

Vertices are entities (account, device, ip, card, merchant) with a globally
unique, type-prefixed ``id`` ("account:a-1", "ip:1.2.3.4"); edges follow the
GraphFrames convention (``src``, ``dst``). Edge types:

=================  ===========  ==========================================
edge_type          src -> dst   from
=================  ===========  ==========================================
account_device     acct, dev    sessions, payments, transfers (sender)
account_ip         acct, ip     sessions, payments, transfers (sender)
account_card       acct, card   payments
card_merchant      card, merch  payments
account_merchant   acct, merch  payments
transfer           acct -> acct transfers (the only directed type)
=================  ===========  ==========================================

Undirected edges are stored once, with ``src`` on the account (or card)
side. One edge row aggregates all events between its two ends in the window.

Edge weight (documented formula, all ages relative to the END of ``ds``,
never the wall clock, so a re-run gives the same graph)::

    age_i    = (end_of_ds - event_time_i) in days, clamped at >= 0
    decay_i  = 0.5 ** (age_i / hubs.edge_half_life_days)
    weight   = ln(1 + sum_i decay_i) * amount_factor
    amount_factor = 1 + log10(1 + amount_sum)   for transfer edges
                  = 1                            otherwise

``sum_i decay_i`` is a recency-discounted event count: ten events today
weigh like ten, ten events two half-lives ago like 2.5; the log keeps a
chatty edge from dwarfing a quiet one. Transfers also carry money, so
their amount adds a (log-damped) factor. Amounts of different currencies
are summed as they are: the factor only orders edges roughly.

Null ``device_id`` / ``ip`` simply produce no edge. Vertices are the
entities seen in at least one event of the window (dormant accounts cannot
be linked to anything, so they are left out); accounts missing from the
``accounts`` table still appear, with null ``created_at``/``kyc_level``.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from typing import Any

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from graph.config import RingfenceConfig
from graph.errors import SchemaError
from graph.schema import INPUT_SCHEMAS
from graph.validate import events_in_window

# Vertex columns.
ID = "id"
ENTITY_TYPE = "entity_type"
ENTITY_ID = "entity_id"
FIRST_SEEN = "first_seen"
LAST_SEEN = "last_seen"
N_EVENTS = "n_events"
N_PAYMENTS = "n_payments"
N_TRANSFERS = "n_transfers"
N_DECLINED = "n_declined"
CREATED_AT = "created_at"
KYC_LEVEL = "kyc_level"
ACCOUNT_AGE_DAYS = "account_age_days"
CARD_BIN = "card_bin"

# Edge columns.
SRC = "src"
DST = "dst"
EDGE_TYPE = "edge_type"
DIRECTED = "directed"
AMOUNT_SUM = "amount_sum"
FIRST_TIME = "first_time"
LAST_TIME = "last_time"
WEIGHT = "weight"

VERTEX_COLUMNS = (ID, ENTITY_TYPE, ENTITY_ID, FIRST_SEEN, LAST_SEEN, N_EVENTS, N_PAYMENTS,
                  N_TRANSFERS, N_DECLINED, CREATED_AT, KYC_LEVEL, ACCOUNT_AGE_DAYS, CARD_BIN)
EDGE_COLUMNS = (SRC, DST, EDGE_TYPE, DIRECTED, N_EVENTS, AMOUNT_SUM, N_DECLINED,
                FIRST_TIME, LAST_TIME, WEIGHT)

# Entity and edge types.
ACCOUNT, DEVICE, IP, CARD, MERCHANT = "account", "device", "ip", "card", "merchant"
ACCOUNT_DEVICE = "account_device"
ACCOUNT_IP = "account_ip"
ACCOUNT_CARD = "account_card"
CARD_MERCHANT = "card_merchant"
ACCOUNT_MERCHANT = "account_merchant"
TRANSFER = "transfer"
EDGE_TYPES = (ACCOUNT_DEVICE, ACCOUNT_IP, ACCOUNT_CARD, CARD_MERCHANT, ACCOUNT_MERCHANT, TRANSFER)
# The identifier type at the dst end of each account->identifier edge type.
IDENTIFIER_EDGE = {DEVICE: ACCOUNT_DEVICE, IP: ACCOUNT_IP, CARD: ACCOUNT_CARD, MERCHANT: ACCOUNT_MERCHANT}

GRAPH_TABLES = ("accounts", "payments", "transfers", "sessions")
DECLINED = "declined"

# Columns of the normalised event frame (one row per payment/transfer/session).
_SOURCE, _TIME, _ACCOUNT, _COUNTERPARTY = "_source", "_time", "_account", "_counterparty"
_DEVICE, _IP, _CARD, _MERCHANT, _BIN = "_device", "_ip", "_card", "_merchant", "_bin"
_AMOUNT, _DECLINED, _DECAY = "_amount", "_declined", "_decay"

_MICROS_PER_DAY = 86_400_000_000


@dataclass(frozen=True)
class IdentityGraph:
    """The graph of one run: ``vertices`` (``id``, ...) and ``edges`` (``src``, ``dst``, ...)."""

    vertices: DataFrame
    edges: DataFrame

    def __post_init__(self) -> None:
        for name, df, needed in (("vertices", self.vertices, (ID, ENTITY_TYPE, ENTITY_ID)),
                                 ("edges", self.edges, (SRC, DST, EDGE_TYPE, WEIGHT))):
            missing = [c for c in needed if c not in df.columns]
            if missing:
                raise ValueError(f"IdentityGraph {name} lack columns {missing}; present: {df.columns}")


def vertex_id(entity_type: str, col: Column) -> Column:
    """The global vertex id of an entity column ("ip" + "1.2.3.4" -> "ip:1.2.3.4")."""
    return F.concat(F.lit(f"{entity_type}:"), col)


def type_of_id(col: Column) -> Column:
    """The entity type of a vertex id (the part before the first ':'; IPv6 ids contain more)."""
    return F.substring_index(col, ":", 1)


def _utc_micros(d: dt.date) -> int:
    return int(dt.datetime.combine(d, dt.time(0), tzinfo=dt.UTC).timestamp()) * 1_000_000


def _contract_columns(tables: dict[str, DataFrame]) -> dict[str, DataFrame]:
    """The contract columns of each graph table (extra producer columns are dropped)."""
    missing_tables = [t for t in GRAPH_TABLES if t not in tables]
    if missing_tables:
        raise SchemaError(f"graph build needs tables {missing_tables}; given: {sorted(tables)}")
    out = {}
    for name in GRAPH_TABLES:
        df = tables[name]
        wanted = INPUT_SCHEMAS[name].names
        missing = [c for c in wanted if c not in df.columns]
        if missing:
            raise SchemaError(f"table {name} lacks contract columns {missing}; present: {df.columns}")
        out[name] = df.select(*wanted)
    return out


def _events(payments: DataFrame, transfers: DataFrame, sessions: DataFrame) -> DataFrame:
    """All events in one shape; the acting account is the payer / sender / session owner."""
    null_s = F.lit(None).cast("string")
    null_amount = F.lit(None).cast("decimal(18,2)")
    pay = payments.select(
        F.lit("payments").alias(_SOURCE), F.col("event_time").alias(_TIME),
        F.col("account_id").alias(_ACCOUNT), null_s.alias(_COUNTERPARTY),
        F.col("device_id").alias(_DEVICE), F.col("ip").alias(_IP),
        F.col("card_token").alias(_CARD), F.col("merchant_id").alias(_MERCHANT),
        F.col("card_bin").alias(_BIN), F.col("amount").alias(_AMOUNT),
        (F.col("status") == DECLINED).alias(_DECLINED),
    )
    tra = transfers.select(
        F.lit("transfers").alias(_SOURCE), F.col("event_time").alias(_TIME),
        F.col("src_account_id").alias(_ACCOUNT), F.col("dst_account_id").alias(_COUNTERPARTY),
        F.col("device_id").alias(_DEVICE), F.col("ip").alias(_IP),
        null_s.alias(_CARD), null_s.alias(_MERCHANT), null_s.alias(_BIN),
        F.col("amount").alias(_AMOUNT), (F.col("status") == DECLINED).alias(_DECLINED),
    )
    ses = sessions.select(
        F.lit("sessions").alias(_SOURCE), F.col("event_time").alias(_TIME),
        F.col("account_id").alias(_ACCOUNT), null_s.alias(_COUNTERPARTY),
        F.col("device_id").alias(_DEVICE), F.col("ip").alias(_IP),
        null_s.alias(_CARD), null_s.alias(_MERCHANT), null_s.alias(_BIN),
        null_amount.alias(_AMOUNT), F.lit(False).alias(_DECLINED),
    )
    return pay.unionByName(tra).unionByName(ses)


def _with_decay(end_micros: int, half_life_days: float):
    def step(events: DataFrame) -> DataFrame:
        age_days = F.greatest(
            (F.lit(end_micros) - F.unix_micros(F.col(_TIME))) / F.lit(float(_MICROS_PER_DAY)),
            F.lit(0.0),
        )
        return events.withColumn(_DECAY, F.pow(F.lit(0.5), age_days / F.lit(float(half_life_days))))
    return step


def _edges(events: DataFrame) -> DataFrame:
    """One row per (src, dst, edge_type), aggregating the events between the two ends."""
    acct = vertex_id(ACCOUNT, F.col(_ACCOUNT))
    card = vertex_id(CARD, F.col(_CARD))

    def spec(edge_type: str, src: Column, dst: Column) -> Column:
        return F.struct(F.lit(edge_type).alias(EDGE_TYPE), src.alias(SRC), dst.alias(DST))

    # concat() of a null id is null, so absent identifiers drop out below.
    specs = F.array(
        spec(ACCOUNT_DEVICE, acct, vertex_id(DEVICE, F.col(_DEVICE))),
        spec(ACCOUNT_IP, acct, vertex_id(IP, F.col(_IP))),
        spec(ACCOUNT_CARD, acct, card),
        spec(CARD_MERCHANT, card, vertex_id(MERCHANT, F.col(_MERCHANT))),
        spec(ACCOUNT_MERCHANT, acct, vertex_id(MERCHANT, F.col(_MERCHANT))),
        spec(TRANSFER, acct, vertex_id(ACCOUNT, F.col(_COUNTERPARTY))),
    )
    amount_factor = F.when(
        F.col(EDGE_TYPE) == TRANSFER, F.lit(1.0) + F.log10(F.lit(1.0) + F.col(AMOUNT_SUM).cast("double"))
    ).otherwise(F.lit(1.0))
    return (
        events.select(F.explode(specs).alias("_e"), _TIME, _AMOUNT, _DECLINED, _DECAY)
        .select("_e.*", _TIME, _AMOUNT, _DECLINED, _DECAY)
        .where(F.col(SRC).isNotNull() & F.col(DST).isNotNull())
        .groupBy(SRC, DST, EDGE_TYPE)
        .agg(
            F.count(F.lit(1)).alias(N_EVENTS),
            F.coalesce(F.sum(_AMOUNT), F.lit(0).cast("decimal(28,2)")).alias(AMOUNT_SUM),
            F.count(F.when(F.col(_DECLINED), True)).alias(N_DECLINED),
            F.min(_TIME).alias(FIRST_TIME),
            F.max(_TIME).alias(LAST_TIME),
            F.sum(_DECAY).alias(_DECAY),
        )
        .withColumn(DIRECTED, F.col(EDGE_TYPE) == TRANSFER)
        .withColumn(WEIGHT, F.log1p(F.col(_DECAY)) * amount_factor)
        .select(*EDGE_COLUMNS)
    )


def _entity_activity(events: DataFrame) -> DataFrame:
    """Per entity seen in the window: first/last seen and event counts.

    Two hash aggregates instead of one sort aggregate: ``max`` of a string (the
    card BIN) has no fixed-width buffer, so aggregating it with the counts made
    Spark sort every exploded event row by (entity_type, entity_id). The first
    aggregate keys card rows by their BIN as well (other rows by null); the
    second folds the few rows per entity left, picking the largest BIN.
    """
    def ent(entity_type: str, col: Column) -> Column:
        return F.struct(F.lit(entity_type).alias(ENTITY_TYPE), col.alias(ENTITY_ID))

    # A self-transfer names its account once, not twice.
    counterparty = F.when(~F.col(_COUNTERPARTY).eqNullSafe(F.col(_ACCOUNT)), F.col(_COUNTERPARTY))
    entities = F.array(
        ent(ACCOUNT, F.col(_ACCOUNT)), ent(ACCOUNT, counterparty), ent(DEVICE, F.col(_DEVICE)),
        ent(IP, F.col(_IP)), ent(CARD, F.col(_CARD)), ent(MERCHANT, F.col(_MERCHANT)),
    )
    per_bin = (
        events.select(F.explode(entities).alias("_v"), _SOURCE, _TIME, _DECLINED, _BIN)
        .select("_v.*", _SOURCE, _TIME, _DECLINED, _BIN)
        .where(F.col(ENTITY_ID).isNotNull())
        # Only card entities carry a BIN.
        .groupBy(ENTITY_TYPE, ENTITY_ID, F.when(F.col(ENTITY_TYPE) == CARD, F.col(_BIN)).alias(_BIN))
        .agg(
            F.min(_TIME).alias(FIRST_SEEN),
            F.max(_TIME).alias(LAST_SEEN),
            F.count(F.lit(1)).alias(N_EVENTS),
            F.count(F.when(F.col(_SOURCE) == "payments", True)).alias(N_PAYMENTS),
            F.count(F.when(F.col(_SOURCE) == "transfers", True)).alias(N_TRANSFERS),
            F.count(F.when(F.col(_DECLINED), True)).alias(N_DECLINED),
        )
    )
    return per_bin.groupBy(ENTITY_TYPE, ENTITY_ID).agg(
        F.min(FIRST_SEEN).alias(FIRST_SEEN),
        F.max(LAST_SEEN).alias(LAST_SEEN),
        *[F.sum(c).alias(c) for c in (N_EVENTS, N_PAYMENTS, N_TRANSFERS, N_DECLINED)],
        # max() picks one BIN deterministically.
        F.max(_BIN).alias(CARD_BIN),
    )


def _vertices(activity: DataFrame, accounts: DataFrame, end_micros: int) -> DataFrame:
    attrs = accounts.select(
        F.lit(ACCOUNT).alias(ENTITY_TYPE),
        F.col("account_id").alias(ENTITY_ID),
        F.col("created_at").alias(CREATED_AT),
        F.col("kyc_level").alias(KYC_LEVEL),
    ).dropDuplicates([ENTITY_ID])
    # Whole days between opening and the end of ds (an account opened on ds is 0 days old).
    age = F.floor(
        (F.lit(end_micros) - F.unix_micros(F.col(CREATED_AT))) / F.lit(_MICROS_PER_DAY)
    ).cast("int")
    return (
        activity.join(attrs, [ENTITY_TYPE, ENTITY_ID], "left")
        .withColumn(ACCOUNT_AGE_DAYS, age)
        .withColumn(ID, F.concat(F.col(ENTITY_TYPE), F.lit(":"), F.col(ENTITY_ID)))
        .select(*VERTEX_COLUMNS)
    )


def build_identity_graph(spark: SparkSession, cfg: RingfenceConfig, tables: dict[str, DataFrame],
                         ds: dt.date, lookback_days: int | None = None) -> IdentityGraph:
    """The identity graph of the window of ``lookback_days`` days ending with ``ds``.

    ``tables`` are the validated inputs keyed by table name (extra columns are
    ignored; ``labels`` is not used here). Events outside the window are left
    out even if the caller passed them. ``lookback_days`` defaults to
    ``cfg.pipeline.lookback_days``. ``spark`` is unused today and kept for the
    fixed stage interface.
    """
    del spark
    lookback = lookback_days or cfg.pipeline.lookback_days
    t = _contract_columns(tables)
    end_micros = _utc_micros(ds + dt.timedelta(days=1))
    window = {k: events_in_window(t[k], ds, lookback) for k in ("payments", "transfers", "sessions")}
    events = (
        _events(window["payments"], window["transfers"], window["sessions"])
        .transform(_with_decay(end_micros, cfg.hubs.edge_half_life_days))
    )
    edges = _edges(events)
    vertices = _vertices(_entity_activity(events), t["accounts"], end_micros)
    return IdentityGraph(vertices=vertices, edges=edges)


def edge_weight(ages_days: list[float], half_life_days: float, transfer_amount: float | None = None) -> float:
    """The documented weight formula in plain Python (reference for tests and notebooks)."""
    decayed = sum(0.5 ** (max(a, 0.0) / half_life_days) for a in ages_days)
    factor = 1.0 + math.log10(1.0 + transfer_amount) if transfer_amount is not None else 1.0
    return math.log1p(decayed) * factor


def _counts(df: DataFrame, key: str) -> dict[str, int]:
    return {r[key]: int(r["count"]) for r in df.groupBy(key).count().collect()}


def graph_stats(g: IdentityGraph, hubs: DataFrame) -> dict[str, Any]:
    """A small JSON-able summary: counts by type, hubs by type and rule, max degree by type.

    Every collect below returns at most a few dozen aggregated rows
    (entity types x rules), whatever the size of the graph.
    """
    from graph.hubs import HUB_RULE

    vertices = _counts(g.vertices, ENTITY_TYPE)
    edges = _counts(g.edges, EDGE_TYPE)
    hubs_by: dict[str, dict[str, int]] = {}
    for r in hubs.groupBy(ENTITY_TYPE, HUB_RULE).count().collect():
        hubs_by.setdefault(r[ENTITY_TYPE], {})[r[HUB_RULE]] = int(r["count"])
    # Degree = number of incident edges, all edge types, both directions.
    ends = g.edges.select(F.col(SRC).alias(ID)).unionByName(g.edges.select(F.col(DST).alias(ID)))
    max_degree = {
        r[ENTITY_TYPE]: int(r["max_degree"])
        for r in ends.groupBy(ID).count()
        .groupBy(type_of_id(F.col(ID)).alias(ENTITY_TYPE))
        .agg(F.max("count").alias("max_degree"))
        .collect()
    }
    return {
        "n_vertices": sum(vertices.values()),
        "n_edges": sum(edges.values()),
        "n_hubs": sum(sum(v.values()) for v in hubs_by.values()),
        "vertices_by_type": dict(sorted(vertices.items())),
        "edges_by_type": dict(sorted(edges.items())),
        "hubs_by_type_and_rule": {k: dict(sorted(v.items())) for k, v in sorted(hubs_by.items())},
        "max_degree_by_type": dict(sorted(max_degree.items())),
    }
