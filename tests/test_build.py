"""build_identity_graph and graph_stats on a hand-made mini world, compared exactly."""

from __future__ import annotations

import datetime as dt
import math
from decimal import Decimal as D

import pytest
from pyspark.sql import functions as F

from graph.build import (
    EDGE_COLUMNS,
    VERTEX_COLUMNS,
    IdentityGraph,
    build_identity_graph,
    edge_weight,
    graph_stats,
)
from graph.errors import SchemaError
from graph.hubs import find_hubs
from graph.schema import INPUT_SCHEMAS, spark_ddl

pytestmark = pytest.mark.spark

DS = dt.date(2024, 3, 10)  # the window ends 2024-03-11 00:00 UTC
HALF_LIFE = 7.0


def ts(*a: int) -> dt.datetime:
    return dt.datetime(*a, tzinfo=dt.UTC)


def make_tables(spark, **rows):
    return {name: spark.createDataFrame(list(rows.get(name, [])), spark_ddl(INPUT_SCHEMAS[name]))
            for name in INPUT_SCHEMAS}


ACCOUNTS = [
    ("a-1", ts(2024, 1, 1), 2),
    ("a-2", ts(2024, 3, 10, 5), 1),
    ("a-3", ts(2023, 3, 11), 0),
    ("a-4", ts(2024, 3, 1), None),
    ("a-5", ts(2024, 1, 1), 3),  # dormant: no event in the window, so no vertex
]
PAYMENTS = [
    ("p1", ts(2024, 3, 10, 12), "a-1", "c-1", "411111", "m-1", D("10.00"), "USD", "approved", "d-1", "1.1.1.1"),
    ("p2", ts(2024, 3, 3, 12), "a-1", "c-1", "411111", "m-1", D("5.00"), "USD", "declined", None, None),
    ("p3", ts(2024, 3, 9), "a-2", "c-2", "522222", "m-1", D("20.00"), "USD", "approved", "d-2", None),
    # Before the 30-day window (starts 2024-02-10): ignored.
    ("p-old", ts(2024, 2, 1), "a-1", "c-9", "499999", "m-9", D("1.00"), "USD", "approved", "d-9", None),
]
TRANSFERS = [
    ("t1", ts(2024, 3, 10), "a-1", "a-2", D("100.00"), "USD", "approved", "d-1", "1.1.1.1"),
    ("t2", ts(2024, 3, 8), "a-2", "a-1", D("50.00"), "USD", "approved", None, None),
    ("t3", ts(2024, 3, 1), "a-3", "a-9", D("999.00"), "USD", "declined", None, "2.2.2.2"),
]
SESSIONS = [
    ("s1", ts(2024, 3, 10, 8), "a-1", "login", "d-1", "1.1.1.1", "KR", None, None, None),
    ("s2", ts(2024, 3, 5), "a-3", "login", "d-1", "2.2.2.2", "KR", None, None, None),
    ("s3", ts(2024, 3, 10), "a-4", "login", None, None, None, None, None, None),
    # After the end of ds: ignored.
    ("s-future", ts(2024, 3, 11, 1), "a-4", "login", "d-9", "9.9.9.9", None, None, None, None),
]

# (src, dst, edge_type, directed, n_events, amount_sum, n_declined) -> event ages in days
# at the end of ds, and the transfer amount for the amount factor.
EXPECTED_EDGES = {
    ("account:a-1", "device:d-1", "account_device", False, 3, D("110.00"), 0): ([0.5, 1, 2 / 3], None),
    ("account:a-2", "device:d-2", "account_device", False, 1, D("20.00"), 0): ([2], None),
    ("account:a-3", "device:d-1", "account_device", False, 1, D("0.00"), 0): ([6], None),
    ("account:a-1", "ip:1.1.1.1", "account_ip", False, 3, D("110.00"), 0): ([0.5, 1, 2 / 3], None),
    ("account:a-3", "ip:2.2.2.2", "account_ip", False, 2, D("999.00"), 1): ([10, 6], None),
    ("account:a-1", "card:c-1", "account_card", False, 2, D("15.00"), 1): ([0.5, 7.5], None),
    ("account:a-2", "card:c-2", "account_card", False, 1, D("20.00"), 0): ([2], None),
    ("card:c-1", "merchant:m-1", "card_merchant", False, 2, D("15.00"), 1): ([0.5, 7.5], None),
    ("card:c-2", "merchant:m-1", "card_merchant", False, 1, D("20.00"), 0): ([2], None),
    ("account:a-1", "merchant:m-1", "account_merchant", False, 2, D("15.00"), 1): ([0.5, 7.5], None),
    ("account:a-2", "merchant:m-1", "account_merchant", False, 1, D("20.00"), 0): ([2], None),
    ("account:a-1", "account:a-2", "transfer", True, 1, D("100.00"), 0): ([1], 100.0),
    ("account:a-2", "account:a-1", "transfer", True, 1, D("50.00"), 0): ([3], 50.0),
    ("account:a-3", "account:a-9", "transfer", True, 1, D("999.00"), 1): ([10], 999.0),
}

