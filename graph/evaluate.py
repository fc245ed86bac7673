"""Score a run's risk list against a world's ground truth.

Definitions (all on distinct entities; only aggregated counts reach the driver):

- *listed*: a row of ``OUTPUT/ds=.../risk/``. An account is *listed as t*
  when its row's ``ring_type`` is ``t``.
- Per ring type ``t``: precision = |listed as t ∩ truth t| / |listed as t|,
  recall = |listed as t ∩ truth t| / |truth t|, F1 their harmonic mean;
  ``recall_any_type`` counts a truth-t account listed under any type.
- Overall: the same, ignoring types (listed ∩ any truth ring).
- Device and card recall: truth devices (cards) of the type that are listed.
- Ring detection rate: a truth ring is detected when at least half of its
  accounts are listed (``RING_DETECTED_FRACTION``).
- False-positive rate: listed accounts that are in no truth ring, over all
  accounts in no truth ring (the world's ``accounts/`` table beside ``truth/``).
- False positives per confounder kind: listed entities in no truth ring that
  the world planted as benign look-alikes (``truth/confounders``; may be absent).
- Recall by activity: a truth ring's member need not have done anything in the
  window (a fan-in ring skips some of its mules in an episode; a recruit may
  not have been used yet). Per ring type, truth accounts are split by the
  events of their kind in the window in the world's input tables — transfers
  sent or received for ``mule``, payment attempts for ``card_testing`` — into
  0, 1 and 2+ (``ACTIVE_MIN_EVENTS``), with the recall of each part. ``acting``
  is precision/recall/F1 with the truth restricted to the 2+ part and the
  listed accounts of the other parts left out of both sides: what listing can
  reach from what the members did. It explains a recall; it does not replace
  the headline metrics above.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from graph import io
from graph.schema import RING_TYPES
from graph.validate import events_in_window

RING_DETECTED_FRACTION = 0.5
ACTIVE_MIN_EVENTS = 2
# The events that make a member of a ring type active: (input table, account columns).
ACTIVITY_EVENTS = {"mule": ("transfers", ("src_account_id", "dst_account_id")),
                   "card_testing": ("payments", ("account_id",))}


def _prf(tp: int, n_pred: int, n_true: int) -> dict[str, float | int]:
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_true if n_true else 0.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    return {"tp": tp, "listed": n_pred, "truth": n_true,
            "precision": round(p, 4), "recall": round(r, 4), "f1": round(f1, 4)}


def _count(df: DataFrame) -> int:
    return int(df.count())


def _recall(listed: DataFrame, truth: DataFrame) -> dict[str, float | int]:
    n = _count(truth)
    hit = _count(truth.join(listed, ["entity_type", "entity_id"], "left_semi"))
    return {"truth": n, "listed": hit, "recall": round(hit / n, 4) if n else None}


def _activity(spark: SparkSession, world_root: str, ring_type: str, ds: dt.date,
              lookback_days: int) -> DataFrame | None:
    """(entity_type, entity_id, n) events of the ring type's kind per account in the window."""
    table, columns = ACTIVITY_EVENTS[ring_type]
    path = f"{world_root}/{table}"
    if not io.exists(spark, path):
        return None
    events = events_in_window(spark.read.parquet(path), ds, lookback_days)
    ids = F.array_distinct(F.array(*[F.col(c) for c in columns]))  # a self-transfer counts once
    return (events.select(F.explode(ids).alias("entity_id")).where(F.col("entity_id").isNotNull())
            .groupBy("entity_id").agg(F.count("*").alias("n"))
            .select(F.lit("account").alias("entity_type"), "entity_id", "n"))


