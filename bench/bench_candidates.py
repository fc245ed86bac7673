"""Does the candidate graph isolate the planted rings? Components against ground truth.

Input: a generated world and a run of it through the stages before ``rings``::

    .venv/bin/ringfence generate --out W --accounts 62500 --days 30 --end-date 2026-11-24 --seed 7
    .venv/bin/ringfence run --input W --output OUT --ds 2026-11-24 --stages validate graph signals
    .venv/bin/python bench/bench_candidates.py --world W --output OUT --ds 2026-11-24 --work DIR

Two steps, each in its own process:

1. ``build`` (Spark, product code): ``graph.candidates`` (``candidate_links``, then
   ``edges_from_links`` on the links read back, as ``candidate_graph`` composes them) over the run's
   ``graph/``, ``hubs/``, ``signals/`` and validated ``clean/`` tables (validated again
   from the world when the run has no ``clean/``), and for comparison the plain account
   projection ``graph.hubs.account_projection``; both written as Parquet under DIR, the
   candidate links (with their decisions) too.
2. ``measure`` (no Spark): pyarrow reads the edge lists, ``pandas.factorize`` +
   ``scipy.sparse.csgraph.connected_components`` find the components (a measurement
   only: the product runs GraphFrames connected components), and the components are
   scored against ``W/truth/rings`` and ``W/truth/confounders``.

Reported per graph (JSON in DIR/report.json, a readable table on stdout and in DIR/report.md):

- components, largest component (vertices, accounts) and its share of the graph's
  accounts, the size distribution (accounts per component), components with more
  vertices than ``rings.max_component_for_refinement``;
- per ring type: *purity/recall* = share of the type's ring accounts that sit in a
  component whose accounts are more than half that ring's; rings split over several
  components; rings with no account in the graph; the share of ring devices, IPs and
  cards in their ring's majority component;
- honest accounts (in no truth ring) sharing a component with ring accounts, per
  confounder kind; confounder identifiers (family devices, carrier-NAT and office IPs)
  in such components;
- the *linkable ceiling*: ring accounts with any evidence at all (a non-hub identifier
  or a transfer shared with another member of their ring). A ring member with none
  cannot be found by any graph method, whatever the link rules.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GRAPHS = ("candidates", "projection")
SIZE_BINS = (1, 2, 5, 10, 20, 50, 100, 500, 1000, 5000)


# --------------------------------------------------------------------------- step 1: Spark


def build(world: str, run_dir: str, ds: dt.date, work: str, conf: str | None) -> dict:
    from pyspark.sql import functions as F

    from graph.build import IdentityGraph
    from graph.candidates import (
        EDGE_COLUMNS,
        LINK_COLUMNS,
        CandidateGraph,
        candidate_links,
        candidate_stats,
        edges_from_links,
    )
    from graph.config import load_config
    from graph.hubs import PROJECTION_COLUMNS, account_projection
    from graph.session import build_session

    cfg = load_config(conf)
    spark = build_session(cfg.spark, app_name="bench-candidates")
    t0 = time.perf_counter()
    g = IdentityGraph(vertices=spark.read.parquet(f"{run_dir}/graph/vertices"),
                      edges=spark.read.parquet(f"{run_dir}/graph/edges"))
    hubs = spark.read.parquet(f"{run_dir}/hubs")
    signals = spark.read.parquet(f"{run_dir}/signals")
    if Path(f"{run_dir}/clean/transfers").exists():
        tables = {t: spark.read.parquet(f"{run_dir}/clean/{t}") for t in ("transfers", "payments")}
        source = "clean"
    else:
        from graph.validate import read_inputs, validate_inputs

        lookback = cfg.pipeline.lookback_days
        tables = validate_inputs(spark, cfg, read_inputs(spark, world, ds, lookback), ds, lookback).clean
        source = "validated from the world"
    # As the rings stage does: links written and read back, edges built from them.
    candidate_links(cfg, g, hubs, tables, ds).select(*LINK_COLUMNS) \
        .write.mode("overwrite").parquet(f"{work}/candidates/links")
    links = spark.read.parquet(f"{work}/candidates/links")
    edges_from_links(cfg, g, hubs, signals, links).select(*EDGE_COLUMNS) \
        .write.mode("overwrite").parquet(f"{work}/candidates/edges")
    t1 = time.perf_counter()
    edges = spark.read.parquet(f"{work}/candidates/edges")
    stats = candidate_stats(CandidateGraph(links=links, edges=edges))
    # The plain projection ("before"), written the same way.
    proj = account_projection(g, hubs, cfg.hubs.merchant_link_max_accounts).select(*PROJECTION_COLUMNS)
    proj.write.mode("overwrite").parquet(f"{work}/projection/edges")
    t2 = time.perf_counter()
    # Everything the linkable ceiling needs, small: ring-relevant evidence is computed in step 2.
    tables["transfers"].where(F.col("status") == "approved").select("src_account_id", "dst_account_id") \
        .write.mode("overwrite").parquet(f"{work}/transfers")
    spark.stop()
    return {"candidates_seconds": round(t1 - t0, 1), "projection_seconds": round(t2 - t1, 1),
            "tables": source, **stats}


# --------------------------------------------------------------------------- step 2: measure


def _components(src, dst):
    """Component label per vertex id (pandas Series indexed by id)."""
    import numpy as np
    import pandas as pd
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    m = len(src)
    codes, uniques = pd.factorize(pd.concat([pd.Series(src), pd.Series(dst)], ignore_index=True))
    n = len(uniques)
    adj = coo_matrix((np.ones(m, dtype=np.int8), (codes[:m], codes[m:])), shape=(n, n)).tocsr()
    _, labels = connected_components(adj, directed=False)
    return pd.Series(labels, index=pd.Index(uniques, name="id"), name="c")


def _truth(world: str):
    import pyarrow.parquet as pq

    rings = pq.read_table(f"{world}/truth/rings").to_pandas()
    rings["id"] = rings.entity_type + ":" + rings.entity_id
    conf = pq.read_table(f"{world}/truth/confounders").to_pandas()
    conf["id"] = conf.entity_type + ":" + conf.entity_id
    return rings, conf


def _size_hist(sizes) -> dict[str, int]:
    out, lo = {}, 0
    for hi in SIZE_BINS:
        label = str(hi) if hi == lo + 1 else f"{lo + 1}-{hi}"
        out[label] = int(((sizes > lo) & (sizes <= hi)).sum())
        lo = hi
    out[f">{lo}"] = int((sizes > lo).sum())
    return out


def score_components(labels, rings, conf, cap: int) -> dict:
    """The metrics of the module docstring for one component labelling."""
    df = labels.rename_axis("id").reset_index()
    df["type"] = df.id.str.split(":", n=1).str[0]
    acc = df[df.type == "account"]
    ring_acc = rings[rings.entity_type == "account"]
    ring_of = dict(zip(ring_acc.id, ring_acc.ring_id, strict=True))
    acc = acc.assign(ring=acc.id.map(ring_of))
    comp_acc = acc.groupby("c").size()
    comp_all = df.groupby("c").size()
    per = acc.dropna(subset=["ring"]).groupby(["c", "ring"]).size().rename("k").reset_index()
    per["n"] = per.c.map(comp_acc)
    majority = per[per.k * 2 > per.n]
    maj_of = dict(zip(majority.c, majority.ring, strict=True))
    out: dict = {
        "vertices": int(len(df)), "vertices_by_type": {k: int(v) for k, v in df.type.value_counts().items()},
        "accounts": int(len(acc)), "components": int(comp_all.size),
        "largest_component_vertices": int(comp_all.max()) if len(comp_all) else 0,
        "largest_component_accounts": int(comp_acc.max()) if len(comp_acc) else 0,
        "largest_share_of_accounts": round(float(comp_acc.max() / len(acc)), 4) if len(acc) else 0.0,
        "components_ge_3_accounts": int((comp_acc >= 3).sum()),
        "components_over_refinement_cap": int((comp_all > cap).sum()),
        "size_distribution_accounts": _size_hist(comp_acc),
    }
    rings = rings.assign(c=rings.id.map(labels))
    rings["ok"] = rings.c.map(maj_of) == rings.ring_id
    by_type = {}
    for t, g in rings.groupby("ring_type"):
        a = g[g.entity_type == "account"]
        present = a.dropna(subset=["c"])
        n_comp = present.groupby("ring_id").c.nunique()
        block = {
            "ring_accounts": int(len(a)), "in_graph": int(len(present)),
            "purity_recall": round(float(a.ok.mean()), 4),
            "rings": int(a.ring_id.nunique()), "rings_split": int((n_comp > 1).sum()),
            "rings_absent": int(a.ring_id.nunique() - len(n_comp)),
        }
        for et in ("device", "ip", "card"):
            x = g[g.entity_type == et]
            if len(x):
                block[f"{et}_recall"] = round(float(x.ok.mean()), 4)
        by_type[t] = block
    out["by_ring_type"] = by_type
    all_ok = rings[rings.entity_type == "account"].ok
    out["ring_accounts_purity_recall"] = round(float(all_ok.mean()), 4)
    ring_comps = set(rings[rings.entity_type == "account"].c.dropna())
    in_ring_comp = df[df.c.isin(ring_comps)]
    honest = in_ring_comp[(in_ring_comp.type == "account") & ~in_ring_comp.id.isin(ring_of)]
    out["honest_accounts_in_ring_components"] = int(len(honest))
    truth_ids = set(rings.id)
    present = set(in_ring_comp.id) - truth_ids
    out["confounders_in_ring_components"] = {
        k: int(g.id.isin(present).sum()) for k, g in conf.groupby("kind")}
    out["confounder_counts"] = {k: int(len(g)) for k, g in conf.groupby("kind")}
    return out


def linkable_ceiling(run_dir: str, work: str, rings) -> dict:
    """Ring accounts with any evidence shared with another member of their ring (see docstring)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    hubs = pq.read_table(f"{run_dir}/hubs", columns=["id", "rule"]).to_pandas()
    # Only hubs that are infrastructure whatever the rules (the cap and the exclusion list).
    hard = set(hubs[hubs.rule.isin(["excluded", "degree_cap"])].id)
    ring_acc = rings[rings.entity_type == "account"]
    ring_of = dict(zip(ring_acc.id, ring_acc.ring_id, strict=True))
    e = pq.read_table(f"{run_dir}/graph/edges", columns=["src", "dst", "edge_type"])
    e = e.filter(pc.is_in(e.column("src"), value_set=pa.array(list(ring_of)))).to_pandas()
    ident = e[e.edge_type.isin(["account_device", "account_ip", "account_card", "account_merchant"])
              & ~e.dst.isin(hard)]
    ident = ident.assign(ring=ident.src.map(ring_of))
    n = ident.groupby(["dst", "ring"]).src.nunique().rename("m").reset_index()
    shared = ident.merge(n[n.m >= 2], on=["dst", "ring"])
    linkable = set(shared.src)
    t = pq.read_table(f"{work}/transfers").to_pandas()
    s, d = "account:" + t.src_account_id, "account:" + t.dst_account_id
    same = s.map(ring_of).notna() & (s.map(ring_of) == d.map(ring_of)) & ~s.isin(hard) & ~d.isin(hard)
    linkable |= set(s[same]) | set(d[same])
    out = {}
    for rt, g in ring_acc.groupby("ring_type"):
        out[rt] = round(float(g.id.isin(linkable).mean()), 4)
    out["all"] = round(float(ring_acc.id.isin(linkable).mean()), 4)
    return out


