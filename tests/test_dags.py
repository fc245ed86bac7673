"""The Airflow DAGs: they import, have the intended shape, and run for real with ``dag.test()``.

Airflow reads its configuration when it is first imported, so the metadata
DB location and the DAGs folder are set in the environment at the top of this
module, before any ``airflow`` import: a throwaway ``AIRFLOW_HOME`` with a
SQLite DB, and the repository's ``dags/`` (``dag.test()`` only finds DAGs
serialized from the configured DAGs folder).
"""

from __future__ import annotations

import atexit
import datetime as dt
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DAGS = REPO / "dags"
VENV_BIN = Path(sys.executable).parent
AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="ringfence-airflow-"))
atexit.register(shutil.rmtree, AIRFLOW_HOME, True)
AIRFLOW_ENV = {
    "AIRFLOW_HOME": str(AIRFLOW_HOME),
    "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{AIRFLOW_HOME}/airflow.db",
}
os.environ.update(AIRFLOW_ENV)

from airflow.dag_processing.dagbag import DagBag  # noqa: E402
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator  # noqa: E402
from airflow.sdk import CronDataIntervalTimetable, CronTriggerTimetable  # noqa: E402
from worldkit import write_world  # noqa: E402

NIGHTLY_ORDER = [
    "resolve_run", "wait_for_inputs", "validate_inputs", "build_graph_and_rings",
    "score_entities", "export_lists", "quality_gate", "publish_lists",
]
DS = dt.date(2026, 11, 24)

# The rings stage needs the GraphFrames jars, which cannot be fetched on this
# machine, so today the nightly run stops there. Flip this to False once rings
# run: the end-to-end test then asserts the whole DAG succeeds and publishes.
RINGS_BLOCKED = True


@pytest.fixture(scope="module")
def dagbag() -> DagBag:
    return DagBag(dag_folder=str(DAGS))


@pytest.fixture(scope="module")
def nightly(dagbag):
    return dagbag.dags["ringfence_nightly"]