# id, entity_type, entity_id, n_events, n_payments, n_transfers, n_declined, kyc_level,
# account_age_days, card_bin
EXPECTED_VERTICES = {
    ("account:a-1", "account", "a-1", 5, 2, 2, 1, 2, 70, None),
    ("account:a-2", "account", "a-2", 3, 1, 2, 0, 1, 0, None),
    ("account:a-3", "account", "a-3", 2, 0, 1, 1, 0, 366, None),
    ("account:a-4", "account", "a-4", 1, 0, 0, 0, None, 10, None),
    ("account:a-9", "account", "a-9", 1, 0, 1, 1, None, None, None),  # not in accounts/
    ("device:d-1", "device", "d-1", 4, 1, 1, 0, None, None, None),
    ("device:d-2", "device", "d-2", 1, 1, 0, 0, None, None, None),
    ("ip:1.1.1.1", "ip", "1.1.1.1", 3, 1, 1, 0, None, None, None),
    ("ip:2.2.2.2", "ip", "2.2.2.2", 2, 0, 1, 1, None, None, None),
    ("card:c-1", "card", "c-1", 2, 2, 0, 1, None, None, "411111"),
    ("card:c-2", "card", "c-2", 1, 1, 0, 0, None, None, "522222"),
    ("merchant:m-1", "merchant", "m-1", 3, 3, 0, 1, None, None, None),
}


@pytest.fixture(scope="module")
def tables(spark):
    t = make_tables(spark, accounts=ACCOUNTS, payments=PAYMENTS, transfers=TRANSFERS, sessions=SESSIONS)
    # Producers may add columns; the builder must ignore them.
    t["payments"] = t["payments"].withColumn("ip_asn", F.lit(4766))
    t["sessions"] = t["sessions"].withColumn("app_version", F.lit("9.1"))
    return t


@pytest.fixture(scope="module")
def graph(spark, config, tables):
    g = build_identity_graph(spark, config, tables, DS)
    # Reused by every test of the module: compute once.
    g = IdentityGraph(g.vertices.cache(), g.edges.cache())
    yield g
    g.vertices.unpersist()
    g.edges.unpersist()


@pytest.fixture(scope="module")
def edges(graph):
    return graph.edges.collect()


def test_columns(graph):
    assert tuple(graph.vertices.columns) == VERTEX_COLUMNS
    assert tuple(graph.edges.columns) == EDGE_COLUMNS


def test_edges_exact(edges):
    got = {(r.src, r.dst, r.edge_type, r.directed, r.n_events, r.amount_sum, r.n_declined) for r in edges}
    assert got == set(EXPECTED_EDGES)
    assert len(edges) == len(EXPECTED_EDGES)  # one row per (src, dst, edge_type)


def test_weights_follow_formula(edges):
    for r in edges:
        key = (r.src, r.dst, r.edge_type, r.directed, r.n_events, r.amount_sum, r.n_declined)
        ages, amount = EXPECTED_EDGES[key]
        assert r.weight == pytest.approx(edge_weight(ages, HALF_LIFE, amount), rel=1e-12), key
    w = {(r.src, r.dst): r.weight for r in edges}
    # One event each, 2 days vs 6 days old: the older weighs less.
    assert w[("account:a-3", "device:d-1")] < w[("account:a-2", "device:d-2")]
    # Half-life: one event exactly 7 days old would be worth half an event today.
    assert edge_weight([7.0], HALF_LIFE) == pytest.approx(math.log1p(0.5), rel=1e-12)
    assert edge_weight([1.0], HALF_LIFE, 100.0) == pytest.approx(
        math.log1p(0.5 ** (1 / 7)) * (1 + math.log10(101.0)), rel=1e-12)


