"""Investigator views of one night: select in Spark, then look at small pandas / networkx objects.

The notebooks in ``notebooks/`` call these functions for every non-trivial
step, so what an investigator sees is tested code, not notebook cells. Each
function takes the session, the output root and the ``ds`` of a run folder
(``OUTPUT/ds=YYYY-MM-DD/``), does its filtering, joins and aggregation in
Spark, and only then collects: one ring's members, edges and events, or a
few aggregated rows. Every collect is bounded by ``max_rows``
(``rings.driver_collect_max_rows``): above it a :class:`CollectLimitExceeded`
names the table and the limit instead of filling the notebook kernel's
memory (a ring that large usually means the hub caps were too loose).

Tables read (all written by the nightly stages; see README):

- ``rings/`` (``graph.rings.RINGS_COLUMNS``) and ``ring_members/`` (``RING_MEMBERS_COLUMNS``);
- ``risk/`` (``graph.schema.RISK_SCHEMA``): a ring's type is the ``ring_type``
  its listed entities carry; a ring none of whose entities is listed is
  ``unlisted``. Its *top score* is the highest entity score listed under it;
- ``ring_scores/`` (``graph.score``), when the run has it: the ring's own
  ``ring_score`` and ``ring_reasons`` (why the ring was or was not listed);
  rings are then ordered by ring score first;
- ``signals/`` (``signal_reasons``), ``hubs/``, ``graph/edges``;
- ``clean/payments`` and ``clean/transfers`` for timelines.

Identifiers are the internal raw ids (card identifiers are card tokens,
never PANs); :func:`case_summary` refuses to produce text that contains a
card-number-looking value, because case files leave the platform.

Drawing helpers import matplotlib and pyvis lazily (the ``notebooks`` extra),
so the nightly job never needs them.
"""

from __future__ import annotations

import datetime as dt
import html as html_lib
import math
from dataclasses import dataclass
from functools import reduce
from pathlib import Path
from typing import TYPE_CHECKING, Any

import networkx as nx
import pandas as pd
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from graph import io
from graph.build import (
    ACCOUNT,
    AMOUNT_SUM,
    CARD,
    DEVICE,
    DIRECTED,
    DST,
    EDGE_TYPE,
    ENTITY_ID,
    ENTITY_TYPE,
    FIRST_TIME,
    ID,
    IDENTIFIER_EDGE,
    IP,
    LAST_TIME,
    MERCHANT,
    N_DECLINED,
    N_EVENTS,
    SRC,
    TRANSFER,
    WEIGHT,
    type_of_id,
)
from graph.config import RingConf
from graph.errors import RawCardNumberFound, RingfenceError, SchemaError
from graph.pan import contains_pan_py
from graph.rings import RINGS_COLUMNS
from graph.schema import ENTITY_TYPES, INPUT_SCHEMAS, RISK_RING_TYPES, RISK_SCHEMA
from graph.signals import SIGNAL_REASONS

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# --- Tables of a run folder -------------------------------------------------------------------
RINGS_TABLE, MEMBERS_TABLE, RISK_TABLE = "rings", "ring_members", "risk"
RING_SCORES_TABLE = "ring_scores"
RING_SCORE, RING_REASONS = "ring_score", "ring_reasons"  # graph.score's typed ring columns
SIGNALS_TABLE, HUBS_TABLE, EDGES_TABLE = "signals", "hubs", "graph/edges"
PAYMENTS_TABLE, TRANSFERS_TABLE = "clean/payments", "clean/transfers"

# --- Columns (names written once; the stages own them) --------------------------------------
RING_ID, SIZE, DENSITY, METHOD = "ring_id", "size", "density", "method"
N_ACCOUNTS, N_DEVICES, N_IPS, N_CARDS, N_MERCHANTS, N_EDGES = (
    "n_accounts", "n_devices", "n_ips", "n_cards", "n_merchants", "n_edges")
RING_FIRST_SEEN, RING_LAST_SEEN = "first_seen", "last_seen"
# ring_members, as graph.rings.ring_tables writes it.
MEMBER_VERTEX, ROLE, WEIGHTED_DEGREE, NET_FLOW = "member_vertex", "role", "weighted_degree", "net_flow"
RING_LINKS = "ring_links"  # ring accounts the member is directly linked to (absent in older runs)
# Money moved on mule-like links in all, and over the ring's median mover's (absent in older runs).
GROSS_FLOW, MONEY_SHARE = "gross_flow", "money_share"
RING_MEMBERS_COLUMNS = (RING_ID, ENTITY_TYPE, ENTITY_ID, MEMBER_VERTEX, ROLE, WEIGHTED_DEGREE, NET_FLOW,
                        GROSS_FLOW, MONEY_SHARE, RING_LINKS)
# risk/ (graph.schema.RISK_SCHEMA).
SCORE, RING_TYPE, REASONS = "score", "ring_type", "reasons"
# Derived here.
LISTED, TOP_SCORE, N_LISTED, SIZE_BUCKET, N_RINGS = "listed", "top_score", "n_listed", "size_bucket", "n_rings"
IN_RING, LONE = "in_ring", "lone"
CHANGE, SIZE_PREV, SIZE_DELTA, N_JOINED, N_LEFT = "change", "size_prev", "size_delta", "n_joined", "n_left"
MEMBER, N_RING_NEIGHBOURS = "member", "n_ring_neighbours"
EVENT_TIME, KIND, EVENT_ID, FLOW, RING_ENTITY = "event_time", "kind", "event_id", "flow", "ring_entity"
AMOUNT, CURRENCY, STATUS, CARD_TOKEN, DEVICE_ID, IP_COL = (
    "amount", "currency", "status", "card_token", "device_id", "ip")
LINK_TYPE, VIA, ACCOUNTS, N_RING_ACCOUNTS, N_ACCOUNTS_TOTAL = (
    "link_type", "via", "accounts", "n_ring_accounts", "n_accounts_total")
VIA_MEMBER, VIA_HUB = "via_member", "via_hub"
RELATION, SHARED_MEMBERS, EDGES_BETWEEN, SHARED_IDENTIFIERS = (
    "relation", "shared_members", "edges_between", "shared_identifiers")
SOURCE, REASON, N_ENTITIES, ENTITIES = "source", "reason", "n_entities", "entities"

# Values.
UNLISTED = "unlisted"
RING_TYPE_ORDER = (*RISK_RING_TYPES, UNLISTED)
NEW, GROWN, SHRUNK, RESHAPED, UNCHANGED, GONE = "new", "grown", "shrunk", "reshaped", "unchanged", "gone"
CHANGES = (NEW, GROWN, SHRUNK, RESHAPED, UNCHANGED, GONE)
# Timeline flows: transfers between ring accounts, into and out of the ring; payments by
# ring accounts; payments by outsiders with a card that is a ring member.
INTERNAL, INFLOW, OUTFLOW, PAYMENT, RING_CARD = "internal", "in", "out", "payment", "ring_card"
FLOWS = (INTERNAL, INFLOW, OUTFLOW, PAYMENT, RING_CARD)
SHARED_MEMBER, EDGE, SHARED_IDENTIFIER = "shared_member", "edge", "shared_identifier"
FROM_RISK, FROM_SIGNALS = "risk", "signals"
# (lowest size, label): rings are at least rings.min_ring_size (>= 2) large.
SIZE_BUCKETS = ((1, "1-2"), (3, "3"), (4, "4-5"), (6, "6-10"), (11, "11-25"), (26, "26-100"), (101, "101+"))
SCORE_BINS = 10
DEFAULT_MAX_ROWS = RingConf().driver_collect_max_rows
# Merchants touch many honest accounts; as a link between two rings they mean little.
NEIGHBOUR_VIA_TYPES = (DEVICE, IP, CARD)

_REQUIRED = {
    RINGS_TABLE: RINGS_COLUMNS,
    MEMBERS_TABLE: (RING_ID, ENTITY_TYPE, ENTITY_ID, MEMBER_VERTEX, ROLE),
    RISK_TABLE: tuple(RISK_SCHEMA.names),
    RING_SCORES_TABLE: (RING_ID, RING_SCORE, RING_REASONS),
    SIGNALS_TABLE: (ENTITY_TYPE, ENTITY_ID, SIGNAL_REASONS),
    HUBS_TABLE: (ID,),
    EDGES_TABLE: (SRC, DST, EDGE_TYPE, DIRECTED, N_EVENTS, AMOUNT_SUM, N_DECLINED, WEIGHT),
    PAYMENTS_TABLE: tuple(INPUT_SCHEMAS["payments"].names),
    TRANSFERS_TABLE: tuple(INPUT_SCHEMAS["transfers"].names),
}
_BLOCKED = (RINGS_TABLE, MEMBERS_TABLE, RISK_TABLE)


class InvestigationError(RingfenceError):
    """An investigator view cannot be built (missing table, unknown ring, too much to collect)."""


