"""ringfence nightly: one day's events in, signed risk lists published to Redis.

Only wiring lives here. Each Spark step is a ``jobs/`` entry point run by
``SparkSubmitOperator``; the publish step calls ``graph.publish``. Nothing
heavy is imported at parse time: only ``graph.airflow_support`` (standard
library and ``airflow.sdk``); the rest of ``graph`` (and with it
pyspark/pyarrow) is imported inside the task bodies that need it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import (
    DAG,
    CronDataIntervalTimetable,
    Param,
    PokeReturnValue,
    Variable,
    chain,
    get_current_context,
    task,
)

from graph.airflow_support import LIST_ASSETS, LIST_TYPES, notify_failure, repo_root

log = logging.getLogger(__name__)

DAG_ID = "ringfence_nightly"
SPARK_CONN_ID = "spark_default"

REPO = repo_root(__file__)

# The interpreter that runs the jobs. Spark's own default is whatever
# ``python3`` is on PATH, which on an Airflow worker is rarely the one with
# pyspark and the project installed. Executors on a cluster may need another
# path: set RINGFENCE_PYSPARK_PYTHON there.
PYSPARK_PYTHON = os.environ.get("RINGFENCE_PYSPARK_PYTHON") or sys.executable
# Optional zip/wheel of the ``graph`` package shipped to executors (clusters).
PY_FILES = os.environ.get("RINGFENCE_PY_FILES") or None

# The input tables of the data contract (graph.schema, not imported here:
# it pulls in pyarrow). tests/test_dags.py checks these stay equal.
EVENT_TABLES = ("payments", "transfers", "sessions")
STATIC_TABLES = ("accounts", "labels")


# Airflow Variable name, environment variable, default (relative to REPO).
SETTINGS: dict[str, tuple[str, str, str | None]] = {
    "input_root": ("ringfence_input_root", "RINGFENCE_INPUT", "sample/world"),
    "output_root": ("ringfence_output_root", "RINGFENCE_OUTPUT", "sample/output"),
    "conf": ("ringfence_conf", "RINGFENCE_CONF", None),
}

# Spark steps: task id, entry point under jobs/.
SPARK_STEPS = (
    ("validate_inputs", "validate_inputs.py"),
    ("build_graph_and_rings", "build_rings.py"),
    ("score_entities", "score_entities.py"),
    ("export_lists", "export_lists.py"),
)

DOC_MD = """
### ringfence nightly

Processes **one day** `ds` of payments, transfers and sessions (plus the
lookback window before it) and publishes risk lists for the online scorers.

`resolve_run` → `wait_for_inputs` → `validate_inputs` → `build_graph_and_rings`
→ `score_entities` → `export_lists` → `quality_gate` → `publish_lists`

* **Which day.** The schedule is a `CronDataIntervalTimetable` (daily, UTC):
  the run for the interval `[D 00:00, D+1 00:00)` starts after midnight and
  processes `ds = D`. A manual run processes the day before it was triggered,
  or the `ds` given in the run conf (`{"ds": "2026-11-24"}`).
* **Backfill.** `airflow backfill create --dag-id ringfence_nightly
  --from-date 2026-11-01 --to-date 2026-11-24`: every stage rewrites
  `OUTPUT/ds=D/` atomically, so reruns and backfills are idempotent.
  `max_active_runs=1` keeps nights in order (ring ids carry over from the
  previous complete night).
* **Where.** Input/output roots and the config file come from the run conf,
  else the Variables `ringfence_input_root`, `ringfence_output_root`,
  `ringfence_conf`, else the environment (`RINGFENCE_INPUT`,
  `RINGFENCE_OUTPUT`, `RINGFENCE_CONF`). Spark runs wherever the
  `spark_default` connection points (`local[*]` by default) with the
  settings of the config file.
