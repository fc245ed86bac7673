"""Rings: refine candidate groups into tight communities, keep ids stable across nights.

Candidate groups -- connected components of the candidate graph
(``graph.candidates``: accounts linked by evidence-carrying identifier and
money links, plus the identifiers attached to them) -- come from GraphFrames
at scale (``graph.components``); this module takes them as an
``(id, component)`` DataFrame, whatever computed them, and:

1. refines each component with networkx (Louvain, fixed seed) inside
   ``applyInArrow`` — one component per call, so components are refined in
   parallel across executors (Arrow, not pandas: a night has tens of
   thousands of components of a few vertices, and building a pandas frame in
   and out of each cost more than refining it; docs/benchmarks.md, "Ring
   refinement"). Components above ``rings.max_component_for_refinement``
   vertices use label propagation (linear time) instead; components above
   ``GIANT_FACTOR`` × that cap are not split at all and are reported as
   ``unrefined`` (a sign the hub caps are too loose), never silently dropped.
   Louvain cuts a layering chain (a - b - c - d - e - f, one money link
   each) into pairs; a piece below ``rings.min_ring_size`` is merged into the
   neighbouring community it has the most link weight to
   (``_merge_fragments``), so a component splits only into rings, and only a
   whole component below the minimum is left out. If the communities' modularity
   is below ``rings.min_split_modularity`` the component stays one ring: the
   candidate components are mostly one ring each already, and Louvain's cut of
   a loosely knit ring strands its dormant members (docs/candidates.md,
   "Splitting components"). A component of at most
   ``rings.money_component_max_accounts`` accounts whose account-to-account
   links all moved money (``flow`` != 0: ``money_forward`` links) is not split
   at all (method ``money_component``): it is a layering tree, one ring whose
   fan-out Louvain would cut into branches of three;
2. gives every community a ring id: a community that overlaps one of the
   previous night's rings with Jaccard ≥ ``rings.id_match_jaccard`` (mutual
   best match) keeps that ring's id and ``first_seen``; a new community gets
   a new id derived from its members and ``ds``;
3. builds the ``rings`` and ``ring_members`` tables.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import statistics
from collections.abc import Callable

import networkx as nx
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from graph.config import RingfenceConfig
from graph.schema import spark_ddl

GIANT_FACTOR = 10
ACCOUNT_PREFIX = "account:"
LOUVAIN_SEED = 42

COMMUNITY_ARROW_SCHEMA = pa.schema(
    [(name, pa.string()) for name in ("component", "community", "id", "role")]
    + [(name, pa.float64()) for name in ("weighted_degree", "net_flow", "gross_flow", "money_share")]
    + [(name, pa.int64()) for name in ("ring_links", "n_vertices", "n_edges")]
    + [("method", pa.string())]
)
COMMUNITY_SCHEMA = spark_ddl(COMMUNITY_ARROW_SCHEMA)
EDGE_FIELDS = ("src", "dst", "weight", "flow")

RINGS_COLUMNS = (
    "ring_id", "size", "n_accounts", "n_devices", "n_ips", "n_cards", "n_merchants",
    "n_edges", "density", "method", "first_seen", "last_seen",
)


def _money_only(g: nx.Graph, max_accounts: int) -> bool:
    """True if every account-to-account link moved money and there are at most ``max_accounts`` accounts."""
    accounts = [v for v in g if v.startswith(ACCOUNT_PREFIX)]
    if not 0 < len(accounts) <= max_accounts:
        return False
    links = [d for u, v, d in g.edges(data=True) if u.startswith(ACCOUNT_PREFIX) and v.startswith(ACCOUNT_PREFIX)]
    return bool(links) and all(d["money"] for d in links)


def _refine_component(table: pa.Table, cap: int, min_size: int, min_q: float,
                      money_max: int) -> pa.Table:
    """Split one component's edges (component, src, dst, weight, flow) into communities.

    Returns one row per member of a community of at least ``min_size``
    vertices (``COMMUNITY_ARROW_SCHEMA``). The rows arrive in whatever order
    the shuffle delivered them, and Louvain's result depends on the order
    vertices and edges enter the graph even with a fixed seed; sorting first
    makes a rerun of the same night give the same rings.
    """
    comp = str(table.column("component")[0].as_py())
    columns = [table.column(name) for name in EDGE_FIELDS]
    for name, col in zip(EDGE_FIELDS, columns, strict=True):
        nan = (pc.sum(pc.is_nan(col)).as_py() or 0) if pa.types.is_floating(col.type) else 0
        if col.null_count or nan:
            raise ValueError(f"component {comp}: {col.null_count} null and {nan} NaN {name} values in its "
                             "candidate edges; the candidate graph must not produce them")
    g = nx.Graph()
    flow: dict[str, float] = {}
    gross: dict[str, float] = {}
    for src, dst, w, f in sorted(zip(*(col.to_pylist() for col in columns), strict=True)):
        if g.has_edge(src, dst):
            g[src][dst]["weight"] += float(w)
            g[src][dst]["money"] |= float(f) != 0.0
        else:
            g.add_edge(src, dst, weight=float(w), money=float(f) != 0.0)
        # flow > 0 means money moved src -> dst on this edge.
        flow[src] = flow.get(src, 0.0) - float(f)
        flow[dst] = flow.get(dst, 0.0) + float(f)
        for v in (src, dst):
            gross[v] = gross.get(v, 0.0) + abs(float(f))
    n = g.number_of_nodes()
    if _money_only(g, money_max):
        parts = [set(g.nodes)]
        method = "money_component"
    elif n <= cap:
        parts = nx.community.louvain_communities(g, weight="weight", seed=LOUVAIN_SEED)
        method = "louvain"
    elif n <= cap * GIANT_FACTOR:
        parts = list(nx.community.asyn_lpa_communities(g, weight="weight", seed=LOUVAIN_SEED))
        method = "label_propagation"
    else:
        parts = [set(g.nodes)]
        method = "unrefined"
    if method in ("louvain", "label_propagation"):
        parts = _merge_fragments(g, parts, min_size)
        if len(parts) > 1 and nx.community.modularity(g, parts, weight="weight") < min_q:
            parts = [set(g.nodes)]
    rows = []
    for part in parts:
        if len(part) < min_size:
            continue
        sub = g.subgraph(part)
        key = hashlib.sha1("|".join(sorted(part)).encode()).hexdigest()[:16]
        wdeg = dict(sub.degree(weight="weight"))
        top = max(wdeg.values()) if wdeg else 0.0
        typical = _typical_gross(part, gross)
        for v in sorted(part):
            links = sum(1 for u in sub.neighbors(v) if u.startswith(ACCOUNT_PREFIX))
            moved = gross.get(v, 0.0)
            rows.append((comp, key, v, _role(v, wdeg[v], top, flow.get(v, 0.0)), float(wdeg[v]),
                         float(flow.get(v, 0.0)), moved, moved / typical if typical else 0.0,
                         links, len(part), sub.number_of_edges(), method))
    if not rows:
        return COMMUNITY_ARROW_SCHEMA.empty_table()
    columns_out = zip(*rows, strict=True)
    return pa.Table.from_arrays([pa.array(col, type=field.type)
                                 for col, field in zip(columns_out, COMMUNITY_ARROW_SCHEMA, strict=True)],
                                schema=COMMUNITY_ARROW_SCHEMA)


def _typical_gross(part: set, gross: dict[str, float]) -> float:
    """Median money moved on mule-like links by the part's accounts that moved any (0 if none did).

    A member's ``money_share`` is its own gross flow over this: a mule of a
    fan-in ring or a hop of a layering chain moves about as much as its mates
    (share near 1), a friend who got one forwarded transfer or a household
    member a small part of it (docs/candidates.md, "Money share").
    """
    moved = [gross[v] for v in part if v.startswith(ACCOUNT_PREFIX) and gross.get(v, 0.0) > 0.0]
    return statistics.median(moved) if moved else 0.0


def _merge_fragments(g: nx.Graph, parts: list[set], min_size: int) -> list[set]:
    """Merge each community below ``min_size`` into the neighbour it has most link weight to.

    Smallest piece first (ties: smallest vertex id); the neighbour with the
    largest summed edge weight wins (ties: the one with the smallest vertex id),
    so the result does not depend on the order Louvain returned. Repeats until
    every piece reaches ``min_size`` or is the whole component.
    """
    pieces = {min(p): set(p) for p in parts}
    owner = {v: k for k, p in pieces.items() for v in p}
    alone: set[str] = set()  # pieces with no neighbour (not in a connected component; kept as they are)
    while len(pieces) > 1:
        small = [k for k, p in pieces.items() if len(p) < min_size and k not in alone]
        if not small:
            break
        k = min(small, key=lambda k: (len(pieces[k]), k))
        pull: dict[str, float] = {}
        for v in pieces[k]:
            for u, data in g[v].items():
                if owner[u] != k:
                    pull[owner[u]] = pull.get(owner[u], 0.0) + float(data["weight"])
        if not pull:
            alone.add(k)
            continue
        into = min(pull, key=lambda j: (-pull[j], j))
        for v in pieces[k]:
            owner[v] = into
        pieces[into] |= pieces.pop(k)
    return list(pieces.values())


def _role(vertex: str, wdeg: float, top: float, net_flow: float) -> str:
    """A member's role from its place in the community (documented in README)."""
    etype = vertex.split(":", 1)[0]
    if etype != "account":
        return f"shared_{etype}"
    if net_flow > 0 and wdeg == top:
        return "collector"
    if net_flow > 0:
        return "receiver"
    if net_flow < 0:
        return "sender"
    return "hub" if wdeg == top else "member"