class MissingTable(InvestigationError):
    """A table the view needs is not in the run folder."""


class RingNotFound(InvestigationError):
    """The ring id is not among the night's rings."""


class CollectLimitExceeded(InvestigationError):
    """A selection is larger than the driver may collect (``rings.driver_collect_max_rows``)."""


# --- Reading and collecting -------------------------------------------------------------------

def _table(spark: SparkSession, output_root: str, ds: dt.date | str, table: str,
           optional: bool = False) -> DataFrame | None:
    """A run table with its required columns checked; None for a missing optional one."""
    path = io.table_path(str(output_root), ds, table)
    if not io.exists(spark, path):
        if optional:
            return None
        hint = (" (ring discovery and scoring need the GraphFrames jars; see README status)"
                if table in _BLOCKED else "")
        raise MissingTable(f"{path} does not exist{hint}")
    df = io.read_output(spark, str(output_root), ds, table)
    missing = [c for c in _REQUIRED[table] if c not in df.columns]
    if missing:
        raise SchemaError(f"{path} lacks columns {missing}; present: {df.columns}")
    return df


def _read(spark: SparkSession, output_root: str, ds: dt.date | str, table: str) -> DataFrame:
    df = _table(spark, output_root, ds, table)
    assert df is not None
    return df


def _collect(df: DataFrame, max_rows: int, what: str) -> pd.DataFrame:
    """At most ``max_rows`` rows to pandas, timestamps as UTC; raise above the limit.

    ``limit(max_rows + 1)`` keeps the check itself bounded: the driver never
    receives more than one row beyond the limit.
    """
    pdf = df.limit(max_rows + 1).toPandas()
    if len(pdf) > max_rows:
        raise CollectLimitExceeded(
            f"{what}: more than {max_rows} rows would be collected to the driver "
            f"(rings.driver_collect_max_rows); narrow the selection or raise the limit")
    tz = df.sparkSession.conf.get("spark.sql.session.timeZone") or "UTC"
    for col in pdf.columns:
        if pd.api.types.is_datetime64_any_dtype(pdf[col]) and getattr(pdf[col].dt, "tz", None) is None:
            # toPandas renders timestamps as naive wall-clock times of the session time zone.
            pdf[col] = pdf[col].dt.tz_localize(tz).dt.tz_convert("UTC")
    return pdf


def _split_vertex(col: str) -> tuple[Column, Column]:
    """(entity_type, entity_id) of a vertex id column; IPv6 ids keep their own colons."""
    return type_of_id(F.col(col)), F.split(F.col(col), ":", 2)[1]


def _hub_ids(spark: SparkSession, output_root: str, ds: dt.date | str) -> DataFrame | None:
    hubs = _table(spark, output_root, ds, HUBS_TABLE, optional=True)
    return None if hubs is None else hubs.select(ID).distinct()


def _without_hubs(df: DataFrame, col: str, hubs: DataFrame | None) -> DataFrame:
    return df if hubs is None else df.join(F.broadcast(hubs.withColumnRenamed(ID, col)), col, "left_anti")


def _ring_scores(risk: DataFrame) -> DataFrame:
    """(ring_id, ring_type, top_score, n_listed) of every ring with listed entities."""
    return (risk.where(F.col(RING_ID).isNotNull())
            .groupBy(RING_ID)
            .agg(F.max(RING_TYPE).alias(RING_TYPE), F.max(SCORE).alias(TOP_SCORE),
                 F.count(F.lit(1)).alias(N_LISTED)))


def _rings_scored(rings: DataFrame, risk: DataFrame, ring_scores: DataFrame | None = None) -> DataFrame:
    """``rings`` with type, top score and listed count from ``risk``, and ring score and
    reasons from ``ring_scores`` (null columns when the run has no such table)."""
    scored = (rings.join(_ring_scores(risk), RING_ID, "left")
              .withColumn(RING_TYPE, F.coalesce(F.col(RING_TYPE), F.lit(UNLISTED)))
              .withColumn(N_LISTED, F.coalesce(F.col(N_LISTED), F.lit(0))))
    if ring_scores is None:
        return (scored.withColumn(RING_SCORE, F.lit(None).cast("double"))
                .withColumn(RING_REASONS, F.lit(None).cast("array<string>")))
    return scored.join(ring_scores.select(RING_ID, RING_SCORE, RING_REASONS), RING_ID, "left")


def _ring_scores_table(spark: SparkSession, output_root: str, ds: dt.date | str) -> DataFrame | None:
    return _table(spark, output_root, ds, RING_SCORES_TABLE, optional=True)


def _ring_order() -> list[Column]:
    """Highest ring score first, then the highest listed entity score (unlisted rings last), then size, id."""
    return [F.col(RING_SCORE).desc_nulls_last(), F.col(TOP_SCORE).desc_nulls_last(), F.col(SIZE).desc(),
            F.col(RING_ID).asc()]


def _size_bucket(size: Column) -> Column:
    expr = F.lit(SIZE_BUCKETS[0][1])
    for low, label in SIZE_BUCKETS[1:]:
        expr = F.when(size >= low, F.lit(label)).otherwise(expr)
    return expr


def _check_ring(spark: SparkSession, output_root: str, ds: dt.date | str, ring_id: str) -> None:
    rings = _read(spark, output_root, ds, RINGS_TABLE)
    if not rings.where(F.col(RING_ID) == ring_id).limit(1).collect():
        raise RingNotFound(f"ring {ring_id!r} is not in {io.table_path(str(output_root), ds, RINGS_TABLE)}")


def _members_sdf(spark: SparkSession, output_root: str, ds: dt.date | str, ring_id: str) -> DataFrame:
    members = _read(spark, output_root, ds, MEMBERS_TABLE)
    return (members.where(F.col(RING_ID) == ring_id)
            .select(*[c for c in RING_MEMBERS_COLUMNS if c in members.columns]))


def _member_ids(members: DataFrame, entity_type: str | None = None) -> DataFrame:
    m = members if entity_type is None else members.where(F.col(ENTITY_TYPE) == entity_type)
    return m.select(F.col(MEMBER_VERTEX).alias(ID)).distinct()


# --- Nightly overview -------------------------------------------------------------------------

@dataclass(frozen=True)
class NightlyOverview:
    """What the night found, as small pandas tables (see :func:`nightly_overview`)."""

    ds: str
    previous_ds: str | None
    n_rings: int
    # index: ring type (RING_TYPE_ORDER), columns: size bucket labels; ring counts.
    rings_by_type_size: pd.DataFrame
    # index: score bin label ("0.9-1.0"), columns: entity types; listed entities.
    score_histogram: pd.DataFrame
    # index: entity type; listed, in_ring, lone.
    list_sizes: pd.DataFrame
    # the top rings: ring_id, ring_type, size, type counts, density, top_score, n_listed, first_seen, change.
    top_rings: pd.DataFrame
    # rings that changed since previous_ds (empty without one): ring_id, change, size_prev, size, ...
    changes: pd.DataFrame
    # index: CHANGES; number of rings of each kind (all zero without a previous night).
    change_counts: pd.Series

    def headline(self) -> pd.Series:
        """The night in one column: what an investigator reads first."""
        return pd.Series({
            "ds": self.ds,
            "rings": self.n_rings,
            "listed entities": int(self.list_sizes[LISTED].sum()),
            "compared with": self.previous_ds or "(no earlier complete night with rings)",
            **{f"rings {c}": int(self.change_counts[c]) for c in (NEW, GROWN, SHRUNK, RESHAPED, GONE)},
        }, name="night")


