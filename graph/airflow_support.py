"""What the two Airflow DAG files share (``dags/`` holds DAG files only).

Imported at DAG parse time, so it imports nothing but the standard library
and ``airflow.sdk`` -- no pyspark, no pyarrow.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from airflow.sdk import Asset

log = logging.getLogger("ringfence.airflow")

# The entity types with a published list (graph.schema.ENTITY_TYPES, not
# imported here: it pulls in pyarrow). tests/test_dags.py checks they agree.
LIST_TYPES = ("account", "device", "ip", "card", "merchant")

# One Asset per published list: downstream DAGs schedule on the lists they
# read. The nightly DAG's publish step and the rollback DAG both update them,
# so they are defined once (an Asset is identified by its name and uri).
LIST_ASSETS: dict[str, Asset] = {
    et: Asset(name=f"ringfence_list_{et}", uri=f"x-ringfence://lists/{et}", group="ringfence")
    for et in LIST_TYPES
}


def repo_root(dag_file: str) -> Path:
    """The repository holding jobs/, graph/ and conf/: ``RINGFENCE_HOME`` or the DAG file's parent's parent.

    Read from the environment only (never a Variable): it is needed at parse
    time to name the Spark applications.
    """
    return Path(os.environ.get("RINGFENCE_HOME") or Path(dag_file).resolve().parent.parent)


def notify_failure(context: dict[str, Any]) -> None:
    """Log one line an operator can act on; plug a notifier (Slack, PagerDuty) in here."""
    ti = context.get("ti") or context.get("task_instance")
    dag_run = context.get("dag_run")
    log.error(
        "ringfence failure: dag=%s run=%s task=%s try=%s interval_start=%s reason=%s error=%s",
        getattr(dag_run, "dag_id", None), getattr(dag_run, "run_id", None),
        getattr(ti, "task_id", None), getattr(ti, "try_number", None), context.get("data_interval_start"),
        context.get("reason"), context.get("exception"),
    )