def _by_activity(truth_t: DataFrame, listed_t: DataFrame, n_listed: int, activity: DataFrame) -> dict[str, Any]:
    """Recall of truth accounts by their activity in the window, and P/R/F1 on the acting ones.

    ``n_listed``: the accounts of ``listed_t`` (counted once by the caller).
    """
    keys = ["entity_type", "entity_id"]
    n = F.coalesce(F.col("n"), F.lit(0))
    bucket = (F.when(n >= ACTIVE_MIN_EVENTS, F.lit(f"{ACTIVE_MIN_EVENTS}+"))
              .otherwise(n.cast("string")))
    rows = (truth_t.join(activity, keys, "left")
            .join(listed_t.withColumn("hit", F.lit(1)), keys, "left")
            .groupBy(bucket.alias("b"))
            .agg(F.count("*").alias("truth"), F.sum(F.coalesce("hit", F.lit(0))).alias("listed"))
            .collect())  # at most ACTIVE_MIN_EVENTS + 1 rows
    parts = {str(r["b"]): {"truth": int(r["truth"]), "listed": int(r["listed"]),
                           "recall": round(int(r["listed"]) / int(r["truth"]), 4)} for r in rows}
    order = [str(i) for i in range(ACTIVE_MIN_EVENTS)] + [f"{ACTIVE_MIN_EVENTS}+"]
    parts = {b: parts.get(b, {"truth": 0, "listed": 0, "recall": None}) for b in order}
    acting = parts[f"{ACTIVE_MIN_EVENTS}+"]
    dormant_hits = sum(parts[b]["listed"] for b in order[:-1])
    acting_prf = _prf(acting["listed"], n_listed - dormant_hits, acting["truth"])
    return {"min_events": ACTIVE_MIN_EVENTS, "recall_by_events": parts, "acting": acting_prf}


def evaluate(spark: SparkSession, truth_root: str, output_root: str, ds: dt.date,
             lookback_days: int = 30) -> dict[str, Any]:
    """The report (see the module docstring); ``lookback_days`` is the run's window."""
    truth_root = str(truth_root).rstrip("/")
    world_root = str(Path(truth_root).parent)
    rings = spark.read.parquet(f"{truth_root}/rings").select(
        "ring_id", "ring_type", "entity_type", "entity_id").distinct().cache()
    risk = io.read_output(spark, output_root, ds, "risk").select(
        "entity_type", "entity_id", F.coalesce("ring_type", F.lit("unknown")).alias("ring_type")
    ).dropDuplicates(["entity_type", "entity_id"]).cache()
    accounts = spark.read.parquet(f"{world_root}/accounts").select(
        F.lit("account").alias("entity_type"), F.col("account_id").alias("entity_id")).distinct()
    conf_path = f"{truth_root}/confounders"
    confounders = (spark.read.parquet(conf_path).select("kind", "entity_type", "entity_id")
                   if io.exists(spark, conf_path) else None)

    truth_ents = rings.select("entity_type", "entity_id").distinct()
    listed_accounts = risk.where(F.col("entity_type") == "account")
    truth_accounts = rings.where(F.col("entity_type") == "account")

    report: dict[str, Any] = {"ds": str(ds), "truth": truth_root, "output": output_root, "by_ring_type": {}}
    for t in RING_TYPES:
        truth_t = truth_accounts.where(F.col("ring_type") == t).select("entity_type", "entity_id").distinct()
        listed_t = listed_accounts.where(F.col("ring_type") == t).select("entity_type", "entity_id")
        tp = _count(listed_t.join(truth_t, ["entity_type", "entity_id"], "left_semi"))
        block: dict[str, Any] = {"accounts": _prf(tp, _count(listed_t), _count(truth_t))}
        block["accounts"]["recall_any_type"] = _recall(listed_accounts, truth_t)["recall"]
        for et in ("device", "card"):
            block[f"{et}s"] = _recall(
                risk, rings.where((F.col("ring_type") == t) & (F.col("entity_type") == et))
                .select("entity_type", "entity_id").distinct())
        block["rings"] = _ring_detection(rings.where(F.col("ring_type") == t), listed_accounts)
        activity = _activity(spark, world_root, t, ds, lookback_days)
        if activity is not None:
            block["activity"] = _by_activity(truth_t, listed_t, block["accounts"]["listed"], activity)
        report["by_ring_type"][t] = block

    all_truth_accounts = truth_accounts.select("entity_type", "entity_id").distinct()
    tp_all = _count(listed_accounts.join(all_truth_accounts, ["entity_type", "entity_id"], "left_semi"))
    overall: dict[str, Any] = {"accounts": _prf(tp_all, _count(listed_accounts), _count(all_truth_accounts))}
    for et in ("device", "card"):
        overall[f"{et}s"] = _recall(risk, rings.where(F.col("entity_type") == et)
                                    .select("entity_type", "entity_id").distinct())
    overall["rings"] = _ring_detection(rings, listed_accounts)
    legit = accounts.join(all_truth_accounts, ["entity_type", "entity_id"], "left_anti")
    n_legit = _count(legit)
    fp = _count(listed_accounts.join(legit, ["entity_type", "entity_id"], "left_semi"))
    overall["legit_accounts"] = n_legit
    overall["false_positive_accounts"] = fp
    overall["false_positive_rate"] = round(fp / n_legit, 6) if n_legit else 0.0
    report["overall"] = overall

    fp_by_kind: dict[str, int] = {}
    if confounders is not None:
        rows = (confounders.join(truth_ents, ["entity_type", "entity_id"], "left_anti")
                .join(risk, ["entity_type", "entity_id"], "left_semi")
                .groupBy("kind").agg(F.countDistinct("entity_type", "entity_id").alias("n"))
                .collect())  # one row per confounder kind: bounded
        fp_by_kind = {r["kind"]: int(r["n"]) for r in rows}
    report["false_positives_by_confounder"] = fp_by_kind
    report["listed_by_entity_type"] = {
        r["entity_type"]: int(r["n"])
        for r in risk.groupBy("entity_type").agg(F.count("*").alias("n")).collect()  # ≤ 5 rows
    }
    rings.unpersist()
    risk.unpersist()
    return report