def _ring_changes(spark: SparkSession, output_root: str, ds: dt.date | str, previous_ds: str,
                  ring_id: str | None = None) -> DataFrame:
    """Per ring id of either night (or just ``ring_id``): change, size_prev, size, size_delta, n_joined, n_left.

    Ring ids carry over between nights when the membership overlaps enough
    (graph.rings.assign_ring_ids), so comparing by id is comparing rings.
    """
    def read(night: str, table: str) -> DataFrame:
        df = _read(spark, output_root, night, table)
        return df if ring_id is None else df.where(F.col(RING_ID) == ring_id)

    now = read(ds, RINGS_TABLE).select(RING_ID, SIZE)
    before = read(previous_ds, RINGS_TABLE).select(RING_ID, F.col(SIZE).alias(SIZE_PREV))
    m_now = read(ds, MEMBERS_TABLE).select(RING_ID, MEMBER_VERTEX)
    m_before = read(previous_ds, MEMBERS_TABLE).select(RING_ID, MEMBER_VERTEX)
    joined = m_now.join(m_before, [RING_ID, MEMBER_VERTEX], "left_anti").groupBy(RING_ID).agg(
        F.count(F.lit(1)).alias(N_JOINED))
    left = m_before.join(m_now, [RING_ID, MEMBER_VERTEX], "left_anti").groupBy(RING_ID).agg(
        F.count(F.lit(1)).alias(N_LEFT))
    change = (F.when(F.col(SIZE_PREV).isNull(), NEW).when(F.col(SIZE).isNull(), GONE)
              .when(F.col(SIZE) > F.col(SIZE_PREV), GROWN).when(F.col(SIZE) < F.col(SIZE_PREV), SHRUNK)
              .when((F.col(N_JOINED) > 0) | (F.col(N_LEFT) > 0), RESHAPED).otherwise(UNCHANGED))
    both = now.join(before, RING_ID, "full")
    return (both.join(joined, RING_ID, "left").join(left, RING_ID, "left")
            .withColumn(N_JOINED, F.when(F.col(SIZE_PREV).isNull() | F.col(SIZE).isNull(), F.lit(None))
                        .otherwise(F.coalesce(F.col(N_JOINED), F.lit(0))))
            .withColumn(N_LEFT, F.when(F.col(SIZE_PREV).isNull() | F.col(SIZE).isNull(), F.lit(None))
                        .otherwise(F.coalesce(F.col(N_LEFT), F.lit(0))))
            .withColumn(SIZE_DELTA, F.coalesce(F.col(SIZE), F.lit(0)) - F.coalesce(F.col(SIZE_PREV), F.lit(0)))
            .withColumn(CHANGE, change)
            .select(RING_ID, CHANGE, SIZE_PREV, SIZE, SIZE_DELTA, N_JOINED, N_LEFT))


def previous_ring_night(spark: SparkSession, output_root: str, ds: dt.date | str) -> str | None:
    """The night to compare with: the last complete run before ``ds``, if it has rings.

    That is the night the pipeline carried ring ids over from
    (``io.previous_run_ds``), so comparing ids with it compares the same
    rings; an unfinished run in between is not what tonight's ids refer to.
    """
    previous = io.previous_run_ds(spark, str(output_root), ds)
    if previous is None or not io.exists(spark, io.table_path(str(output_root), previous, RINGS_TABLE)):
        return None
    return previous


def nightly_overview(spark: SparkSession, output_root: str, ds: dt.date | str, *, top_n: int = 10,
                     max_rows: int = DEFAULT_MAX_ROWS) -> NightlyOverview:
    """Ring counts by type and size, score distribution, top rings, list sizes and changes.

    Everything is aggregated in Spark; only aggregates, the ``top_n`` rings and
    the changed rings reach the driver. Changes compare with the last complete
    earlier run if it has rings (:func:`previous_ring_night`), by ring id.
    """
    ds = str(ds)
    rings = _read(spark, output_root, ds, RINGS_TABLE)
    risk = _read(spark, output_root, ds, RISK_TABLE)
    scored = (_rings_scored(rings, risk, _ring_scores_table(spark, output_root, ds))
              .withColumn(SIZE_BUCKET, _size_bucket(F.col(SIZE))))
    n_rings = rings.count()

    counts = _collect(scored.groupBy(RING_TYPE, SIZE_BUCKET).agg(F.count(F.lit(1)).alias(N_RINGS)),
                      max_rows, "rings by type and size")
    labels = [label for _, label in SIZE_BUCKETS]
    by_type_size = (counts.pivot_table(index=RING_TYPE, columns=SIZE_BUCKET, values=N_RINGS, aggfunc="sum")
                    .reindex(index=list(RING_TYPE_ORDER), columns=labels).fillna(0).astype(int)
                    if len(counts) else pd.DataFrame(0, index=list(RING_TYPE_ORDER), columns=labels))
    by_type_size.index.name, by_type_size.columns.name = RING_TYPE, SIZE_BUCKET

    bins = F.least(F.floor(F.col(SCORE) * SCORE_BINS).cast("int"), F.lit(SCORE_BINS - 1))
    hist = _collect(risk.where(F.col(SCORE).isNotNull()).groupBy(ENTITY_TYPE, bins.alias("bin"))
                    .agg(F.count(F.lit(1)).alias("n")), max_rows, "score histogram")
    bin_labels = [f"{b / SCORE_BINS:.1f}-{(b + 1) / SCORE_BINS:.1f}" for b in range(SCORE_BINS)]
    score_hist = pd.DataFrame(0, index=bin_labels, columns=list(ENTITY_TYPES))
    for row in hist.itertuples(index=False):
        score_hist.loc[bin_labels[max(int(row.bin), 0)], row.entity_type] = int(row.n)
    score_hist.index.name = "score"

    sizes = _collect(risk.groupBy(ENTITY_TYPE).agg(
        F.count(F.lit(1)).alias(LISTED), F.count(RING_ID).alias(IN_RING)), max_rows, "list sizes")
    list_sizes = (sizes.set_index(ENTITY_TYPE)[[LISTED, IN_RING]]
                  .reindex(list(ENTITY_TYPES)).fillna(0).astype(int))
    list_sizes[LONE] = list_sizes[LISTED] - list_sizes[IN_RING]

    previous_ds = previous_ring_night(spark, output_root, ds)
    if previous_ds is not None:
        changes_sdf = _ring_changes(spark, output_root, ds, previous_ds)
        cc = _collect(changes_sdf.groupBy(CHANGE).count(), max_rows, "change counts")
        change_counts = cc.set_index(CHANGE)["count"].reindex(list(CHANGES)).fillna(0).astype(int)
        order = {c: i for i, c in enumerate(CHANGES)}
        changes = _collect(changes_sdf.where(F.col(CHANGE) != UNCHANGED), max_rows, "changed rings")
        changes = (changes.assign(_o=changes[CHANGE].map(order), _d=-changes[SIZE_DELTA].abs())
                   .sort_values(["_o", "_d", RING_ID]).drop(columns=["_o", "_d"]).reset_index(drop=True))
        top = scored.join(changes_sdf.select(RING_ID, CHANGE), RING_ID, "left")
    else:
        change_counts = pd.Series(0, index=list(CHANGES))
        changes = pd.DataFrame(columns=[RING_ID, CHANGE, SIZE_PREV, SIZE, SIZE_DELTA, N_JOINED, N_LEFT])
        top = scored.withColumn(CHANGE, F.lit(None).cast("string"))
    change_counts.index.name, change_counts.name = CHANGE, N_RINGS
    top_cols = [RING_ID, RING_TYPE, SIZE, N_ACCOUNTS, N_DEVICES, N_IPS, N_CARDS, N_MERCHANTS, DENSITY,
                RING_SCORE, TOP_SCORE, N_LISTED, RING_FIRST_SEEN, CHANGE]
    top_rings = _collect(top.orderBy(*_ring_order()).limit(top_n).select(*top_cols), max_rows, "top rings")
    top_rings = top_rings.sort_values([RING_SCORE, TOP_SCORE, SIZE, RING_ID], ascending=[False, False, False, True],
                                      na_position="last").reset_index(drop=True)
    return NightlyOverview(ds=ds, previous_ds=previous_ds, n_rings=n_rings, rings_by_type_size=by_type_size,
                           score_histogram=score_hist, list_sizes=list_sizes, top_rings=top_rings,
                           changes=changes, change_counts=change_counts)


def top_ring_id(spark: SparkSession, output_root: str, ds: dt.date | str) -> str:
    """The ring an investigator should open first: highest ring score, listed score, size, then id."""
    rings = _read(spark, output_root, ds, RINGS_TABLE)
    risk = _read(spark, output_root, ds, RISK_TABLE)
    scored = _rings_scored(rings, risk, _ring_scores_table(spark, output_root, ds))
    first = scored.orderBy(*_ring_order()).select(RING_ID).limit(1).collect()
    if not first:
        raise RingNotFound(f"no rings in {io.table_path(str(output_root), ds, RINGS_TABLE)}")
    return str(first[0][RING_ID])


# --- One ring ---------------------------------------------------------------------------------

def ring_summary(spark: SparkSession, output_root: str, ds: dt.date | str, ring_id: str) -> pd.Series:
    """The ring's row of ``rings/`` plus its type, top score, listed count and change since the last night."""
    ds = str(ds)
    rings = _read(spark, output_root, ds, RINGS_TABLE).where(F.col(RING_ID) == ring_id)
    row = _collect(_rings_scored(rings, _read(spark, output_root, ds, RISK_TABLE),
                                 _ring_scores_table(spark, output_root, ds)), 1, f"ring {ring_id}")
    if row.empty:
        raise RingNotFound(f"ring {ring_id!r} is not in {io.table_path(str(output_root), ds, RINGS_TABLE)}")
    out = row.iloc[0]
    previous_ds = previous_ring_night(spark, output_root, ds)
    out[CHANGE], out[SIZE_PREV], out["previous_ds"] = None, None, previous_ds
    if previous_ds is not None:
        ch = _collect(_ring_changes(spark, output_root, ds, previous_ds, ring_id), 1, f"ring {ring_id} change")
        if not ch.empty:
            out[CHANGE], out[SIZE_PREV] = ch[CHANGE].iloc[0], ch[SIZE_PREV].iloc[0]
    out.name = ring_id
    return out


