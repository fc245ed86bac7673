"""Hub detection, hub removal and the account projection on tiny hand-made worlds."""

from __future__ import annotations

import datetime as dt
import itertools
import math
import random
from collections import defaultdict
from decimal import Decimal as D

import pytest
from pyspark.sql import functions as F

from graph.build import IdentityGraph, build_identity_graph, edge_weight, graph_stats
from graph.config import ConfigError
from graph.hubs import HUB_COLUMNS, MAX_VIA_IDS, account_projection, find_hubs, remove_hubs
from graph.schema import INPUT_SCHEMAS, spark_ddl

pytestmark = pytest.mark.spark

DS = dt.date(2024, 3, 10)  # the window ends 2024-03-11 00:00 UTC
NAT = "100.64.0.1"


def ts(*a: int) -> dt.datetime:
    return dt.datetime(*a, tzinfo=dt.UTC)


def make_tables(spark, **rows):
    return {name: spark.createDataFrame(list(rows.get(name, [])), spark_ddl(INPUT_SCHEMAS[name]))
            for name in INPUT_SCHEMAS}


def session(eid, t, acct, device=None, ip=None):
    return (eid, t, acct, "login", device, ip, None, None, None, None)


def payment(eid, t, acct, card, merchant, device=None, ip=None, amount="3.00"):
    return (eid, t, acct, card, "411111", merchant, D(amount), "USD", "approved", device, ip)


def transfer(eid, t, src, dst, amount="10.00"):
    return (eid, t, src, dst, D(amount), "USD", "approved", None, None)


def cached(g: IdentityGraph):
    """Module fixtures reuse one graph across tests: compute it once."""
    c = IdentityGraph(g.vertices.cache(), g.edges.cache())
    yield c
    c.vertices.unpersist()
    c.edges.unpersist()


def with_hubs(config, **update):
    return config.model_copy(update={"hubs": config.hubs.model_copy(update=update)})


# ---------------------------------------------------------------------------
# The NAT world: 500 honest accounts behind one carrier NAT IP, 60 of them paying
# at one giant merchant, and a family of three sharing a tablet (f-1 also on the NAT).
# ---------------------------------------------------------------------------

NAT_ACCOUNTS = [f"n-{i:03d}" for i in range(500)]
FAMILY_AGES = {"f-1": 0.5, "f-2": 2.0, "f-3": 7.0}


@pytest.fixture(scope="module")
def nat_graph(spark, config):
    sessions = [session(f"s-{a}", ts(2024, 3, 10, 10), a, ip=NAT) for a in NAT_ACCOUNTS]
    sessions += [
        session("s-f1", ts(2024, 3, 10, 12), "f-1", device="fam-dev", ip=NAT),
        session("s-f2", ts(2024, 3, 9), "f-2", device="fam-dev"),
        session("s-f3", ts(2024, 3, 4), "f-3", device="fam-dev"),
    ]
    payments = [payment(f"p-{a}", ts(2024, 3, 10, 9), a, f"c-{a}", "m-giant") for a in NAT_ACCOUNTS[:60]]
    accounts = [(a, ts(2023, 1, 1), 1) for a in [*NAT_ACCOUNTS, *FAMILY_AGES]]
    t = make_tables(spark, accounts=accounts, sessions=sessions, payments=payments)
    yield from cached(build_identity_graph(spark, config, t, DS))


@pytest.fixture(scope="module")
def nat_hubs(config, nat_graph):
    # Materialised once: the tests below reuse it (like the pipeline, which re-reads hubs/).
    hubs = find_hubs(config, nat_graph).cache()
    yield hubs
    hubs.unpersist()


def test_nat_ip_and_giant_merchant_are_hubs_family_device_is_not(nat_hubs):
    assert tuple(nat_hubs.columns) == HUB_COLUMNS
    got = {tuple(r) for r in nat_hubs.collect()}
    assert got == {
        (f"ip:{NAT}", "ip", NAT, 501, "degree_cap", "ip shared by 501 accounts > cap 25", 25, 1503.0),
        ("merchant:m-giant", "merchant", "m-giant", 60, "degree_cap",
         "merchant shared by 60 accounts > cap 50", 50, 180.0),
    }


def test_remove_hubs_drops_hub_vertices_and_their_edges(nat_graph, nat_hubs):
    g = remove_hubs(nat_graph, nat_hubs)
    ids = {r.id for r in g.vertices.select("id").collect()}
    assert f"ip:{NAT}" not in ids and "merchant:m-giant" not in ids
    assert len(ids) == 503 + 1 + 60  # accounts, the family device, the cards
    edges = g.edges.groupBy("edge_type").count().collect()
    # The 501 NAT edges and the 60 + 60 edges to the giant merchant are gone.
    assert {r.edge_type: r["count"] for r in edges} == {"account_device": 3, "account_card": 60}


