"""graph.investigate on the hand-made run folder of tests/runkit.py, compared exactly."""

from __future__ import annotations

import dataclasses
import shutil

import pandas as pd
import pytest
from runkit import DECLINES, DS, MULE_RING, PASS_THROUGH, PREV_DS, write_run_folder

from graph import investigate as inv
from graph.errors import RawCardNumberFound, SchemaError
from graph.rings import COMMUNITY_SCHEMA, RINGS_COLUMNS, ring_tables
from graph.schema import RISK_SCHEMA

pytestmark = pytest.mark.spark

D = str(DS)
SHARES_D1 = "shares device d-1 with 2 other ring accounts"


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> str:
    return str(write_run_folder(tmp_path_factory.mktemp("investigate")))


@pytest.fixture(scope="module")
def overview(spark, root) -> inv.NightlyOverview:
    return inv.nightly_overview(spark, root, D)


@pytest.fixture(scope="module")
def mule_case(spark, root) -> inv.RingCase:
    return inv.ring_case(spark, root, D, "R-mule")


def records(df: pd.DataFrame, cols: list[str]) -> list[tuple]:
    return [tuple(None if (isinstance(v, float) and pd.isna(v)) else v for v in row)
            for row in df[cols].itertuples(index=False)]


# --- Contracts --------------------------------------------------------------------------------

def test_column_names_are_the_stages_own(spark, config):
    communities = spark.createDataFrame([], COMMUNITY_SCHEMA)
    ids = spark.createDataFrame([], "community string, ring_id string, first_seen date, matched_jaccard double")
    rings, members = ring_tables(communities, ids, DS)
    assert tuple(members.columns) == inv.RING_MEMBERS_COLUMNS
    assert tuple(rings.columns) == RINGS_COLUMNS
    assert {inv.RING_ID, inv.SIZE, inv.N_ACCOUNTS, inv.N_DEVICES, inv.N_IPS, inv.N_CARDS, inv.N_MERCHANTS,
            inv.DENSITY, inv.METHOD, inv.RING_FIRST_SEEN, inv.RING_LAST_SEEN} <= set(RINGS_COLUMNS)
    assert {inv.SCORE, inv.RING_TYPE, inv.REASONS, inv.RING_ID} <= set(RISK_SCHEMA.names)
    assert inv.DEFAULT_MAX_ROWS == config.rings.driver_collect_max_rows


def test_missing_ring_tables_name_the_blocker(spark, tmp_path):
    (tmp_path / f"ds={D}").mkdir()
    with pytest.raises(inv.MissingTable, match=r"rings does not exist .*GraphFrames"):
        inv.nightly_overview(spark, str(tmp_path), D)


def test_a_table_without_its_columns_is_refused(spark, tmp_path):
    spark.createDataFrame([("R-1", 3)], "ring_id string, size long").write.parquet(str(tmp_path / f"ds={D}" / "rings"))
    with pytest.raises(SchemaError, match=r"lacks columns \['n_accounts'"):
        inv.top_ring_id(spark, str(tmp_path), D)


# --- Nightly overview -------------------------------------------------------------------------

def test_overview_counts_rings_by_type_and_size(overview):
    assert overview.ds == D
    assert overview.n_rings == 3
    counts = overview.rings_by_type_size
    assert list(counts.index) == ["mule", "card_testing", "unknown", "unlisted"]
    assert list(counts.columns) == ["1-2", "3", "4-5", "6-10", "11-25", "26-100", "101+"]
    nonzero = {(t, b): int(n) for (t, b), n in counts.stack().items() if n}
    assert nonzero == {("mule", "4-5"): 1, ("card_testing", "4-5"): 1, ("unlisted", "3"): 1}


def test_overview_list_sizes_and_score_distribution(overview):
    assert records(overview.list_sizes.reset_index(), ["entity_type", "listed", "in_ring", "lone"]) == [
        ("account", 5, 5, 0), ("device", 3, 2, 1), ("ip", 0, 0, 0), ("card", 3, 3, 0), ("merchant", 0, 0, 0)]
    hist = overview.score_histogram
    assert len(hist) == 10 and hist.index[0] == "0.0-0.1" and hist.index[-1] == "0.9-1.0"
    nonzero = {(b, t): int(n) for (b, t), n in hist.stack().items() if n}
    assert nonzero == {("0.9-1.0", "account"): 3, ("0.8-0.9", "account"): 1, ("0.7-0.8", "account"): 1,
                       ("0.8-0.9", "device"): 3, ("0.9-1.0", "card"): 2, ("0.6-0.7", "card"): 1}


