"""What risk propagation would cost on Spark, at the size of a bench_quality run (GraphFrames is blocked here).

The product propagates risk with GraphFrames ``aggregateMessages`` (graph/propagate.py), whose jars cannot be
fetched on this machine, so bench_quality.py computes the propagation with scipy on collected data, and that
time says nothing about a cluster. This script estimates the Spark cost: it runs the product's iteration
(same edges, seeds, update, clamping and checkpoint cadence, from graph/propagate.py) with each message pass
written as the joins GraphFrames performs for ``aggregateMessages`` -- edges joined to their source and
destination vertices (the triplets), one message per end joined back to the vertex table, summed per vertex.
It is a cost estimate for the benchmark report, not a fallback: the product has none. Its result is compared
with the scipy reference that bench_quality wrote (largest absolute difference in risk), so the estimate is
known to compute the same thing.

Input: a bench_quality work dir (its ``ringfence/ds=D/score/edges`` and ``propagated``) and the run it read
(``clean/labels``, and ``graph/vertices`` less ``hubs``: the vertex table the score stage passes). Writes its
result to ``WORK/propagation_estimate`` (timed, as the product writes ``propagated``). Appends the timing to the
record of that work dir's label in ``quality.jsonl`` as ``propagation_spark_estimate_s`` (the record's other fields
unchanged), so report.py can show it.

    .venv/bin/python bench/bench_propagation_cost.py --run OUT --work DIR --ds 2026-11-24 --label L [--conf C]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pyspark.sql import DataFrame  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402
from quality_record import add_record_arguments, add_to_record  # noqa: E402

from graph import io  # noqa: E402
from graph.config import RingfenceConfig, load_config  # noqa: E402
from graph.propagate import _SUM, _W, DST, ID, RISK, SRC, propagation_edges, spread, stored_risk  # noqa: E402


def message_sums(vertices: DataFrame, e: DataFrame) -> DataFrame:
    """(id, _sum) of ``w * risk`` from every neighbour, edges undirected: aggregateMessages as plain joins.

    The joins GraphFrames ``aggregateMessages`` runs: the triplets (edges joined to their source and their
    destination vertex), one message per end, each message joined to the vertex table again (GraphFrames
    sends only to vertices that exist), then summed per vertex.
    """
    src = vertices.select(F.col(ID).alias("_s"), F.col(RISK).alias("_rs"))
    dst = vertices.select(F.col(ID).alias("_d"), F.col(RISK).alias("_rd"))
    triplets = e.join(src, e[SRC] == src["_s"]).join(dst, e[DST] == dst["_d"])
    ids = vertices.select(ID)
    to_src = triplets.select(F.col(SRC).alias(ID), (F.col(_W) * F.col("_rd")).alias("_m")).join(ids, ID)
    to_dst = triplets.select(F.col(DST).alias(ID), (F.col(_W) * F.col("_rs")).alias("_m")).join(ids, ID)
    return to_src.unionByName(to_dst).groupBy(ID).agg(F.sum("_m").alias(_SUM))


def propagate_estimate(edges: DataFrame, usable: DataFrame, cfg: RingfenceConfig, out: Path,
                       vertices: DataFrame | None = None) -> tuple[DataFrame, list[float]]:
    """The product's propagation (graph/propagate.py ``spread``, stored risks only) with ``message_sums`` as its
    message pass, written to ``out`` as the product writes ``propagated``; returns (id, risk, seed) read back and the
    seconds of each iteration (each is materialised, by checkpoint or count; the first also holds building the
    vertex tables, the last also the write)."""
    per_iteration: list[float] = []
    t0 = [time.perf_counter()]

    def tick(_: int) -> None:
        now = time.perf_counter()
        per_iteration.append(round(now - t0[0], 1))
        t0[0] = now

    spread_out = spread(propagation_edges(edges, cfg), usable, cfg, message_sums, on_iteration=tick,
                        vertex_ids=vertices)
    stored_risk(spread_out, cfg).write.mode("overwrite").parquet(str(out))
    per_iteration[-1] = round(per_iteration[-1] + time.perf_counter() - t0[0], 1)
    return edges.sparkSession.read.parquet(str(out)), per_iteration


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="the `ringfence run` output root bench_quality read")
    add_record_arguments(p)
    args = p.parse_args(argv)

    from graph.build import IdentityGraph
    from graph.hubs import remove_hubs
    from graph.score import label_cutoff, usable_labels
    from graph.session import build_session

    cfg = load_config(args.conf)
    spark = build_session(cfg.spark, app_name="ringfence-bench-propagation-cost")
    out = str(Path(args.work) / "ringfence")
    edges = io.read_output(spark, out, args.ds, "score/edges")
    labels = io.read_output(spark, args.run, args.ds, "clean/labels")
    # The hub-free vertex table, as the score stage passes it (graph.pipeline._stage_score).
    vertices = remove_hubs(IdentityGraph(io.read_output(spark, args.run, args.ds, "graph/vertices"), edges),
                           io.read_output(spark, args.run, args.ds, "hubs")).vertices
    load_start = [round(x, 2) for x in os.getloadavg()]
    t0 = time.perf_counter()
    risk, per_iteration = propagate_estimate(edges, usable_labels(labels, label_cutoff(args.ds)), cfg,
                                             Path(args.work) / "propagation_estimate", vertices)
    seconds = round(time.perf_counter() - t0, 1)
    # Against the scipy reference bench_quality wrote (its stored risks; 0 elsewhere).
    ref = io.read_output(spark, out, args.ds, "propagated").select(ID, F.col(RISK).alias("_ref"))
    diff = (risk.join(ref, ID, "full_outer")
            .select(F.abs(F.coalesce(RISK, F.lit(0.0)) - F.coalesce("_ref", F.lit(0.0))).alias("d"))
            .agg(F.max("d")).first()[0])  # one row
    result = {"propagation_spark_estimate_s": seconds, "propagation_spark_iterations_s": per_iteration,
              "propagation_spark_max_abs_diff": float(diff or 0.0),
              "propagation_spark_load_avg": [load_start, [round(x, 2) for x in os.getloadavg()]]}
    spark.stop()
    print(json.dumps(result), flush=True)
    return 0 if add_to_record(args.label, result) else 1


if __name__ == "__main__":
    sys.exit(main())
