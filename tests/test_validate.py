"""Input validation: table-level errors, PAN hard error, per-row quarantine reasons and counts."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from graph.errors import QuarantineLimitExceeded, RawCardNumberFound, SchemaError
from graph.schema import INPUT_SCHEMAS, spark_ddl
from graph.validate import enforce_limits, read_inputs, validate_inputs

pytestmark = pytest.mark.spark

DS = dt.date(2024, 5, 10)
LOOKBACK = 3  # window: 2024-05-08 00:00 .. 2024-05-11 00:00 (exclusive), UTC
UTC = dt.UTC


def ts(day: int, hour: int = 12, minute: int = 0, second: int = 0) -> dt.datetime:
    return dt.datetime(2024, 5, day, hour, minute, second, tzinfo=UTC)


def payment(event_id: str, **over) -> dict:
    row = dict(event_id=event_id, event_time=ts(9), account_id="a1", card_token="ct_1", card_bin="411111",
               merchant_id="m1", amount=Decimal("1.50"), currency="USD", status="approved",
               device_id="d1", ip="10.0.0.1")
    row.update(over)
    return row


def transfer(event_id: str, **over) -> dict:
    row = dict(event_id=event_id, event_time=ts(9), src_account_id="a1", dst_account_id="a2",
               amount=Decimal("20.00"), currency="EUR", status="approved", device_id="d1", ip="10.0.0.2")
    row.update(over)
    return row


def session(event_id: str, **over) -> dict:
    row = dict(event_id=event_id, event_time=ts(9), account_id="a1", event_type="login", device_id="d1",
               ip="10.0.0.3", ip_country="KR", ip_lat=37.5, ip_lon=127.0, tap_interval_cv=0.4)
    row.update(over)
    return row


def account(account_id: str, **over) -> dict:
    row = dict(account_id=account_id, created_at=ts(1), kyc_level=2)
    row.update(over)
    return row


def label(entity_id: str, **over) -> dict:
    row = dict(entity_type="account", entity_id=entity_id, label="fraud", labeled_at=ts(5),
               source="chargeback")
    row.update(over)
    return row


def frames(spark, **rows: list[dict]):
    """Spark DataFrames with the contract schema for every table (empty where not given)."""
    out = {}
    for table, schema in INPUT_SCHEMAS.items():
        data = [tuple(r[f.name] for f in schema) for r in rows.get(table, [])]
        out[table] = spark.createDataFrame(data, spark_ddl(schema))
    return out


def cfg_with(config, **validation):
    return config.model_copy(update={"validation": config.validation.model_copy(update=validation)})


def _key(r):
    return (r[0], r[1] or "", r[2])


def quarantined(result) -> list[tuple[str, str | None, tuple[str, ...]]]:
    return sorted(((r["table"], r["record_id"], tuple(r["reasons"])) for r in result.quarantine.collect()),
                  key=_key)


def ids(df, col: str) -> list[str]:
    return sorted(r[col] for r in df.select(col).collect())


# --- row level --------------------------------------------------------------------------


def test_clean_input_passes_untouched(spark, config):
    tables = frames(
        spark,
        payments=[payment("p1"), payment("p2", ip="2001:db8::1", card_bin=None, device_id=None)],
        transfers=[transfer("t1")],
        sessions=[session("s1", event_type="biometric_enrol", ip_lat=None)],  # unknown event_type is fine
        accounts=[account("a1"), account("a2", kyc_level=None, created_at=None)],
        labels=[label("a1"), label("d1", entity_type="device", labeled_at=ts(20))],
    )
    result = validate_inputs(spark, config, tables, DS, LOOKBACK)
    assert quarantined(result) == []
    assert {t: (e["rows_read"], e["rows_quarantined"], e["fraction"]) for t, e in result.report.items()} == {
        "accounts": (2, 0, 0.0), "payments": (2, 0, 0.0), "transfers": (1, 0, 0.0),
        "sessions": (1, 0, 0.0), "labels": (2, 0, 0.0),
    }
    assert sorted(result.clean["payments"].collect()) == sorted(tables["payments"].collect())
    enforce_limits(config, result.report)


def test_each_bad_row_gets_its_reason(spark, config):
    tables = frames(
        spark,
        payments=[
            payment("ok"),
            payment("null_acct", account_id=None),
            payment("blank_merchant", merchant_id="  "),
            payment("bad_status", status="APPROVED"),
            payment("zero", amount=Decimal("0.00")),
            payment("neg", amount=Decimal("-3.00")),
            payment("cur", currency="usd"),
            payment("early", event_time=dt.datetime(2024, 5, 7, 23, 59, 59, tzinfo=UTC)),
            payment("late", event_time=dt.datetime(2024, 5, 11, 0, 0, 0, tzinfo=UTC)),
            payment("edge_start", event_time=dt.datetime(2024, 5, 8, 0, 0, 0, tzinfo=UTC)),
            payment("null_time", event_time=None),
            payment("bin", card_bin="41111"),
            payment("ip", ip="256.1.1.1"),
            payment("blank_ip", ip=""),
            payment("multi", status="pending", amount=Decimal("0.00")),
            payment("dup", event_time=ts(9, 10)),
            payment("dup", event_time=ts(9, 8), amount=Decimal("9.99")),   # earliest: kept
            payment("dup", event_time=ts(9, 11)),
            payment("dup_bad_first", event_time=ts(8), amount=Decimal("0.00")),
            payment("dup_bad_first", event_time=ts(9)),                     # the only valid copy: kept
        ],
        transfers=[
            transfer("t_ok"),
            transfer("t_self", dst_account_id="a1"),
            transfer("t_null_dst", dst_account_id=None),
        ],
        sessions=[
            session("s_ok", event_type="new_kind_of_event"),
            session("s_lat", ip_lat=91.0),
            session("s_cv", tap_interval_cv=-0.1),
            session("s_nan", tap_interval_cv=float("nan")),
            session("s_type", event_type=None),
        ],
        accounts=[
            account("a1"),
            account("a2", kyc_level=4),
            account("a3", created_at=ts(2)),
            account("a3", created_at=ts(1), kyc_level=3),  # earliest: kept
            account(None),
        ],
        labels=[
            label("a1"),
            label("a2", entity_type="user"),
            label("a3", label="fraudster"),
            label("a4", labeled_at=None),
        ],
    )
    result = validate_inputs(spark, config, tables, DS, LOOKBACK)
    assert quarantined(result) == sorted([
        ("payments", "null_acct", ("null:account_id",)),
        ("payments", "blank_merchant", ("blank:merchant_id",)),
        ("payments", "bad_status", ("bad_enum:status",)),
        ("payments", "zero", ("non_positive:amount",)),
        ("payments", "neg", ("non_positive:amount",)),
        ("payments", "cur", ("unknown_currency",)),
        ("payments", "early", ("out_of_window:event_time",)),
        ("payments", "late", ("out_of_window:event_time",)),
        ("payments", "null_time", ("null:event_time",)),
        ("payments", "bin", ("bad_format:card_bin",)),
        ("payments", "ip", ("bad_format:ip",)),
        ("payments", "blank_ip", ("blank:ip",)),
        ("payments", "multi", ("bad_enum:status", "non_positive:amount")),
        ("payments", "dup", ("duplicate:event_id",)),
        ("payments", "dup", ("duplicate:event_id",)),
        ("payments", "dup_bad_first", ("non_positive:amount",)),
        ("transfers", "t_self", ("self_transfer",)),
        ("transfers", "t_null_dst", ("null:dst_account_id",)),
        ("sessions", "s_lat", ("out_of_range:ip_lat",)),
        ("sessions", "s_cv", ("out_of_range:tap_interval_cv",)),
        ("sessions", "s_nan", ("out_of_range:tap_interval_cv",)),
        ("sessions", "s_type", ("null:event_type",)),
        ("accounts", "a2", ("out_of_range:kyc_level",)),
        ("accounts", "a3", ("duplicate:account_id",)),
        ("accounts", None, ("null:account_id",)),
        ("labels", "user:a2", ("bad_enum:entity_type",)),
        ("labels", "account:a3", ("bad_enum:label",)),
        ("labels", "account:a4", ("null:labeled_at",)),
    ], key=_key)
    assert ids(result.clean["payments"], "event_id") == ["dup", "dup_bad_first", "edge_start", "ok"]
    kept = {r.event_id: r for r in result.clean["payments"].collect()}
    assert kept["dup"].amount == Decimal("9.99") and kept["dup_bad_first"].amount == Decimal("1.50")
    assert [(r.account_id, r.kyc_level) for r in result.clean["accounts"].orderBy("account_id").collect()] == [
        ("a1", 2), ("a3", 3)]
    assert ids(result.clean["sessions"], "event_id") == ["s_ok"]
    assert result.report["payments"] == {
        "rows_read": 20, "rows_clean": 4, "rows_quarantined": 16, "fraction": 0.8,
        "reasons": {
            "duplicate:event_id": 2, "non_positive:amount": 4, "out_of_window:event_time": 2,
            "bad_enum:status": 2, "bad_format:card_bin": 1, "bad_format:ip": 1, "blank:ip": 1,
            "blank:merchant_id": 1, "null:account_id": 1, "null:event_time": 1, "unknown_currency": 1,
        },
    }
    assert list(result.report["payments"]["reasons"])[:2] == ["non_positive:amount", "bad_enum:status"]
    assert result.report["accounts"]["rows_quarantined"] == 3
    assert result.report["labels"]["fraction"] == 0.75


def test_quarantine_row_json_carries_the_row(spark, config):
    tables = frames(spark, payments=[payment("bad", amount=Decimal("-1.25"), device_id=None)])
    row = validate_inputs(spark, config, tables, DS, LOOKBACK).quarantine.collect()[0]
    assert (row["table"], row["record_id"], row["reason"]) == ("payments", "bad", "non_positive:amount")
    doc = json.loads(row["row_json"])
    assert doc["event_id"] == "bad" and doc["amount"] == -1.25 and doc["device_id"] is None
    assert doc["event_time"].startswith("2024-05-09T12:00:00")
    assert set(doc) == {f.name for f in INPUT_SCHEMAS["payments"]}


def test_validation_is_deterministic(spark, config):
    rows = [payment("dup", event_time=ts(9), amount=Decimal(a)) for a in ("1.00", "2.00", "3.00")]
    runs = []
    for order in (rows, rows[::-1]):
        result = validate_inputs(spark, config, frames(spark, payments=order), DS, LOOKBACK)
        runs.append((sorted(result.clean["payments"].collect()), sorted(result.quarantine.collect())))
    assert runs[0] == runs[1]
    assert len(runs[0][0]) == 1


# --- raw card numbers -------------------------------------------------------------------------

PANS = ("4111111111111111", "5555 5555 5555 4444", "378282246310005")


def test_pan_in_identifier_columns_is_a_hard_error_without_the_number(spark, config):
    tables = frames(
        spark,
        payments=[payment("p1", card_token=PANS[0]), payment("p2", card_token=f"tok_{PANS[0]}"),
                  payment("p3", card_token="tok_4111111111111112")],   # Luhn fails: a token, fine
        sessions=[session("s1", device_id=PANS[1])],
        labels=[label(PANS[2], entity_type="card")],
        transfers=[transfer("t1", status=PANS[0])],                      # non-identifier string too
    )
    with pytest.raises(RawCardNumberFound) as e:
        validate_inputs(spark, config, tables, DS, LOOKBACK)
    msg = str(e.value)
    assert "payments.card_token (2 rows)" in msg
    assert "sessions.device_id (1 row)" in msg
    assert "labels.entity_id (1 row)" in msg
    assert "transfers.status (1 row)" in msg
    assert "accounts" not in msg and "payments.event_id" not in msg
    for pan in PANS:
        assert pan not in msg and pan.replace(" ", "") not in msg


def test_luhn_invalid_or_brandless_numbers_are_not_pans(spark, config):
    tables = frames(spark, payments=[payment("1234567812345670", card_token="4111111111111112")])
    result = validate_inputs(spark, config, tables, DS, LOOKBACK)
    assert result.report["payments"]["rows_clean"] == 1


# --- limits ------------------------------------------------------------------------------------


def test_enforce_limits_names_every_table_over_the_limit(config):
    report = {
        "payments": {"rows_read": 100, "rows_clean": 90, "rows_quarantined": 10, "fraction": 0.1,
                     "reasons": {"bad_enum:status": 7, "null:account_id": 3}},
        "transfers": {"rows_read": 10, "rows_clean": 4, "rows_quarantined": 6, "fraction": 0.6,
                      "reasons": {"self_transfer": 6}},
        "accounts": {"rows_read": 100, "rows_clean": 96, "rows_quarantined": 4, "fraction": 0.04,
                     "reasons": {"out_of_range:kyc_level": 4}},
    }
    with pytest.raises(QuarantineLimitExceeded) as e:
        enforce_limits(cfg_with(config, max_quarantine_fraction=0.05), report)
    msg = str(e.value)
    assert "payments: 10 of 100 rows quarantined (10.00% > limit 5.00%)" in msg
    assert "bad_enum:status (7)" in msg and "transfers" in msg and "self_transfer (6)" in msg
    assert "accounts" not in msg
    enforce_limits(cfg_with(config, max_quarantine_fraction=0.6), report)  # at the limit: passes


def test_limit_applies_to_a_validated_run(spark, config):
    tables = frames(spark, transfers=[transfer("t1"), transfer("t2", dst_account_id="a1")])
    result = validate_inputs(spark, config, tables, DS, LOOKBACK)
    with pytest.raises(QuarantineLimitExceeded, match="transfers: 1 of 2"):
        enforce_limits(cfg_with(config, max_quarantine_fraction=0.2), result.report)
    enforce_limits(cfg_with(config, max_quarantine_fraction=0.5), result.report)


# --- table level (Parquet on disk) ---------------------------------------------------------------


def arrow(table: str, rows: list[dict], schema: pa.Schema | None = None, extra: dict | None = None) -> pa.Table:
    schema = schema or INPUT_SCHEMAS[table]
    cols = {f.name: pa.array([r[f.name] for r in rows], type=f.type) for f in schema}
    for name, values in (extra or {}).items():
        cols[name] = pa.array(values)
    return pa.table(cols)


def write_world(root, overrides: dict | None = None, skip: tuple[str, ...] = ()) -> str:
    """A tiny valid input world; ``overrides`` maps table -> pa.Table (or dict of partition -> pa.Table)."""
    base = {
        "accounts": arrow("accounts", [account("a1"), account("a2")]),
        "payments": arrow("payments", [payment("p1")]),
        "transfers": arrow("transfers", [transfer("t1")]),
        "sessions": arrow("sessions", [session("s1")]),
        "labels": arrow("labels", [label("a1")]),
    }
    base.update(overrides or {})
    for table, data in base.items():
        if table in skip:
            continue
        parts = data if isinstance(data, dict) else {None: data}
        for part, tbl in parts.items():
            d = root / table / (f"ds={part}" if part else "")
            d.mkdir(parents=True, exist_ok=True)
            pq.write_table(tbl, d / "part-0.parquet")
    return str(root)


def test_missing_table_names_table_and_path(spark, tmp_path):
    root = write_world(tmp_path, skip=("sessions",))
    with pytest.raises(SchemaError) as e:
        read_inputs(spark, root, DS, LOOKBACK)
    assert "table 'sessions': missing" in str(e.value) and f"{root}/sessions" in str(e.value)


def test_missing_column_and_wrong_types_are_all_named(spark, tmp_path):
    pay_schema = pa.schema([f for f in INPUT_SCHEMAS["payments"] if f.name != "amount"])
    tr_schema = pa.schema([f if f.name != "amount" else pa.field("amount", pa.string())
                           for f in INPUT_SCHEMAS["transfers"]])
    acc_schema = pa.schema([f if f.name != "account_id" else pa.field("account_id", pa.int64())
                            for f in INPUT_SCHEMAS["accounts"]])
    root = write_world(tmp_path, {
        "payments": arrow("payments", [payment("p1")], pay_schema),
        "transfers": arrow("transfers", [transfer("t1", amount="20.00")], tr_schema),
        "accounts": arrow("accounts", [account(7)], acc_schema),
    })
    with pytest.raises(SchemaError) as e:
        read_inputs(spark, root, DS, LOOKBACK)
    msg = str(e.value)
    assert "table 'payments'" in msg and "missing column 'amount' (expected decimal(18,2)" in msg
    assert "table 'transfers'" in msg and "column 'amount' has incompatible type: expected decimal(18,2), found string" in msg
    assert "table 'accounts'" in msg and "column 'account_id' has incompatible type: expected string, found bigint" in msg


def test_extra_columns_are_tolerated_and_dropped(spark, config, tmp_path):
    root = write_world(tmp_path, {
        "payments": arrow("payments", [payment("p1"), payment("p2")], extra={"note": ["x", "y"], "risk": [1, 2]}),
    })
    tables = read_inputs(spark, root, DS, LOOKBACK)
    assert tables["payments"].columns == [f.name for f in INPUT_SCHEMAS["payments"]]
    result = validate_inputs(spark, config, tables, DS, LOOKBACK)
    assert result.report["payments"]["rows_clean"] == 2


def test_compatible_types_are_cast_and_lossy_rows_quarantined(spark, config, tmp_path):
    acc = pa.schema([("account_id", pa.string()), ("created_at", pa.timestamp("us")),  # no tz: NTZ
                     ("kyc_level", pa.int64())])
    pay = pa.schema([f if f.name not in ("amount", "event_time") else
                     pa.field(f.name, pa.decimal128(10, 3) if f.name == "amount" else pa.string())
                     for f in INPUT_SCHEMAS["payments"]])
    root = write_world(tmp_path, {
        "accounts": arrow("accounts", [
            account("a1", created_at=dt.datetime(2024, 5, 1, 8, 0)),
            account("big", kyc_level=2**40, created_at=None),
        ], acc),
        "payments": arrow("payments", [
            payment("ok", event_time="2024-05-09T10:00:00Z", amount=Decimal("2.500")),
            payment("frac", event_time="2024-05-09 10:00:00", amount=Decimal("1.005")),
            payment("text", event_time="yesterday"),
        ], pay),
    })
    tables = read_inputs(spark, root, DS, LOOKBACK)
    assert dict(tables["payments"].dtypes)["amount"] == "decimal(18,2)"
    assert dict(tables["accounts"].dtypes)["kyc_level"] == "int"
    result = validate_inputs(spark, config, tables, DS, LOOKBACK)
    assert quarantined(result) == [
        ("accounts", "big", ("unparsable:kyc_level",)),
        ("payments", "frac", ("unparsable:amount",)),
        ("payments", "text", ("unparsable:event_time",)),
    ]
    a1 = result.clean["accounts"].collect()[0]
    assert a1.created_at.replace(tzinfo=None) == dt.datetime(2024, 5, 1, 8, 0)  # session is UTC
    ok = result.clean["payments"].collect()[0]
    assert ok.amount == Decimal("2.50") and ok.event_time.replace(tzinfo=None) == dt.datetime(2024, 5, 9, 10)


def test_partitions_outside_the_window_are_not_read(spark, config, tmp_path):
    root = write_world(tmp_path, {
        "payments": {
            "2024-05-01": arrow("payments", [payment("old", event_time=ts(1), status="garbage")]),
            "2024-05-09": arrow("payments", [payment("in"), payment("late", event_time=ts(11))]),
            "2024-05-11": arrow("payments", [payment("future", event_time=ts(11))]),
        },
    })
    result = validate_inputs(spark, config, read_inputs(spark, root, DS, LOOKBACK), DS, LOOKBACK)
    assert result.report["payments"]["rows_read"] == 2
    assert quarantined(result) == [("payments", "late", ("out_of_window:event_time",))]


def test_unpartitioned_event_table_is_filtered_to_the_window(spark, config, tmp_path):
    root = write_world(tmp_path, {
        "transfers": arrow("transfers", [transfer("old", event_time=ts(1)), transfer("in"),
                                         transfer("next_day", event_time=ts(11)),
                                         transfer("no_time", event_time=None)]),
    })
    result = validate_inputs(spark, config, read_inputs(spark, root, DS, LOOKBACK), DS, LOOKBACK)
    assert result.report["transfers"]["rows_read"] == 2
    assert ids(result.clean["transfers"], "event_id") == ["in"]
    assert quarantined(result) == [("transfers", "no_time", ("null:event_time",))]


def test_empty_tables_are_fine(spark, config, tmp_path):
    root = write_world(tmp_path, {"sessions": arrow("sessions", [])}, skip=("payments",))
    (tmp_path / "payments").mkdir()  # a directory with no files at all
    result = validate_inputs(spark, config, read_inputs(spark, root, DS, LOOKBACK), DS, LOOKBACK)
    assert result.report["payments"]["rows_read"] == 0 and result.report["sessions"]["rows_read"] == 0
    assert result.report["accounts"]["rows_read"] == 2
    enforce_limits(config, result.report)


# --- property: generated malformed rows ----------------------------------------------------------

# fault -> (how it changes a valid payment, the reason it must produce)
FAULTS = {
    "null_account": (lambda d: {"account_id": None}, "null:account_id"),
    "blank_merchant": (lambda d: {"merchant_id": d(st.sampled_from(["", " ", "\t"]))}, "blank:merchant_id"),
    "bad_status": (lambda d: {"status": d(st.sampled_from(["pending", "Approved", "x"]))}, "bad_enum:status"),
    "amount": (lambda d: {"amount": Decimal(d(st.integers(-10_000, 0))) / 100}, "non_positive:amount"),
    "currency": (lambda d: {"currency": d(st.sampled_from(["usd", "XXX", "GBP"]))}, "unknown_currency"),
    "time": (lambda d: {"event_time": d(st.sampled_from([ts(7, 23, 59, 59), ts(11, 0), ts(1), None]))}, None),
    "card_bin": (lambda d: {"card_bin": d(st.sampled_from(["12345", "1234567", "abcdef", "41 111"]))},
                 "bad_format:card_bin"),
    "ip": (lambda d: {"ip": d(st.sampled_from(["256.0.0.1", "1.2.3", "01.2.3.4", "::g", "1::2::3", "host"]))},
           "bad_format:ip"),
}


@st.composite
def payment_batches(draw):
    rows, expected = [], {}
    n = draw(st.integers(1, 25))
    for i in range(n):
        eid = f"e{i}"
        faults = draw(st.sets(st.sampled_from(sorted(FAULTS)), max_size=3))
        row = payment(eid, account_id=f"a{draw(st.integers(0, 3))}",
                      amount=Decimal(draw(st.integers(1, 10**6))) / 100,
                      event_time=ts(draw(st.integers(8, 10)), draw(st.integers(0, 23)), draw(st.integers(0, 59))),
                      ip=draw(st.sampled_from(["10.1.2.3", "::1", "fe80::1:2", "192.168.0.255", None])))
        reasons = set()
        for f in faults:
            change, reason = FAULTS[f]
            row.update(change(draw))
            if f == "time":
                reason = "null:event_time" if row["event_time"] is None else "out_of_window:event_time"
            reasons.add(reason)
        rows.append(row)
        expected[(eid, len([r for r in rows if r["event_id"] == eid]) - 1)] = reasons
        if not faults and draw(st.integers(0, 4)) == 0:
            # A later copy of a valid row: the copy is the duplicate.
            copy = dict(row, event_time=row["event_time"] + dt.timedelta(seconds=draw(st.integers(1, 3600))),
                        amount=Decimal("0.01"))
            if copy["event_time"] < dt.datetime(2024, 5, 11, tzinfo=UTC):
                rows.append(copy)
                expected[(eid, 1)] = {"duplicate:event_id"}
    order = draw(st.permutations(list(range(len(rows)))))
    return [rows[i] for i in order], expected


@given(payment_batches())
@settings(max_examples=8, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
def test_generated_malformed_rows_are_quarantined_with_their_reasons(spark, config, batch):
    rows, expected = batch
    result = validate_inputs(spark, config, frames(spark, payments=rows), DS, LOOKBACK)
    entry = result.report["payments"]
    q = [(r["record_id"], frozenset(r["reasons"])) for r in result.quarantine.collect()]
    clean = ids(result.clean["payments"], "event_id")
    # Nothing lost: every row read is either clean or quarantined.
    assert entry["rows_read"] == len(rows) == len(clean) + len(q)
    assert entry["rows_quarantined"] == len(q)
    assert sorted(q) == sorted((eid, frozenset(r)) for (eid, _), r in expected.items() if r)
    assert clean == sorted(eid for (eid, _), r in expected.items() if not r)
    for reason in {r for rs in expected.values() for r in rs}:
        assert entry["reasons"][reason] == sum(reason in rs for rs in expected.values())
