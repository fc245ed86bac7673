"""The nightly pipeline for one ``ds``, as ordered stages.

Each stage reads what earlier stages wrote under ``OUTPUT/ds=YYYY-MM-DD/``
and writes its own tables atomically, so a stage can run in its own
``spark-submit`` (one Airflow task each) or all in one session
(``ringfence run``). Re-running a stage for the same ``ds`` replaces its
outputs; a killed run leaves only ``_staging/`` debris, cleared on the next
start.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from graph import io
from graph.config import RingfenceConfig
from graph.errors import StaleCleanInputs

log = logging.getLogger(__name__)

STAGES = ("validate", "graph", "signals", "rings", "score", "export")
# Validated input tables of the run's window, written once by `validate`.
CLEAN = "clean"
CLEAN_SOURCE = f"{CLEAN}/_SOURCE.json"


@dataclass
class RunContext:
    spark: SparkSession
    cfg: RingfenceConfig
    input_root: str
    output_root: str
    ds: dt.date
    lookback_days: int
    fingerprint: str = ""
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def window_start(self) -> dt.date:
        return self.ds - dt.timedelta(days=self.lookback_days - 1)

    @property
    def cutoff(self) -> dt.datetime:
        """Labels known strictly before this instant may be used (start of ``ds``, UTC)."""
        return dt.datetime.combine(self.ds, dt.time(0), tzinfo=dt.UTC)

    @property
    def run_dir(self) -> str:
        return io.run_dir(self.output_root, self.ds)


def input_fingerprint(spark: SparkSession, input_root: str, start: dt.date, end: dt.date) -> str:
    """SHA-256 over (path, size, mtime) of the input files in the window.

    Cheap (metadata only) and changes whenever an input partition is
    rewritten, so exports can say exactly which inputs they came from.
    """
    jvm = spark.sparkContext._jvm
    root = jvm.org.apache.hadoop.fs.Path(input_root)
    fs = root.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    h = hashlib.sha256()
    if not fs.exists(root):
        return h.hexdigest()
    it = fs.listFiles(root, True)
    entries = []
    while it.hasNext():
        st = it.next()
        path = st.getPath().toString()
        rel = path[len(root.toString()):] if path.startswith(root.toString()) else path
        if "/truth/" in rel or rel.split("/")[-1].startswith(("_", ".")):
            continue
        part = next((p for p in rel.split("/") if p.startswith("ds=")), None)
        if part is not None and not (str(start) <= part[3:] <= str(end)):
            continue
        entries.append(f"{rel}|{st.getLen()}|{st.getModificationTime()}")
    for e in sorted(entries):
        h.update(e.encode())
    return h.hexdigest()


def _clean_source(ctx: RunContext) -> dict[str, Any]:
    return {"input_fingerprint": ctx.fingerprint, "window": [str(ctx.window_start), str(ctx.ds)]}


def _stage_validate(ctx: RunContext) -> dict[str, Any]:
    from graph.validate import enforce_limits, read_inputs, validate_inputs

    # Until the new clean tables are all in place, none of them may be trusted.
    io.delete(ctx.spark, f"{ctx.run_dir}/{CLEAN_SOURCE}")
    tables = read_inputs(ctx.spark, ctx.input_root, ctx.ds, ctx.lookback_days)
    result = validate_inputs(ctx.spark, ctx.cfg, tables, ctx.ds, ctx.lookback_days)
    try:
        io.write_table(result.quarantine, ctx.output_root, ctx.ds, "quarantine")
        io.write_json(ctx.spark, f"{ctx.run_dir}/validation.json", result.report)
        enforce_limits(ctx.cfg, result.report)
        for name, df in result.clean.items():
            io.write_table(df, ctx.output_root, ctx.ds, f"{CLEAN}/{name}")
    finally:
        result.release()
    io.write_json(ctx.spark, f"{ctx.run_dir}/{CLEAN_SOURCE}", _clean_source(ctx))
    return result.report


def clean_inputs(ctx: RunContext) -> dict[str, DataFrame]:
    """The validated input tables written by this run's ``validate`` stage.

    Later stages (possibly separate ``spark-submit`` processes) read them
    instead of validating again. They are used only when ``clean/_SOURCE.json``
    names the same input fingerprint and window as this run: inputs that
    changed since ``validate`` ran make the stage fail rather than mix data.
    """
    from graph.validate import TABLES

    source = io.read_json(ctx.spark, f"{ctx.run_dir}/{CLEAN_SOURCE}")
    if source != _clean_source(ctx):
        why = ("no validated inputs for this ds" if source is None else
               f"they were validated from other inputs ({source}, now {_clean_source(ctx)})")
        raise StaleCleanInputs(f"cannot use {ctx.run_dir}/{CLEAN}: {why}; run the validate stage first")
    return {t: io.read_output(ctx.spark, ctx.output_root, ctx.ds, f"{CLEAN}/{t}") for t in TABLES}


def _stage_graph(ctx: RunContext) -> dict[str, Any]:
    from graph.build import build_identity_graph, graph_stats
    from graph.hubs import find_hubs

    built = build_identity_graph(ctx.spark, ctx.cfg, clean_inputs(ctx), ctx.ds, ctx.lookback_days)
    io.write_table(built.vertices, ctx.output_root, ctx.ds, "graph/vertices")
    io.write_table(built.edges, ctx.output_root, ctx.ds, "graph/edges")
    # Hubs and stats read the written graph: recomputing it from the events
    # for every one of their jobs cost more than the build itself.
    g = read_graph(ctx)
    io.write_table(find_hubs(ctx.cfg, g), ctx.output_root, ctx.ds, "hubs")
    stats = graph_stats(g, io.read_output(ctx.spark, ctx.output_root, ctx.ds, "hubs"))
    io.write_json(ctx.spark, f"{ctx.run_dir}/graph_stats.json", stats)
    return stats


def read_graph(ctx: RunContext):
    """The identity graph written by this run's ``graph`` stage."""
    from graph.build import IdentityGraph

    return IdentityGraph(vertices=io.read_output(ctx.spark, ctx.output_root, ctx.ds, "graph/vertices"),
                         edges=io.read_output(ctx.spark, ctx.output_root, ctx.ds, "graph/edges"))