def test_projection_nat_links_nobody_family_device_links_family(nat_graph, nat_hubs):
    rows = account_projection(nat_graph, nat_hubs, max_merchant_accounts=3).collect()
    assert [r for r in rows if r.via_type == "ip"] == []
    got = {(r.src, r.dst, r.via_type, tuple(r.via_ids), r.shared_count) for r in rows}
    fam = ("device:fam-dev",)
    assert got == {
        ("account:f-1", "account:f-2", "device", fam, 1),
        ("account:f-1", "account:f-3", "device", fam, 1),
        ("account:f-2", "account:f-3", "device", fam, 1),
    }
    # Adamic-Adar: min of the two edge weights / log2(3 accounts on the device).
    w = {a: edge_weight([age], 7.0) for a, age in FAMILY_AGES.items()}
    for r in rows:
        a, b = r.src.split(":")[1], r.dst.split(":")[1]
        assert r.weight == pytest.approx(min(w[a], w[b]) / math.log2(3), rel=1e-12)


def test_exclusion_list(config, nat_graph):
    cfg = with_hubs(config, exclude=["device:fam-dev", "merchant:never-seen"])
    hubs = find_hubs(cfg, nat_graph)
    fam = hubs.where(F.col("id") == "device:fam-dev").collect()
    assert [(r.rule, r.reason, r.degree, r.cap) for r in fam] == [
        ("excluded", "listed in hubs.exclude (device shared by 3 accounts)", 3,
         cfg.hubs.max_accounts_per_device)
    ]
    assert hubs.count() == 3  # plus the NAT IP and the giant merchant
    assert account_projection(nat_graph, hubs).count() == 0  # the family is no longer linked


@pytest.mark.parametrize("entry", ["fam-dev", "phone:123", "ip:"])
def test_malformed_exclusion_is_a_config_error(config, nat_graph, entry):
    with pytest.raises(ConfigError, match="hubs.exclude"):
        find_hubs(with_hubs(config, exclude=[entry]), nat_graph)


def test_graph_stats_counts_hubs(nat_graph, nat_hubs):
    assert graph_stats(nat_graph, nat_hubs) == {
        "n_vertices": 503 + 1 + 1 + 60 + 1,
        "n_edges": 501 + 3 + 60 + 60 + 60,
        "n_hubs": 2,
        "vertices_by_type": {"account": 503, "card": 60, "device": 1, "ip": 1, "merchant": 1},
        "edges_by_type": {"account_card": 60, "account_device": 3, "account_ip": 501,
                          "account_merchant": 60, "card_merchant": 60},
        "hubs_by_type_and_rule": {"ip": {"degree_cap": 1}, "merchant": {"degree_cap": 1}},
        "max_degree_by_type": {"account": 3, "card": 2, "device": 3, "ip": 501, "merchant": 120},
    }


# ---------------------------------------------------------------------------
# The office world: 30 accounts on their own home IPs, an office IP with 12 (under
# the static cap of 25), and a payroll account paying 61 employees.
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def office_graph(spark, config):
    sessions = [session(f"s-h{i}", ts(2024, 3, 9), f"h-{i:02d}", ip=f"10.1.0.{i}") for i in range(30)]
    sessions += [session(f"s-o{i}", ts(2024, 3, 9), f"o-{i:02d}", ip="10.9.9.9") for i in range(12)]
    transfers = [transfer(f"t-{i}", ts(2024, 3, 1), "payroll", f"r-{i:02d}") for i in range(61)]
    t = make_tables(spark, sessions=sessions, transfers=transfers)
    yield from cached(build_identity_graph(spark, config, t, DS))


PAYROLL = ("account:payroll", "degree_cap", "account transfers with 61 distinct accounts > cap 60")


def hub_rows(hubs):
    return {(r.id, r.rule, r.reason) for r in hubs.collect()}


def test_outlier_rule_adapts_to_the_degree_distribution(config, office_graph):
    # Most IPs serve one account: with the median as reference, 12 accounts is an outlier.
    cfg = with_hubs(config, outlier_quantile=0.5)
    assert hub_rows(find_hubs(cfg, office_graph)) == {
        PAYROLL,
        ("ip:10.9.9.9", "degree_outlier",
         "ip shared by 12 accounts > outlier threshold 10.0 = max(10, 3.0 x p50 of ip degrees 1.0); cap 25"),
    }
    # The rule can be switched off, and the default p99 reference is the office itself here.
    assert hub_rows(find_hubs(with_hubs(cfg, outlier_multiplier=None), office_graph)) == {PAYROLL}
    assert hub_rows(find_hubs(config, office_graph)) == {PAYROLL}


def test_transfer_hub_links_nobody(config, office_graph):
    hubs = find_hubs(config, office_graph)
    rows = account_projection(office_graph, hubs).collect()
    assert [r for r in rows if r.via_type == "transfer"] == []
    # The office IP (not a hub under the default rules) links its 12 accounts: 66 pairs.
    assert len([r for r in rows if r.via_type == "ip"]) == 12 * 11 // 2