def test_overview_top_rings_listed_first(overview):
    assert records(overview.top_rings, ["ring_id", "ring_type", "size", "top_score", "n_listed", "change"]) == [
        ("R-ct", "card_testing", 5, 0.97, 6, "shrunk"),
        ("R-mule", "mule", 4, 0.95, 4, "grown"),
        ("R-new", "unlisted", 3, None, 0, "new"),
    ]


def test_overview_changes_since_the_previous_night(overview):
    assert overview.previous_ds == str(PREV_DS)
    assert records(overview.changes, ["ring_id", "change", "size_prev", "size", "size_delta", "n_joined",
                                      "n_left"]) == [
        ("R-new", "new", None, 3, 3, None, None),
        ("R-mule", "grown", 3, 4, 1, 1, 0),
        ("R-ct", "shrunk", 6, 5, -1, 0, 1),
        ("R-gone", "gone", 3, None, -3, None, None),
    ]
    assert overview.change_counts.to_dict() == {"new": 1, "grown": 1, "shrunk": 1, "reshaped": 0,
                                                "unchanged": 0, "gone": 1}
    head = overview.headline()
    assert (head["rings"], head["listed entities"], head["compared with"]) == (3, 11, str(PREV_DS))


def test_first_night_has_nothing_to_compare_with(spark, root):
    first = inv.nightly_overview(spark, root, str(PREV_DS))
    assert first.previous_ds is None
    assert first.changes.empty and int(first.change_counts.sum()) == 0
    assert set(first.top_rings["ring_type"]) == {"unlisted"}
    assert first.top_rings["change"].isna().all()


def test_an_unfinished_previous_run_is_not_compared_with(spark, root, tmp_path):
    # Ring ids carry over from the last *complete* run, so only such a run is compared with.
    copy = shutil.copytree(root, tmp_path / "out")
    (copy / f"ds={PREV_DS}" / "_RUN_COMPLETE").unlink()
    later = inv.nightly_overview(spark, str(copy), D)
    assert later.previous_ds is None and later.changes.empty


def test_top_ring_is_the_highest_listed_score(spark, root):
    assert inv.top_ring_id(spark, root, D) == "R-ct"


# --- One ring ---------------------------------------------------------------------------------

def test_ring_members_roles_scores_and_reasons(spark, root):
    m = inv.ring_members(spark, root, D, "R-mule")
    assert records(m, ["member_vertex", "role", "score", "listed", "ring_type"]) == [
        ("account:a-01", "sender", 0.91, True, "mule"),
        ("account:a-02", "sender", 0.86, True, "mule"),
        ("account:a-03", "collector", 0.95, True, "mule"),
        ("device:d-1", "shared_device", 0.80, True, "mule"),
    ]
    assert records(m, ["member_vertex", "ring_links"]) == [
        ("account:a-01", 2), ("account:a-02", 2), ("account:a-03", 2), ("device:d-1", 3)]
    assert records(m, ["member_vertex", "gross_flow", "money_share"]) == [
        ("account:a-01", 100.0, 100 / 150), ("account:a-02", 150.0, 1.0), ("account:a-03", 250.0, 250 / 150),
        ("device:d-1", 0.0, 0.0)]
    a03 = m.set_index("member_vertex").loc["account:a-03"]
    assert a03["reasons"] == [MULE_RING, PASS_THROUGH, "labelled mule by investigator"]
    assert a03["signal_reasons"] == [PASS_THROUGH]
    unlisted = inv.ring_members(spark, root, D, "R-new")
    assert records(unlisted, ["member_vertex", "role", "score", "listed", "ring_type"]) == [
        ("account:a-07", "hub", None, False, None),
        ("account:a-08", "member", None, False, None),
        ("account:a-09", "member", None, False, None),
    ]
    assert unlisted["reasons"].tolist() == [[], [], []]


def test_ring_summary_says_how_the_ring_changed(spark, root):
    s = inv.ring_summary(spark, root, D, "R-mule")
    assert (s["ring_type"], s["size"], s["top_score"], s["n_listed"], s["change"], s["size_prev"],
            s["previous_ds"]) == ("mule", 4, 0.95, 4, "grown", 3, str(PREV_DS))