def refine_components(
    components: DataFrame, edges: DataFrame, cfg: RingfenceConfig
) -> DataFrame:
    """Communities within each component.

    ``components``: (id, component). ``edges``: (src, dst, weight[, flow]) between
    vertex ids; ``flow`` is money moved src→dst (0 for identity links).
    Returns one row per community member (``COMMUNITY_SCHEMA``).
    """
    if "flow" not in edges.columns:
        edges = edges.withColumn("flow", F.lit(0.0))
    comp = components.select(F.col("id").alias("src"), F.col("component").cast("string").alias("component"))
    e = (edges.select("src", "dst", F.col("weight").cast("double").alias("weight"),
                      F.col("flow").cast("double").alias("flow"))
         .join(comp, "src"))
    r = cfg.rings
    cap, min_size, min_q = r.max_component_for_refinement, r.min_ring_size, r.min_split_modularity
    money_max = r.money_component_max_accounts
    return e.groupBy("component").applyInArrow(
        lambda table: _refine_component(table, cap, min_size, min_q, money_max), schema=COMMUNITY_SCHEMA)


def assign_ring_ids(
    communities: DataFrame, previous_members: DataFrame | None, previous_rings: DataFrame | None,
    ds: dt.date, jaccard: float,
) -> DataFrame:
    """Map each community to a ring id, carrying ids over from the previous night.

    Returns (community, ring_id, first_seen, matched_jaccard).
    """
    members = communities.select("community", "id").distinct()
    sizes = members.groupBy("community").agg(F.count("*").alias("n_t"))
    new_id = F.concat(F.lit("R"), F.substring(F.sha1(F.concat_ws("|", F.lit(str(ds)), F.col("community"))), 1, 12))
    fresh = sizes.select("community", new_id.alias("ring_id"), F.lit(ds).cast("date").alias("first_seen"),
                         F.lit(None).cast("double").alias("matched_jaccard"))
    if previous_members is None or previous_rings is None:
        return fresh
    prev = previous_members.select("ring_id", F.col("member_vertex").alias("id")).distinct()
    prev_sizes = prev.groupBy("ring_id").agg(F.count("*").alias("n_y"))
    overlap = (members.join(prev, "id").groupBy("community", "ring_id").agg(F.count("*").alias("inter"))
               .join(sizes, "community").join(prev_sizes, "ring_id")
               .withColumn("j", F.col("inter") / (F.col("n_t") + F.col("n_y") - F.col("inter")))
               .where(F.col("j") >= jaccard))
    # Mutual best match: each community keeps at most one old id and each old id
    # goes to at most one community (ties broken by id, deterministically).
    by_comm = Window.partitionBy("community").orderBy(F.desc("j"), "ring_id")
    by_ring = Window.partitionBy("ring_id").orderBy(F.desc("j"), "community")
    matched = (overlap.withColumn("rc", F.row_number().over(by_comm))
               .withColumn("rr", F.row_number().over(by_ring))
               .where((F.col("rc") == 1) & (F.col("rr") == 1))
               .join(previous_rings.select("ring_id", "first_seen"), "ring_id")
               .select("community", "ring_id", F.col("first_seen").cast("date"),
                       F.col("j").alias("matched_jaccard")))
    return fresh.join(matched.select("community"), "community", "left_anti").unionByName(matched)