def _read(ctx: RunContext, table: str) -> DataFrame:
    return io.read_output(ctx.spark, ctx.output_root, ctx.ds, table)


def _written(ctx: RunContext, df: DataFrame, table: str) -> DataFrame:
    """Write ``df`` as ``table`` and return it read back (computed once, whatever reads it later)."""
    io.write_table(df, ctx.output_root, ctx.ds, table)
    return _read(ctx, table)


def _previous_rings(ctx: RunContext) -> tuple[DataFrame | None, DataFrame | None]:
    """(ring_members, rings) of the last complete run before ``ds`` (None, None on the first night)."""
    prev = io.previous_run_ds(ctx.spark, ctx.output_root, ctx.ds)
    if prev is None:
        return None, None
    return (io.read_output(ctx.spark, ctx.output_root, prev, "ring_members"),
            io.read_output(ctx.spark, ctx.output_root, prev, "rings"))


def _stage_rings(ctx: RunContext) -> dict[str, Any]:
    from graph.candidates import CandidateGraph, candidate_links, candidate_stats, edges_from_links
    from graph.components import connected_components
    from graph.rings import discover_rings
    from graph.session import require_graphframes

    # Connected components run on GraphFrames: fail before any work without it.
    require_graphframes(ctx.spark, ctx.cfg.spark)
    g, hubs = read_graph(ctx), _read(ctx, "hubs")
    # Links (every considered pair, kept or dropped, with its reason) are written
    # first: investigators read them, and the edges are derived from the written
    # table rather than by recomputing the money tests.
    links = _written(ctx, candidate_links(ctx.cfg, g, hubs, clean_inputs(ctx), ctx.ds, ctx.lookback_days),
                     "candidates/links")
    edges = _written(ctx, edges_from_links(ctx.cfg, g, hubs, _read(ctx, "signals"), links), "candidates/edges")
    components = _written(ctx, connected_components(ctx.spark, edges, ctx.cfg), "candidates/components")
    prev_members, prev_rings = _previous_rings(ctx)
    rings, members = discover_rings(components, edges, ctx.cfg, ctx.ds, prev_members, prev_rings,
                                    materialise=partial(_written, ctx))
    io.write_table(members, ctx.output_root, ctx.ds, "ring_members")
    io.write_table(rings, ctx.output_root, ctx.ds, "rings")
    return {**_ring_stats(ctx), **candidate_stats(CandidateGraph(links=links, edges=edges))}


def _ring_stats(ctx: RunContext) -> dict[str, Any]:
    """Component and ring counts (each collect is a handful of aggregated rows)."""
    sizes = _read(ctx, "candidates/components").groupBy("component").count()
    comp = sizes.agg(F.count("*").alias("n"), F.max("count").alias("largest")).first()
    rings = _read(ctx, "rings")
    by_method = {r["method"]: int(r["count"]) for r in rings.groupBy("method").count().collect()}
    ring_agg = rings.agg(F.count("*").alias("n"), F.max("size").alias("largest"),
                         F.sum(F.when(F.col("first_seen") < F.lit(ctx.ds), 1).otherwise(0)).alias("carried")).first()
    return {
        "components": int(comp["n"] or 0), "largest_component": int(comp["largest"] or 0),
        "rings": int(ring_agg["n"] or 0), "largest_ring": int(ring_agg["largest"] or 0),
        "rings_carried_over": int(ring_agg["carried"] or 0), "rings_by_method": dict(sorted(by_method.items())),
    }


def _stage_signals(ctx: RunContext) -> dict[str, Any]:
    from graph.signals import entity_signals

    # entity_signals already carries the `signal_reasons` texts.
    signals = entity_signals(ctx.spark, ctx.cfg, clean_inputs(ctx), ctx.ds, ctx.lookback_days)
    io.write_table(signals, ctx.output_root, ctx.ds, "signals")
    counts = (io.read_output(ctx.spark, ctx.output_root, ctx.ds, "signals")
              .groupBy("entity_type").count().collect())  # one row per entity type
    return {"entities_by_type": {r["entity_type"]: int(r["count"]) for r in counts}}