def test_unknown_ring_is_refused(spark, root):
    for view in (inv.ring_members, inv.ring_subgraph, inv.ring_timeline, inv.ring_links,
                 inv.neighbouring_rings, inv.ring_reasons, inv.ring_summary):
        with pytest.raises(inv.RingNotFound, match="R-nope"):
            view(spark, root, D, "R-nope")


def test_collects_above_the_limit_raise(spark, root):
    # R-ct has 5 members and 6 events.
    assert len(inv.ring_members(spark, root, D, "R-ct", max_rows=5)) == 5
    with pytest.raises(inv.CollectLimitExceeded, match=r"members of ring R-ct: more than 4 rows .*"
                                                       r"rings\.driver_collect_max_rows"):
        inv.ring_members(spark, root, D, "R-ct", max_rows=4)
    with pytest.raises(inv.CollectLimitExceeded, match="events of ring R-ct: more than 5 rows"):
        inv.ring_timeline(spark, root, D, "R-ct", max_rows=5)


def test_subgraph_of_members(spark, root):
    g = inv.ring_subgraph(spark, root, D, "R-mule", include_shared=False)
    assert dict(g.nodes(data="entity_type")) == {
        "account:a-01": "account", "account:a-02": "account", "account:a-03": "account", "device:d-1": "device"}
    assert all(member for _, member in g.nodes(data="member"))
    assert g.nodes["account:a-03"]["role"] == "collector" and g.nodes["account:a-03"]["score"] == 0.95
    assert sorted(g.edges(data="edge_type")) == [
        ("account:a-01", "account:a-03", "transfer"), ("account:a-01", "device:d-1", "account_device"),
        ("account:a-02", "account:a-03", "transfer"), ("account:a-02", "device:d-1", "account_device"),
        ("account:a-03", "device:d-1", "account_device")]
    e = g.edges["account:a-02", "account:a-03"]
    assert (e["directed"], e["n_events"], e["amount_sum"], e["n_declined"]) == (True, 2, 200.0, 1)
    assert g.edges["account:a-01", "device:d-1"]["directed"] is False


def test_subgraph_adds_shared_vertices_but_not_hubs(spark, root):
    g = inv.ring_subgraph(spark, root, D, "R-new")
    assert sorted(g.nodes) == ["account:a-07", "account:a-08", "account:a-09", "ip:10.0.2.2"]
    ip = g.nodes["ip:10.0.2.2"]
    assert (ip["entity_type"], ip["entity_id"], ip["member"], ip["role"], ip["n_ring_neighbours"]) == (
        "ip", "10.0.2.2", False, None, 3)
    assert sorted(g.edges) == [("account:a-07", "ip:10.0.2.2"), ("account:a-08", "ip:10.0.2.2"),
                               ("account:a-09", "ip:10.0.2.2")]
    ct = inv.ring_subgraph(spark, root, D, "R-ct")
    assert sorted(n for n, member in ct.nodes(data="member") if not member) == [
        "ip:10.0.1.1", "merchant:m-1", "merchant:m-2"]
    assert ct.number_of_edges() == 14


def test_timeline_of_money_and_card_attempts(spark, root, mule_case):
    t = mule_case.timeline
    assert records(t, ["event_id", "kind", "src", "dst", "flow", "ring_entity", "amount", "status"]) == [
        ("t-05", "transfer", "a-10", "a-01", "in", "account:a-01", 80.0, "approved"),
        ("p-01", "payment", "a-01", "m-3", "payment", "account:a-01", 20.0, "approved"),
        ("t-01", "transfer", "a-01", "a-03", "internal", "account:a-01", 100.0, "approved"),
        ("t-02", "transfer", "a-02", "a-03", "internal", "account:a-02", 150.0, "approved"),
        ("t-03", "transfer", "a-03", "a-07", "out", "account:a-03", 240.0, "approved"),
        ("t-04", "transfer", "a-02", "a-03", "internal", "account:a-02", 50.0, "declined"),
    ]
    assert t["event_time"].iloc[0] == pd.Timestamp("2026-11-21 07:00", tz="UTC")
    ct = inv.ring_timeline(spark, root, D, "R-ct")
    assert records(ct, ["event_id", "flow", "ring_entity", "card_token", "status"]) == [
        ("p-07", "ring_card", "card:c-1", "c-1", "declined"),
        ("p-02", "payment", "account:a-04", "c-1", "declined"),
        ("p-03", "payment", "account:a-04", "c-2", "declined"),
        ("p-04", "payment", "account:a-05", "c-1", "approved"),
        ("p-05", "payment", "account:a-05", "c-2", "declined"),
        ("p-06", "payment", "account:a-05", "c-3", "declined"),
    ]