# ---------------------------------------------------------------------------
# A seeded random world, against a plain-Python (itertools) reference.
# ---------------------------------------------------------------------------

def random_world(seed: int):
    rnd = random.Random(seed)
    accts = [f"a-{i:02d}" for i in range(24)]
    devices = [f"d-{i}" for i in range(8)]
    ips = [f"10.0.0.{i}" for i in range(6)] + ["100.64.9.9"] * 3  # the NAT is frequent
    cards = [f"c-{i}" for i in range(10)]
    sessions, payments, transfers = [], [], []
    for a in accts:
        for j in range(rnd.randint(1, 3)):
            dev = rnd.choice(devices) if rnd.random() > 0.2 else None
            ip = rnd.choice(ips) if rnd.random() > 0.2 else None
            sessions.append(session(f"s-{a}-{j}", ts(2024, 3, rnd.randint(1, 10)), a, dev, ip))
        for j in range(rnd.randint(0, 2)):
            merchant = rnd.choice(["m-big", "m-big", "m-mid"])
            payments.append(payment(f"p-{a}-{j}", ts(2024, 3, rnd.randint(1, 10)), a, rnd.choice(cards),
                                    merchant, ip=rnd.choice(ips)))
    # A tiny merchant with three customers: small enough to link them.
    payments += [payment(f"p-tiny-{a}", ts(2024, 3, 5), a, f"c-tiny-{a}", "m-tiny") for a in accts[3:12:4]]
    for k in range(14):
        src, dst = rnd.sample(accts, 2)
        transfers.append(transfer(f"t-{k}", ts(2024, 3, rnd.randint(1, 10)), src, dst))
    transfers.append(transfer("t-rev", ts(2024, 3, 9), transfers[0][3], transfers[0][2]))
    return sessions, payments, transfers


def reference_projection(sessions, payments, transfers, caps, max_merchant_accounts):
    users = defaultdict(set)  # (via_type, identifier) -> accounts
    for s in sessions:
        if s[4] is not None:
            users[("device", s[4])].add(s[2])
        if s[5] is not None:
            users[("ip", s[5])].add(s[2])
    for p in payments:
        users[("card", p[3])].add(p[2])
        users[("merchant", p[5])].add(p[2])
        if p[10] is not None:
            users[("ip", p[10])].add(p[2])
    hubs = {f"{kind}:{ident}" for (kind, ident), accts in users.items() if len(accts) > caps[kind]}
    pairs = {}
    for (kind, ident), accts in users.items():
        if f"{kind}:{ident}" in hubs or (kind == "merchant" and len(accts) > max_merchant_accounts):
            continue
        for a, b in itertools.combinations(sorted(accts), 2):
            count, ids = pairs.get((a, b, kind), (0, []))
            pairs[(a, b, kind)] = (count + 1, [*ids, f"{kind}:{ident}"])
    for t in transfers:
        a, b = sorted((t[2], t[3]))
        count, _ = pairs.get((a, b, "transfer"), (0, []))
        pairs[(a, b, "transfer")] = (count + 1, [])
    return hubs, {(f"account:{a}", f"account:{b}", kind): (count, tuple(sorted(ids)[:MAX_VIA_IDS]))
                  for (a, b, kind), (count, ids) in pairs.items()}


def test_projection_matches_itertools_reference(spark, config):
    sessions, payments, transfers = random_world(seed=11)
    cfg = with_hubs(config, max_accounts_per_ip=8, max_accounts_per_card=4, outlier_multiplier=None)
    caps = {"device": 8, "ip": 8, "card": 4, "merchant": 50}
    t = make_tables(spark, sessions=sessions, payments=payments, transfers=transfers)
    g = build_identity_graph(spark, cfg, t, DS)
    hubs = find_hubs(cfg, g).cache()
    rows = account_projection(g, hubs, max_merchant_accounts=3).collect()
    want_hubs, want = reference_projection(sessions, payments, transfers, caps, 3)
    assert {r.id for r in hubs.collect()} == want_hubs
    assert "ip:100.64.9.9" in want_hubs  # the world does exercise hub removal
    got = {(r.src, r.dst, r.via_type): (r.shared_count, tuple(r.via_ids)) for r in rows}
    assert len(rows) == len(got)  # one row per (src, dst, via_type)
    assert got == want
    assert all(r.src < r.dst for r in rows)
    assert {k[2] for k in got} == {"device", "ip", "card", "merchant", "transfer"}
    assert sorted(k for k in got if k[2] == "merchant") == [
        ("account:a-03", "account:a-07", "merchant"), ("account:a-03", "account:a-11", "merchant"),
        ("account:a-07", "account:a-11", "merchant")]