def _members(spark: SparkSession, output_root: str, ds: str, ring_id: str, max_rows: int) -> pd.DataFrame:
    members = _members_sdf(spark, output_root, ds, ring_id)
    risk = _read(spark, output_root, ds, RISK_TABLE).select(
        ENTITY_TYPE, ENTITY_ID, SCORE, F.col(RING_TYPE), F.col(REASONS), F.lit(True).alias(LISTED))
    signals = _table(spark, output_root, ds, SIGNALS_TABLE, optional=True)
    joined = members.join(risk, [ENTITY_TYPE, ENTITY_ID], "left")
    if signals is not None:
        joined = joined.join(signals.select(ENTITY_TYPE, ENTITY_ID, SIGNAL_REASONS), [ENTITY_TYPE, ENTITY_ID], "left")
    else:
        joined = joined.withColumn(SIGNAL_REASONS, F.lit(None).cast("array<string>"))
    pdf = _collect(joined, max_rows, f"members of ring {ring_id}")
    pdf[LISTED] = pdf[LISTED].fillna(False).astype(bool)
    for col in (REASONS, SIGNAL_REASONS):
        pdf[col] = [list(v) if v is not None and not (isinstance(v, float) and math.isnan(v)) else []
                    for v in pdf[col]]
    type_rank = {t: i for i, t in enumerate(ENTITY_TYPES)}
    pdf = (pdf.assign(_t=pdf[ENTITY_TYPE].map(type_rank)).sort_values(["_t", ENTITY_ID])
           .drop(columns="_t").reset_index(drop=True))
    cols = [RING_ID, MEMBER_VERTEX, ENTITY_TYPE, ENTITY_ID, ROLE, WEIGHTED_DEGREE, NET_FLOW, GROSS_FLOW,
            MONEY_SHARE, RING_LINKS, SCORE, LISTED, RING_TYPE, REASONS, SIGNAL_REASONS]
    return pdf[[c for c in cols if c in pdf.columns]]


def ring_members(spark: SparkSession, output_root: str, ds: dt.date | str, ring_id: str, *,
                 max_rows: int = DEFAULT_MAX_ROWS) -> pd.DataFrame:
    """The ring's members with their roles, risk score, listing, reasons and signal reasons.

    One row per member, ordered by entity type (accounts first) then id.
    Members nobody listed have a NaN score, ``listed`` False and no reasons.
    """
    ds = str(ds)
    _check_ring(spark, output_root, ds, ring_id)
    return _members(spark, output_root, ds, ring_id, max_rows)


def _subgraph(spark: SparkSession, output_root: str, ds: str, ring_id: str, include_shared: bool,
              max_rows: int) -> nx.DiGraph:
    members = _members_sdf(spark, output_root, ds, ring_id)
    member_ids = _member_ids(members)
    edges = _read(spark, output_root, ds, EDGES_TABLE)
    nodes = members.select(F.col(MEMBER_VERTEX).alias(ID), ENTITY_TYPE, ENTITY_ID, ROLE,
                           F.lit(True).alias(MEMBER), F.lit(None).cast("long").alias(N_RING_NEIGHBOURS))
    if include_shared:
        # Vertices outside the ring that touch at least two members: the shared IP or
        # merchant that explains why the members belong together. Hubs are benign
        # infrastructure (hubs/) and are left out.
        ends = (edges.select(F.col(SRC).alias("a"), F.col(DST).alias("b"))
                .unionByName(edges.select(F.col(DST).alias("a"), F.col(SRC).alias("b"))))
        shared = (ends.join(F.broadcast(member_ids.withColumnRenamed(ID, "a")), "a")
                  .join(F.broadcast(member_ids.withColumnRenamed(ID, "b")), "b", "left_anti")
                  .groupBy("b").agg(F.count_distinct("a").alias(N_RING_NEIGHBOURS))
                  .where(F.col(N_RING_NEIGHBOURS) >= 2).withColumnRenamed("b", ID))
        shared = _without_hubs(shared, ID, _hub_ids(spark, output_root, ds))
        etype, eid = _split_vertex(ID)
        nodes = nodes.unionByName(shared.select(ID, etype.alias(ENTITY_TYPE), eid.alias(ENTITY_ID),
                                                F.lit(None).cast("string").alias(ROLE), F.lit(False).alias(MEMBER),
                                                N_RING_NEIGHBOURS))
    risk = _read(spark, output_root, ds, RISK_TABLE).select(ENTITY_TYPE, ENTITY_ID, SCORE)
    node_pdf = _collect(nodes.join(risk, [ENTITY_TYPE, ENTITY_ID], "left"), max_rows,
                        f"subgraph vertices of ring {ring_id}")
    # The collected ids, not `nodes` again: that would recompute the shared vertices.
    node_ids = spark.createDataFrame([(v,) for v in node_pdf[ID]], f"{ID} string")
    sub_edges = (edges.join(F.broadcast(node_ids.withColumnRenamed(ID, SRC)), SRC)
                 .join(F.broadcast(node_ids.withColumnRenamed(ID, DST)), DST)
                 .select(SRC, DST, EDGE_TYPE, DIRECTED, N_EVENTS, F.col(AMOUNT_SUM).cast("double").alias(AMOUNT_SUM),
                         N_DECLINED, WEIGHT, FIRST_TIME, LAST_TIME))
    edge_pdf = _collect(sub_edges, max_rows, f"subgraph edges of ring {ring_id}")
    g = nx.DiGraph(ring_id=ring_id, ds=ds)
    for r in node_pdf.sort_values(ID).to_dict("records"):
        score = r[SCORE]
        g.add_node(r[ID], entity_type=r[ENTITY_TYPE], entity_id=r[ENTITY_ID], member=bool(r[MEMBER]),
                   role=r[ROLE] if isinstance(r[ROLE], str) else None,
                   score=None if pd.isna(score) else float(score),
                   n_ring_neighbours=None if pd.isna(r[N_RING_NEIGHBOURS]) else int(r[N_RING_NEIGHBOURS]))
    for r in edge_pdf.sort_values([SRC, DST, EDGE_TYPE]).to_dict("records"):
        g.add_edge(r[SRC], r[DST], edge_type=r[EDGE_TYPE], directed=bool(r[DIRECTED]),
                   n_events=int(r[N_EVENTS]), amount_sum=float(r[AMOUNT_SUM]), n_declined=int(r[N_DECLINED]),
                   weight=float(r[WEIGHT]), first_time=r[FIRST_TIME], last_time=r[LAST_TIME])
    return g


def ring_subgraph(spark: SparkSession, output_root: str, ds: dt.date | str, ring_id: str, *,
                  include_shared: bool = True, max_rows: int = DEFAULT_MAX_ROWS) -> nx.DiGraph:
    """The ring's members and the graph edges among them, as a typed networkx graph.

    Node attributes: ``entity_type``, ``entity_id``, ``member``, ``role``,
    ``score`` (risk list, None if unlisted) and, for non-members,
    ``n_ring_neighbours``. With ``include_shared`` the vertices outside the
    ring that touch two or more members (and are not hubs) are added with
    ``member=False``: rings found on the account projection often have only
    accounts as members, and the shared device or IP is what shows why.
    Edge attributes are the ``graph/edges`` columns; ``directed`` is True for
    transfers (stored src -> dst), other edges are stored once, account side first.
    """
    ds = str(ds)
    _check_ring(spark, output_root, ds, ring_id)
    return _subgraph(spark, output_root, ds, ring_id, include_shared, max_rows)