def test_links_shared_identifiers_and_transfers(spark, root, mule_case):
    cols = ["link_type", "via", "accounts", "n_ring_accounts", "n_accounts_total", "n_events", "amount_sum",
            "n_declined", "via_member", "via_hub"]
    assert records(mule_case.links, cols) == [
        ("device", "device:d-1", ["account:a-01", "account:a-02", "account:a-03"], 3, 3, 6, 560.0, 1, True, False),
        ("transfer", "account:a-01 -> account:a-03", ["account:a-01", "account:a-03"], 2, pd.NA, 1, 100.0, 0,
         False, False),
        ("transfer", "account:a-02 -> account:a-03", ["account:a-02", "account:a-03"], 2, pd.NA, 2, 200.0, 1,
         False, False),
    ]
    new = inv.ring_links(spark, root, D, "R-new")
    assert records(new, ["via", "n_ring_accounts", "n_accounts_total", "via_member", "via_hub"]) == [
        ("ip:10.0.2.2", 3, 3, False, False), ("ip:10.9.9.9", 2, 4, False, True)]
    ct = inv.ring_links(spark, root, D, "R-ct")
    assert records(ct, ["via", "n_ring_accounts", "n_accounts_total", "n_events"]) == [
        ("device:d-2", 2, 3, 5), ("ip:10.0.1.1", 2, 2, 5), ("card:c-1", 2, 3, 2), ("card:c-2", 2, 2, 2),
        ("merchant:m-1", 2, 3, 3)]


def test_neighbouring_rings(spark, root, mule_case):
    cols = ["ring_id", "ring_type", "shared_members", "edges_between", "shared_identifiers", "via"]
    assert records(mule_case.neighbours, cols) == [
        ("R-ct", "card_testing", 0, 0, 1, ["ip:10.0.0.9"]),
        ("R-new", "unlisted", 0, 1, 0, ["account:a-03 -> account:a-07 (transfer)"]),
    ]
    # The hub ip 10.9.9.9 (a-04 of R-ct, a-07 and a-09 of R-new) links nobody.
    assert records(inv.neighbouring_rings(spark, root, D, "R-new"), cols) == [
        ("R-ct", "card_testing", 0, 1, 0, ["account:a-09 - device:d-2 (account_device)"]),
        ("R-mule", "mule", 0, 1, 0, ["account:a-03 -> account:a-07 (transfer)"]),
    ]
    # Merchants only when asked: a-01 (R-mule) and a-08 (R-new) both paid at m-3.
    with_merchants = inv.neighbouring_rings(spark, root, D, "R-mule", via_types=("device", "ip", "card", "merchant"))
    assert records(with_merchants, cols)[0] == (
        "R-new", "unlisted", 0, 1, 1, ["account:a-03 -> account:a-07 (transfer)", "merchant:m-3"])


def test_reason_codes(spark, root, mule_case):
    assert records(mule_case.reasons, ["source", "reason", "n_entities", "entities"]) == [
        ("risk", MULE_RING, 4, ["account:a-01", "account:a-02", "account:a-03", "device:d-1"]),
        ("risk", SHARES_D1, 2, ["account:a-01", "account:a-02"]),
        ("risk", "labelled mule by investigator", 1, ["account:a-03"]),
        ("risk", PASS_THROUGH, 1, ["account:a-03"]),
        ("signals", PASS_THROUGH, 1, ["account:a-03"]),
    ]
    ct = inv.ring_reasons(spark, root, D, "R-ct")
    # The link card c-3 is listed under the ring without being a member.
    assert ("risk", "used by 1 ring accounts (of 1 accounts in all) of ring R-ct", 1, ["card:c-3"]) in records(
        ct, ["source", "reason", "n_entities", "entities"])
    assert ("signals", DECLINES, 1, ["account:a-05"]) in records(ct, ["source", "reason", "n_entities", "entities"])