* **Gate.** `quality_gate` stops the run before publishing when the export
  is incomplete, a list is empty or too large, or too much input was
  quarantined. `publish_lists` has its own circuit breaker
  (`redis.max_change_fraction`); `force_publish` overrides it.
* **Outputs.** Each published list updates an Asset
  (`x-ringfence://lists/<entity_type>`) that downstream DAGs can schedule on.
"""




DEFAULT_ARGS: dict[str, Any] = {
    "owner": "ringfence",
    "retries": 2,
    "retry_delay": dt.timedelta(minutes=5),
    # 5 min, 10 min, ... capped: transient cluster or storage trouble clears.
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": dt.timedelta(minutes=60),
    "on_failure_callback": notify_failure,
}


# --- helpers (plain functions: unit-tested without a scheduler) ---------------


def _has_scheme(path: str) -> bool:
    return "://" in path


def _absolute(path: str) -> str:
    if _has_scheme(path) or Path(path).is_absolute():
        return path
    return str(REPO / path)


def _path(path: str):
    """A pathlib-like object: local Path, or ObjectStoragePath for s3://, gs://, ..."""
    if _has_scheme(path) and not path.startswith("file://"):
        from airflow.sdk import ObjectStoragePath

        return ObjectStoragePath(path)
    return Path(path.removeprefix("file://"))


def resolve_setting(name: str, params: dict[str, Any], variable_get=None, env=None) -> str | None:
    """Run conf, else Airflow Variable, else environment, else the default."""
    var_name, env_name, default = SETTINGS[name]
    env = os.environ if env is None else env
    value = params.get(name)
    if value in (None, "") and variable_get is not None:
        value = variable_get(var_name, default=None)
    if value in (None, ""):
        value = env.get(env_name) or default
    return _absolute(str(value)) if value not in (None, "") else None


def resolve_ds(param_ds: str | None, data_interval_start: dt.datetime | None) -> str:
    """The day this run processes: the run conf's ``ds``, else the data interval's start."""
    if param_ds:
        return dt.date.fromisoformat(str(param_ds)).isoformat()
    if data_interval_start is None:
        raise ValueError(
            "this run has no data interval: pass the day to process as {\"ds\": \"YYYY-MM-DD\"}"
        )
    return data_interval_start.astimezone(dt.UTC).date().isoformat()


def spark_args(input_root: str, output_root: str, ds: str, conf: str | None,
               lookback_days: int | None) -> list[str]:
    """The command line every ``jobs/`` entry point takes."""
    args = ["--input", input_root, "--output", output_root, "--ds", ds]
    if conf:
        args += ["--conf", conf]
    if lookback_days:
        args += ["--lookback-days", str(int(lookback_days))]
    return args


def _has_data_file(folder) -> bool:
    """True when ``folder`` holds at least one data file (not a ``_``/``.`` marker)."""
    if not folder.exists():
        return False
    return any(p.is_file() and not p.name.startswith(("_", ".")) for p in folder.rglob("*"))


def missing_inputs(input_root: str, ds: str) -> list[str]:
    """The input folders still absent or empty for ``ds`` (empty list: ready)."""
    root = _path(input_root)
    wanted = [root / t for t in STATIC_TABLES] + [root / t / f"ds={ds}" for t in EVENT_TABLES]
    return [str(folder) for folder in wanted if not _has_data_file(folder)]


def _read_json(path: str) -> Any:
    p = _path(path)
    if not p.exists():
        return None
    return json.loads(p.read_text())


def quarantine_fractions(validation: dict[str, Any]) -> dict[str, float]:
    """Quarantined fraction per table from ``validation.json`` (``graph.validate.build_report``)."""
    return {
        table: float(entry["fraction"])
        for table, entry in validation.items()
        if isinstance(entry, dict) and "fraction" in entry
    }