@pytest.fixture(scope="module")
def nightly_module():
    """The DAG file as a module (for its helper functions), loaded the way Airflow loads it."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("ringfence_nightly_under_test", DAGS / "ringfence_nightly.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# --- import and structure -----------------------------------------------------------


def test_dagbag_imports_every_dag_without_errors(dagbag):
    assert dagbag.import_errors == {}
    assert sorted(dagbag.dag_ids) == ["ringfence_gc", "ringfence_nightly", "ringfence_rollback"]


def test_parsing_imports_nothing_heavy():
    # Parsing runs in the scheduler's DAG processor every few seconds: pyspark,
    # pyarrow and the graph library must only be imported inside tasks. The one
    # exception is graph.airflow_support (stdlib + airflow.sdk), which both DAGs share.
    code = (
        "import sys, runpy\n"
        f"for f in ('ringfence_nightly.py', 'ringfence_maintenance.py'):\n"
        f"    runpy.run_path({str(DAGS)!r} + '/' + f)\n"
        "heavy = sorted(m for m in ('pyspark', 'pyarrow', 'pandas', 'redis') if m in sys.modules)\n"
        "heavy += sorted(m for m in sys.modules if m.startswith('graph.') and m != 'graph.airflow_support')\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **AIRFLOW_ENV},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "HEAVY []" in out.stdout


def test_nightly_task_order(nightly):
    tasks = nightly.task_dict
    assert set(tasks) == set(NIGHTLY_ORDER)
    # A straight line: every step waits for the one before it (resolve_run also
    # feeds its paths to every later step).
    for before, after in zip(NIGHTLY_ORDER, NIGHTLY_ORDER[1:], strict=False):
        assert tasks[after].upstream_task_ids - {"resolve_run"} == ({before} if before != "resolve_run" else set())
        assert before in tasks[after].upstream_task_ids
    assert [t.task_id for t in nightly.topological_sort()] == NIGHTLY_ORDER


def test_nightly_schedule_and_run_policy(nightly):
    assert isinstance(nightly.timetable, CronDataIntervalTimetable)
    assert nightly.timetable.expression == "0 0 * * *"
    assert str(nightly.timetable.timezone) == "UTC"
    assert nightly.max_active_runs == 1
    assert nightly.catchup is False
    assert nightly.start_date == dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    assert set(nightly.tags) == {"ringfence", "spark", "fraud", "nightly"}
    assert "backfill create" in nightly.doc_md and "ds" in nightly.doc_md
    assert nightly.on_failure_callback is not None
    assert nightly.params["force_publish"] is False
    assert nightly.params["min_total_rows"] == 1


def test_nightly_retries_backoff_and_callbacks(nightly):
    for t in nightly.tasks:
        assert t.retries == 2, t.task_id
        assert t.retry_exponential_backoff == 2.0, t.task_id
        assert t.retry_delay == dt.timedelta(minutes=5), t.task_id
        assert t.max_retry_delay == dt.timedelta(minutes=60), t.task_id
        assert t.on_failure_callback, t.task_id


def test_nightly_spark_steps_run_the_jobs(nightly):
    jobs = {
        "validate_inputs": "validate_inputs.py", "build_graph_and_rings": "build_rings.py",
        "score_entities": "score_entities.py", "export_lists": "export_lists.py",
    }
    for task_id, job in jobs.items():
        op = nightly.task_dict[task_id]
        assert isinstance(op, SparkSubmitOperator)
        assert op._conn_id == "spark_default"
        assert Path(op.application) == REPO / "jobs" / job
        assert Path(op.application).is_file()
        assert op.conf["spark.pyspark.python"] == sys.executable
    sensor = nightly.task_dict["wait_for_inputs"]
    assert sensor.mode == "reschedule"


def test_the_spark_jobs_run_every_pipeline_stage_once_in_order(nightly):
    # Each stage reads what earlier stages wrote (rings reads signals, score reads rings):
    # the jobs, in task order, must run exactly the pipeline's stages in the pipeline's order.
    import importlib

    from graph.pipeline import STAGES

    ran = []
    for task_id in [t for t in NIGHTLY_ORDER if isinstance(nightly.task_dict[t], SparkSubmitOperator)]:
        job = Path(nightly.task_dict[task_id].application).stem
        ran += importlib.import_module(f"jobs.{job}").STAGES
    assert ran == list(STAGES)


def test_task_functions_do_not_shadow_context_keys(dagbag):
    # Airflow refuses, at run time, a task argument named like a context key
    # (ds, conf, params, ...): catch it at parse time instead.
    import inspect

    from airflow.sdk.definitions.context import KNOWN_CONTEXT_KEYS

    for dag in dagbag.dags.values():
        for t in dag.tasks:
            fn = getattr(t, "python_callable", None)
            if fn is not None:
                assert not set(inspect.signature(fn).parameters) & KNOWN_CONTEXT_KEYS, t.task_id


def test_publish_has_one_asset_per_list_and_nothing_else_does(nightly):
    from graph.schema import ENTITY_TYPES

    publish = nightly.task_dict["publish_lists"]
    assert sorted(a.uri for a in publish.outlets) == sorted(f"x-ringfence://lists/{et}" for et in ENTITY_TYPES)
    assert sorted(a.name for a in publish.outlets) == sorted(f"ringfence_list_{et}" for et in ENTITY_TYPES)
    for t in nightly.tasks:
        if t.task_id != "publish_lists":
            assert not t.outlets, t.task_id


def test_dag_constants_match_the_data_contract(nightly_module):
    from graph.schema import ENTITY_TYPES, EVENT_TABLES, INPUT_SCHEMAS

    assert nightly_module.LIST_TYPES == ENTITY_TYPES
    assert nightly_module.EVENT_TABLES == EVENT_TABLES
    assert set(nightly_module.EVENT_TABLES + nightly_module.STATIC_TABLES) == set(INPUT_SCHEMAS)


def test_maintenance_dags(dagbag, nightly):
    gc, rb = dagbag.dags["ringfence_gc"], dagbag.dags["ringfence_rollback"]
    assert isinstance(gc.timetable, CronTriggerTimetable)
    assert gc.timetable.expression == "30 3 * * *"
    assert list(gc.task_dict) == ["gc_versions"]
    assert gc.task_dict["gc_versions"].retries == 2
    assert rb.timetable.__class__.__name__ == "NullTimetable"  # schedule=None: manual only
    assert list(rb.task_dict) == ["rollback_live"]
    assert rb.task_dict["rollback_live"].retries == 0
    assert rb.params["confirm"] is False
    # A rollback changes the live lists: the same Assets as publish are updated.
    assert set(rb.task_dict["rollback_live"].outlets) == set(nightly.task_dict["publish_lists"].outlets)
    for d in (gc, rb):
        assert d.max_active_runs == 1
        assert d.on_failure_callback is not None
        assert d.doc_md and "ringfence" in d.tags


# --- helpers of the nightly DAG ------------------------------------------------------


def test_resolve_ds_prefers_the_run_conf_then_the_data_interval(nightly_module):
    start = dt.datetime(2026, 11, 24, 0, 0, tzinfo=dt.UTC)
    assert nightly_module.resolve_ds(None, start) == "2026-11-24"
    assert nightly_module.resolve_ds("2026-11-20", start) == "2026-11-20"
    with pytest.raises(ValueError, match="no data interval"):
        nightly_module.resolve_ds(None, None)
    with pytest.raises(ValueError):
        nightly_module.resolve_ds("24/11/2026", start)


def test_manual_run_processes_the_previous_day(nightly):
    # The data interval a manual run (and dag.test) gets: the last complete day.
    from airflow.serialization.encoders import coerce_to_core_timetable

    run_after = dt.datetime(2026, 11, 25, 6, 30, tzinfo=dt.UTC)
    interval = coerce_to_core_timetable(nightly.timetable).infer_manual_data_interval(run_after=run_after)
    assert interval.start == dt.datetime(2026, 11, 24, tzinfo=dt.UTC)
    assert interval.end == dt.datetime(2026, 11, 25, tzinfo=dt.UTC)


def test_resolve_setting_precedence(nightly_module):
    variables = {"ringfence_input_root": "/var/in"}

    def variable_get(key, default=None):
        return variables.get(key, default)

    env = {"RINGFENCE_INPUT": "/env/in", "RINGFENCE_OUTPUT": "/env/out"}
    rs = nightly_module.resolve_setting
    assert rs("input_root", {"input_root": "/conf/in"}, variable_get, env) == "/conf/in"
    assert rs("input_root", {"input_root": None}, variable_get, env) == "/var/in"
    assert rs("output_root", {}, variable_get, env) == "/env/out"
    assert rs("output_root", {}, variable_get, {}) == str(nightly_module.REPO / "sample/output")
    assert rs("conf", {}, variable_get, {}) is None
    assert rs("conf", {"conf": "conf/cluster.example.yaml"}, None, {}) == str(
        nightly_module.REPO / "conf/cluster.example.yaml")
    assert rs("input_root", {"input_root": "s3a://bucket/in"}, None, {}) == "s3a://bucket/in"


def test_spark_args(nightly_module):
    assert nightly_module.spark_args("/i", "/o", "2026-11-24", None, None) == [
        "--input", "/i", "--output", "/o", "--ds", "2026-11-24"]
    assert nightly_module.spark_args("/i", "/o", "2026-11-24", "/c.yaml", 150) == [
        "--input", "/i", "--output", "/o", "--ds", "2026-11-24", "--conf", "/c.yaml", "--lookback-days", "150"]


def test_missing_inputs_names_what_is_absent(nightly_module, tmp_path):
    write_world(tmp_path, DS, days=2)
    assert nightly_module.missing_inputs(str(tmp_path), str(DS)) == []
    # The day after has no event partitions yet.
    nxt = str(DS + dt.timedelta(days=1))
    assert nightly_module.missing_inputs(str(tmp_path), nxt) == [
        str(tmp_path / t / f"ds={nxt}") for t in ("payments", "transfers", "sessions")]
    # A partition folder with only a marker file is not data.
    shutil.rmtree(tmp_path / "sessions" / f"ds={DS}")
    (tmp_path / "sessions" / f"ds={DS}").mkdir()
    (tmp_path / "sessions" / f"ds={DS}" / "_SUCCESS").touch()
    assert nightly_module.missing_inputs(str(tmp_path), str(DS)) == [str(tmp_path / "sessions" / f"ds={DS}")]


def _validation(payments_fraction: float) -> dict:
    return {
        "payments": {"rows_read": 100, "rows_quarantined": int(payments_fraction * 100),
                     "fraction": payments_fraction, "reasons": {}},
        "accounts": {"rows_read": 10, "rows_quarantined": 0, "fraction": 0.0, "reasons": {}},
    }


def test_quality_gate_rules(nightly_module):
    qp = nightly_module.quality_problems
    counts = {"account": 3, "device": 1, "ip": 0, "card": 2, "merchant": 0}
    manifest = {"lists": {et: {"rows": n} for et, n in counts.items()}}
    assert nightly_module.manifest_row_counts(manifest) == counts
    ok = {"min_total_rows": 1, "max_list_rows": None, "max_quarantine_fraction": 0.05}
    assert qp(_validation(0.01), manifest, counts, **ok) == []
    assert qp(_validation(0.2), manifest, counts, **ok) == [
        "payments: 20.00% of rows quarantined (max 5.00%)"]
    zero = dict.fromkeys(counts, 0)
    assert qp(_validation(0.0), manifest, zero, **ok) == ["lists hold 0 rows in all (min 1)"]
    assert qp(_validation(0.0), manifest, counts, **{**ok, "max_list_rows": 2}) == [
        "list account: 3 rows (max 2)"]
    partial = {k: v for k, v in counts.items() if k != "merchant"}
    assert qp(_validation(0.0), manifest, partial, **ok) == ["export has no list for ['merchant']"]
    assert qp(None, None, {}, **ok) == [
        "validation.json is missing",
        "export is missing or not committed (no manifest.json / _COMMITTED)"]


def test_export_dir_of_follows_the_export_summary(nightly_module):
    run_dir = "/out/ds=2026-11-24"
    assert nightly_module.export_dir_of(run_dir, None) == f"{run_dir}/export"
    summary = {"stages": {"export": {"export_dir": "/elsewhere/export"}}}
    assert nightly_module.export_dir_of(run_dir, summary) == "/elsewhere/export"


# --- dag.test(): the nightly DAG for real, local Spark and a real Redis ----------------


@pytest.fixture(scope="module")
def airflow_db():
    """Migrate the SQLite metadata DB of the throwaway AIRFLOW_HOME."""
    t0 = time.time()
    out = subprocess.run([str(VENV_BIN / "airflow"), "db", "migrate"], env={**os.environ, **AIRFLOW_ENV},
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    print(f"airflow db migrate: {time.time() - t0:.1f} s")
    return AIRFLOW_HOME / "airflow.db"


RUNNER = """
import datetime as dt, json, sys
from airflow.dag_processing.dagbag import DagBag
dag = DagBag(dag_folder=sys.argv[1]).dags["ringfence_nightly"]
# Failures are deterministic here: retrying them would only make the test wait
# out the retry delays.
for t in dag.tasks:
    t.retries = 0