def _timeline(spark: SparkSession, output_root: str, ds: str, ring_id: str, max_rows: int) -> pd.DataFrame:
    members = _members_sdf(spark, output_root, ds, ring_id)
    accounts = members.where(F.col(ENTITY_TYPE) == ACCOUNT).select(ENTITY_ID).distinct()
    cards = members.where(F.col(ENTITY_TYPE) == CARD).select(ENTITY_ID).distinct()

    def flag(df: DataFrame, name: str, col: str) -> DataFrame:
        return F.broadcast(df.select(F.col(ENTITY_ID).alias(col), F.lit(True).alias(name)))

    transfers = (_read(spark, output_root, ds, TRANSFERS_TABLE)
                 .join(flag(accounts, "_src_in", "src_account_id"), "src_account_id", "left")
                 .join(flag(accounts, "_dst_in", "dst_account_id"), "dst_account_id", "left")
                 .where(F.col("_src_in") | F.col("_dst_in")))
    t_flow = (F.when(F.col("_src_in") & F.col("_dst_in"), INTERNAL)
              .when(F.col("_src_in"), OUTFLOW).otherwise(INFLOW))
    t = transfers.select(
        F.col("event_time").alias(EVENT_TIME), F.lit(TRANSFER).alias(KIND), F.col("event_id").alias(EVENT_ID),
        F.col("src_account_id").alias(SRC), F.col("dst_account_id").alias(DST), t_flow.alias(FLOW),
        F.concat(F.lit(f"{ACCOUNT}:"), F.when(t_flow == INFLOW, F.col("dst_account_id"))
                 .otherwise(F.col("src_account_id"))).alias(RING_ENTITY),
        F.col("amount").cast("double").alias(AMOUNT), F.col("currency").alias(CURRENCY),
        F.col("status").alias(STATUS), F.lit(None).cast("string").alias(CARD_TOKEN),
        F.col("device_id").alias(DEVICE_ID), F.col("ip").alias(IP_COL))
    payments = (_read(spark, output_root, ds, PAYMENTS_TABLE)
                .join(flag(accounts, "_acct_in", "account_id"), "account_id", "left")
                .join(flag(cards, "_card_in", "card_token"), "card_token", "left")
                .where(F.col("_acct_in") | F.col("_card_in")))
    p_flow = F.when(F.col("_acct_in"), PAYMENT).otherwise(RING_CARD)
    p = payments.select(
        F.col("event_time").alias(EVENT_TIME), F.lit("payment").alias(KIND), F.col("event_id").alias(EVENT_ID),
        F.col("account_id").alias(SRC), F.col("merchant_id").alias(DST), p_flow.alias(FLOW),
        F.when(F.col("_acct_in"), F.concat(F.lit(f"{ACCOUNT}:"), F.col("account_id")))
        .otherwise(F.concat(F.lit(f"{CARD}:"), F.col("card_token"))).alias(RING_ENTITY),
        F.col("amount").cast("double").alias(AMOUNT), F.col("currency").alias(CURRENCY),
        F.col("status").alias(STATUS), F.col("card_token").alias(CARD_TOKEN),
        F.col("device_id").alias(DEVICE_ID), F.col("ip").alias(IP_COL))
    pdf = _collect(t.unionByName(p), max_rows, f"events of ring {ring_id}")
    return pdf.sort_values([EVENT_TIME, EVENT_ID]).reset_index(drop=True)


def ring_timeline(spark: SparkSession, output_root: str, ds: dt.date | str, ring_id: str, *,
                  max_rows: int = DEFAULT_MAX_ROWS) -> pd.DataFrame:
    """The ring's money flows and card attempts in the run's window, oldest first.

    From ``clean/`` (the validated inputs of the window): transfers with a ring
    account on either side (``flow`` internal / in / out) and payments by ring
    accounts (``payment``) or with a ring card by anyone (``ring_card``).
    Columns: event_time (UTC), kind, event_id, src, dst (account or merchant),
    flow, ring_entity (the member the event is about, as a vertex id), amount,
    currency, status, card_token, device_id, ip.
    """
    ds = str(ds)
    _check_ring(spark, output_root, ds, ring_id)
    return _timeline(spark, output_root, ds, ring_id, max_rows)


def _links(spark: SparkSession, output_root: str, ds: str, ring_id: str, min_accounts: int,
           max_rows: int) -> pd.DataFrame:
    members = _members_sdf(spark, output_root, ds, ring_id)
    accounts = F.broadcast(_member_ids(members, ACCOUNT))
    edges = _read(spark, output_root, ds, EDGES_TABLE)
    ident = edges.where(F.col(EDGE_TYPE).isin(*IDENTIFIER_EDGE.values()))
    used = (ident.join(accounts.withColumnRenamed(ID, SRC), SRC)
            .groupBy(DST).agg(F.sort_array(F.collect_set(SRC)).alias(ACCOUNTS),
                              F.sum(N_EVENTS).alias(N_EVENTS),
                              F.sum(F.col(AMOUNT_SUM).cast("double")).alias(AMOUNT_SUM),
                              F.sum(N_DECLINED).alias(N_DECLINED))
            .withColumn(N_RING_ACCOUNTS, F.size(ACCOUNTS))
            .where(F.col(N_RING_ACCOUNTS) >= min_accounts))
    totals = (ident.join(used.select(DST), DST, "left_semi")
              .groupBy(DST).agg(F.count_distinct(SRC).alias(N_ACCOUNTS_TOTAL)))
    flags = used.join(totals, DST).join(
        F.broadcast(_member_ids(members).select(F.col(ID).alias(DST), F.lit(True).alias(VIA_MEMBER))), DST, "left")
    hubs = _hub_ids(spark, output_root, ds)
    flags = (flags.join(F.broadcast(hubs.select(F.col(ID).alias(DST), F.lit(True).alias(VIA_HUB))), DST, "left")
             if hubs is not None else flags.withColumn(VIA_HUB, F.lit(False)))
    ident_rows = flags.select(
        type_of_id(F.col(DST)).alias(LINK_TYPE), F.col(DST).alias(VIA), ACCOUNTS, N_RING_ACCOUNTS,
        N_ACCOUNTS_TOTAL, N_EVENTS, AMOUNT_SUM, N_DECLINED,
        F.coalesce(F.col(VIA_MEMBER), F.lit(False)).alias(VIA_MEMBER),
        F.coalesce(F.col(VIA_HUB), F.lit(False)).alias(VIA_HUB))
    money = (edges.where(F.col(EDGE_TYPE) == TRANSFER)
             .join(accounts.withColumnRenamed(ID, SRC), SRC).join(accounts.withColumnRenamed(ID, DST), DST)
             .select(F.lit(TRANSFER).alias(LINK_TYPE), F.concat_ws(" -> ", SRC, DST).alias(VIA),
                     F.array(SRC, DST).alias(ACCOUNTS), F.lit(2).alias(N_RING_ACCOUNTS),
                     F.lit(None).cast("long").alias(N_ACCOUNTS_TOTAL), N_EVENTS,
                     F.col(AMOUNT_SUM).cast("double").alias(AMOUNT_SUM), N_DECLINED,
                     F.lit(False).alias(VIA_MEMBER), F.lit(False).alias(VIA_HUB)))
    pdf = _collect(ident_rows.unionByName(money), max_rows, f"links of ring {ring_id}")
    pdf[ACCOUNTS] = [list(v) for v in pdf[ACCOUNTS]]
    pdf[N_ACCOUNTS_TOTAL] = pdf[N_ACCOUNTS_TOTAL].astype("Int64")
    order = {t: i for i, t in enumerate((DEVICE, IP, CARD, MERCHANT, TRANSFER))}
    return (pdf.assign(_o=pdf[LINK_TYPE].map(order), _n=-pdf[N_RING_ACCOUNTS])
            .sort_values(["_o", "_n", VIA]).drop(columns=["_o", "_n"]).reset_index(drop=True))


def ring_links(spark: SparkSession, output_root: str, ds: dt.date | str, ring_id: str, *,
               min_accounts: int = 2, max_rows: int = DEFAULT_MAX_ROWS) -> pd.DataFrame:
    """How the ring's accounts are linked: shared identifiers and transfers between them.

    One row per device, IP, card or merchant used by at least ``min_accounts``
    ring accounts (``n_ring_accounts`` of ``n_accounts_total`` accounts that
    used it in the window: 5 of 5 is exclusive, 2 of 300 is a hotspot;
    ``via_hub`` marks identifiers set aside as hubs), then one row per
    transfer edge between two ring accounts. Counts and amounts sum the
    ``graph/edges`` rows from ring accounts (for identifiers) or the edge itself.
    """
    ds = str(ds)
    _check_ring(spark, output_root, ds, ring_id)
    return _links(spark, output_root, ds, ring_id, min_accounts, max_rows)


