"""End to end through the `ringfence validate` CLI: no PAN ever leaks; a killed run re-runs to the same result.

Each test starts `ringfence` subprocesses (a fresh Spark each, 10-40 s), so they are few and marked slow.
The input worlds are tiny hand-made Parquet files (the contract schemas via pyarrow).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from decimal import Decimal
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from test_validate import DS, arrow, label, payment, session, transfer, ts, write_world

pytestmark = pytest.mark.slow

RINGFENCE = str(Path(__file__).resolve().parent.parent / ".venv" / "bin" / "ringfence")
LOOKBACK = "3"
PAN_PLAIN = "4111111111111111"
PAN_SPACED = "5555 5555 5555 4444"
PAN_DASHED = "3782-822463-10005"
ALL_PAN_FORMS = {PAN_PLAIN, PAN_SPACED, PAN_SPACED.replace(" ", ""), PAN_DASHED, PAN_DASHED.replace("-", "")}


def conf_file(tmp: Path) -> str:
    path = tmp / "test.yaml"
    path.write_text(
        "spark:\n"
        "  master: 'local[2]'\n"
        "  shuffle_partitions: 2\n"
        "  driver_memory: 1g\n"
        f"  checkpoint_dir: {tmp / 'ckpt'}\n"
        "  extra_conf:\n"
        "    spark.ui.enabled: 'false'\n"
        "validation:\n"
        "  max_quarantine_fraction: 1.0\n"   # the tiny worlds are mostly bad rows on purpose
    )
    return str(path)


def validate_cmd(world: str, out: Path, conf: str) -> list[str]:
    return [RINGFENCE, "validate", "--input", world, "--output", str(out), "--ds", str(DS),
            "--lookback-days", LOOKBACK, "--conf", conf]


def run_cmd(world: str, out: Path, conf: str, stages: list[str]) -> list[str]:
    return [RINGFENCE, "run", "--input", world, "--output", str(out), "--ds", str(DS),
            "--lookback-days", LOOKBACK, "--conf", conf, "--stages", *stages]


def run_cli(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)


def dirty_world(root: Path, extra: dict | None = None) -> str:
    """Valid rows plus one of most kinds of bad row."""
    return write_world(root, {
        "payments": {
            "2024-05-09": arrow("payments", [
                payment("p1"), payment("p2", amount=Decimal("0.00")), payment("p3", status="weird"),
                payment("p4", card_bin="12"), payment("p1", event_time=ts(9, 13)),
            ], extra=extra),
            "2024-05-10": arrow("payments", [payment("p5", event_time=ts(10)), payment("p6", currency="XYZ"),
                                             payment("p7", event_time=ts(11))], extra=None if not extra else
                                {k: v[:3] for k, v in extra.items()}),
        },
        "transfers": arrow("transfers", [transfer("t1"), transfer("t2", dst_account_id="a1"),
                                         transfer("t3", ip="300.1.1.1")]),
        "sessions": arrow("sessions", [session("s1"), session("s2", ip_lat=123.0)]),
        "labels": arrow("labels", [label("a1"), label("a2", label="unknown")]),
    })


def every_file(*roots: Path) -> list[Path]:
    return [p for r in roots if r.exists() for p in r.rglob("*") if p.is_file()]


def leaked_forms(data: bytes | str) -> set[str]:
    text = data.decode("latin-1") if isinstance(data, bytes) else data
    return {p for p in ALL_PAN_FORMS if p in text}


def parquet_text(path: Path) -> str:
    """Decoded content of a Parquet file (compressed pages would hide a PAN from a byte grep)."""
    return json.dumps(pq.read_table(path).to_pylist(), default=str)


def assert_nothing_leaked(files: list[Path], *captured: str) -> None:
    for f in files:
        assert not leaked_forms(f.read_bytes()), f
        if f.suffix == ".parquet":
            assert not leaked_forms(parquet_text(f)), f
    for text in captured:
        assert not leaked_forms(text)


def test_planted_pans_stop_the_run_and_never_appear_anywhere(tmp_path):
    world = write_world(tmp_path / "world", {
        "payments": arrow("payments", [payment("p1", card_token=PAN_PLAIN),
                                       payment("p2", card_token=f"tok_{PAN_PLAIN}"), payment("p3")]),
        "sessions": arrow("sessions", [session("s1", device_id=PAN_SPACED)]),
        "labels": arrow("labels", [label(PAN_DASHED, entity_type="card")]),
    })
    out = tmp_path / "out"
    proc = run_cli(validate_cmd(world, out, conf_file(tmp_path)), cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "payments.card_token (2 rows)" in proc.stderr
    assert "sessions.device_id (1 row)" in proc.stderr
    assert "labels.entity_id (1 row)" in proc.stderr
    assert not (out / f"ds={DS}" / "quarantine").exists()
    # Positive control: the grep does find the planted numbers in the input.
    assert leaked_forms("".join(parquet_text(f) for f in every_file(Path(world)) if f.suffix == ".parquet"))
    assert_nothing_leaked(every_file(out, tmp_path / "spark-warehouse", tmp_path / "ckpt")
                          + [p for p in tmp_path.glob("*.log")], proc.stdout, proc.stderr)


def test_pan_in_an_extra_column_is_dropped_and_never_exported(tmp_path):
    extra = {"raw_card": [PAN_PLAIN, PAN_SPACED, None, PAN_DASHED, PAN_PLAIN]}
    world = dirty_world(tmp_path / "world", extra=extra)
    out = tmp_path / "out"
    # Every stage that runs without GraphFrames: validate, then the graph and signals read the clean tables.
    proc = run_cli(run_cmd(world, out, conf_file(tmp_path), ["validate", "graph", "signals"]), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = every_file(out)
    run = out / f"ds={DS}"
    for table in ("quarantine", "clean/payments", "graph/edges", "signals"):
        assert any(f.suffix == ".parquet" for f in every_file(run / table)), table
    rows = pq.read_table(run / "quarantine").to_pylist()
    assert {r["record_id"] for r in rows} >= {"p2", "p4"}  # rows whose extra column held a PAN
    # Positive control: the grep finds the planted numbers in the input's extra column.
    assert leaked_forms("".join(parquet_text(f) for f in every_file(Path(world)) if f.suffix == ".parquet"))
    assert_nothing_leaked(files + every_file(tmp_path / "spark-warehouse", tmp_path / "ckpt"),
                          proc.stdout, proc.stderr)


def _sorted_rows(path: Path) -> list:
    return sorted(pq.read_table(path).to_pylist(), key=lambda r: json.dumps(r, sort_keys=True, default=str))


def _outputs(out: Path) -> tuple[list, dict, dict, dict]:
    run = out / f"ds={DS}"
    rows = _sorted_rows(run / "quarantine")
    report = json.loads((run / "validation.json").read_text())
    summary = json.loads((run / "run_summary.json").read_text())
    summary.pop("output")
    summary["stages"]["validate"].pop("seconds")
    clean = {t.name: _sorted_rows(t) for t in sorted((run / "clean").iterdir()) if t.is_dir()}
    clean["_SOURCE"] = json.loads((run / "clean" / "_SOURCE.json").read_text())
    return rows, report, summary, clean


# Kill points: the first table write (quarantine), and the clean tables written after it.
KILL_POINTS = {"first_write": "", "clean_tables": "clean"}


@pytest.mark.parametrize("kill_point", sorted(KILL_POINTS))
def test_killed_mid_write_then_rerun_equals_uninterrupted_run(tmp_path, kill_point):
    world = dirty_world(tmp_path / "world")
    conf = conf_file(tmp_path)
    reference = tmp_path / "reference"
    proc = run_cli(validate_cmd(world, reference, conf), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]

    out = tmp_path / "out"
    staging = out / f"ds={DS}" / "_staging"
    watched = staging / KILL_POINTS[kill_point]
    log = (tmp_path / "killed.log").open("w")
    victim = subprocess.Popen(validate_cmd(world, out, conf), cwd=tmp_path, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 600
        while not watched.exists() and victim.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        assert victim.poll() is None, "the run ended before it reached the kill point"
        assert watched.exists(), "timed out waiting for the write to start"
        os.killpg(victim.pid, signal.SIGKILL)  # the CLI and its Spark JVM, mid-write
        victim.wait(timeout=60)
    finally:
        if victim.poll() is None:
            os.killpg(victim.pid, signal.SIGKILL)
            victim.wait(timeout=60)
        log.close()
    assert victim.returncode == -signal.SIGKILL
    # Killed before the run finished: the clean tables are not marked usable.
    assert not (out / f"ds={DS}" / "clean" / "_SOURCE.json").exists()
    assert not (out / f"ds={DS}" / "quarantine").exists() or any((out / f"ds={DS}" / "quarantine").glob("*.parquet"))

    proc = run_cli(validate_cmd(world, out, conf), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not any(p.is_file() for p in staging.rglob("*")) if staging.exists() else True
    got, want = _outputs(out), _outputs(reference)
    assert got == want
    rows, report, _, clean = got
    assert len(clean["payments"]) == 2 and len(clean["accounts"]) >= 1
    assert report["payments"]["rows_read"] == 8 and report["payments"]["rows_quarantined"] == 6
    assert {r["reason"] for r in rows} >= {"non_positive:amount", "duplicate:event_id", "self_transfer"}


def _stage_tables(out: Path) -> dict[str, list]:
    run = out / f"ds={DS}"
    return {t: _sorted_rows(run / t) for t in ("graph/vertices", "graph/edges", "hubs", "signals")}


def test_run_killed_in_the_graph_stage_then_rerun_equals_uninterrupted_run(tmp_path):
    # Later stages write with the same staging + rename; kill one mid-write, after validate finished.
    world = dirty_world(tmp_path / "world")
    conf = conf_file(tmp_path)
    stages = ["validate", "graph", "signals"]
    reference = tmp_path / "reference"
    proc = run_cli(run_cmd(world, reference, conf, stages), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]

    out = tmp_path / "out"
    watched = out / f"ds={DS}" / "_staging" / "graph"
    with (tmp_path / "killed.log").open("w") as log:
        victim = subprocess.Popen(run_cmd(world, out, conf, stages), cwd=tmp_path, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.time() + 600
            while not watched.exists() and victim.poll() is None and time.time() < deadline:
                time.sleep(0.01)
            assert victim.poll() is None, "the run ended before it reached the graph stage's writes"
            os.killpg(victim.pid, signal.SIGKILL)
            victim.wait(timeout=60)
        finally:
            if victim.poll() is None:
                os.killpg(victim.pid, signal.SIGKILL)
                victim.wait(timeout=60)
    assert not (out / f"ds={DS}" / "signals").exists()  # killed before the signals stage

    proc = run_cli(run_cmd(world, out, conf, stages), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got, want = _stage_tables(out), _stage_tables(reference)
    assert got == want
    assert got["graph/edges"] and got["signals"]
    assert _outputs(out)[:2] == _outputs(reference)[:2]  # quarantine and report too
