"""Risk propagation from labelled seeds through the identity graph, on GraphFrames.

Label spreading with decay, run with GraphFrames ``aggregateMessages`` so
that it scales out with the graph (one message pass per iteration):

* Seeds are the entities with a usable label (``graph.score.usable_labels``:
  latest label known before the cut-off): fraud, mule and card_testing
  labels have risk ``y = 1``, legit labels ``y = 0``. Seeds stay clamped at
  ``y`` in every iteration.
* Every other vertex takes, each iteration, the weighted mean of its
  neighbours' risk, discounted by ``1 - alpha`` per hop::

      r(v) <- (1 - alpha) * sum_u w(u, v) r(u) / (sum_u w(u, v) + s)

  where ``w`` is the edge's recency weight (``graph.build``) times the
  factor of its type (``scoring.propagation_edge_factors``), edges are taken
  undirected, and ``s`` (``scoring.propagation_smoothing``) is a pseudo-edge
  to a risk-0 neighbour.
* Start: ``r = y`` on seeds, 0 elsewhere; ``scoring.propagation_iterations``
  iterations reach that many hops.
* Stored: vertices with ``r >= scoring.propagation_min_risk`` (0.001). The
  many vertices far from every seed end with tiny risks (on the 10M-event
  world 1.74M of 2.38M with r > 0 are below 0.001), which would move a
  score's logit by less than ``weights.propagated x 0.001`` but make every
  table joined with them larger.

Why this form: ``r`` stays in [0, 1] (a weighted mean of values in [0, 1],
shrunk), so it can be read directly as a propagated risk; it falls with
distance (at most ``(1 - alpha)^k`` k hops from the nearest fraud seed);
``legit`` seeds pull their neighbours down, because they enter every mean
with 0; and one wrong label inside a large honest community is diluted by
the community's other edges (its neighbours get ``w / (W + s)`` of it, times
the decay), so it cannot taint the whole community. The graph should be the
hub-free one (``graph.hubs.remove_hubs``): a NAT IP or a giant merchant
would otherwise average risk over thousands of strangers.

Unlabelled leaves (vertices with one neighbour: most devices, cards and IPs
of one account; 1.59M of 2.57M vertices on the 10M-event world) are folded
out of the iteration, which then passes messages over half the edges: a
leaf's risk is ``c r(parent)`` of the iteration before, with
``c = (1 - alpha) w / (w + s)``, so what it sends back reaches the parent as
``echo x r(parent)`` of the iteration before, ``echo`` being the sum of
``w c`` over its leaves; after the last iteration each leaf takes its value
from its parent. The result is the same as iterating on every vertex.

The iteration runs on 64-bit vertex keys (``xxhash64`` of the id) rather
than the string ids: every message pass joins and shuffles the whole edge
list, and long keys make that about twice as fast (docs/benchmarks.md,
"Scoring cost against ring discovery"). The key is checked for collisions once per run; a run whose
ids collide under it (odds about 1e-7 at 2.6M vertices) logs a warning and
iterates on the ids themselves, with the same result.

Without the GraphFrames jars this raises
:class:`graph.session.GraphFramesUnavailable`; there is no fallback.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from graph.config import RingfenceConfig
from graph.schema import FRAUD_LABELS
from graph.session import require_graphframes

ID, SRC, DST, EDGE_TYPE, WEIGHT = "id", "src", "dst", "edge_type", "weight"
RISK = "risk"
SEED = "seed"
PROPAGATED_COLUMNS = (ID, RISK, SEED)

_W = "w"          # edge: propagation weight
_STRENGTH = "_strength"
_Y = "_y"
_SUM = "_sum"
_KEY = "_key"
_NBR, _LO, _HI = "_nbr", "_lo", "_hi"
_NAME, _OTHER = "_name", "_other"
_PARENT, _C, _ECHO, _PREV = "_parent", "_c", "_echo", "_prev"

log = logging.getLogger(__name__)


def seeds(usable_labels: DataFrame) -> DataFrame:
    """(id, _y) per labelled entity: 1.0 for fraud-type labels, 0.0 for legit."""
    return usable_labels.select(
        F.concat_ws(":", "entity_type", "entity_id").alias(ID),
        F.when(F.col("label").isin(*FRAUD_LABELS), F.lit(1.0)).otherwise(F.lit(0.0)).alias(_Y),
    )


def propagation_edges(edges: DataFrame, cfg: RingfenceConfig) -> DataFrame:
    """(src, dst, w): the edges that carry risk, weighted by type factor x recency weight."""
    missing = [c for c in (SRC, DST, EDGE_TYPE, WEIGHT) if c not in edges.columns]
    if missing:
        raise ValueError(f"propagation needs edge columns {missing}; present: {edges.columns}")
    factors = cfg.scoring.propagation_edge_factors
    factor = F.lit(0.0)
    for edge_type, f in factors.items():
        factor = F.when(F.col(EDGE_TYPE) == edge_type, F.lit(float(f))).otherwise(factor)
    return (edges.where(F.col(SRC) != F.col(DST))
            .select(SRC, DST, (F.col(WEIGHT).cast("double") * factor).alias(_W))
            .where(F.col(_W) > 0))


def xxhash64_key(c: Column) -> Column:
    """The default vertex key: ``xxhash64`` of the id (null stays null, so it joins nothing, as the id would)."""
    return F.when(c.isNotNull(), F.xxhash64(c))


def propagate_risk(spark: SparkSession, edges: DataFrame, usable_labels: DataFrame,
                   cfg: RingfenceConfig, vertices: DataFrame | None = None) -> DataFrame:
    """``(id, risk, seed)`` for every vertex of ``edges`` whose risk after propagation is stored (:func:`stored_risk`).

    ``edges``: identity-graph edges with hubs removed (``src``, ``dst``,
    ``edge_type``, ``weight``). ``usable_labels``: the labels known before the
    run's cut-off (``graph.score.usable_labels``). Seeds outside the graph
    keep their own label's risk (``seed`` is true for them). ``vertices``:
    the graph's vertex table (one row per ``id``, every edge end among them),
    if at hand; the ids are then listed from it rather than by a distinct over
    both ends of every edge (see :func:`spread`).
    """
    require_graphframes(spark, cfg.spark)
    from graphframes import GraphFrame
    from graphframes.lib import AggregateMessages as AM

    def message_sums(vertices: DataFrame, e: DataFrame) -> DataFrame:
        # Edges are undirected for risk: each end hears the other. The triplets carry
        # every vertex column, so only the risk goes in.
        return GraphFrame(vertices.select(ID, RISK), e).aggregateMessages(
            [F.sum(AM.msg).alias(_SUM)],
            sendToSrc=AM.edge[_W] * AM.dst[RISK],
            sendToDst=AM.edge[_W] * AM.src[RISK],
        )

    return stored_risk(spread(propagation_edges(edges, cfg), usable_labels, cfg, message_sums,
                              vertex_ids=vertices), cfg)


def stored_risk(vertices: DataFrame, cfg: RingfenceConfig) -> DataFrame:
    """``(id, risk, seed)`` of the vertices of :func:`spread` whose risk is stored: > 0 and at least
    ``scoring.propagation_min_risk``."""
    risk = F.col(RISK)
    return (vertices.where((risk > 0) & (risk >= F.lit(cfg.scoring.propagation_min_risk)))
            .select(ID, RISK, F.col(_Y).isNotNull().alias(SEED)))


def spread(e: DataFrame, usable_labels: DataFrame, cfg: RingfenceConfig,
           message_sums: Callable[[DataFrame, DataFrame], DataFrame],
           on_iteration: Callable[[int], None] | None = None,
           vertex_key: Callable[[Column], Column] = xxhash64_key,
           vertex_ids: DataFrame | None = None) -> DataFrame:
    """The iteration of :func:`propagate_risk` around its message pass; ``(id, _strength, _y, risk)`` per vertex.

    ``e``: :func:`propagation_edges`. ``message_sums(vertices, e)`` gives ``(id, _sum)``, the sum of
    ``w * risk`` over each vertex's neighbours (GraphFrames ``aggregateMessages`` in the product).
    ``on_iteration(i)`` is called after iteration ``i`` is materialised (benchmarks time it).
    ``vertex_ids``: a table with one row per vertex ``id`` of the graph ``e`` comes from (more ids are
    harmless); the keys are named back from it and from the seeds, which saves a distinct over both
    ends of every edge. An edge end missing from it fails the run (``raise_error``) rather than
    losing its risk. Without it, the ids are listed from ``e`` and the seeds.
    """
    conf = cfg.scoring
    keep = 1.0 - conf.propagation_alpha
    smooth = F.lit(conf.propagation_smoothing)
    c = F.col
    labelled = seeds(usable_labels)
    # Every vertex id once per key, with the seeds' ids (a seed may be outside the graph): written once,
    # it is both the collision check and the table that names the result. A key that two ids share
    # shows as a group whose least and greatest id differ.
    ids = (vertex_ids.select(ID) if vertex_ids is not None
           else e.select(c(SRC).alias(ID)).union(e.select(c(DST).alias(ID))))
    named = (ids.union(labelled.select(ID)).where(c(ID).isNotNull())
             .groupBy(vertex_key(c(ID)).alias(_KEY))
             .agg(F.min(ID).alias(_NAME), F.max(ID).alias(_OTHER))
             .checkpoint())
    keyed = _keys_unique(named)

    def key(name: str) -> Column:
        return vertex_key(c(name)) if keyed else c(name)

    e = e.select(key(SRC).alias(SRC), key(DST).alias(DST), _W)
    ends = (e.select(c(SRC).alias(ID), c(DST).alias(_NBR), _W)
            .unionByName(e.select(c(DST).alias(ID), c(SRC).alias(_NBR), _W)))
    # One pass over the edge ends: strength, and the least and greatest neighbour (equal for a leaf).
    per_vertex = ends.groupBy(ID).agg(F.sum(_W).alias(_STRENGTH), F.min(_NBR).alias(_LO),
                                      F.max(_NBR).alias(_HI))
    table = (per_vertex.join(labelled.select(key(ID).alias(ID), _Y), ID, "full_outer")
             .withColumn(_STRENGTH, F.coalesce(c(_STRENGTH), F.lit(0.0)))
             .withColumn(RISK, F.coalesce(c(_Y), F.lit(0.0)))
             .checkpoint())

    # Leaves (unlabelled, one neighbour) leave the iteration: a leaf's risk is its parent's of the
    # iteration before, times c = keep * w / (w + s), and what it sends back is folded into the parent's
    # update as an echo term, echo x the parent's risk of the iteration before.
    is_leaf = c(_Y).isNull() & (c(_LO) == c(_HI))
    leaves = (table.where(is_leaf)
              .select(ID, _STRENGTH, c(_LO).alias(_PARENT),
                      (F.lit(keep) * c(_STRENGTH) / (c(_STRENGTH) + smooth)).alias(_C))
              .checkpoint())
    echo = leaves.groupBy(c(_PARENT).alias(ID)).agg(F.sum(c(_STRENGTH) * c(_C)).alias(_ECHO))
    vertices = (table.where(~is_leaf).join(echo, ID, "left")
                .select(ID, _STRENGTH, _Y, F.coalesce(c(_ECHO), F.lit(0.0)).alias(_ECHO), RISK,
                        F.lit(0.0).alias(_PREV))
                .checkpoint())
    inner = vertices.select(ID)
    e = (e.join(inner.withColumnRenamed(ID, SRC), SRC, "left_semi")
         .join(inner.withColumnRenamed(ID, DST), DST, "left_semi")
         .checkpoint())
    for i in range(conf.propagation_iterations):
        messages = message_sums(vertices, e)
        heard = F.coalesce(c(_SUM), F.lit(0.0)) + c(_ECHO) * c(_PREV)
        updated = (vertices.join(messages, ID, "left")
                   .select(ID, _STRENGTH, _Y, _ECHO,
                           F.when(c(_Y).isNotNull(), c(_Y))
                           .otherwise(F.lit(keep) * heard / (c(_STRENGTH) + smooth)).alias(RISK),
                           c(RISK).alias(_PREV)))
        # Reliable checkpoints bound the lineage (and survive executor loss);
        # in between, a cache keeps each iteration from recomputing the last.
        if (i + 1) % conf.propagation_checkpoint_interval == 0:
            nxt = updated.checkpoint()
        else:
            nxt = updated.persist()
            nxt.count()
        messages.unpersist()
        vertices.unpersist()
        vertices = nxt
        if on_iteration is not None:
            on_iteration(i)
    # A leaf whose parent is a leaf too (an unlabelled two-vertex piece) is never reached: 0.
    parent_before = vertices.select(c(ID).alias(_PARENT), c(_PREV))
    every = vertices.select(ID, _STRENGTH, _Y, RISK).unionByName(
        leaves.join(parent_before, _PARENT, "left")
        .select(ID, _STRENGTH, F.lit(None).cast("double").alias(_Y),
                F.coalesce(c(_C) * c(_PREV), F.lit(0.0)).alias(RISK)))
    if not keyed:
        return every
    name = F.coalesce(c(_NAME), F.raise_error(F.lit("propagation: an edge end is null or has no id in the vertex table")))
    return (every.join(named.select(c(_KEY).alias(ID), _NAME), ID, "left")
            .select(name.alias(ID), _STRENGTH, _Y, RISK))


def _keys_unique(named: DataFrame) -> bool:
    """True when no two vertex ids share a key (``named``: one row per key with its least and greatest id);
    otherwise a warning, and the iteration keeps the ids."""
    row = named.agg(F.count(F.lit(1)).alias("keys"),
                    F.sum((F.col(_NAME) != F.col(_OTHER)).cast("long")).alias("shared")).first()  # one row
    shared = int(row["shared"] or 0)
    if shared == 0:
        return True
    log.warning("propagation: vertex ids collide under the 64-bit key (%d of %d keys stand for more than one "
                "id); iterating on the ids instead (same result, slower)", shared, int(row["keys"]))
    return False