def _neighbours(spark: SparkSession, output_root: str, ds: str, ring_id: str, via_types: tuple[str, ...],
                max_rows: int) -> pd.DataFrame:
    all_members = _read(spark, output_root, ds, MEMBERS_TABLE).select(RING_ID, MEMBER_VERTEX)
    this = F.broadcast(all_members.where(F.col(RING_ID) == ring_id).select(F.col(MEMBER_VERTEX).alias(ID)).distinct())
    others = all_members.where(F.col(RING_ID) != ring_id)
    edges = _read(spark, output_root, ds, EDGES_TABLE)
    shown = F.concat_ws(" ", SRC, F.when(F.col(DIRECTED), F.lit("->")).otherwise(F.lit("-")), DST)
    described = F.concat(shown, F.lit(" ("), F.col(EDGE_TYPE), F.lit(")"))
    ends = (edges.select(F.col(SRC).alias("a"), F.col(DST).alias("b"), described.alias(VIA))
            .unionByName(edges.select(F.col(DST).alias("a"), F.col(SRC).alias("b"), described.alias(VIA))))
    # 1. a vertex that is a member of both rings
    shared = (others.join(this.withColumnRenamed(ID, MEMBER_VERTEX), MEMBER_VERTEX)
              .select(RING_ID, F.lit(SHARED_MEMBER).alias(RELATION), F.col(MEMBER_VERTEX).alias(VIA)))
    # 2. an edge from one of ours to one of theirs (that is not also ours)
    from_us = (ends.join(this.withColumnRenamed(ID, "a"), "a")
               .join(this.withColumnRenamed(ID, "b"), "b", "left_anti"))
    edge_rel = (from_us.join(others.withColumnRenamed(MEMBER_VERTEX, "b"), "b")
                .select(RING_ID, F.lit(EDGE).alias(RELATION), VIA))
    # 3. an identifier of neither ring, not a hub, used by members of both
    idents = _without_hubs(
        from_us.where(type_of_id(F.col("b")).isin(*via_types)).select(F.col("b").alias("x")).distinct(),
        "x", _hub_ids(spark, output_root, ds))
    theirs = (ends.join(idents.withColumnRenamed("x", "b"), "b")
              .join(others.withColumnRenamed(MEMBER_VERTEX, "a"), "a")
              .select(RING_ID, F.col("b").alias("x")).distinct()
              .join(others.withColumnRenamed(MEMBER_VERTEX, "x"), [RING_ID, "x"], "left_anti"))
    ident_rel = theirs.select(RING_ID, F.lit(SHARED_IDENTIFIER).alias(RELATION), F.col("x").alias(VIA))
    rel = reduce(DataFrame.unionByName, (shared, edge_rel, ident_rel)).distinct()
    per_ring = rel.groupBy(RING_ID).agg(
        *[F.count(F.when(F.col(RELATION) == r, True)).alias(name)
          for r, name in ((SHARED_MEMBER, SHARED_MEMBERS), (EDGE, EDGES_BETWEEN),
                          (SHARED_IDENTIFIER, SHARED_IDENTIFIERS))],
        F.sort_array(F.collect_set(VIA)).alias(VIA))
    rings = _rings_scored(_read(spark, output_root, ds, RINGS_TABLE), _read(spark, output_root, ds, RISK_TABLE),
                          _ring_scores_table(spark, output_root, ds))
    out = per_ring.join(rings.select(RING_ID, RING_TYPE, SIZE, TOP_SCORE), RING_ID, "left")
    pdf = _collect(out, max_rows, f"rings neighbouring {ring_id}")
    pdf[VIA] = [list(v) for v in pdf[VIA]]
    total = pdf[SHARED_MEMBERS] + pdf[EDGES_BETWEEN] + pdf[SHARED_IDENTIFIERS]
    cols = [RING_ID, RING_TYPE, SIZE, TOP_SCORE, SHARED_MEMBERS, EDGES_BETWEEN, SHARED_IDENTIFIERS, VIA]
    return (pdf.assign(_t=-total).sort_values(["_t", RING_ID]).drop(columns="_t")
            .reset_index(drop=True)[cols])


def neighbouring_rings(spark: SparkSession, output_root: str, ds: dt.date | str, ring_id: str, *,
                       via_types: tuple[str, ...] = NEIGHBOUR_VIA_TYPES,
                       max_rows: int = DEFAULT_MAX_ROWS) -> pd.DataFrame:
    """Other rings of the night that touch this one, with how (most links first).

    Three relations, counted per neighbouring ring: ``shared_members``
    (a vertex in both rings), ``edges_between`` (a graph edge from one of
    this ring's members to one of theirs, e.g. a transfer) and
    ``shared_identifiers`` (a device / IP / card — ``via_types`` — in neither
    ring, not a hub, used by members of both). ``via`` lists the vertices or
    edges behind the counts. Merchants are left out of ``via_types`` by
    default: everybody shares a merchant.
    """
    ds = str(ds)
    _check_ring(spark, output_root, ds, ring_id)
    return _neighbours(spark, output_root, ds, ring_id, tuple(via_types), max_rows)


def _reasons(spark: SparkSession, output_root: str, ds: str, ring_id: str, max_rows: int) -> pd.DataFrame:
    members = _members_sdf(spark, output_root, ds, ring_id).select(ENTITY_TYPE, ENTITY_ID)
    risk = _read(spark, output_root, ds, RISK_TABLE)
    entity = F.concat_ws(":", ENTITY_TYPE, ENTITY_ID).alias("entity")
    # Listed under this ring, or a member listed under no / another ring.
    listed = (risk.where(F.col(RING_ID) == ring_id)
              .unionByName(risk.join(F.broadcast(members), [ENTITY_TYPE, ENTITY_ID], "left_semi"))
              .distinct())
    parts = [listed.select(F.lit(FROM_RISK).alias(SOURCE), entity, F.explode(REASONS).alias(REASON))]
    signals = _table(spark, output_root, ds, SIGNALS_TABLE, optional=True)
    if signals is not None:
        parts.append(signals.join(F.broadcast(members), [ENTITY_TYPE, ENTITY_ID], "left_semi")
                     .select(F.lit(FROM_SIGNALS).alias(SOURCE), entity, F.explode(SIGNAL_REASONS).alias(REASON)))
    grouped = (reduce(DataFrame.unionByName, parts).groupBy(SOURCE, REASON)
               .agg(F.count_distinct("entity").alias(N_ENTITIES), F.sort_array(F.collect_set("entity")).alias(ENTITIES)))
    pdf = _collect(grouped, max_rows, f"reasons of ring {ring_id}")
    pdf[ENTITIES] = [list(v) for v in pdf[ENTITIES]]
    order = {FROM_RISK: 0, FROM_SIGNALS: 1}
    return (pdf.assign(_s=pdf[SOURCE].map(order), _n=-pdf[N_ENTITIES])
            .sort_values(["_s", "_n", REASON]).drop(columns=["_s", "_n"]).reset_index(drop=True)
            [[SOURCE, REASON, N_ENTITIES, ENTITIES]])


def ring_reasons(spark: SparkSession, output_root: str, ds: dt.date | str, ring_id: str, *,
                 max_rows: int = DEFAULT_MAX_ROWS) -> pd.DataFrame:
    """The reason codes behind the ring, one row per (source, reason) with the entities that carry it.

    ``risk``: the ``reasons`` of entities listed under this ring or of members
    listed otherwise; ``signals``: the members' ``signal_reasons`` (strong
    behavioural signals, listed or not). Most widely shared first.
    """
    ds = str(ds)
    _check_ring(spark, output_root, ds, ring_id)
    return _reasons(spark, output_root, ds, ring_id, max_rows)


@dataclass(frozen=True)
class RingCase:
    """Everything the ring explorer shows about one ring (see :func:`ring_case`)."""

    output_root: str
    ds: str
    ring_id: str
    summary: pd.Series
    members: pd.DataFrame
    subgraph: nx.DiGraph
    timeline: pd.DataFrame
    links: pd.DataFrame
    neighbours: pd.DataFrame
    reasons: pd.DataFrame


def ring_case(spark: SparkSession, output_root: str, ds: dt.date | str, ring_id: str, *,
              max_rows: int = DEFAULT_MAX_ROWS) -> RingCase:
    """All views of one ring at once (one ring check, each selection once)."""
    ds = str(ds)
    summary = ring_summary(spark, output_root, ds, ring_id)
    return RingCase(
        output_root=str(output_root), ds=ds, ring_id=ring_id, summary=summary,
        members=_members(spark, output_root, ds, ring_id, max_rows),
        subgraph=_subgraph(spark, output_root, ds, ring_id, True, max_rows),
        timeline=_timeline(spark, output_root, ds, ring_id, max_rows),
        links=_links(spark, output_root, ds, ring_id, 2, max_rows),
        neighbours=_neighbours(spark, output_root, ds, ring_id, NEIGHBOUR_VIA_TYPES, max_rows),
        reasons=_reasons(spark, output_root, ds, ring_id, max_rows),
    )


# --- Case summary -----------------------------------------------------------------------------

def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return ""
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, list | tuple):
        return "; ".join(_cell(v) for v in value)
    if isinstance(value, pd.Timestamp):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value).replace("|", "\\|").replace("\n", " ")


def _md_table(df: pd.DataFrame, columns: list[str]) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in df[columns].itertuples(index=False)]
    return lines