def _ring_detection(rings: DataFrame, listed_accounts: DataFrame) -> dict[str, Any]:
    members = rings.where(F.col("entity_type") == "account").select("ring_id", "entity_type", "entity_id")
    flagged = members.join(listed_accounts.select("entity_type", "entity_id").withColumn("hit", F.lit(1)),
                           ["entity_type", "entity_id"], "left")
    per_ring = flagged.groupBy("ring_id").agg(
        (F.sum(F.coalesce("hit", F.lit(0))) / F.count("*")).alias("frac"))
    row = per_ring.agg(F.count("*").alias("n"),
                       F.sum((F.col("frac") >= RING_DETECTED_FRACTION).cast("int")).alias("hit")).first()
    n, hit = int(row["n"] or 0), int(row["hit"] or 0)
    return {"rings": n, "detected": hit, "detection_rate": round(hit / n, 4) if n else None}


def format_report(report: dict[str, Any]) -> str:
    """A compact human-readable table of the report."""
    lines = [f"evaluation ds={report['ds']}  truth={report['truth']}", ""]
    head = f"{'':14}{'precision':>10}{'recall':>8}{'F1':>7}{'listed':>8}{'truth':>7}" \
           f"{'dev.rec':>9}{'card.rec':>9}{'rings':>12}"
    lines.append(head)

    def row(name: str, b: dict[str, Any]) -> str:
        a = b["accounts"]

        def rec(x):
            return "-" if x["recall"] is None else f"{x['recall']:.3f}"

        r = b["rings"]
        rings = "-" if r["detection_rate"] is None else f"{r['detected']}/{r['rings']}"
        return (f"{name:14}{a['precision']:>10.3f}{a['recall']:>8.3f}{a['f1']:>7.3f}{a['listed']:>8}"
                f"{a['truth']:>7}{rec(b['devices']):>9}{rec(b['cards']):>9}{rings:>12}")

    for t, b in report["by_ring_type"].items():
        lines.append(row(t, b))
    lines.append(row("overall", report["overall"]))
    o = report["overall"]
    lines += ["", f"false-positive rate among {o['legit_accounts']} legitimate accounts: "
              f"{o['false_positive_rate']:.4%} ({o['false_positive_accounts']} accounts)"]
    for t, b in report["by_ring_type"].items():
        act = b.get("activity")
        if not act or not b["accounts"]["truth"]:
            continue
        kind = ACTIVITY_EVENTS[t][0]
        parts = ", ".join(f"{k}: {v['listed']}/{v['truth']}" for k, v in act["recall_by_events"].items())
        a = act["acting"]
        lines.append(f"{t} recall by {kind} in the window ({parts}); among members with "
                     f"{act['min_events']}+ {kind}: P {a['precision']:.3f} R {a['recall']:.3f} F1 {a['f1']:.3f}")
    kinds = report["false_positives_by_confounder"]
    lines.append("false positives per confounder kind: "
                 + (", ".join(f"{k}={v}" for k, v in sorted(kinds.items())) if kinds else "none"))
    return "\n".join(lines)
