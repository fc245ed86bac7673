"""Stage hand-off inside one run: validate writes the clean inputs once, later stages read them."""

from __future__ import annotations

import datetime as dt

import pytest
from blocked import needs_graphframes
from worldkit import write_world

from graph import io
from graph.errors import StaleCleanInputs
from graph.pipeline import CLEAN, CLEAN_SOURCE, run_pipeline
from graph.validate import TABLES, read_inputs, validate_inputs

pytestmark = pytest.mark.spark

DS = dt.date(2026, 3, 10)
LOOKBACK = 2


def _rows(df) -> list:
    return sorted(df.collect())


def test_validate_writes_the_clean_tables_later_stages_read(spark, config, tmp_path):
    world, out = tmp_path / "world", tmp_path / "out"
    write_world(world, DS, days=2, accounts=12, bad_payments=1)
    summary = run_pipeline(spark, config, str(world), str(out), DS, LOOKBACK, stages=["validate", "graph"])

    expected = validate_inputs(spark, config, read_inputs(spark, str(world), DS, LOOKBACK), DS, LOOKBACK)
    for table in TABLES:
        written = io.read_output(spark, str(out), DS, f"{CLEAN}/{table}")
        assert _rows(written) == _rows(expected.clean[table]), table
    expected.release()
    # The bad payments are in quarantine, not in the clean table the graph was built from.
    assert summary["stages"]["validate"]["payments"]["rows_quarantined"] == 1
    source = io.read_json(spark, f"{io.run_dir(str(out), DS)}/{CLEAN_SOURCE}")
    assert source == {"input_fingerprint": summary["input_fingerprint"],
                      "window": [str(DS - dt.timedelta(days=LOOKBACK - 1)), str(DS)]}
    assert summary["stages"]["graph"]["n_vertices"] > 0


def test_a_stage_without_validated_inputs_fails_clearly(spark, config, tmp_path):
    world, out = tmp_path / "world", tmp_path / "out"
    write_world(world, DS, days=1, accounts=6)
    with pytest.raises(StaleCleanInputs, match="no validated inputs for this ds; run the validate stage first"):
        run_pipeline(spark, config, str(world), str(out), DS, 1, stages=["graph"])


def test_inputs_changed_after_validate_are_refused(spark, config, tmp_path):
    world, out = tmp_path / "world", tmp_path / "out"
    write_world(world, DS, days=1, accounts=6)
    run_pipeline(spark, config, str(world), str(out), DS, 1, stages=["validate"])
    # A producer rewrites the day's payments after validation ran (more accounts, new files).
    write_world(world, DS, days=1, accounts=9)
    with pytest.raises(StaleCleanInputs, match="validated from other inputs"):
        run_pipeline(spark, config, str(world), str(out), DS, 1, stages=["graph"])
    # Re-validating makes the graph stage usable again.
    summary = run_pipeline(spark, config, str(world), str(out), DS, 1, stages=["validate", "graph"])
    assert summary["stages"]["validate"]["accounts"]["rows_clean"] == 9


def test_a_failed_validation_leaves_no_usable_clean_tables(spark, config, tmp_path):
    world, out = tmp_path / "world", tmp_path / "out"
    write_world(world, DS, days=1, accounts=6)
    run_pipeline(spark, config, str(world), str(out), DS, 1, stages=["validate"])
    # Now most payments are bad: validation fails on the quarantine limit...
    write_world(world, DS, days=1, accounts=6, bad_payments=40)
    with pytest.raises(Exception, match="too many bad rows"):
        run_pipeline(spark, config, str(world), str(out), DS, 1, stages=["validate"])
    # ...and the clean tables of the earlier, good inputs are not taken for these.
    assert not io.exists(spark, f"{io.run_dir(str(out), DS)}/{CLEAN_SOURCE}")
    with pytest.raises(StaleCleanInputs):
        run_pipeline(spark, config, str(world), str(out), DS, 1, stages=["graph"])


@pytest.mark.slow
@needs_graphframes
def test_full_run_finds_the_planted_rings_and_exports_them(spark, config, tmp_path, monkeypatch):
    # Every stage, in one session, on a small generated world; then the export is verified.
    from test_export import make_env  # throw-away HMAC and Ed25519 keys

    from graph.evaluate import evaluate
    from graph.export import verify_export
    from graph.generate import generate_world

    for key, value in make_env().items():
        monkeypatch.setenv(key, value)
    world, out, ds = tmp_path / "world", tmp_path / "out", dt.date(2026, 3, 10)
    generate_world(out=world, accounts=3000, days=14, end_date=ds, seed=5, label_fraction=0.25)
    summary = run_pipeline(spark, config, str(world), str(out), ds, 14)
    assert set(summary["stages"]) == {"validate", "graph", "signals", "rings", "score", "export"}
    report = evaluate(spark, str(world / "truth"), str(out), ds)
    assert report["overall"]["rings"]["detection_rate"] >= 0.8
    for ring_type in ("mule", "card_testing"):
        assert report["by_ring_type"][ring_type]["accounts"]["f1"] >= 0.8, ring_type
    assert report["overall"]["false_positive_rate"] <= 0.005
    assert verify_export(out / f"ds={ds}" / "export")["total_rows"] > 0