def _stage_score(ctx: RunContext) -> dict[str, Any]:
    from graph.hubs import remove_hubs
    from graph.propagate import propagate_risk
    from graph.score import label_cutoff, score_run, usable_labels
    from graph.session import require_graphframes

    # Risk propagation runs on GraphFrames (aggregateMessages).
    require_graphframes(ctx.spark, ctx.cfg.spark)
    hub_free = remove_hubs(read_graph(ctx), _read(ctx, "hubs"))
    edges = _written(ctx, hub_free.edges, "score/edges")
    labels = clean_inputs(ctx)["labels"]
    io.write_table(propagate_risk(ctx.spark, edges, usable_labels(labels, label_cutoff(ctx.ds)), ctx.cfg,
                                  vertices=hub_free.vertices),
                   ctx.output_root, ctx.ds, "propagated")
    result = score_run(_read(ctx, "rings"), _read(ctx, "ring_members"), edges, _read(ctx, "signals"),
                       labels, _read(ctx, "propagated"), ctx.cfg, ctx.ds, materialise=partial(_written, ctx))
    io.write_table(result.risk, ctx.output_root, ctx.ds, "risk")
    listed = _read(ctx, "risk").groupBy("entity_type", "ring_type").count().collect()  # <= 15 rows
    by_type: dict[str, dict[str, int]] = {}
    for r in listed:
        by_type.setdefault(r["entity_type"], {})[r["ring_type"]] = int(r["count"])
    return {"listed_by_type": dict(sorted(by_type.items()))}


def _stage_export(ctx: RunContext) -> dict[str, Any]:
    from graph.export import export_lists

    return export_lists(ctx.spark, ctx.cfg, ctx.output_root, ctx.ds)


STAGE_FUNCS: dict[str, Callable[[RunContext], dict[str, Any]]] = {
    "validate": _stage_validate,
    "graph": _stage_graph,
    "signals": _stage_signals,
    "rings": _stage_rings,
    "score": _stage_score,
    "export": _stage_export,
}


def run_pipeline(
    spark: SparkSession,
    cfg: RingfenceConfig,
    input_root: str,
    output_root: str,
    ds: dt.date,
    lookback_days: int | None = None,
    stages: list[str] | None = None,
) -> dict[str, Any]:
    """Run the given stages (default: all) for ``ds``; return the run summary."""
    stages = list(stages or STAGES)
    unknown = [s for s in stages if s not in STAGE_FUNCS]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; stages are {list(STAGES)}")
    ctx = RunContext(spark, cfg, str(input_root), str(output_root), ds,
                     lookback_days or cfg.pipeline.lookback_days)
    with io.run_lock(spark, ctx.output_root, ds):
        return _run_stages(ctx, stages)


def _run_stages(ctx: RunContext, stages: list[str]) -> dict[str, Any]:
    spark, ds = ctx.spark, ctx.ds
    io.clear_staging(spark, ctx.output_root, ds)
    # Until this run finishes, the ds is not complete (tables get replaced one by one).
    io.delete(spark, f"{ctx.run_dir}/_RUN_COMPLETE")
    fingerprint = input_fingerprint(spark, ctx.input_root, ctx.window_start, ds)
    ctx.fingerprint = fingerprint
    run_id = f"{ds}-{fingerprint[:12]}"
    previous = io.read_json(spark, f"{ctx.run_dir}/run_summary.json") or {}
    summary: dict[str, Any] = {
        "run_id": run_id,
        "ds": str(ds),
        "input": ctx.input_root,
        "input_fingerprint": fingerprint,
        "window": [str(ctx.window_start), str(ds)],
        "output": ctx.run_dir,
        # Stages run as separate spark-submits (one Airflow task each) add to
        # the same summary as long as the inputs are unchanged.
        "stages": previous.get("stages", {}) if previous.get("run_id") == run_id else {},
    }
    for name in stages:
        t0 = time.time()
        log.info("stage %s: start (ds=%s)", name, ds)
        try:
            result = STAGE_FUNCS[name](ctx)
        except Exception as e:
            # Leave a record of how far the run got and why it stopped.
            summary["failed_stage"] = {"stage": name, "error": f"{type(e).__name__}: {str(e)[:400]}"}
            io.write_json(spark, f"{ctx.run_dir}/run_summary.json", summary)
            raise
        summary["stages"][name] = {"seconds": round(time.time() - t0, 1), **(result or {})}
        log.info("stage %s: done in %.1f s", name, time.time() - t0)
        io.write_json(spark, f"{ctx.run_dir}/run_summary.json", summary)
    if stages[-1] == STAGES[-1]:
        io.write_json(spark, f"{ctx.run_dir}/_RUN_COMPLETE", {"run_id": summary["run_id"]})
    return summary