def _money_lines(timeline: pd.DataFrame) -> list[str]:
    if timeline.empty:
        return ["No transfers or payments of ring members in the window."]
    lines = []
    transfers = timeline[timeline[KIND] == TRANSFER]
    for flow, words in ((INTERNAL, "between ring accounts"), (INFLOW, "into the ring"), (OUTFLOW, "out of the ring")):
        part = transfers[transfers[FLOW] == flow]
        if part.empty:
            continue
        ok = part[part[STATUS] == "approved"]
        amounts = ", ".join(f"{cur} {amt:,.2f}" for cur, amt in ok.groupby(CURRENCY)[AMOUNT].sum().items()) or "none"
        lines.append(f"- transfers {words}: {len(part)} ({len(part) - len(ok)} declined); approved {amounts}")
    payments = timeline[timeline[KIND] == "payment"]
    if not payments.empty:
        declined = int((payments[STATUS] == "declined").sum())
        lines.append(f"- card payments: {len(payments)} attempts, {declined} declined "
                     f"({declined / len(payments):.0%}), {payments[CARD_TOKEN].nunique()} cards, "
                     f"{payments[DST].nunique()} merchants; {int((payments[FLOW] == RING_CARD).sum())} "
                     f"by outsiders with a ring card")
    lines.append(f"- first event {_cell(timeline[EVENT_TIME].min())} UTC, last {_cell(timeline[EVENT_TIME].max())} UTC")
    return lines


def case_summary(case: RingCase, *, max_events: int = 25) -> str:
    """A Markdown case file for one ring: facts, members, links, money, reasons, neighbours.

    Pure formatting of a :class:`RingCase`. Raises ``RawCardNumberFound`` if
    any text looks like a card number: identifiers here should be tokens, and a
    case file is shared outside the platform.
    """
    s = case.summary
    listed = s[TOP_SCORE]
    lines = [
        f"# Ring {case.ring_id} ({s[RING_TYPE]}) — night {case.ds}",
        "",
        f"Source: `{io.run_dir(case.output_root, case.ds)}` (rings, ring_members, risk, signals, graph, clean). "
        "Identifiers are internal ids; cards are tokens.",
        "",
        "| fact | value |",
        "|---|---|",
        f"| type | {s[RING_TYPE]} |",
        f"| size | {int(s[SIZE])}: " + ", ".join(f"{int(s[c])} {t}s" for c, t in (
            (N_ACCOUNTS, ACCOUNT), (N_DEVICES, DEVICE), (N_IPS, IP), (N_CARDS, CARD), (N_MERCHANTS, MERCHANT))
            if c in s) + " |",
        f"| top listed score | {'not listed' if pd.isna(listed) else f'{listed:.2f}'} ({int(s[N_LISTED])} entities listed) |",
        f"| first seen / last seen | {_cell(s.get(RING_FIRST_SEEN))} / {_cell(s.get(RING_LAST_SEEN))} |",
        f"| density, method | {_cell(s.get(DENSITY))}, {_cell(s.get(METHOD))} |",
    ]
    if s.get("previous_ds"):
        prev = s.get(SIZE_PREV)
        was = "" if prev is None or pd.isna(prev) else f" (size {int(prev)} then)"
        lines.append(f"| since {s['previous_ds']} | {s.get(CHANGE) or NEW}{was} |")
    lines += ["", "## Members", ""]
    lines += _md_table(case.members, [MEMBER_VERTEX, ROLE, SCORE, LISTED, REASONS])
    lines += ["", "## How members are linked", ""]
    lines += (_md_table(case.links, [LINK_TYPE, VIA, N_RING_ACCOUNTS, N_ACCOUNTS_TOTAL, N_EVENTS, AMOUNT_SUM,
                                     VIA_HUB])
              if not case.links.empty else ["No identifier is shared by two ring accounts and no transfer joins them."])
    lines += ["", "## Money flows and card attempts", ""] + _money_lines(case.timeline)
    if not case.timeline.empty:
        shown = case.timeline.tail(max_events)
        lines += ["", f"Latest {len(shown)} of {len(case.timeline)} events:", ""]
        lines += _md_table(shown, [EVENT_TIME, KIND, FLOW, SRC, DST, AMOUNT, CURRENCY, STATUS, CARD_TOKEN])
    lines += ["", "## Reason codes", ""]
    lines += ([f"- {r.reason} ({r.source}; {r.n_entities}: {', '.join(r.entities)})"
               for r in case.reasons.itertuples(index=False)] or ["None recorded."])
    lines += ["", "## Neighbouring rings", ""]
    lines += (_md_table(case.neighbours, [RING_ID, RING_TYPE, SIZE, SHARED_MEMBERS, EDGES_BETWEEN,
                                          SHARED_IDENTIFIERS, VIA])
              if not case.neighbours.empty else ["None."])
    text = "\n".join(lines) + "\n"
    if contains_pan_py(text):
        raise RawCardNumberFound(f"case summary of ring {case.ring_id} contains a card-number-like value; "
                                 "not written (identifiers must be tokens)")
    return text