# --- Case file and pictures ---------------------------------------------------------------------

def test_case_summary_markdown(mule_case, tmp_path):
    text = inv.case_summary(mule_case)
    assert text.startswith(f"# Ring R-mule (mule) — night {D}\n")
    for line in ("| size | 4: 3 accounts, 1 devices, 0 ips, 0 cards, 0 merchants |",
                 "| top listed score | 0.95 (4 entities listed) |",
                 f"| since {PREV_DS} | grown (size 3 then) |",
                 "| account:a-03 | collector | 0.95 | True | "
                 f"{MULE_RING}; {PASS_THROUGH}; labelled mule by investigator |",
                 "| device | device:d-1 | 3 | 3 | 6 | 560.00 | False |",
                 "- transfers between ring accounts: 3 (1 declined); approved EUR 250.00",
                 "- transfers out of the ring: 1 (0 declined); approved EUR 240.00",
                 "| 2026-11-24 08:00:00 | transfer | internal | a-02 | a-03 | 50.00 | EUR | declined |  |",
                 f"- {SHARES_D1} (risk; 2: account:a-01, account:a-02)",
                 "| R-new | unlisted | 3 | 0 | 1 | 0 | account:a-03 -> account:a-07 (transfer) |"):
        assert line in text.splitlines(), line
    assert "Latest 2 of 6 events:" in inv.case_summary(mule_case, max_events=2)
    paths = inv.write_case_files(mule_case, tmp_path / "cases")
    assert sorted(p.name for p in paths.values()) == [
        f"R-mule-{D}-graph.html", f"R-mule-{D}-graph.png", f"R-mule-{D}-timeline.png", f"R-mule-{D}.md"]
    written = paths["markdown"].read_text()
    assert written.startswith(text) and f"![subgraph](R-mule-{D}-graph.png)" in written
    assert paths["graph_png"].read_bytes()[:4] == b"\x89PNG"


def test_case_summary_refuses_card_numbers(mule_case):
    leaked = mule_case.reasons.copy()
    leaked.loc[0, "reason"] = "card 4111 1111 1111 1111 seen"
    with pytest.raises(RawCardNumberFound):
        inv.case_summary(dataclasses.replace(mule_case, reasons=leaked))


def test_pictures(mule_case, overview):
    pytest.importorskip("matplotlib")
    fig = inv.draw_ring(mule_case.subgraph)
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == ["account", "device", "used (identity edge)", "transfer (width ~ amount)"]
    fig = inv.draw_timeline(mule_case.timeline)
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["account:a-01", "account:a-02", "account:a-03"]
    assert len(inv.draw_overview(overview).axes) == 4
    page = inv.interactive_ring(mule_case.subgraph)
    assert "vis-network" in page and '"account:a-03"' in page and "collector" in page
    frame = inv.html_iframe('<p class="x">hi</p>')
    assert frame == ('<div><iframe srcdoc="&lt;p class=&quot;x&quot;&gt;hi&lt;/p&gt;" '
                     'style="width: 100%; height: 600px; border: none;"></iframe></div>')


def test_ring_scores_when_present_order_the_rings_and_explain_them(spark, tmp_path):
    # The score stage writes ring_scores/ (ring type, score, reasons of every ring, listed or not).
    root = str(write_run_folder(tmp_path))
    assert inv.top_ring_id(spark, root, D) == "R-ct"  # without ring scores: highest listed entity score
    spark.createDataFrame(
        [("R-mule", "mule", 0.97, ["forwarded 91% of inflows within 3 h"]),
         ("R-ct", "card_testing", 0.80, ["62% of 340 card attempts declined"]),
         ("R-new", "unknown", 0.10, ["no behavioural evidence"])],
        "ring_id string, ring_type string, ring_score double, ring_reasons array<string>",
    ).write.parquet(f"{root}/ds={D}/ring_scores")
    assert inv.top_ring_id(spark, root, D) == "R-mule"
    s = inv.ring_summary(spark, root, D, "R-new")
    assert s["ring_score"] == pytest.approx(0.10)
    assert list(s["ring_reasons"]) == ["no behavioural evidence"]
    top = inv.nightly_overview(spark, root, D).top_rings
    assert list(top["ring_id"]) == ["R-mule", "R-ct", "R-new"]
    assert list(top["ring_score"]) == pytest.approx([0.97, 0.80, 0.10])