def ring_tables(communities: DataFrame, ids: DataFrame, ds: dt.date) -> tuple[DataFrame, DataFrame]:
    """(rings, ring_members) for the night ``ds``."""
    m = communities.join(ids, "community")
    members = m.select(
        "ring_id",
        F.split("id", ":", 2)[0].alias("entity_type"),
        F.split("id", ":", 2)[1].alias("entity_id"),
        F.col("id").alias("member_vertex"),
        "role", "weighted_degree", "net_flow", "gross_flow", "money_share", "ring_links",
    )
    counts = [F.sum((F.col("entity_type") == t).cast("int")).alias(f"n_{t}s")
              for t in ("account", "device", "ip", "card", "merchant")]
    rings = (m.groupBy("ring_id").agg(
        F.count("*").alias("size"),
        F.first("n_edges").alias("n_edges"), F.first("method").alias("method"),
        F.first("first_seen").alias("first_seen"))
        .join(members.groupBy("ring_id").agg(*counts), "ring_id")
        .withColumn("density", F.when(F.col("size") > 1, 2.0 * F.col("n_edges")
                                      / (F.col("size") * (F.col("size") - 1))).otherwise(F.lit(0.0)))
        .withColumn("last_seen", F.lit(ds).cast("date"))
        .select(*RINGS_COLUMNS))
    return rings, members


def discover_rings(
    components: DataFrame, edges: DataFrame, cfg: RingfenceConfig, ds: dt.date,
    previous_members: DataFrame | None = None, previous_rings: DataFrame | None = None,
    materialise: Callable[[DataFrame, str], DataFrame] | None = None,
) -> tuple[DataFrame, DataFrame]:
    """(rings, ring_members) of the night ``ds`` from candidate components.

    ``components``: (id, component) — GraphFrames connected components of the
    candidate graph in the pipeline. ``edges``: the candidate edges (src, dst,
    weight[, flow]). ``previous_*``: the last complete night's tables, for
    stable ring ids (None on the first night). The refined communities feed
    both the id matching and the tables, so callers that run this at scale
    should pass ``components`` and ``edges`` already materialised (read back
    from Parquet) rather than as long lineages, and a ``materialise(df, name)``
    that writes a table and returns it read back: the communities
    (``candidates/communities``) are then computed once, not again for each
    table and for the id matching.
    """
    keep = materialise or (lambda df, _name: df)
    communities = keep(refine_components(components, edges, cfg), "candidates/communities")
    ids = assign_ring_ids(communities, previous_members, previous_rings, ds, cfg.rings.id_match_jaccard)
    return ring_tables(communities, ids, ds)
