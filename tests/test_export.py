"""Export: tokenised lists, manifest, signature, hash chain, diff, atomic replace."""

from __future__ import annotations

import datetime as dt
import gzip
import hmac
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from graph.errors import RingfenceError, SchemaError, VerificationFailed
from graph.schema import ENTITY_TYPES, RISK_SCHEMA, spark_ddl

FAR = dt.datetime(2090, 1, 1, tzinfo=dt.UTC)
HMAC_HEX = "11" * 32


def make_env(hmac_hex: str = HMAC_HEX) -> dict[str, str]:
    """Fresh secrets as the environment would hold them (never the process env)."""
    k = Ed25519PrivateKey.generate()
    raw = serialization.Encoding.Raw
    return {
        "RINGFENCE_HMAC_KEY": hmac_hex,
        "RINGFENCE_SIGNING_KEY": k.private_bytes(raw, serialization.PrivateFormat.Raw,
                                                 serialization.NoEncryption()).hex(),
        "RINGFENCE_VERIFY_KEY": k.public_key().public_bytes(raw, serialization.PublicFormat.Raw).hex(),
    }


def tok(entity_type: str, entity_id: str, hmac_hex: str = HMAC_HEX) -> str:
    return hmac.new(bytes.fromhex(hmac_hex), f"{entity_type}:{entity_id}".encode(), "sha256").hexdigest()


def row(et, eid, score, ring=None, rtype=None, reasons=(), exp=FAR):
    return (et, eid, float(score), ring, rtype, list(reasons), exp)


def write_risk(spark, root: Path, ds: str, rows: list[tuple]) -> None:
    spark.createDataFrame(rows, spark_ddl(RISK_SCHEMA)).write.mode("overwrite").parquet(
        str(root / f"ds={ds}" / "risk"))


def do_export(spark, config, root: Path, ds: str, env: dict) -> dict:
    from graph.export import export_lists

    return export_lists(spark, config, str(root), dt.date.fromisoformat(ds), env=env)


BASE = [
    row("account", "acc-1", 0.9, "ring-7", "mule", ["fan_in", "shared_device"]),
    row("account", "acc-2", 0.55, None, None, []),
    row("device", "dev-9", 0.8, "ring-7", "mule", ["shared_device"]),
    row("card", "tok_card_1", 0.7, "ring-8", "card_testing", ["tiny_amounts"]),
]


@pytest.fixture()
def env():
    return make_env()


@pytest.mark.spark
def test_spark_tokens_equal_python_hmac(spark):
    from pyspark.sql import functions as F

    from graph.tokens import token_hex, tokenize_column

    key = bytes.fromhex(HMAC_HEX)
    ids = [("account", "acc-1"), ("merchant", "acc-1"), ("ip", "10.0.0.1"), ("account", "ünï-✓")]
    df = spark.createDataFrame(ids, "entity_type string, entity_id string")
    got = {(r.entity_type, r.entity_id): r.t for r in
           df.select("*", tokenize_column(F.col("entity_type"), F.col("entity_id"), key).alias("t")).collect()}
    assert got == {i: hmac.new(key, f"{i[0]}:{i[1]}".encode(), "sha256").hexdigest() for i in ids}
    assert got == {i: token_hex(key, *i) for i in ids}
    # The entity type is part of the message: the same string as two types, two tokens.
    assert got[("account", "acc-1")] != got[("merchant", "acc-1")]


