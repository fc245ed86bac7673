"""A real distributed engine: a Spark standalone master and worker, started from the installed pyspark.

The validate stage is submitted with ``spark-submit --master spark://...`` and
again in local mode; the two runs must write the same quarantine rows and
the same validation report. The test also checks that the cluster run really
ran on the cluster (the master lists the application as completed and the
worker launched an executor for it), so equal outputs cannot come from two
local runs.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from worldkit import write_world

REPO = Path(__file__).resolve().parent.parent
DS = dt.date(2026, 11, 24)
PYTHON = sys.executable


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def _master_state(webui_port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{webui_port}/json/", timeout=5) as r:
        return json.loads(r.read())


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def spark_cluster(tmp_path_factory):
    """One master and one worker (1 core, 1 GiB) bound to 127.0.0.1 on free ports."""
    home = _spark_home()
    base = tmp_path_factory.mktemp("spark-standalone")
    ports = {name: _free_port() for name in ("master", "master_ui", "worker", "worker_ui")}
    env = {
        **os.environ,
        "SPARK_HOME": str(home),
        "SPARK_LOCAL_IP": "127.0.0.1",
        "SPARK_LOG_DIR": str(base / "logs"),
        "PYSPARK_PYTHON": PYTHON,
        # Daemons need little heap; the default 1 GiB each is a lot on a shared machine.
        "SPARK_DAEMON_MEMORY": "512m",
    }
    spark_class = str(home / "bin" / "spark-class")
    master_url = f"spark://127.0.0.1:{ports['master']}"
    procs: list[subprocess.Popen] = []
    logs = {name: open(base / f"{name}.log", "w") for name in ("master", "worker")}  # noqa: SIM115

    def teardown():
        for proc in reversed(procs):  # worker first, then master
            _stop(proc)
        for fh in logs.values():
            fh.close()

    try:
        procs.append(subprocess.Popen(
            [spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
             "--port", str(ports["master"]), "--webui-port", str(ports["master_ui"])],
            env=env, stdout=logs["master"], stderr=subprocess.STDOUT,
        ))
        procs.append(subprocess.Popen(
            [spark_class, "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1",
             "--port", str(ports["worker"]), "--webui-port", str(ports["worker_ui"]),
             "--cores", "1", "--memory", "1g", "--work-dir", str(base / "work"), master_url],
            env=env, stdout=logs["worker"], stderr=subprocess.STDOUT,
        ))
        deadline = time.time() + 90
        state: dict = {}
        while time.time() < deadline:
            if any(p.poll() is not None for p in procs):
                break
            try:
                state = _master_state(ports["master_ui"])
                if state.get("aliveworkers", 0) >= 1:
                    break
            except OSError:
                pass
            time.sleep(1)
        if state.get("aliveworkers", 0) < 1:
            teardown()
            pytest.fail("standalone cluster did not come up:\n"
                        + (base / "master.log").read_text()[-3000:]
                        + (base / "worker.log").read_text()[-3000:])
        yield {"master_url": master_url, "webui_port": ports["master_ui"], "work_dir": base / "work",
               "spark_home": home}
    finally:
        teardown()


def _submit(spark_home: Path, master: str, args: list[str], tmp: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "SPARK_HOME": str(spark_home),
        "SPARK_LOCAL_IP": "127.0.0.1",
        "PYSPARK_PYTHON": PYTHON,
        "PYSPARK_DRIVER_PYTHON": PYTHON,
        # No RINGFENCE_SPARK_MASTER: under spark-submit the launcher's --master
        # must decide (the config still says local[*]); the master's app list proves it.
        "RINGFENCE_CHECKPOINT_DIR": str(tmp / "checkpoints"),
    }
    cmd = [
        str(spark_home / "bin" / "spark-submit"), "--master", master,
        "--conf", "spark.ui.enabled=false",
        "--conf", f"spark.pyspark.python={PYTHON}",
        "--conf", f"spark.pyspark.driver.python={PYTHON}",
        "--driver-memory", "1g", "--executor-memory", "512m", "--total-executor-cores", "1",
        str(REPO / "jobs" / "validate_inputs.py"), *args,
    ]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def _quarantine_rows(out: Path) -> list[dict]:
    table = pq.read_table(out / f"ds={DS}" / "quarantine")
    return sorted(table.to_pylist(), key=lambda r: (r["table"], r["record_id"], r["row_json"]))


def _summary_without_timings(out: Path) -> dict:
    summary = json.loads((out / f"ds={DS}" / "run_summary.json").read_text())
    summary.pop("output")  # the output root is the one thing that differs by design
    for stage in summary["stages"].values():
        stage.pop("seconds")
    return summary


@pytest.mark.slow
def test_validate_on_standalone_cluster_equals_local_mode(spark_cluster, tmp_path):
    world = tmp_path / "world"
    counts = write_world(world, DS, days=2, accounts=20, bad_payments=2)
    out_cluster, out_local = tmp_path / "out-cluster", tmp_path / "out-local"
    args = ["--input", str(world), "--ds", str(DS), "--lookback-days", "2"]

    t0 = time.time()
    cluster = _submit(spark_cluster["spark_home"], spark_cluster["master_url"],
                      [*args, "--output", str(out_cluster)], tmp_path)
    assert cluster.returncode == 0, cluster.stderr[-5000:]
    t1 = time.time()
    local = _submit(spark_cluster["spark_home"], "local[2]", [*args, "--output", str(out_local)], tmp_path)
    assert local.returncode == 0, local.stderr[-5000:]
    print(f"cluster submit {t1 - t0:.1f} s, local submit {time.time() - t1:.1f} s")

    # The cluster run was a cluster run: the master completed our application
    # and the worker launched an executor process for it.
    apps = _master_state(spark_cluster["webui_port"])["completedapps"]
    assert [a["name"] for a in apps] == [f"ringfence-validate-{DS}"]
    app_dirs = list(spark_cluster["work_dir"].glob(f"{apps[0]['id']}/*/stderr"))
    assert app_dirs, f"no executor of {apps[0]['id']} ran on the worker"

    # Same quarantine rows, same report, same run identity.
    q_cluster, q_local = _quarantine_rows(out_cluster), _quarantine_rows(out_local)
    assert q_cluster == q_local
    assert sorted(r["reason"] for r in q_cluster) == ["non_positive:amount", "unknown_currency"]
    v_cluster = json.loads((out_cluster / f"ds={DS}" / "validation.json").read_text())
    v_local = json.loads((out_local / f"ds={DS}" / "validation.json").read_text())
    assert v_cluster == v_local
    assert v_cluster["payments"]["rows_read"] == counts["payments"]
    assert v_cluster["payments"]["rows_quarantined"] == 2
    assert _summary_without_timings(out_cluster) == _summary_without_timings(out_local)


def test_spark_home_has_standalone_launchers():
    # The fixture relies on the pip-installed pyspark shipping spark-class/spark-submit.
    home = _spark_home()
    assert (home / "bin" / "spark-class").is_file()
    assert (home / "bin" / "spark-submit").is_file()
    assert shutil.which("java") is not None