def quality_problems(validation: dict[str, Any] | None, manifest: dict[str, Any] | None,
                     row_counts: dict[str, int], min_total_rows: int,
                     max_list_rows: int | None, max_quarantine_fraction: float) -> list[str]:
    """Everything wrong with a finished export; publishing needs an empty list."""
    problems = []
    if validation is None:
        problems.append("validation.json is missing")
    else:
        for table, frac in sorted(quarantine_fractions(validation).items()):
            if frac > max_quarantine_fraction:
                problems.append(
                    f"{table}: {frac:.2%} of rows quarantined (max {max_quarantine_fraction:.2%})"
                )
    if manifest is None:
        problems.append("export is missing or not committed (no manifest.json / _COMMITTED)")
        return problems
    absent = [et for et in LIST_TYPES if et not in row_counts]
    if absent:
        problems.append(f"export has no list for {absent}")
    total = sum(row_counts.values())
    if total < min_total_rows:
        problems.append(f"lists hold {total} rows in all (min {min_total_rows})")
    if max_list_rows is not None:
        for et, n in sorted(row_counts.items()):
            if n > max_list_rows:
                problems.append(f"list {et}: {n} rows (max {max_list_rows})")
    return problems


def manifest_row_counts(manifest: dict[str, Any]) -> dict[str, int]:
    """Rows per entity-type list, as the export manifest records them."""
    return {str(et): int(entry["rows"]) for et, entry in (manifest.get("lists") or {}).items()}


def export_dir_of(run_dir: str, summary: dict[str, Any] | None) -> str:
    """The export folder of a run: as the export stage reported it, else the default."""
    export = ((summary or {}).get("stages") or {}).get("export") or {}
    return export.get("export_dir") or f"{run_dir}/export"


# --- tasks ---------------------------------------------------------------------


@task(multiple_outputs=True)
def resolve_run() -> dict[str, Any]:
    """Fix the day and the paths once, so every later task sees the same ones."""
    ctx = get_current_context()
    params = ctx["params"]
    ds = resolve_ds(params.get("ds"), ctx.get("data_interval_start"))
    roots = {name: resolve_setting(name, params, Variable.get) for name in SETTINGS}
    if not roots["input_root"] or not roots["output_root"]:
        raise ValueError(f"input and output roots must be set, got {roots}")
    run = {
        "ds": ds,
        **roots,
        "run_dir": f"{roots['output_root'].rstrip('/')}/ds={ds}",
        "spark_args": spark_args(roots["input_root"], roots["output_root"], ds, roots["conf"],
                                 params.get("lookback_days")),
    }
    log.info("ringfence run: %s", json.dumps(run))
    return run


@task.sensor(poke_interval=300, timeout=8 * 3600, mode="reschedule",
             exponential_backoff=True, max_wait=dt.timedelta(minutes=30))
def wait_for_inputs(input_root: str, day: str) -> PokeReturnValue:
    """Wait until accounts, labels and the day's event partitions hold data."""
    # (``ds`` is a reserved context name in task arguments, hence ``day``.)
    missing = missing_inputs(input_root, day)
    if missing:
        log.info("waiting for %d input folder(s): %s", len(missing), missing)
    return PokeReturnValue(is_done=not missing)


@task
def quality_gate(run_dir: str, conf_path: str | None) -> dict[str, Any]:
    """Refuse to publish an incomplete export, empty/oversized lists or heavily quarantined input."""
    from graph.config import load_config

    params = get_current_context()["params"]
    cfg = load_config(conf_path or None)
    if _read_json(f"{run_dir}/_RUN_COMPLETE") is None:
        raise RuntimeError(f"{run_dir}: no _RUN_COMPLETE marker, the pipeline did not finish")
    summary = _read_json(f"{run_dir}/run_summary.json")
    validation = _read_json(f"{run_dir}/validation.json")
    export_dir = export_dir_of(run_dir, summary)
    # Exports without the _COMMITTED marker are incomplete (graph.export writes it last).
    committed = _path(f"{export_dir}/_COMMITTED").exists()
    manifest = _read_json(f"{export_dir}/manifest.json") if committed else None
    counts = manifest_row_counts(manifest) if manifest else {}
    max_q = params.get("max_quarantine_fraction")
    problems = quality_problems(
        validation, manifest, counts,
        min_total_rows=int(params.get("min_total_rows") or 0),
        max_list_rows=params.get("max_list_rows"),
        max_quarantine_fraction=cfg.validation.max_quarantine_fraction if max_q is None else float(max_q),
    )
    if problems:
        raise RuntimeError("quality gate refused the export: " + "; ".join(problems))
    log.info("quality gate passed: %s rows per list", counts)
    return {"export_dir": export_dir, "row_counts": counts,
            "run_id": (summary or {}).get("run_id")}