@pytest.mark.spark
def test_export_lists_are_tokenised_signed_and_complete(spark, config, tmp_path, env):
    from graph.export import verify_export

    write_risk(spark, tmp_path, "2026-03-01", BASE)
    summary = do_export(spark, config, tmp_path, "2026-03-01", env)
    d = tmp_path / "ds=2026-03-01" / "export"
    assert summary["export_dir"].endswith("ds=2026-03-01/export")
    assert summary["rows"] == {"account": 2, "device": 1, "card": 1, "ip": 0, "merchant": 0}
    for et in ENTITY_TYPES:  # every type has both files, empty or not
        assert (d / "lists" / f"{et}.parquet").is_file() and (d / "lists" / f"{et}.jsonl.gz").is_file()
    got = pq.read_table(d / "lists" / "account.parquet").to_pylist()
    assert sorted(got, key=lambda r: r["token"]) == sorted([
        {"token": tok("account", "acc-1"), "score": 0.9, "ring_id": "ring-7", "ring_type": "mule",
         "reasons": ["fan_in", "shared_device"], "expires_at": FAR},
        {"token": tok("account", "acc-2"), "score": 0.55, "ring_id": None, "ring_type": None,
         "reasons": [], "expires_at": FAR},
    ], key=lambda r: r["token"])
    lines = [json.loads(x) for x in gzip.decompress((d / "lists" / "card.jsonl.gz").read_bytes()).splitlines()]
    assert lines == [{"token": tok("card", "tok_card_1"), "score": 0.7, "ring_id": "ring-8",
                      "ring_type": "card_testing", "reasons": ["tiny_amounts"],
                      "expires_at": "2090-01-01T00:00:00.000000Z"}]
    assert gzip.decompress((d / "lists" / "ip.jsonl.gz").read_bytes()) == b""
    assert pq.read_table(d / "lists" / "ip.parquet").num_rows == 0

    manifest = json.loads((d / "manifest.json").read_bytes())
    assert manifest["run_id"] == "ringfence-2026-03-01"
    assert manifest["input_fingerprint"].startswith("risk-sha256:")
    assert manifest["previous_manifest_sha256"] is None
    assert manifest["expires_at"] == "2090-01-01T00:00:00Z"
    assert manifest["lists"]["account"]["ring_types"] == {"mule": 1, "none": 1}
    assert (d / "_COMMITTED").read_text().strip() == summary["manifest_sha256"]
    assert verify_export(d, env=env)["chain"] == "first export"

    # No raw identifier anywhere in the export, compressed or not.
    blobs = [p.read_bytes() for p in d.rglob("*") if p.is_file()]
    blobs += [gzip.decompress(p.read_bytes()) for p in d.rglob("*.jsonl.gz")]
    for _, raw_id, *_ in BASE:
        assert not any(raw_id.encode() in b for b in blobs), raw_id


@pytest.mark.spark
def test_run_summary_supplies_run_id_and_fingerprint(spark, config, tmp_path, env):
    write_risk(spark, tmp_path, "2026-03-01", BASE)
    (tmp_path / "ds=2026-03-01" / "run_summary.json").write_text(
        json.dumps({"run_id": "run-42", "input_fingerprint": "fp-abc"}))
    do_export(spark, config, tmp_path, "2026-03-01", env)
    manifest = json.loads((tmp_path / "ds=2026-03-01" / "export" / "manifest.json").read_bytes())
    assert (manifest["run_id"], manifest["input_fingerprint"]) == ("run-42", "fp-abc")


@pytest.mark.spark
def test_chain_diff_and_clean_reexport(spark, config, tmp_path, env):
    from graph.export import verify_export

    write_risk(spark, tmp_path, "2026-03-01", BASE)
    first = do_export(spark, config, tmp_path, "2026-03-01", env)
    day2 = [BASE[0], row("account", "acc-2", 0.95), BASE[2], row("ip", "10.1.1.1", 0.6)]  # card removed
    write_risk(spark, tmp_path, "2026-03-02", day2)
    second = do_export(spark, config, tmp_path, "2026-03-02", env)
    d2 = tmp_path / "ds=2026-03-02" / "export"
    assert second["previous_ds"] == "2026-03-01"
    assert json.loads((d2 / "manifest.json").read_bytes())["previous_manifest_sha256"] == \
        first["manifest_sha256"]
    diff = sorted(pq.read_table(d2 / "diff.parquet").to_pylist(), key=lambda r: r["change"])
    assert diff == [
        {"entity_type": "ip", "token": tok("ip", "10.1.1.1"), "change": "added",
         "old_score": None, "new_score": 0.6},
        {"entity_type": "card", "token": tok("card", "tok_card_1"), "change": "removed",
         "old_score": 0.7, "new_score": None},
        {"entity_type": "account", "token": tok("account", "acc-2"), "change": "score_changed",
         "old_score": 0.55, "new_score": 0.95},
    ]
    assert json.loads((d2 / "diff.json").read_text())["total"] == {"added": 1, "removed": 1, "score_changed": 1}
    assert verify_export(d2, env=env, full_chain=True)["exports_checked"] == 2

    # Re-running ds 2 with other data replaces it cleanly, still linked to ds 1.
    write_risk(spark, tmp_path, "2026-03-02", day2[:2])
    third = do_export(spark, config, tmp_path, "2026-03-02", env)
    assert third["total_rows"] == 2 and third["previous_ds"] == "2026-03-01"
    assert pq.read_table(d2 / "lists" / "ip.parquet").num_rows == 0
    assert pq.read_table(d2 / "lists" / "device.parquet").num_rows == 0
    staging = tmp_path / "ds=2026-03-02" / "_staging"
    assert not staging.exists() or not any(staging.iterdir())
    assert verify_export(d2, env=env)["manifest_sha256"] == third["manifest_sha256"]


