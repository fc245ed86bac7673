"""Detection quality of ringfence and of the baselines of issue #11, on one world, in one run.

Input: a generated world (``ringfence generate``) and a run of it through
``ringfence run --stages validate graph signals`` (the stages that run here).
Every method writes a ``risk/`` table under ``WORK/<method>/ds=D/`` and is
scored by the product's ``ringfence evaluate`` (graph/evaluate.py) against
``WORLD/truth``.

Methods:

``ringfence``
    The product: candidate graph (graph/candidates.py) -> connected components
    -> refinement, stable ids, ring tables (graph/rings.py ``discover_rings``)
    -> risk propagation -> scoring (graph/score.py ``score_run``). Two steps of
    it run on GraphFrames in the product and GraphFrames' jars cannot be
    fetched here, so in THIS BENCH ONLY they are computed by single-machine
    references on collected data: connected components with
    ``scipy.sparse.csgraph`` and the propagation update of graph/propagate.py
    with scipy sparse matrices (the same formula; tests/test_propagate.py
    checks it against the GraphFrames version once the jars exist). Every
    other step is the product code in Spark.
``naive_cc`` (baseline a)
    Connected components over the whole heterogeneous identity graph, no hub
    handling; every component that contains a labelled fraud entity is listed
    whole (scipy here: GraphFrames is blocked).
``propagation`` (baseline b)
    Label propagation only: the propagated risk from labelled seeds over the
    hub-free graph, listed at ``PROPAGATION_THRESHOLD`` (0.5, the product's
    account threshold when the baseline was defined; the calibrated account
    threshold belongs to the product's score, not to a propagated risk); ring
    type from which kind of seed (mule / card_testing) the risk came from.
``rules`` (baseline c)
    Velocity rules on the product's signals, as card-testing and mule rules of
    thumb (domain notes): an account, device or IP with >= 20 attempts and a
    decline rate >= 0.5, or an account or device with >= 10 distinct cards, is
    card testing (devices and IPs flag the accounts that paid through them); an
    account forwarding >= 80% of >= 2 inflows within 48 h is a mule.
``networkx`` (baseline d)
    Ring discovery in one process the way graph tools demo it: the plain
    account projection (graph/hubs.py ``account_projection``: shared non-hub
    identifiers and transfers) collected, networkx connected components and
    Louvain per component, and every community with a labelled fraud account
    listed whole, typed by its labels.

Labels are those known before the run's cut-off (start of ds), as in the product.

    .venv/bin/python bench/bench_quality.py --world W --run OUT --ds 2026-11-24 --work /tmp/q
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

import networkx as nx
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_pipeline import machine_info  # noqa: E402
from pyspark.sql import DataFrame, SparkSession  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402

from graph import io  # noqa: E402
from graph.build import IdentityGraph  # noqa: E402
from graph.config import RingfenceConfig, load_config  # noqa: E402
from graph.schema import FRAUD_LABELS, RISK_SCHEMA, spark_ddl  # noqa: E402

RESULTS = REPO / "bench" / "results" / "quality.jsonl"
METHODS = ("ringfence", "naive_cc", "propagation", "rules", "networkx")
RISK_COLUMNS = [f.name for f in RISK_SCHEMA]
PROPAGATION_THRESHOLD = 0.5


# --------------------------------------------------------------------------- helpers


def _write_parquet(df: DataFrame, path: Path) -> pd.DataFrame:
    df.write.mode("overwrite").parquet(str(path))
    return pq.read_table(path).to_pandas()


def _world_events(world: Path) -> int | None:
    """Events (payments + transfers + sessions) from a generated world's completion summary, if it has one."""
    summary = world / "_WORLD_COMPLETE"
    try:
        return int(json.loads(summary.read_text())["events"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _components(src: np.ndarray, dst: np.ndarray) -> pd.DataFrame:
    """(id, component) by scipy over an undirected edge list of string ids (bench reference)."""
    codes, names = pd.factorize(np.concatenate([src, dst]))
    n = len(names)
    m = len(src)
    a = sp.coo_matrix((np.ones(m), (codes[:m], codes[m:])), shape=(n, n))
    _, labels = connected_components(a, directed=False)
    return pd.DataFrame({"id": names, "component": labels.astype(str)})


def propagate_reference(edges: pd.DataFrame, seeds: dict[str, float], cfg: RingfenceConfig) -> pd.DataFrame:
    """graph/propagate.py's update on collected edges (src, dst, edge_type, weight), with scipy."""
    conf = cfg.scoring
    factor = edges["edge_type"].map(conf.propagation_edge_factors).fillna(0.0).to_numpy()
    w = edges["weight"].to_numpy(dtype=float) * factor
    keep = (w > 0) & (edges["src"].to_numpy() != edges["dst"].to_numpy())
    src, dst, w = edges["src"].to_numpy()[keep], edges["dst"].to_numpy()[keep], w[keep]
    codes, names = pd.factorize(np.concatenate([src, dst, np.array(list(seeds), dtype=object)]))
    n, m = len(names), len(src)
    a = sp.coo_matrix((np.concatenate([w, w]), (np.concatenate([codes[:m], codes[m:2 * m]]),
                                                 np.concatenate([codes[m:2 * m], codes[:m]]))), shape=(n, n)).tocsr()
    strength = np.asarray(a.sum(axis=1)).ravel()
    seed_idx = codes[2 * m:]
    y = np.array(list(seeds.values()), dtype=float)
    r = np.zeros(n)
    r[seed_idx] = y
    for _ in range(conf.propagation_iterations):
        r = (1 - conf.propagation_alpha) * (a @ r) / (strength + conf.propagation_smoothing)
        r[seed_idx] = y
    out = pd.DataFrame({"id": names, "risk": r, "seed": False})
    out.loc[seed_idx, "seed"] = True
    return out[(out["risk"] > 0) & (out["risk"] >= cfg.scoring.propagation_min_risk)]  # propagate.stored_risk


def _usable_seeds(spark: SparkSession, labels: DataFrame, ds: dt.date, kinds: tuple[str, ...] = FRAUD_LABELS
                  ) -> dict[str, float]:
    from graph.score import label_cutoff, usable_labels

    rows = usable_labels(labels, label_cutoff(ds)).collect()  # labels: a few % of accounts
    return {f"{r['entity_type']}:{r['entity_id']}": (1.0 if r["label"] in kinds else 0.0) for r in rows}


def _risk_rows(spark: SparkSession, listed: pd.DataFrame, ds: dt.date) -> DataFrame:
    """A risk/ table from (entity_type, entity_id, score, ring_id, ring_type)."""
    expires = dt.datetime.combine(ds + dt.timedelta(days=8), dt.time(0), tzinfo=dt.UTC)
    rows = [(r.entity_type, r.entity_id, float(r.score), r.ring_id, r.ring_type, ["baseline"], expires)
            for r in listed.itertuples(index=False)]
    return spark.createDataFrame(rows, spark_ddl(RISK_SCHEMA))


def _split(ids: pd.Series) -> tuple[pd.Series, pd.Series]:
    parts = ids.str.split(":", n=1)
    return parts.str[0], parts.str[1]


# --------------------------------------------------------------------------- methods

CALIBRATION_SCORES = "calibration/entity_scores"  # read by calibrate_scores.py


def run_ringfence(spark, cfg, ds, lookback, work: Path, tables, g, hubs, signals) -> dict:
    from graph.candidates import candidate_graph
    from graph.hubs import remove_hubs
    from graph.rings import discover_rings
    from graph.score import entity_scores, score_run

    out = str(work / "ringfence")

    def written(df: DataFrame, name: str) -> DataFrame:
        io.write_table(df, out, ds, name)
        return io.read_output(spark, out, ds, name)

    t = {"load_avg_start": [round(x, 2) for x in os.getloadavg()]}
    t0 = time.time()
    cg = candidate_graph(cfg, g, hubs, signals, tables, ds, lookback)
    edges = written(cg.edges, "candidates/edges")
    t["candidates_s"] = round(time.time() - t0, 1)
    t0 = time.time()
    e = pq.read_table(io.table_path(out, ds, "candidates/edges"), columns=["src", "dst"]).to_pandas()
    comps = _components(e["src"].to_numpy(), e["dst"].to_numpy())
    t["components_reference_s"] = round(time.time() - t0, 1)
    components = written(spark.createDataFrame(comps), "candidates/components")
    t0 = time.time()
    rings, members = discover_rings(components, edges, cfg, ds, materialise=written)
    members = written(members, "ring_members")
    rings = written(rings, "rings")
    t["rings_s"] = round(time.time() - t0, 1)
    t0 = time.time()
    score_edges = written(remove_hubs(g, hubs).edges.select("src", "dst", "edge_type", "weight"), "score/edges")
    t["score_edges_s"] = round(time.time() - t0, 1)
    t0 = time.time()
    he = pq.read_table(io.table_path(out, ds, "score/edges")).to_pandas()
    prop = propagate_reference(he, _usable_seeds(spark, tables["labels"], ds), cfg)
    t["propagation_reference_s"] = round(time.time() - t0, 1)
    # Explicit schema: with no usable label (an unlabelled world) the reference is empty.
    propagated = written(spark.createDataFrame(prop, "id STRING, risk DOUBLE, seed BOOLEAN"), "propagated")
    t0 = time.time()
    result = score_run(rings, members, score_edges, signals, tables["labels"], propagated, cfg, ds,
                       materialise=written)
    io.write_table(result.risk, out, ds, "risk")
    t["score_s"] = round(time.time() - t0, 1)
    # Every scored entity, for bench/calibrate_scores.py (the product stores a part: graph/score.py
    # stored_scores); not part of the product's cost.
    t0 = time.time()
    infra = io.read_output(spark, out, ds, "score/infrastructure")
    io.write_table(entity_scores(signals, members, result.rings, infra, tables["labels"], propagated, cfg, ds),
                   out, ds, CALIBRATION_SCORES)
    t["calibration_scores_s"] = round(time.time() - t0, 1)
    t["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    sizes = comps.groupby("component").size()
    t["components"] = int(len(sizes))
    t["largest_component"] = int(sizes.max()) if len(sizes) else 0
    t["rings"] = rings.count()
    return t


def run_naive_cc(spark, cfg, ds, work: Path, tables, g) -> dict:
    e = _write_parquet(g.edges.select("src", "dst"), work / "_naive_edges")
    comps = _components(e["src"].to_numpy(), e["dst"].to_numpy())
    seeds = _usable_seeds(spark, tables["labels"], ds)
    bad = set(comps.loc[comps["id"].isin([k for k, v in seeds.items() if v > 0]), "component"])
    listed = comps[comps["component"].isin(bad)].copy()
    listed["entity_type"], listed["entity_id"] = _split(listed["id"])
    listed["score"], listed["ring_id"], listed["ring_type"] = 1.0, "cc-" + listed["component"], "unknown"
    io.write_table(_risk_rows(spark, listed, ds), str(work / "naive_cc"), ds, "risk")
    sizes = comps.groupby("component").size()
    return {"components": int(len(sizes)), "largest_component": int(sizes.max()),
            "largest_share": round(float(sizes.max() / len(comps)), 4), "flagged_components": len(bad)}


def run_propagation(spark, cfg, ds, work: Path, tables, g, hubs) -> dict:
    from graph.hubs import remove_hubs

    he = _write_parquet(remove_hubs(g, hubs).edges.select("src", "dst", "edge_type", "weight"),
                        work / "_hubfree_edges")
    by_kind = {}
    for kind in ("mule", "card_testing"):
        seeds = _usable_seeds(spark, tables["labels"], ds, kinds=(kind, "fraud"))
        by_kind[kind] = propagate_reference(he, seeds, cfg).set_index("id")["risk"]
    both = pd.concat(by_kind, axis=1).fillna(0.0)
    both["score"] = both.max(axis=1)
    both["ring_type"] = np.where(both["mule"] >= both["card_testing"], "mule", "card_testing")
    listed = both[both["score"] >= PROPAGATION_THRESHOLD].reset_index().rename(columns={"index": "id"})
    listed["entity_type"], listed["entity_id"] = _split(listed["id"])
    listed["ring_id"] = None
    io.write_table(_risk_rows(spark, listed, ds), str(work / "propagation"), ds, "risk")
    return {"listed": int(len(listed))}


def run_rules(spark, cfg, ds, work: Path, g, signals) -> dict:
    s = signals
    velocity = (F.col("attempts") >= 20) & (F.col("decline_rate") >= 0.5)
    # Distinct cards per IP is left out: a carrier NAT IP sees hundreds of honest cards.
    many_cards = F.col("entity_type").isin("account", "device") & (F.col("distinct_cards") >= 10)
    ct = (s.where(F.col("entity_type").isin("account", "device", "ip") & (velocity | many_cards))
          .select(F.concat_ws(":", "entity_type", "entity_id").alias("id")))
    # A flagged device or IP flags the accounts that paid through it.
    via = (g.edges.where(F.col("edge_type").isin("account_device", "account_ip"))
           .join(ct.withColumnRenamed("id", "dst"), "dst").select(F.col("src").alias("id")))
    ct_accounts = ct.unionByName(via).distinct().withColumn("ring_type", F.lit("card_testing"))
    mule = (s.where((F.col("entity_type") == "account") & (F.col("pass_through_ratio") >= 0.8)
                    & (F.col("inflow_n") >= 2))
            .select(F.concat_ws(":", "entity_type", "entity_id").alias("id"), F.lit("mule").alias("ring_type")))
    flagged = ct_accounts.unionByName(mule).dropDuplicates(["id"])
    listed = _write_parquet(flagged, work / "_rules")
    listed["entity_type"], listed["entity_id"] = _split(listed["id"])
    listed["score"], listed["ring_id"] = 1.0, None
    io.write_table(_risk_rows(spark, listed, ds), str(work / "rules"), ds, "risk")
    return {"listed": int(len(listed))}


def run_networkx(spark, cfg, ds, work: Path, tables, g, hubs) -> dict:
    from graph.hubs import account_projection

    proj = _write_parquet(account_projection(g, hubs, cfg.hubs.merchant_link_max_accounts)
                          .select("src", "dst", "weight"), work / "_projection")
    t0 = time.time()
    graph = nx.Graph()
    for s_, d_, w in proj.itertuples(index=False):
        prev = graph.get_edge_data(s_, d_, {}).get("weight", 0.0)
        graph.add_edge(s_, d_, weight=prev + float(w))
    seeds = _usable_seeds(spark, tables["labels"], ds)
    label_of = {}
    for r in tables["labels"].where(F.col("label").isin(*FRAUD_LABELS)).collect():
        label_of[f"{r['entity_type']}:{r['entity_id']}"] = r["label"]
    rows = []
    for comp in nx.connected_components(graph):
        sub = graph.subgraph(comp)
        parts = nx.community.louvain_communities(sub, weight="weight", seed=42) if len(comp) > 2 else [comp]
        for i, part in enumerate(parts):
            fraud = [v for v in part if seeds.get(v, 0.0) > 0]
            if not fraud:
                continue
            kinds = pd.Series([label_of.get(v, "fraud") for v in fraud]).value_counts()
            kind = kinds.index[0] if kinds.index[0] in ("mule", "card_testing") else "unknown"
            rid = f"nx-{min(part)}-{i}"
            rows += [(v, rid, kind) for v in part]
    listed = pd.DataFrame(rows, columns=["id", "ring_id", "ring_type"]).drop_duplicates("id")
    listed["entity_type"], listed["entity_id"] = _split(listed["id"])
    listed["score"] = 1.0
    io.write_table(_risk_rows(spark, listed, ds), str(work / "networkx"), ds, "risk")
    return {"graph_nodes": graph.number_of_nodes(), "graph_edges": graph.number_of_edges(),
            "listed": int(len(listed)), "networkx_s": round(time.time() - t0, 1)}


# --------------------------------------------------------------------------- main


def _summary(report: dict) -> dict:
    by = report["by_ring_type"]
    o = report["overall"]
    return {
        "f1_mule": by["mule"]["accounts"]["f1"], "f1_card_testing": by["card_testing"]["accounts"]["f1"],
        "f1_overall": o["accounts"]["f1"], "precision": o["accounts"]["precision"],
        "recall": o["accounts"]["recall"], "ring_detection": o["rings"]["detection_rate"],
        "fp_rate": o["false_positive_rate"], "device_recall": o["devices"]["recall"],
        "card_recall": o["cards"]["recall"], "fp_by_confounder": report["false_positives_by_confounder"],
        **_mule_activity(by["mule"].get("activity")),
    }


def _mule_activity(act: dict | None) -> dict:
    """Truth mules that moved money fewer than ``min_events`` times in the window, and F1 without them."""
    if not act:
        return {}
    parts = act["recall_by_events"]
    active = f"{act['min_events']}+"
    truth = sum(p["truth"] for p in parts.values())
    return {"mule_dormant": truth - parts[active]["truth"], "mule_truth": truth,
            "f1_mule_acting": act["acting"]["f1"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--world", required=True)
    p.add_argument("--run", required=True, help="output root of `ringfence run --stages validate graph signals`")
    p.add_argument("--ds", type=dt.date.fromisoformat, required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--conf")
    p.add_argument("--lookback-days", type=int)
    p.add_argument("--label", default="")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    args = p.parse_args(argv)

    from graph.evaluate import evaluate, format_report
    from graph.session import build_session

    cfg = load_config(args.conf)
    machine = machine_info()
    spark = build_session(cfg.spark, app_name="ringfence-bench-quality")
    ds, run, work = args.ds, args.run, Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    lookback = args.lookback_days or cfg.pipeline.lookback_days
    from graph.validate import TABLES

    tables = {t: io.read_output(spark, run, ds, f"clean/{t}") for t in TABLES}
    g = IdentityGraph(io.read_output(spark, run, ds, "graph/vertices"), io.read_output(spark, run, ds, "graph/edges"))
    hubs = io.read_output(spark, run, ds, "hubs")
    signals = io.read_output(spark, run, ds, "signals")
    results = {}
    for method in args.methods:
        t0 = time.time()
        if method == "ringfence":
            info = run_ringfence(spark, cfg, ds, lookback, work, tables, g, hubs, signals)
        elif method == "naive_cc":
            info = run_naive_cc(spark, cfg, ds, work, tables, g)
        elif method == "propagation":
            info = run_propagation(spark, cfg, ds, work, tables, g, hubs)
        elif method == "rules":
            info = run_rules(spark, cfg, ds, work, g, signals)
        else:
            info = run_networkx(spark, cfg, ds, work, tables, g, hubs)
        report = evaluate(spark, str(Path(args.world) / "truth"), str(work / method), ds, lookback)
        results[method] = {"seconds": round(time.time() - t0, 1), **info, **_summary(report)}
        print(f"== {method} ({results[method]['seconds']} s)\n{format_report(report)}", flush=True)
    record = {"label": args.label, "world": args.world, "ds": str(ds), "at": dt.datetime.now(dt.UTC).isoformat(),
              "command": " ".join(sys.argv), "events": _world_events(Path(args.world)),
              "driver_memory": cfg.spark.driver_memory, "machine": machine, "methods": results}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as f:
        f.write(json.dumps(record, default=str) + "\n")
    print(json.dumps(record, indent=2, default=str))
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