def measure(world: str, run_dir: str, work: str, cap: int) -> dict:
    import pyarrow.parquet as pq

    rings, conf = _truth(world)
    report = {}
    for name in GRAPHS:
        t0 = time.perf_counter()
        table = pq.read_table(f"{work}/{name}/edges", columns=["src", "dst"])
        labels = _components(table.column("src").to_pandas(), table.column("dst").to_pandas())
        res = score_components(labels, rings, conf, cap)
        res["edges"] = int(table.num_rows)
        res["cc_seconds"] = round(time.perf_counter() - t0, 2)
        report[name] = res
    report["linkable_ceiling"] = linkable_ceiling(run_dir, work, rings)
    return report


# --------------------------------------------------------------------------- report


def table(report: dict) -> str:
    rows = [("", *GRAPHS)]

    def add(label, fn):
        rows.append((label, *[fn(report[g]) for g in GRAPHS]))

    add("edges", lambda r: f"{r['edges']:,}")
    add("vertices (accounts)", lambda r: f"{r['vertices']:,} ({r['accounts']:,})")
    add("components", lambda r: f"{r['components']:,}")
    add("largest component: accounts (share)",
        lambda r: f"{r['largest_component_accounts']:,} ({r['largest_share_of_accounts']:.1%})")
    add("largest component: vertices", lambda r: f"{r['largest_component_vertices']:,}")
    add("components over refinement cap", lambda r: str(r["components_over_refinement_cap"]))
    add("ring accounts in own-majority component", lambda r: f"{r['ring_accounts_purity_recall']:.1%}")
    for t in sorted(report[GRAPHS[0]]["by_ring_type"]):
        add(f"  {t}: purity/recall", lambda r, t=t: f"{r['by_ring_type'][t]['purity_recall']:.1%}")
        add(f"  {t}: rings split / absent / total", lambda r, t=t: "{rings_split} / {rings_absent} / {rings}"
            .format(**r["by_ring_type"][t]))
        for et in ("device", "ip", "card"):
            if f"{et}_recall" in report[GRAPHS[0]]["by_ring_type"][t]:
                add(f"  {t}: ring {et}s in ring component",
                    lambda r, t=t, et=et: f"{r['by_ring_type'][t].get(f'{et}_recall', 0.0):.1%}")
    add("honest accounts in ring components", lambda r: f"{r['honest_accounts_in_ring_components']:,}")
    for k in sorted(report[GRAPHS[0]]["confounders_in_ring_components"]):
        add(f"  {k} (of {report[GRAPHS[0]]['confounder_counts'][k]:,})",
            lambda r, k=k: str(r["confounders_in_ring_components"][k]))
    add("size distribution (accounts: components)",
        lambda r: " ".join(f"{k}:{v}" for k, v in r["size_distribution_accounts"].items() if v))
    width = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(str(c).ljust(w) for c, w in zip(row, width, strict=True)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in width) + "|")
    ceil = report.get("linkable_ceiling", {})
    lines.append("")
    lines.append("linkable ceiling (ring accounts with any intra-ring evidence): "
                 + ", ".join(f"{k} {v:.1%}" for k, v in ceil.items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("step", nargs="?", choices=["all", "build", "measure"], default="all")
    p.add_argument("--world", required=True, help="generated world (with truth/)")
    p.add_argument("--output", required=True, help="run output root (ringfence run --output)")
    p.add_argument("--ds", required=True, type=dt.date.fromisoformat)
    p.add_argument("--work", required=True, type=Path, help="where edges and the report go")
    p.add_argument("--conf", default=None, help="config file merged over conf/default.yaml")
    p.add_argument("--label", default="", help="a name for this world in the report")
    args = p.parse_args(argv)
    run_dir = f"{args.output.rstrip('/')}/ds={args.ds}"
    args.work.mkdir(parents=True, exist_ok=True)
    common = ["--world", args.world, "--output", args.output, "--ds", str(args.ds), "--work", str(args.work)]
    if args.conf:
        common += ["--conf", args.conf]
    if args.step == "build":
        print(json.dumps(build(args.world, run_dir, args.ds, str(args.work), args.conf)), flush=True)
        return 0
    if args.step == "measure":
        from graph.config import load_config

        cap = load_config(args.conf).rings.max_component_for_refinement
        build_info = json.loads((args.work / "build.json").read_text()) if (args.work / "build.json").exists() else {}
        report = {"label": args.label, "world": args.world, "run_dir": run_dir, "build": build_info,
                  **measure(args.world, run_dir, str(args.work), cap)}
        (args.work / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        text = table(report)
        (args.work / "report.md").write_text(f"# candidate graph vs projection: {args.label or args.world}\n\n"
                                             + text + "\n")
        print(text)
        return 0
    # all: each step in its own process, so the measure step never shares memory with Spark.
    me = [sys.executable, str(Path(__file__).resolve())]
    out = subprocess.run([*me, "build", *common], cwd=REPO, capture_output=True, text=True)
    if out.returncode != 0:
        sys.stderr.write(out.stdout[-4000:] + out.stderr[-8000:])
        return 1
    last = [line for line in out.stdout.splitlines() if line.startswith("{")][-1]
    (args.work / "build.json").write_text(last + "\n")
    return subprocess.run([*me, "measure", *common, "--label", args.label], cwd=REPO).returncode


if __name__ == "__main__":
    sys.exit(main())
