"""ringfence maintenance: garbage-collect old Redis list versions; roll back the live one.

Two DAGs, both thin wrappers over ``graph.publish`` (imported inside the
tasks, so parsing this file stays cheap):

* ``ringfence_gc`` runs daily and UNLINKs list versions older than the newest
  ``keep`` (default ``redis.keep_versions``), never the live one.
* ``ringfence_rollback`` is triggered by hand: it switches the live version
  back to the previous one, and records an Asset event per list so the
  consumers that schedule on the lists pick up the change.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, CronTriggerTimetable, Param, Variable, get_current_context, task

from graph.airflow_support import LIST_ASSETS, notify_failure, repo_root

log = logging.getLogger(__name__)

REPO = repo_root(__file__)





DEFAULT_ARGS: dict[str, Any] = {
    "owner": "ringfence",
    "retries": 2,
    "retry_delay": dt.timedelta(minutes=2),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": dt.timedelta(minutes=20),
    "on_failure_callback": notify_failure,
}


def _config_path(params: dict[str, Any]) -> str | None:
    """Run conf, else the Variable ``ringfence_conf``, else ``RINGFENCE_CONF`` (as the nightly DAG)."""
    value = params.get("conf") or Variable.get("ringfence_conf", default=None) \
        or os.environ.get("RINGFENCE_CONF")
    if not value:
        return None
    return value if Path(value).is_absolute() else str(REPO / value)


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


@task
def gc_versions() -> dict[str, Any]:
    """UNLINK list versions older than the newest ``keep``."""
    from graph.config import load_config
    from graph.publish import garbage_collect

    params = get_current_context()["params"]
    cfg = load_config(_config_path(params))
    summary = garbage_collect(cfg, keep=params.get("keep"))
    log.info("gc: %s", summary)
    return _jsonable(summary)


@task(outlets=list(LIST_ASSETS.values()))
def rollback_live() -> dict[str, Any]:
    """Switch the live version back to the previous one."""
    from graph.config import load_config
    from graph.publish import rollback

    ctx = get_current_context()
    params = ctx["params"]
    if not params.get("confirm"):
        raise ValueError('rollback not confirmed: trigger with {"confirm": true}')
    cfg = load_config(_config_path(params))
    summary = _jsonable(rollback(cfg))
    for asset in LIST_ASSETS.values():
        ctx["outlet_events"][asset].extra = {"rollback": True, **{
            k: v for k, v in summary.items() if isinstance(v, str | int | float | bool)}}
    log.info("rollback: %s", summary)
    return summary


CONF_PARAM = Param(None, type=["null", "string"], description="YAML merged over conf/default.yaml")

with DAG(
    dag_id="ringfence_gc",
    description="Delete (UNLINK) Redis list versions older than the newest N",
    doc_md=__doc__,
    schedule=CronTriggerTimetable("30 3 * * *", timezone="UTC"),
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    on_failure_callback=notify_failure,
    tags=["ringfence", "maintenance", "redis"],
    params={
        "keep": Param(None, type=["null", "integer"], minimum=1,
                      description="Versions to keep; default redis.keep_versions"),
        "conf": CONF_PARAM,
    },
) as gc_dag:
    gc_versions()

with DAG(
    dag_id="ringfence_rollback",
    description="Switch the live Redis list version back to the previous one (manual)",
    doc_md=__doc__,
    schedule=None,
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    # A rollback is an operator's decision: never retry it behind their back.
    default_args={**DEFAULT_ARGS, "retries": 0},
    on_failure_callback=notify_failure,
    tags=["ringfence", "maintenance", "redis"],
    params={
        "confirm": Param(False, type="boolean", description="Must be true to roll back"),
        "conf": CONF_PARAM,
    },
) as rollback_dag:
    rollback_live()