def test_edge_times(graph):
    rows = graph.edges.where(F.col("src") == "account:a-1").where(F.col("dst") == "card:c-1").select(
        F.date_format("first_time", "yyyy-MM-dd HH:mm").alias("f"),
        F.date_format("last_time", "yyyy-MM-dd HH:mm").alias("l"),
    ).collect()
    assert [(r.f, r.l) for r in rows] == [("2024-03-03 12:00", "2024-03-10 12:00")]


def test_null_identifiers_make_no_edges(edges):
    assert all(r.src is not None and r.dst is not None for r in edges)
    # a-4 only had a session without device and ip (the later one is outside the window).
    assert not [r for r in edges if "account:a-4" in (r.src, r.dst)]
    # p2 had no device/ip: the a-1/d-1 edge counts p1, t1 and s1 only.
    assert {r.n_events for r in edges if (r.src, r.dst) == ("account:a-1", "device:d-1")} == {3}


def test_vertices_exact(graph):
    rows = graph.vertices.collect()
    got = {(r.id, r.entity_type, r.entity_id, r.n_events, r.n_payments, r.n_transfers, r.n_declined,
            r.kyc_level, r.account_age_days, r.card_bin) for r in rows}
    assert got == EXPECTED_VERTICES
    assert len(rows) == len(EXPECTED_VERTICES)
    seen = graph.vertices.where(F.col("id") == "device:d-1").select(
        F.date_format("first_seen", "yyyy-MM-dd HH:mm").alias("f"),
        F.date_format("last_seen", "yyyy-MM-dd HH:mm").alias("l"),
    ).collect()
    assert [(r.f, r.l) for r in seen] == [("2024-03-05 00:00", "2024-03-10 12:00")]


def test_window_is_relative_to_ds(spark, config, tables):
    # A 3-day window ending 2024-03-10 starts 2024-03-08 00:00 UTC.
    g = build_identity_graph(spark, config, tables, DS, lookback_days=3)
    got = {(r.src, r.dst, r.edge_type, r.n_events) for r in g.edges.collect()}
    assert got == {
        ("account:a-1", "device:d-1", "account_device", 3),
        ("account:a-2", "device:d-2", "account_device", 1),
        ("account:a-1", "ip:1.1.1.1", "account_ip", 3),
        ("account:a-1", "card:c-1", "account_card", 1),
        ("account:a-2", "card:c-2", "account_card", 1),
        ("card:c-1", "merchant:m-1", "card_merchant", 1),
        ("card:c-2", "merchant:m-1", "card_merchant", 1),
        ("account:a-1", "merchant:m-1", "account_merchant", 1),
        ("account:a-2", "merchant:m-1", "account_merchant", 1),
        ("account:a-1", "account:a-2", "transfer", 1),
        ("account:a-2", "account:a-1", "transfer", 1),
    }


def test_missing_contract_column_is_a_schema_error(spark, config, tables):
    bad = dict(tables, sessions=tables["sessions"].drop("device_id"))
    with pytest.raises(SchemaError, match="sessions lacks contract columns \\['device_id'\\]"):
        build_identity_graph(spark, config, bad, DS)
    with pytest.raises(SchemaError, match="needs tables \\['transfers'\\]"):
        build_identity_graph(spark, config, {k: v for k, v in tables.items() if k != "transfers"}, DS)


def test_graph_stats(config, graph):
    stats = graph_stats(graph, find_hubs(config, graph))
    assert stats == {
        "n_vertices": 12,
        "n_edges": 14,
        "n_hubs": 0,
        "vertices_by_type": {"account": 5, "card": 2, "device": 2, "ip": 2, "merchant": 1},
        "edges_by_type": {"account_card": 2, "account_device": 3, "account_ip": 2, "account_merchant": 2,
                          "card_merchant": 2, "transfer": 3},
        "hubs_by_type_and_rule": {},
        "max_degree_by_type": {"account": 6, "card": 2, "device": 2, "ip": 1, "merchant": 4},
    }