def _flip_one_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.spark
def test_verify_catches_one_byte_changes_and_broken_chain(spark, config, tmp_path, env):
    import shutil

    from graph.export import verify_export

    write_risk(spark, tmp_path, "2026-03-01", BASE)
    do_export(spark, config, tmp_path, "2026-03-01", env)
    write_risk(spark, tmp_path, "2026-03-02", BASE[:3])
    do_export(spark, config, tmp_path, "2026-03-02", env)
    d1, d2 = (tmp_path / f"ds=2026-03-0{i}" / "export" for i in (1, 2))
    pristine = tmp_path / "pristine"
    shutil.copytree(tmp_path / "ds=2026-03-02", pristine)
    assert verify_export(d2, env=env)["signature"] == "ok"

    def restore():
        shutil.rmtree(tmp_path / "ds=2026-03-02")
        shutil.copytree(pristine, tmp_path / "ds=2026-03-02")

    _flip_one_byte(d2 / "lists" / "account.parquet", 100)
    with pytest.raises(VerificationFailed, match="account.parquet: checksum mismatch"):
        verify_export(d2, env=env)
    restore()
    _flip_one_byte(d2 / "lists" / "device.jsonl.gz", 30)
    with pytest.raises(VerificationFailed, match="device.jsonl.gz: checksum mismatch"):
        verify_export(d2, env=env)
    restore()
    _flip_one_byte(d2 / "manifest.json", 200)
    with pytest.raises(VerificationFailed, match="signature does not verify"):
        verify_export(d2, env=env)
    restore()
    # Another signer's key does not vouch for this export.
    with pytest.raises(VerificationFailed, match="signature does not verify"):
        verify_export(d2, env={**env, "RINGFENCE_VERIFY_KEY": make_env()["RINGFENCE_VERIFY_KEY"]})
    (d2 / "_COMMITTED").unlink()
    with pytest.raises(VerificationFailed, match="_COMMITTED missing"):
        verify_export(d2, env=env)
    restore()
    # Previous manifest altered (even if re-signed): the link from ds 2 breaks.
    _flip_one_byte(d1 / "manifest.json", 200)
    with pytest.raises(VerificationFailed, match="hash chain broken"):
        verify_export(d2, env=env)
    shutil.rmtree(d1)
    with pytest.raises(VerificationFailed, match="previous export .* is missing"):
        verify_export(d2, env=env)


@pytest.mark.spark
def test_bad_rows_and_missing_secrets_fail_clearly(spark, config, tmp_path, env):
    write_risk(spark, tmp_path, "2026-03-01",
               BASE + [row("account", "acc-1", 0.4), row("wallet", "w-1", 0.5), row("ip", "1.2.3.4", 1.5)])
    with pytest.raises(SchemaError) as e:
        do_export(spark, config, tmp_path, "2026-03-01", env)
    msg = str(e.value)
    assert "'duplicate_entity': 1" in msg and "'unknown_entity_type': 1" in msg and "'score_not_in_0_1': 1" in msg
    assert "acc-1" not in msg  # counts, never identifiers
    assert not (tmp_path / "ds=2026-03-01" / "export").exists()
    for var in ("RINGFENCE_HMAC_KEY", "RINGFENCE_SIGNING_KEY"):
        with pytest.raises(RingfenceError, match=var):
            do_export(spark, config, tmp_path, "2026-03-01", {k: v for k, v in env.items() if k != var})
    with pytest.raises(SchemaError, match="risk table not found"):
        do_export(spark, config, tmp_path, "2026-03-09", env)
