"""What GraphFrames' connected components would cost on Spark, at the size of a bench_quality run (jars blocked).

The product computes the components of the candidate graph with GraphFrames ``connectedComponents``
(graph/components.py, ``rings.cc_algorithm`` "graphframes", ``cc_checkpoint_interval``,
``cc_broadcast_threshold``), whose jars cannot be fetched on this machine, so bench_quality.py computes them
with scipy on collected data, and that time says nothing about a cluster. This script estimates the Spark
cost: ``components_estimate`` performs, as PySpark DataFrame operations, the joins, aggregations, persists,
actions and checkpoints GraphFrames 0.12.x performs for that call. It is a cost estimate for the benchmark
report, not a fallback: the product has none and must never import this. Its result is checked against the
scipy reference bench_quality wrote: the two must be the same partition of the same vertices.

What it mirrors (GraphFrames 0.12.2 is pinned in pyproject.toml; read in the graphframes/graphframes sources,
rewritten here, not copied):

* ``core/src/main/scala/org/graphframes/lib/ConnectedComponents.scala`` (stored at commit 075026b2): "graphframes"
  is a deprecated alias of "two_phase"; "two_phase" runs ``TwoPhase.run`` unless the broadcast threshold is -1,
  which runs ``TwoPhase.runAQE`` instead (a different algorithm: no skewed join, no leaf pruning, AQE left on,
  ``Dataset.checkpoint``), so -1 is refused here, and so is "graphx" (GraphX Pregel). graphframes-py 0.12.2
  passes the defaults useLabelsAsComponents=False, use_local_checkpoints=False, storage level
  MEMORY_AND_DISK_DESER (its ``max_iter`` only reaches the GraphX algorithm).
* ``core/src/main/scala/org/graphframes/lib/TwoPhase.scala`` at commit 0390ea62 (with the leaf pruning of
  PR #846, released in 0.12.0; the edge count for the sparsity test is ``sum(cnt) / 2``): AQE switched off for
  the run; ``prepare`` (long ids, self-loops dropped, edges ordered src < dst, distinct); the initial min-neighbour
  table and its sum (decimal(38,0)) as the convergence test; per iteration the large-star step (skewed join of the
  edges with the min-neighbour table, distinct, persisted), the small-star step (min neighbour and count per
  vertex, persisted; skewed join; union with the self links; distinct), a checkpoint every
  ``checkpointInterval`` iterations written as Parquet under the session's checkpoint dir
  (``connected-components-<run id>/<iteration>``, the previous checkpoint deleted unless the pruned graph's
  pre-pruning edges still read from it; ``System.gc()``), persist, a new min-neighbour table and one aggregate
  job for (sum, edge count); leaf pruning tried once, from iteration 2 on, when the graph is sparse
  (edges < 2 x nodes), and kept when it halves the node count; the previous round's tables unpersisted;
  after convergence the join back of the pruned leaves and ``buildOutput`` (vertices left-joined to the final
  edges, component = the smallest long id), persisted and counted.
  Its ``skewedJoin`` collects the keys whose count exceeds the broadcast threshold (one small job per join) and,
  when there are any, splits the join into a hash join of the rest and a broadcast join of those keys.
* ``core/src/main/scala/org/graphframes/GraphFrame.scala`` (stored at commit 00b7663f; the same code in the
  newest stored copy): string ids are indexed by ``indexedVertices`` -- the ids repartitioned by id, sorted
  within partitions, numbered with ``monotonically_increasing_id`` and persisted MEMORY_AND_DISK, then joined
  back to the vertices (packed as the ``attr`` struct) -- and ``indexedEdges`` joins the edges to that table
  once per end; integral ids are cast to long instead. ``GraphFrame.skewedJoin`` as above.
* graph/components.py: the vertices are the distinct edge ends, the edges ``(src, dst)``, the component cast
  to string.

Commits: the stored copies carry commit ids, not release tags. 0390ea62 is the newest stored TwoPhase.scala and
has the 0.12.0 pruning; 44bfb4e3, also read, is an earlier one (no pruning, otherwise the same iteration);
that 0390ea62 is exactly the v0.12.2 tag is not confirmed. Differences: the pruning's sparsity test uses
``sum(cnt) / 2`` as in 0390ea62; the first revision of PR #846 used the row count of the min-neighbour table (it
only decides in which iteration pruning is tried). The edges' other columns are not packed into the edge
``attr`` struct (Spark prunes it unread either way). GraphFrames logs; this does not. The result is written
with a plain Parquet write (the product stages and renames). The run's checkpoint folder and cached id table,
which GraphFrames leaves behind, are removed after the timing.

Input: a bench_quality work dir (its ``ringfence/ds=D/candidates/edges`` and ``candidates/components``).
Writes its result to ``WORK/components_estimate`` (id, component; timed, as the product writes
``candidates/components``). Appends to the record of that work dir's label in ``quality.jsonl``
``components_spark_estimate_s`` (wall seconds), ``components_spark_iterations_s`` (per iteration; the first
also holds the preparation, the last the output and the write), ``components_spark_iterations``,
``components_spark_same_partition`` and ``components_spark_load_avg`` (the record's other fields unchanged).
Exit 1 when the partition differs from scipy's (after recording it) or no record has the label; exit 2 for a
configuration it does not mirror.

    .venv/bin/python bench/bench_components_cost.py --work DIR --ds 2026-11-24 --label L [--conf C]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pyspark import StorageLevel  # noqa: E402
from pyspark.sql import Column, DataFrame  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402
from pyspark.sql.types import ByteType, IntegerType, LongType, ShortType  # noqa: E402
from quality_record import add_record_arguments, add_to_record  # noqa: E402

from graph import io  # noqa: E402
from graph.config import RingConf, load_config  # noqa: E402

ID, SRC, DST, COMPONENT = "id", "src", "dst", "component"
ATTR, LONG_ID, LONG_SRC, LONG_DST = "attr", "new_id", "new_src", "new_dst"  # GraphFrame's private names
MIN_NBR, CNT = "min_nbr", "cnt"
LEVEL = StorageLevel.MEMORY_AND_DISK_DESER  # graphframes-py's default intermediate storage level
OPT_START_ITER, SPARSITY, SHRINKAGE = 2, 2.0, 2.0  # TwoPhase.run's pruning defaults


class NotMirrored(ValueError):
    """A connected-components setting this estimate does not reproduce."""


def mirrored_settings(rings: RingConf) -> tuple[int, int]:
    """(broadcast threshold, checkpoint interval) of ``rings`` when the estimate mirrors them, else NotMirrored."""
    if rings.cc_algorithm != "graphframes":
        raise NotMirrored(f"rings.cc_algorithm={rings.cc_algorithm!r} runs GraphX's Pregel connected components; "
                          "this estimate mirrors only 'graphframes' (TwoPhase.run)")
    if rings.cc_broadcast_threshold == -1:
        raise NotMirrored("rings.cc_broadcast_threshold=-1 makes GraphFrames run TwoPhase.runAQE (AQE on, no "
                          "skewed join, no leaf pruning, Dataset.checkpoint); this estimate mirrors TwoPhase.run")
    return rings.cc_broadcast_threshold, rings.cc_checkpoint_interval


@dataclass
class Estimate:
    """The components (id, component as string, persisted) and what the run did."""

    components: DataFrame
    iterations: int
    pruned_at: int | None  # the iteration whose end pruned the leaves, if it did
    hub_keys: int  # the most keys any skewed join sent down the broadcast path
    checkpoint_dir: str | None
    _cached: list[DataFrame] = field(default_factory=list)

    def cleanup(self) -> None:
        """Unpersist what the run left cached and delete its checkpoint folder (GraphFrames leaves both)."""
        for df in self._cached:
            df.unpersist()
        if self.checkpoint_dir:
            io.delete(self.components.sparkSession, self.checkpoint_dir)


def _smaller(x: Column, y: Column) -> Column:
    return F.when(x < y, x).otherwise(y)


def _larger(x: Column, y: Column) -> Column:
    return F.when(x > y, x).otherwise(y)


def _symmetrize(ee: DataFrame) -> DataFrame:
    both = F.explode(F.array(F.struct(F.col(SRC).alias(SRC), F.col(DST).alias(DST)),
                             F.struct(F.col(DST).alias(SRC), F.col(SRC).alias(DST))))
    return ee.select(both.alias("_edge")).select(F.col(f"_edge.{SRC}").alias(SRC), F.col(f"_edge.{DST}").alias(DST))


def _min_nbrs(ee: DataFrame) -> DataFrame:
    """(src, min_nbr, cnt): the smallest of each vertex and its neighbours, and its degree."""
    return (_symmetrize(ee).groupBy(SRC).agg(F.min(DST).alias(MIN_NBR), F.count("*").alias(CNT))
            .withColumn(MIN_NBR, _smaller(F.col(SRC), F.col(MIN_NBR))))


def _sum_and_edges(min_nbrs: DataFrame):
    """(sum of min_nbr as decimal(38,0), undirected edge count): one job, one row."""
    row = min_nbrs.select(F.sum(F.col(MIN_NBR).cast("decimal(38,0)")),
                          F.coalesce((F.sum(CNT) / 2).cast("long"), F.lit(0).cast("long"))).first()
    return row[0], row[1]


def _skewed_join(edges: DataFrame, min_nbrs: DataFrame, threshold: int, hub_keys: list[int]) -> DataFrame:
    """``edges.join(min_nbrs, src)``, keys of count above ``threshold`` by broadcast (GraphFrame.skewedJoin)."""
    hubs = [r[0] for r in min_nbrs.filter(F.col(CNT) > threshold).select(SRC).collect()]  # keys above threshold
    hub_keys[0] = max(hub_keys[0], len(hubs))
    if not hubs:
        return edges.join(min_nbrs, SRC)
    is_hub = F.col(SRC).isin(hubs)
    hashed = edges.filter(~is_hub).join(min_nbrs.filter(~is_hub), SRC)
    broadcast = edges.filter(is_hub).join(F.broadcast(min_nbrs.filter(is_hub)), SRC)
    return hashed.unionAll(broadcast)


def _prepare(vertices: DataFrame, edges: DataFrame) -> tuple[DataFrame, DataFrame, DataFrame | None]:
    """(vertices (id long, attr), edges src < dst distinct without self-loops, the persisted id table or None)."""
    attr = F.struct(*[F.col(c) for c in vertices.columns]).alias(ATTR)
    if isinstance(vertices.schema[ID].dataType, ByteType | ShortType | IntegerType | LongType):
        indexed = vertices.select(attr).select(F.col(f"{ATTR}.{ID}").cast("long").alias(LONG_ID),
                                               F.col(f"{ATTR}.{ID}").alias(ID), F.col(ATTR))
        indexed_edges = edges.select(F.col(SRC).cast("long").alias(LONG_SRC), F.col(DST).cast("long").alias(LONG_DST))
        long_ids = None
    else:
        long_ids = (vertices.select(ID).repartition(F.col(ID)).sortWithinPartitions(ID)
                    .withColumn(LONG_ID, F.monotonically_increasing_id())
                    .persist(StorageLevel.MEMORY_AND_DISK))
        indexed = vertices.select(F.col(ID), attr).join(long_ids, ID).select(LONG_ID, ID, ATTR)
        indexed_edges = (edges.select(SRC, DST)
                         .join(indexed.select(F.col(ID).alias(SRC), F.col(LONG_ID).alias(LONG_SRC)), SRC)
                         .join(indexed.select(F.col(ID).alias(DST), F.col(LONG_ID).alias(LONG_DST)), DST))
    vv = indexed.select(F.col(LONG_ID).alias(ID), F.col(ATTR))
    s, d = F.col(LONG_SRC), F.col(LONG_DST)
    ordered = indexed_edges.filter(s != d).select(_smaller(s, d).alias(SRC), _larger(s, d).alias(DST)).distinct()
    return vv, ordered, long_ids


def _prune_leaves(ee: DataFrame, num_nodes: int) -> tuple[DataFrame, DataFrame, int] | None:
    """(kept vertices, their edges, count) without the leaves (no out-edge, one in-edge) when that halves the
    node count, else None."""
    multi_parent = ee.groupBy(DST).agg(F.count("*").alias(CNT)).filter(F.col(CNT) > 1).select(F.col(DST).alias(ID))
    kept = ee.select(F.col(SRC).alias(ID)).union(multi_parent).distinct().persist(LEVEL)
    n = kept.count()
    if n * SHRINKAGE < num_nodes:
        return kept, ee.join(kept.withColumnRenamed(ID, DST), DST).persist(LEVEL), n
    kept.unpersist(blocking=False)
    return None


def _join_back(kept: DataFrame, ee: DataFrame, before: DataFrame) -> DataFrame:
    """The converged edges of the whole graph from those of the pruned one and the edges before pruning."""
    v, e = kept.alias("v"), ee.alias("e")
    cc = v.join(e, F.col(f"v.{ID}") == F.col(f"e.{DST}"), "left_outer").select(
        F.when(F.col(f"e.{SRC}").isNull(), F.col(f"v.{ID}")).otherwise(F.col(f"e.{SRC}")).alias(SRC),
        F.col(f"v.{ID}").alias(DST))
    leaves = cc.alias("cc").join(before.alias("b"), F.col(f"cc.{DST}") == F.col(f"b.{SRC}")).select(
        F.col(f"cc.{SRC}").alias(SRC), F.col(f"b.{DST}").alias(DST))
    return leaves.union(cc).distinct()


def _checkpoint_root(spark) -> str:
    opt = spark.sparkContext._jsc.sc().getCheckpointDir()
    root = opt.get() if opt.isDefined() else spark.conf.get("spark.checkpoint.dir", None)
    if not root:
        raise OSError("Checkpoint directory is not set (SparkContext.setCheckpointDir or spark.checkpoint.dir)")
    return root.rstrip("/")


def components_estimate(edges: DataFrame, *, broadcast_threshold: int, checkpoint_interval: int,
                        on_iteration: Callable[[int], None] | None = None) -> Estimate:
    """graph/components.py's call -- ``GraphFrame(ends, edges).connectedComponents("graphframes", ...)`` -- as
    the DataFrame operations GraphFrames 0.12.x runs for it (module docstring); (id, component as string).

    ``on_iteration(i)`` is called at the end of each iteration (after its actions). Not a fallback.
    """
    if broadcast_threshold == -1:
        raise ValueError("broadcast_threshold=-1 selects TwoPhase.runAQE, which this estimate does not mirror")
    spark = edges.sparkSession
    ends = edges.select(F.col(SRC).alias(ID)).unionByName(edges.select(F.col(DST).alias(ID))).distinct()
    edges = edges.select(SRC, DST)
    original_aqe = spark.conf.get("spark.sql.adaptive.enabled")
    hub_keys = [0]
    try:
        spark.conf.set("spark.sql.adaptive.enabled", "false")
        run_id = uuid.uuid4().hex[-8:]
        checkpoint_dir = (f"{_checkpoint_root(spark)}/connected-components-{run_id}"
                          if checkpoint_interval > 0 else None)
        vv, ee, long_ids = _prepare(ends, edges)
        ee = ee.persist(LEVEL)
        ee.count()
        num_nodes = vv.count()
        converged, iteration, pruned_at, keep_checkpoint = False, 1, None, False
        tried = False
        before_pruning = kept_nodes = None
        min_nbrs1 = _min_nbrs(ee).persist(LEVEL)
        prev_sum, _ = _sum_and_edges(min_nbrs1)
        last_round = [ee, min_nbrs1]
        while not converged:
            this_round = []
            # large star: every strictly larger neighbour to the min neighbour (self included)
            ee = (_skewed_join(ee, min_nbrs1, broadcast_threshold, hub_keys)
                  .select(F.col(DST).alias(SRC), F.col(MIN_NBR).alias(DST)).distinct().persist(LEVEL))
            this_round.append(ee)
            # small star: every smaller neighbour, and the vertex itself, to the min neighbour
            min_nbrs2 = ee.groupBy(SRC).agg(F.min(DST).alias(MIN_NBR), F.count("*").alias(CNT)).persist(LEVEL)
            this_round.append(min_nbrs2)
            ee = (_skewed_join(ee, min_nbrs2, broadcast_threshold, hub_keys)
                  .select(F.col(MIN_NBR).alias(SRC), F.col(DST)).filter(F.col(SRC) != F.col(DST)))
            ee = ee.union(min_nbrs2.select(F.col(MIN_NBR).alias(SRC), F.col(SRC).alias(DST))).distinct()
            if checkpoint_dir and iteration % checkpoint_interval == 0:
                ee.write.parquet(f"{checkpoint_dir}/{iteration}")
                ee = spark.read.parquet(f"{checkpoint_dir}/{iteration}")
                if iteration > checkpoint_interval:
                    if not keep_checkpoint:  # kept while the pre-pruning edges read from it
                        io.delete(spark, f"{checkpoint_dir}/{iteration - checkpoint_interval}")
                    else:
                        keep_checkpoint = False
                spark.sparkContext._jvm.System.gc()
            ee.persist(LEVEL)
            this_round.append(ee)
            min_nbrs1 = _min_nbrs(ee).persist(LEVEL)
            this_round.append(min_nbrs1)
            curr_sum, edge_count = _sum_and_edges(min_nbrs1)
            if 0 < edge_count < SPARSITY * num_nodes and iteration >= OPT_START_ITER and not tried:
                before_pruning = ee
                pruned = _prune_leaves(ee, num_nodes)
                if pruned is not None:
                    kept_nodes, ee, num_nodes = pruned
                    this_round.append(ee)
                    pruned_at, keep_checkpoint = iteration, True
                tried = True
            if curr_sum == prev_sum:
                converged = True
            else:
                prev_sum = curr_sum
            for df in last_round:
                df.unpersist()
            last_round = this_round
            if on_iteration is not None:
                on_iteration(iteration)
            iteration += 1
        if pruned_at is not None:
            ee = _join_back(kept_nodes, ee, before_pruning)
        labelled = vv.join(ee, vv[ID] == ee[DST], "left_outer").select(
            vv[ATTR], F.when(ee[SRC].isNull(), vv[ID]).otherwise(ee[SRC]).alias(COMPONENT))
        output = labelled.select(F.col(f"{ATTR}.*"), F.col(COMPONENT)).persist(LEVEL)
        output.count()
        for df in last_round:
            df.unpersist()
        cached = [output] + [df for df in (kept_nodes, long_ids) if df is not None]
    finally:
        spark.conf.set("spark.sql.adaptive.enabled", original_aqe)
    components = output.select(ID, F.col(COMPONENT).cast("string").alias(COMPONENT))  # graph/components.py
    return Estimate(components, iteration - 1, pruned_at, hub_keys[0], checkpoint_dir, cached)


def partition_difference(estimate: DataFrame, reference: DataFrame) -> dict:
    """Counts (one aggregate row) that say whether two (id, component) tables are the same partition."""
    j = (estimate.select(ID, F.col(COMPONENT).cast("string").alias("_a"))
         .join(reference.select(ID, F.col(COMPONENT).cast("string").alias("_b")), ID, "full_outer"))
    row = j.agg(F.count("*").alias("rows"), F.countDistinct(ID).alias("vertices"),
                F.sum(F.when(F.col("_b").isNull(), 1).otherwise(0)).alias("only_in_estimate"),
                F.sum(F.when(F.col("_a").isNull(), 1).otherwise(0)).alias("only_in_reference"),
                F.countDistinct("_a").alias("components_estimate"),
                F.countDistinct("_b").alias("components_reference"),
                F.countDistinct("_a", "_b").alias("component_pairs")).first().asDict()
    d = {k: int(v or 0) for k, v in row.items()}
    d["same"] = (d["rows"] == d["vertices"] and d["only_in_estimate"] == 0 and d["only_in_reference"] == 0
                 and d["component_pairs"] == d["components_estimate"] == d["components_reference"])
    return d


def difference_examples(estimate: DataFrame, reference: DataFrame, n: int = 5) -> dict:
    """A few ids on one side only, and components of one side split by the other (``n`` rows each)."""
    a = estimate.select(ID, F.col(COMPONENT).cast("string").alias("estimate"))
    b = reference.select(ID, F.col(COMPONENT).cast("string").alias("reference"))
    both = a.join(b, ID)

    def split(by: str, other: str) -> list:
        return [r.asDict() for r in both.groupBy(by).agg(F.countDistinct(other).alias("parts"))
                .filter("parts > 1").limit(n).collect()]

    return {"only_in_estimate": [r[0] for r in a.join(b, ID, "left_anti").select(ID).limit(n).collect()],
            "only_in_reference": [r[0] for r in b.join(a, ID, "left_anti").select(ID).limit(n).collect()],
            "estimate_components_split_by_reference": split("estimate", "reference"),
            "reference_components_split_by_estimate": split("reference", "estimate")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_record_arguments(p)
    args = p.parse_args(argv)

    from graph.session import build_session

    cfg = load_config(args.conf)
    try:
        threshold, interval = mirrored_settings(cfg.rings)
    except NotMirrored as e:
        print(f"bench_components_cost: not mirrored: {e}", file=sys.stderr)
        return 2
    spark = build_session(cfg.spark, app_name="ringfence-bench-components-cost")
    out = str(Path(args.work) / "ringfence")
    edges = io.read_output(spark, out, args.ds, "candidates/edges")
    target = str(Path(args.work) / "components_estimate")
    per_iteration: list[float] = []
    load_start = [round(x, 2) for x in os.getloadavg()]
    t0 = time.perf_counter()
    last = [t0]

    def tick(_: int) -> None:
        now = time.perf_counter()
        per_iteration.append(round(now - last[0], 1))
        last[0] = now

    est = components_estimate(edges, broadcast_threshold=threshold, checkpoint_interval=interval,
                              on_iteration=tick)
    est.components.write.mode("overwrite").parquet(target)
    end = time.perf_counter()
    per_iteration[-1] = round(per_iteration[-1] + end - last[0], 1)
    seconds = round(end - t0, 1)
    load_end = [round(x, 2) for x in os.getloadavg()]
    est.cleanup()
    mine = spark.read.parquet(target)
    ref = io.read_output(spark, out, args.ds, "candidates/components")
    diff = partition_difference(mine, ref)
    detail = {"vertices": diff["vertices"], "components": diff["components_estimate"],
              "pruned_at_iteration": est.pruned_at, "broadcast_keys": est.hub_keys,
              "broadcast_threshold": threshold, "checkpoint_interval": interval}
    if not diff["same"]:
        detail["difference"] = {**diff, **difference_examples(mine, ref)}
    result = {"components_spark_estimate_s": seconds, "components_spark_iterations_s": per_iteration,
              "components_spark_iterations": est.iterations, "components_spark_same_partition": diff["same"],
              "components_spark_load_avg": [load_start, load_end]}
    spark.stop()
    print(json.dumps(detail), file=sys.stderr, flush=True)
    if not diff["same"]:
        print("bench_components_cost: the estimate's components are NOT scipy's partition", file=sys.stderr)
    print(json.dumps(result), flush=True)
    if not add_to_record(args.label, result):
        return 1
    return 0 if diff["same"] else 1


if __name__ == "__main__":
    sys.exit(main())