@task(outlets=list(LIST_ASSETS.values()))
def publish_lists(gate: dict[str, Any], day: str, conf_path: str | None) -> dict[str, Any]:
    """Load the export into Redis and switch the live version; record an Asset event per list."""
    from graph.config import load_config
    from graph.publish import publish

    ctx = get_current_context()
    cfg = load_config(conf_path or None)
    summary = publish(cfg, export_dir=Path(gate["export_dir"]),
                      force=bool(ctx["params"].get("force_publish")))
    summary = json.loads(json.dumps(summary, default=str))
    for et, asset in LIST_ASSETS.items():
        ctx["outlet_events"][asset].extra = {
            "ds": day, "run_id": gate.get("run_id"), "rows": gate["row_counts"].get(et),
            "version": summary.get("version"),
        }
    return summary


def spark_step(task_id: str, job: str, args) -> SparkSubmitOperator:
    return SparkSubmitOperator(
        task_id=task_id,
        conn_id=SPARK_CONN_ID,
        application=str(REPO / "jobs" / job),
        application_args=args,
        name=f"ringfence-{task_id}",
        py_files=PY_FILES,
        conf={"spark.pyspark.python": PYSPARK_PYTHON, "spark.pyspark.driver.python": PYSPARK_PYTHON},
        execution_timeout=dt.timedelta(hours=4),
    )


with DAG(
    dag_id=DAG_ID,
    description="Fraud ring detection for one day: validate, rings, score, export, publish",
    doc_md=DOC_MD,
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=dt.timedelta(hours=12),
    default_args=DEFAULT_ARGS,
    on_failure_callback=notify_failure,
    tags=["ringfence", "spark", "fraud", "nightly"],
    params={
        "ds": Param(None, type=["null", "string"], format="date",
                    description="Day to process (YYYY-MM-DD); default: the data interval's day"),
        "input_root": Param(None, type=["null", "string"], description="Input root (overrides Variable/env)"),
        "output_root": Param(None, type=["null", "string"], description="Output root (overrides Variable/env)"),
        "conf": Param(None, type=["null", "string"], description="YAML merged over conf/default.yaml"),
        "lookback_days": Param(None, type=["null", "integer"], minimum=1,
                               description="Override pipeline.lookback_days"),
        "min_total_rows": Param(1, type="integer", minimum=0,
                                description="Gate: fewest rows all lists together may hold"),
        "max_list_rows": Param(None, type=["null", "integer"], minimum=1,
                               description="Gate: most rows one list may hold"),
        "max_quarantine_fraction": Param(None, type=["null", "number"], minimum=0, maximum=1,
                                         description="Gate: default validation.max_quarantine_fraction"),
        "force_publish": Param(False, type="boolean",
                               description="Override the publish circuit breaker"),
    },
) as dag:
    run = resolve_run()
    ready = wait_for_inputs(run["input_root"], run["ds"])
    steps = [spark_step(task_id, job, run["spark_args"]) for task_id, job in SPARK_STEPS]
    gate = quality_gate(run["run_dir"], run["conf"])
    published = publish_lists(gate, run["ds"], run["conf"])
    chain(ready, *steps, gate)