dr = dag.test(logical_date=dt.datetime.fromisoformat(sys.argv[2]), run_conf=json.loads(sys.argv[3]))
print("DAGRUN", json.dumps({"run_id": dr.run_id, "state": str(dr.state)}))
"""


def _dev_secrets() -> dict[str, str]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    raw = serialization.Encoding.Raw
    return {
        "RINGFENCE_HMAC_KEY": os.urandom(32).hex(),
        "RINGFENCE_SIGNING_KEY": key.private_bytes(raw, serialization.PrivateFormat.Raw,
                                                   serialization.NoEncryption()).hex(),
        "RINGFENCE_VERIFY_KEY": key.public_key().public_bytes(raw, serialization.PublicFormat.Raw).hex(),
    }


@pytest.mark.slow
@pytest.mark.redis
def test_nightly_dag_runs_end_to_end(airflow_db, redis_server, tmp_path):
    import redis

    world, out = tmp_path / "world", tmp_path / "out"
    write_world(world, DS, days=2, accounts=12, bad_payments=1)
    conf = tmp_path / "test.yaml"
    conf.write_text(json.dumps({  # JSON is YAML
        "spark": {"master": "local[2]", "shuffle_partitions": 2, "driver_memory": "1g",
                  "checkpoint_dir": str(tmp_path / "checkpoints"),
                  "extra_conf": {"spark.ui.enabled": "false", "spark.sql.adaptive.enabled": "false",
                                 "spark.sql.session.timeZone": "UTC"}},
        "pipeline": {"lookback_days": 2},
        "redis": {"host": redis_server["host"], "port": redis_server["port"], "namespace": "rf-dagtest"},
    }))
    env = {
        **os.environ, **AIRFLOW_ENV, **_dev_secrets(),
        # spark-submit is found on PATH, as on any Airflow worker.
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "AIRFLOW_CONN_SPARK_DEFAULT": json.dumps({"conn_type": "spark", "host": "local[2]"}),
        "SPARK_LOCAL_IP": "127.0.0.1",
    }
    env.pop("RINGFENCE_SPARK_MASTER", None)
    # Logical date = end of the day to process: a manual run covers the last complete day.
    logical = dt.datetime.combine(DS + dt.timedelta(days=1), dt.time(0), tzinfo=dt.UTC)
    run_conf = {"input_root": str(world), "output_root": str(out), "conf": str(conf)}
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-c", RUNNER, str(DAGS), logical.isoformat(), json.dumps(run_conf)],
                          env=env, capture_output=True, text=True, timeout=1800, cwd=tmp_path)
    print(f"dag.test: {time.time() - t0:.1f} s")
    marker = [line for line in proc.stdout.splitlines() if line.startswith("DAGRUN ")]
    assert proc.returncode == 0 and marker, proc.stdout[-5000:] + proc.stderr[-5000:]
    run = json.loads(marker[-1].removeprefix("DAGRUN "))

    with sqlite3.connect(airflow_db) as db:
        states = dict(db.execute(
            "SELECT task_id, state FROM task_instance WHERE dag_id = 'ringfence_nightly' AND run_id = ?",
            (run["run_id"],)))
        asset_events = db.execute(
            "SELECT a.uri FROM asset_event e JOIN asset a ON a.id = e.asset_id").fetchall()
    run_dir = out / f"ds={DS}"
    # dag.test() runs the tasks in-process and logs them to the console.
    task_logs = proc.stdout + proc.stderr

    # Both cases: the day was derived from the data interval and validated.
    assert states["resolve_run"] == "success"
    assert states["wait_for_inputs"] == "success"
    assert states["validate_inputs"] == "success"
    report = json.loads((run_dir / "validation.json").read_text())
    assert report["payments"]["rows_quarantined"] == 1
    assert report["payments"]["reasons"] == {"non_positive:amount": 1}
    import pyarrow.parquet as pq

    quarantine = pq.read_table(run_dir / "quarantine").to_pylist()
    assert [(r["table"], r["reason"]) for r in quarantine] == [("payments", "non_positive:amount")]

    client = redis.Redis(host=redis_server["host"], port=redis_server["port"])
    published_keys = list(client.scan_iter(match="rf-dagtest:*"))
    if RINGS_BLOCKED:
        assert run["state"] == "failed"
        assert states["build_graph_and_rings"] == "failed"
        for downstream in NIGHTLY_ORDER[4:]:
            assert states[downstream] == "upstream_failed", downstream
        assert "GraphFramesUnavailable: GraphFrames JVM classes are not on the Spark classpath" in task_logs
        # The failure callback ran for the failed task.
        assert "ringfence failure: dag=ringfence_nightly" in task_logs
        assert "task=build_graph_and_rings" in task_logs
        assert not (run_dir / "export").exists()
        assert published_keys == []
        assert asset_events == []
    else:
        assert run["state"] == "success"
        assert set(states.values()) == {"success"}
        assert (run_dir / "export" / "_COMMITTED").is_file()
        assert client.get("rf-dagtest:live") is not None
        assert sorted(uri for (uri,) in asset_events) == sorted(
            f"x-ringfence://lists/{et}" for et in ("account", "card", "device", "ip", "merchant"))
