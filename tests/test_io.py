"""Atomic table writes and the per-ds run lock."""

import json
import os
import socket
import subprocess
import sys

import pytest

from graph import io

pytestmark = pytest.mark.spark
DS = "2026-11-24"


def test_write_table_replaces_atomically_and_leaves_no_staging(spark, tmp_path):
    out = str(tmp_path)
    io.write_table(spark.range(3), out, DS, "t")
    io.write_table(spark.range(5), out, DS, "t")
    assert io.read_output(spark, out, DS, "t").count() == 5
    staging = tmp_path / f"ds={DS}" / io.STAGING
    assert not staging.exists() or list(staging.iterdir()) == []


def test_json_round_trip(spark, tmp_path):
    path = str(tmp_path / "x" / "a.json")
    io.write_json(spark, path, {"a": 1})
    io.write_json(spark, path, {"a": 2})
    assert io.read_json(spark, path) == {"a": 2}
    # No temp file left behind (Hadoop's local FS keeps a hidden .crc beside each file).
    assert [p.name for p in (tmp_path / "x").iterdir() if not p.name.endswith(".crc")] == ["a.json"]


def test_a_live_run_lock_refuses_a_second_run(spark, tmp_path):
    with io.run_lock(spark, str(tmp_path), DS):
        with pytest.raises(io.RunLocked, match=f"pid {os.getpid()}"):
            with io.run_lock(spark, str(tmp_path), DS):
                pass
    # Released: the next run takes it.
    with io.run_lock(spark, str(tmp_path), DS):
        assert (tmp_path / f"ds={DS}" / io.LOCK).exists()
    assert not (tmp_path / f"ds={DS}" / io.LOCK).exists()


def test_a_lock_left_by_a_killed_run_is_taken_over(spark, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = tmp_path / f"ds={DS}" / io.LOCK
    lock.parent.mkdir(parents=True)
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "started": 0, "token": "x"}))
    with io.run_lock(spark, str(tmp_path), DS):
        assert json.loads(lock.read_text())["pid"] == os.getpid()


def test_previous_run_ds_only_counts_complete_runs(spark, tmp_path):
    out = str(tmp_path)
    for ds, complete in (("2026-11-20", True), ("2026-11-22", False), ("2026-11-24", True)):
        io.write_table(spark.range(1), out, ds, "t")
        if complete:
            io.write_json(spark, f"{io.run_dir(out, ds)}/_RUN_COMPLETE", {})
    assert io.previous_run_ds(spark, out, "2026-11-24") == "2026-11-20"
    assert io.previous_run_ds(spark, out, "2026-11-20") is None