def write_case_files(case: RingCase, folder: str | Path, *, max_events: int = 25) -> dict[str, Path]:
    """Write the case file set for one ring into ``folder``; return the paths by kind.

    ``<ring_id>-<ds>.md`` (the :func:`case_summary`, linking the pictures),
    ``-graph.png`` and ``-timeline.png`` (static) and ``-graph.html`` (the
    interactive view, self-contained): what an investigator attaches to a case.
    Needs the ``notebooks`` extra (matplotlib, pyvis).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{case.ring_id}-{case.ds}"
    paths = {"markdown": folder / f"{stem}.md", "graph_png": folder / f"{stem}-graph.png",
             "timeline_png": folder / f"{stem}-timeline.png", "graph_html": folder / f"{stem}-graph.html"}
    text = case_summary(case, max_events=max_events)
    draw_ring(case.subgraph).savefig(paths["graph_png"], dpi=110)
    draw_timeline(case.timeline).savefig(paths["timeline_png"], dpi=110)
    paths["graph_html"].write_text(interactive_ring(case.subgraph), encoding="utf-8")
    text += ("\n## Pictures\n\n"
             f"![subgraph]({paths['graph_png'].name})\n\n![timeline]({paths['timeline_png'].name})\n\n"
             f"Interactive view: [{paths['graph_html'].name}]({paths['graph_html'].name})\n")
    paths["markdown"].write_text(text, encoding="utf-8")
    return paths


def output_path(root: str) -> str:
    """A notebook's output root: URIs as given, relative paths against the repo root.

    Kernels start in ``notebooks/``, while ``make run`` writes ``sample/output``
    relative to the repo; this makes the same parameter work in both places.
    """
    from graph.config import resolve_path

    return root if "://" in root else str(resolve_path(root))


# --- Pictures ---------------------------------------------------------------------------------

# Entity type -> (colour, matplotlib marker, vis-network shape): colour and shape both
# differ, so the picture still reads in greyscale print-outs.
TYPE_STYLE = {
    ACCOUNT: ("#1f77b4", "o", "dot"),
    DEVICE: ("#ff7f0e", "s", "square"),
    IP: ("#2ca02c", "^", "triangle"),
    CARD: ("#d62728", "D", "diamond"),
    MERCHANT: ("#9467bd", "p", "star"),
}
FLOW_COLOUR = {INTERNAL: "#1f77b4", INFLOW: "#2ca02c", OUTFLOW: "#d62728", PAYMENT: "#9467bd",
               RING_CARD: "#8c564b"}
FLOW_LABEL = {INTERNAL: "transfer within the ring", INFLOW: "transfer into the ring",
              OUTFLOW: "transfer out of the ring", PAYMENT: "payment by a ring account",
              RING_CARD: "payment with a ring card (outsider)"}
RING_TYPE_COLOUR = {"mule": "#1f77b4", "card_testing": "#d62728", "unknown": "#7f7f7f", UNLISTED: "#c7c7c7"}
_OTHER = ("#7f7f7f", "o", "dot")
LAYOUT_SEED = 7


def ring_layout(graph: nx.Graph, seed: int = LAYOUT_SEED) -> dict[Any, tuple[float, float]]:
    """Node positions (fixed seed), shared by the static and interactive pictures."""
    if graph.number_of_nodes() == 0:
        return {}
    pos = nx.spring_layout(graph.to_undirected(as_view=True), seed=seed)
    return {n: (float(x), float(y)) for n, (x, y) in pos.items()}


def _new_figure(width: float, height: float) -> Figure:
    # A bare Figure (not pyplot): nothing is kept in pyplot's global registry, so a
    # notebook shows each picture once and a long session does not pile them up.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def draw_ring(graph: nx.Graph, *, title: str | None = None) -> Figure:
    """The ring's subgraph: entity types by colour and shape, non-members hollow, transfers as arrows.

    Node size grows with the risk score; transfer edges are arrows whose width
    grows with the amount; identity edges (used device/IP/card/merchant) are
    thin grey lines.
    """
    from matplotlib.lines import Line2D

    fig = _new_figure(9, 6.5)
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.set_title(title or f"ring {graph.graph.get('ring_id', '')} — {graph.graph.get('ds', '')}")
    if graph.number_of_nodes() == 0:
        ax.text(0.5, 0.5, "no members", ha="center", va="center", transform=ax.transAxes)
        return fig
    pos = ring_layout(graph)
    identity = [(u, v) for u, v, d in graph.edges(data=True) if not d.get("directed")]
    money = [(u, v) for u, v, d in graph.edges(data=True) if d.get("directed")]
    nx.draw_networkx_edges(graph, pos, edgelist=identity, ax=ax, arrows=False, edge_color="#b0b0b0",
                           style="dashed", width=1.0)
    if money:
        widths = [1.0 + math.log10(1.0 + graph.edges[e].get("amount_sum", 0.0)) for e in money]
        nx.draw_networkx_edges(graph, pos, edgelist=money, ax=ax, arrows=True, arrowstyle="-|>",
                               arrowsize=16, edge_color="#8b0000", width=widths, node_size=500,
                               connectionstyle="arc3,rad=0.08")
    for etype in (*TYPE_STYLE, None):
        colour, marker, _ = TYPE_STYLE.get(etype, _OTHER) if etype else _OTHER
        for member in (True, False):
            nodes = [n for n, d in graph.nodes(data=True)
                     if (d.get("entity_type") == etype if etype else d.get("entity_type") not in TYPE_STYLE)
                     and bool(d.get("member")) == member]
            if not nodes:
                continue
            sizes = [250 + 550 * (graph.nodes[n].get("score") or 0.0) for n in nodes]
            nx.draw_networkx_nodes(graph, pos, nodelist=nodes, ax=ax, node_shape=marker, node_size=sizes,
                                   node_color=colour if member else "white", edgecolors=colour if not member else "black",
                                   linewidths=2.0 if not member else 0.8)
    if graph.number_of_nodes() <= 60:
        nx.draw_networkx_labels(graph, pos, ax=ax, font_size=8,
                                labels={n: d.get("entity_id", n) for n, d in graph.nodes(data=True)})
    present = {d.get("entity_type") for _, d in graph.nodes(data=True)}
    handles = [Line2D([], [], marker=m, color="w", markerfacecolor=c, markeredgecolor="black", markersize=10,
                      label=t) for t, (c, m, _) in TYPE_STYLE.items() if t in present]
    if any(not d.get("member") for _, d in graph.nodes(data=True)):
        handles.append(Line2D([], [], marker="o", color="w", markerfacecolor="white", markeredgecolor="#555555",
                              markeredgewidth=2, markersize=10, label="not a member (shared)"))
    handles.append(Line2D([], [], color="#b0b0b0", linestyle="dashed", label="used (identity edge)"))
    if money:
        handles.append(Line2D([], [], color="#8b0000", linewidth=2, label="transfer (width ~ amount)"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    return fig


def draw_timeline(timeline: pd.DataFrame, *, title: str | None = None) -> Figure:
    """Events over time, one row per ring member: colour = flow, hollow = declined, size ~ amount."""
    from matplotlib.lines import Line2D

    fig = _new_figure(10, 1.5 + 0.35 * max(1, timeline[RING_ENTITY].nunique() if not timeline.empty else 1))
    ax = fig.add_subplot()
    ax.set_title(title or "money flows and card attempts")
    if timeline.empty:
        ax.text(0.5, 0.5, "no events in the window", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    rows = sorted(timeline[RING_ENTITY].unique())
    y = timeline[RING_ENTITY].map({r: i for i, r in enumerate(rows)})
    sizes = 20 + 25 * timeline[AMOUNT].fillna(0).map(math.log1p)
    for flow in FLOWS:
        for declined in (False, True):
            sel = (timeline[FLOW] == flow) & ((timeline[STATUS] == "declined") == declined)
            if not sel.any():
                continue
            colour = FLOW_COLOUR[flow]
            ax.scatter(timeline.loc[sel, EVENT_TIME].dt.tz_localize(None), y[sel], s=sizes[sel],
                       marker="o" if timeline.loc[sel, KIND].iloc[0] == TRANSFER else "^",
                       facecolors="none" if declined else colour, edgecolors=colour, linewidths=1.5)
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("event time (UTC)")
    ax.grid(axis="x", alpha=0.3)
    handles = [Line2D([], [], marker="o" if f in (INTERNAL, INFLOW, OUTFLOW) else "^", color="w",
                      markerfacecolor=FLOW_COLOUR[f], markersize=9, label=FLOW_LABEL[f])
               for f in FLOWS if (timeline[FLOW] == f).any()]
    handles.append(Line2D([], [], marker="o", color="w", markerfacecolor="none", markeredgecolor="#555555",
                          markersize=9, label="declined (hollow)"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    return fig


def draw_overview(overview: NightlyOverview) -> Figure:
    """Four panels: rings by size and type, entity score distribution, list sizes, changes."""
    from matplotlib.ticker import MaxNLocator

    fig = _new_figure(13, 8.5)
    (a, b), (c, d) = fig.subplots(2, 2)
    counts = overview.rings_by_type_size.T
    counts = counts.loc[:, counts.sum() > 0] if counts.values.sum() else counts
    counts.plot(kind="bar", stacked=True, ax=a, rot=0,
                color=[RING_TYPE_COLOUR.get(t, "#7f7f7f") for t in counts.columns])
    a.set_title(f"rings by size and type ({overview.n_rings} rings)")
    a.set_xlabel("ring size")
    a.set_ylabel("rings")
    hist = overview.score_histogram
    hist = hist.loc[:, hist.sum() > 0] if hist.values.sum() else hist
    hist.plot(kind="bar", stacked=True, ax=b, rot=45, color=[TYPE_STYLE.get(t, _OTHER)[0] for t in hist.columns])
    b.set_title("scores of listed entities")
    b.set_xlabel("score")
    b.set_ylabel("entities")
    overview.list_sizes[[IN_RING, LONE]].plot(kind="bar", stacked=True, ax=c, rot=0, color=["#1f77b4", "#ffbb78"])
    c.set_title("risk list size per entity type")
    c.set_ylabel("listed entities")
    c.set_xlabel("")
    for ax in (a, b, c, d):
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    shown = overview.change_counts.drop(UNCHANGED)
    d.bar(shown.index, shown.values, color=["#2ca02c", "#1f77b4", "#ff7f0e", "#9467bd", "#7f7f7f"])
    d.set_title(f"changes since {overview.previous_ds}" if overview.previous_ds
                else "changes: no earlier complete night with rings")
    d.set_ylabel("rings")
    return fig


def _tooltip(node: str, data: dict[str, Any]) -> str:
    parts = [node, f"type: {data.get('entity_type')}"]
    if data.get("member"):
        parts.append(f"role: {data.get('role')}")
    else:
        parts.append(f"not a member; touches {data.get('n_ring_neighbours')} members")
    score = data.get("score")
    parts.append("not listed" if score is None else f"score: {score:.2f}")
    return "\n".join(parts)


def interactive_ring(graph: nx.Graph, *, height: str = "560px") -> str:
    """A self-contained HTML page (pyvis / vis-network, scripts inlined) of the ring's subgraph.

    Same layout, colours and shapes as :func:`draw_ring`; hover a node or edge
    for its details, drag to rearrange. Show it in a notebook with
    :func:`html_iframe`, or save it next to the case file.
    """
    from pyvis.network import Network

    net = Network(height=height, width="100%", directed=True, cdn_resources="in_line")
    pos = ring_layout(graph)
    for n, d in graph.nodes(data=True):
        colour, _, shape = TYPE_STYLE.get(d.get("entity_type"), _OTHER)
        x, y = pos.get(n, (0.0, 0.0))
        net.add_node(n, label=str(d.get("entity_id", n)), shape=shape, title=_tooltip(n, d),
                     color=colour if d.get("member") else {"background": "#ffffff", "border": colour},
                     borderWidth=1 if d.get("member") else 3, size=12 + 14 * (d.get("score") or 0.0),
                     x=x * 400, y=-y * 400)
    for u, v, d in graph.edges(data=True):
        tip = (f"{d.get('edge_type')}: {d.get('n_events')} events, {d.get('n_declined')} declined"
               + (f", amount {d.get('amount_sum', 0.0):,.2f}" if d.get("directed") else ""))
        if d.get("directed"):
            net.add_edge(u, v, title=tip, color="#8b0000",
                         width=1 + math.log10(1 + d.get("amount_sum", 0.0)), arrows="to")
        else:
            net.add_edge(u, v, title=tip, color="#b0b0b0", dashes=True, arrows={"to": {"enabled": False}})
    net.toggle_physics(False)
    return net.generate_html()


def html_iframe(page: str, *, height: str = "600px") -> str:
    """An ``<iframe srcdoc=...>`` holding a whole HTML page, for a notebook's HTML output.

    A full page (with its own ``<html>`` and scripts) pasted into a notebook
    output clashes with the notebook's page; inside an iframe it renders the
    same live and in a saved notebook.
    """
    # Wrapped in a <div>: IPython warns about bare "<iframe" HTML and suggests its IFrame,
    # which needs a URL or file this page does not have.
    return (f'<div><iframe srcdoc="{html_lib.escape(page, quote=True)}" '
            f'style="width: 100%; height: {height}; border: none;"></iframe></div>')
