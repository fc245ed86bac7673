"""Ring refinement (networkx in applyInArrow), stable ring ids, ring tables.

Candidate components come from GraphFrames in the pipeline; here they are
computed with networkx on tiny hand-made graphs so that the refinement and
id logic is checked on its own.
"""

import datetime as dt
import itertools

import networkx as nx
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from graph.rings import (
    COMMUNITY_SCHEMA,
    _merge_fragments,
    _refine_component,
    assign_ring_ids,
    discover_rings,
    refine_components,
    ring_tables,
)

pytestmark = pytest.mark.spark
D1, D2 = dt.date(2026, 11, 23), dt.date(2026, 11, 24)


def _components(spark, edges):
    g = nx.Graph()
    g.add_edges_from((s, d) for s, d, *_ in edges)
    rows = [(v, min(c)) for c in nx.connected_components(g) for v in c]
    return spark.createDataFrame(rows, "id string, component string")


def _graph(edges):
    g = nx.Graph()
    g.add_weighted_edges_from((s, d, w) for s, d, w, _ in edges)
    return g


def _edges(spark, edges):
    rows = [(s, d, float(w), float(f)) for s, d, w, f in edges]
    return spark.createDataFrame(rows, "src string, dst string, weight double, flow double")


def _refine(pdf: pd.DataFrame, *args) -> pd.DataFrame:
    """``_refine_component`` on a frame of (src, dst, weight, flow, component), as Spark hands it a group."""
    return _refine_component(pa.Table.from_pandas(pdf, preserve_index=False), *args).to_pandas()


def clique(prefix, n, w=1.0):
    names = [f"account:{prefix}{i}" for i in range(n)]
    return [(a, b, w, 0.0) for a, b in itertools.combinations(names, 2)]


def test_two_cliques_joined_by_a_weak_edge_become_two_communities(spark, config):
    edges = clique("x", 5, 3.0) + clique("y", 5, 3.0) + [("account:x0", "account:y0", 0.1, 0.0)]
    got = refine_components(_components(spark, edges), _edges(spark, edges), config).collect()
    groups = {}
    for r in got:
        groups.setdefault(r["community"], set()).add(r["id"])
    assert sorted(map(sorted, groups.values())) == [
        [f"account:x{i}" for i in range(5)], [f"account:y{i}" for i in range(5)]]
    assert {r["method"] for r in got} == {"louvain"}
    assert {r["n_vertices"] for r in got} == {5} and {r["n_edges"] for r in got} == {10}


def test_groups_below_min_ring_size_are_not_rings(spark, config):
    edges = clique("p", 2) + clique("q", 4)
    got = refine_components(_components(spark, edges), _edges(spark, edges), config).collect()
    assert {r["id"] for r in got} == {f"account:q{i}" for i in range(4)}


def test_a_layering_chain_is_kept_whole_or_in_pieces_of_ring_size(spark, config):
    # Six accounts passing money down a line, one link each. Louvain may cut the path into
    # pairs (it does for this graph in this order), and pairs are below rings.min_ring_size.
    chain = [(f"account:m{i}", f"account:m{i + 1}", 3.7, 1000.0 - i) for i in range(5)]
    assert min(map(len, nx.community.louvain_communities(
        _graph(chain), weight="weight", seed=42))) < config.rings.min_ring_size
    # With money components split like any other, so the fragment merge is what keeps it.
    louvain_only = config.model_copy(update={"rings": config.rings.model_copy(
        update={"money_component_max_accounts": 0})})
    got = refine_components(_components(spark, chain), _edges(spark, chain), louvain_only).collect()
    assert sorted(r["id"] for r in got) == [f"account:m{i}" for i in range(6)]
    assert min(r["n_vertices"] for r in got) >= config.rings.min_ring_size
    assert {r["method"] for r in got} == {"louvain"}


def test_communities_do_not_depend_on_the_order_rows_arrive_in():
    # A loosely knit group Louvain can cut several ways: which cut it finds depends on the order the
    # edges enter the graph (asserted), so refinement must not depend on the order of its input rows.
    g = nx.relabel_nodes(nx.gnp_random_graph(30, 0.15, seed=3), lambda i: f"account:o{i:02d}")
    edges = [(a, b, 1.0, 0.0) for a, b in g.edges]
    orders = [edges] + [[edges[i] for i in np.random.default_rng(s).permutation(len(edges))] for s in range(8)]
    louvain = {frozenset(map(frozenset, nx.community.louvain_communities(_graph(o), weight="weight", seed=42)))
               for o in orders}
    assert len(louvain) > 1
    got = set()
    for o in orders:
        pdf = pd.DataFrame(o, columns=["src", "dst", "weight", "flow"]).assign(component="c")
        out = _refine(pdf, 5000, 3, 0.0, 0)
        got.add(frozenset(frozenset(v) for v in out.groupby("community")["id"].apply(set)))
    assert len(got) == 1


@pytest.mark.parametrize(("column", "value"), [("weight", float("nan")), ("flow", None), ("dst", None)])
def test_a_missing_value_in_a_candidate_edge_is_a_clear_error(column, value):
    # As Spark hands over a group: a null is an Arrow null, a NaN stays a NaN.
    rows = [dict(zip(("src", "dst", "weight", "flow"), e, strict=True), component="c7") for e in clique("x", 4)]
    schema = pa.schema([("src", pa.string()), ("dst", pa.string()), ("weight", pa.float64()),
                        ("flow", pa.float64()), ("component", pa.string())])
    assert _refine_component(pa.Table.from_pylist(rows, schema), 5000, 3, 0.0, 0).num_rows == 4
    rows[2][column] = value
    with pytest.raises(ValueError, match=f"component c7: .* {column} values"):
        _refine_component(pa.Table.from_pylist(rows, schema), 5000, 3, 0.0, 0)


def _layering_tree() -> list[tuple]:
    """A collector fans money out to 3 mules, each to 3 more: 13 accounts, money links only."""
    edges = [("account:t0", f"account:t{i}", 2.5, 40_000.0) for i in (1, 2, 3)]
    edges += [(f"account:t{i}", f"account:t{i}{j}", 2.5, 12_000.0) for i in (1, 2, 3) for j in (1, 2, 3)]
    return edges


def _refined(edges, money_max, min_q=0.3):
    pdf = pd.DataFrame(edges, columns=["src", "dst", "weight", "flow"]).assign(component="c")
    got = _refine(pdf, 5000, 3, min_q, money_max)
    return sorted(sorted(ids) for ids in got.groupby("community")["id"].apply(set)), set(got["method"])


def test_a_component_linked_only_by_money_stays_one_ring():
    tree = _layering_tree()
    accounts = sorted({v for e in tree for v in e[:2]})
    # Louvain cuts the tree into its branches, well above the modularity bar.
    parts = nx.community.louvain_communities(_graph(tree), weight="weight", seed=42)
    assert len(parts) >= 3 and nx.community.modularity(_graph(tree), parts, weight="weight") > 0.3
    assert _refined(tree, 50) == ([accounts], {"money_component"})
    split, method = _refined(tree, 0)
    assert len(split) >= 3 and method == {"louvain"}
    # More accounts than the bound: split as before.
    assert len(_refined(tree, 12)[0]) >= 3
    # Identifiers attached to the accounts do not count as account links: still one ring.
    with_device = tree + [("account:t11", "device:d1", 0.4, 0.0), ("account:t12", "device:d1", 0.4, 0.0)]
    assert _refined(with_device, 50) == ([[*accounts, "device:d1"]], {"money_component"})
    # One identity link between two accounts (a shared device, no money): Louvain decides again.
    shared = tree + [("account:t11", "account:t21", 0.8, 0.0)]
    assert _refined(shared, 50)[1] == {"louvain"} and len(_refined(shared, 50)[0]) >= 3


def test_a_split_below_the_modularity_bar_keeps_the_component_whole():
    # A dense random group with no real seams: Louvain still cuts it, with low modularity.
    g = nx.relabel_nodes(nx.gnp_random_graph(12, 0.5, seed=1), lambda i: f"account:r{i:02d}")
    dense = [(a, b, 1.0, 0.0) for a, b in g.edges]
    parts = nx.community.louvain_communities(_graph(dense), weight="weight", seed=42)
    assert len(parts) >= 2 and nx.community.modularity(_graph(dense), parts, weight="weight") < 0.2
    two = clique("x", 5, 3.0) + clique("y", 5, 3.0) + [("account:x0", "account:y0", 0.1, 0.0)]

    def communities(edges, min_q):
        pdf = pd.DataFrame(edges, columns=["src", "dst", "weight", "flow"]).assign(component="c")
        got = _refine(pdf, 5000, 3, min_q, 0)
        return sorted(sorted(ids) for ids in got.groupby("community")["id"].apply(set))

    assert len(communities(dense, 0.0)) >= 2
    assert communities(dense, 0.2) == [sorted(g.nodes)]
    # Two cliques on one weak edge (modularity 0.5) are two rings under the same bar.
    assert len(communities(two, 0.2)) == 2 and len(communities(two, 0.6)) == 1


def test_pieces_below_the_minimum_merge_into_their_most_tied_neighbour():
    path = _graph([(f"m{i}", f"m{i + 1}", 1.0, 0.0) for i in range(5)])
    pairs = [{"m0", "m1"}, {"m2", "m3"}, {"m4", "m5"}]
    assert _merge_fragments(path, pairs, 3) == [{f"m{i}" for i in range(6)}]
    # A pair tied to two 5-cliques, more strongly to x: it joins x; the cliques stay apart.
    g = _graph(clique("x", 5, 3.0) + clique("y", 5, 3.0) + [
        ("account:s0", "account:s1", 0.5, 0.0), ("account:s0", "account:x0", 0.4, 0.0),
        ("account:s1", "account:y0", 0.2, 0.0), ("account:x1", "account:y1", 0.1, 0.0)])
    x, y = ({f"account:{p}{i}" for i in range(5)} for p in "xy")
    got = _merge_fragments(g, [y, {"account:s0", "account:s1"}, x], 3)
    assert sorted(map(sorted, got)) == [sorted(x | {"account:s0", "account:s1"}), sorted(y)]
    # Already large enough, or the whole component: nothing changes.
    assert _merge_fragments(g, [x, y], 3) == [x, y]
    assert _merge_fragments(_graph([("a", "b", 1.0, 0.0)]), [{"a", "b"}], 3) == [{"a", "b"}]
    # Pieces with no neighbour (components given that are not connected) stay as they are.
    apart = _graph([("a", "b", 1.0, 0.0), ("c", "d", 1.0, 0.0)])
    assert _merge_fragments(apart, [{"a", "b"}, {"c", "d"}], 3) == [{"a", "b"}, {"c", "d"}]


def test_large_components_fall_back_and_giant_ones_stay_whole(spark, config):
    small_cap = config.model_copy(update={"rings": config.rings.model_copy(
        update={"max_component_for_refinement": 10})})
    chain = [(f"account:c{i}", f"account:c{i + 1}", 1.0, 0.0) for i in range(14)]  # 15 vertices
    giant = [(f"account:g{i}", f"account:g{i + 1}", 1.0, 0.0) for i in range(120)]  # 121 vertices
    edges = chain + giant
    rows = refine_components(_components(spark, edges), _edges(spark, edges), small_cap).collect()
    methods = {r["id"][:9]: r["method"] for r in rows}
    assert methods["account:c"] == "label_propagation"
    giant_rows = [r for r in rows if r["id"].startswith("account:g")]
    assert len(giant_rows) == 121 and {r["method"] for r in giant_rows} == {"unrefined"}
    assert len({r["community"] for r in giant_rows}) == 1


def test_roles_follow_money_flow(spark, config):
    # a -> c and b -> c move money into c; d only shares a device with them.
    edges = [("account:a", "account:c", 2.0, 100.0), ("account:b", "account:c", 2.0, 80.0),
             ("account:a", "device:d1", 1.0, 0.0), ("account:b", "device:d1", 1.0, 0.0),
             ("account:c", "device:d1", 1.0, 0.0)]
    rows = refine_components(_components(spark, edges), _edges(spark, edges), config).collect()
    roles = {r["id"]: r["role"] for r in rows}
    assert roles == {"account:a": "sender", "account:b": "sender", "account:c": "collector",
                     "device:d1": "shared_device"}
    # Ring accounts each vertex is directly linked to: a and b to c, c to both, d1 to the three that used it.
    links = {r["id"]: r["ring_links"] for r in rows}
    assert links == {"account:a": 1, "account:b": 1, "account:c": 2, "device:d1": 3}
    # Money moved on mule-like links, both directions, and over the median mover's (a: 100 of 80, 100, 180).
    gross = {r["id"]: (r["gross_flow"], r["money_share"]) for r in rows}
    assert gross == {"account:a": (100.0, 1.0), "account:b": (80.0, 0.8), "account:c": (180.0, 1.8),
                     "device:d1": (0.0, 0.0)}


def test_money_share_sets_a_friend_apart_from_the_mules():
    # Three mules forward victims' money to a collector; m1 also passes a little on to a friend who
    # moves it on, and a household member shares m2's device. One money component, kept whole.
    edges = [(f"account:m{i}", "account:k", 2.5, amount) for i, amount in ((1, 500.0), (2, 450.0), (3, 520.0))]
    edges += [("account:m1", "account:f", 2.5, 20.0), ("account:m2", "device:d", 0.5, 0.0),
              ("account:h", "device:d", 0.5, 0.0)]
    pdf = pd.DataFrame(edges, columns=["src", "dst", "weight", "flow"]).assign(component="c")
    got = _refine(pdf, 5000, 3, 0.3, 50).set_index("id")
    assert set(got["method"]) == {"money_component"} and got["community"].nunique() == 1
    share = got["money_share"].to_dict()
    # Movers: f 20, m2 450, m3 520, m1 520, k 1470: the median mover moved 520.
    assert got.loc["account:m1", "gross_flow"] == 520.0 and got.loc["account:k", "gross_flow"] == 1470.0
    assert share["account:m2"] == pytest.approx(450 / 520) and share["account:f"] == pytest.approx(20 / 520)
    assert share["account:h"] == 0.0 and share["device:d"] == 0.0  # moved no money


def _communities(spark, groups):
    rows = [("c", key, v, "member", 1.0, 0.0, 0.0, 0.0, 1, len(vs), 1, "louvain")
            for key, vs in groups.items() for v in vs]
    return spark.createDataFrame(rows, COMMUNITY_SCHEMA)


def test_ring_ids_are_stable_across_nights(spark):
    night1 = _communities(spark, {"k1": ["account:a", "account:b", "account:c", "account:d"],
                                  "k2": ["account:x", "account:y", "account:z"]})
    ids1 = assign_ring_ids(night1, None, None, D1, 0.3)
    rings1, members1 = ring_tables(night1, ids1, D1)
    r1 = {r["community"]: r["ring_id"] for r in ids1.collect()}
    assert len(set(r1.values())) == 2

    # Night 2: ring k1 lost d and gained e (Jaccard 3/5); k2 is gone; a new group appears.
    night2 = _communities(spark, {"n1": ["account:a", "account:b", "account:c", "account:e"],
                                  "n3": ["account:p", "account:q", "account:r"]})
    ids2 = {r["community"]: r for r in assign_ring_ids(night2, members1, rings1, D2, 0.3).collect()}
    assert ids2["n1"]["ring_id"] == r1["k1"]
    assert ids2["n1"]["first_seen"] == D1
    assert ids2["n1"]["matched_jaccard"] == pytest.approx(3 / 5)
    assert ids2["n3"]["ring_id"] not in r1.values() and ids2["n3"]["first_seen"] == D2


def test_a_split_ring_keeps_its_id_on_the_larger_part_only(spark):
    night1 = _communities(spark, {"k": [f"account:m{i}" for i in range(6)]})
    ids1 = assign_ring_ids(night1, None, None, D1, 0.3)
    rings1, members1 = ring_tables(night1, ids1, D1)
    old = ids1.first()["ring_id"]
    night2 = _communities(spark, {"big": [f"account:m{i}" for i in range(4)],
                                  "small": ["account:m4", "account:m5", "account:new"]})
    ids2 = {r["community"]: r["ring_id"] for r in assign_ring_ids(night2, members1, rings1, D2, 0.3).collect()}
    assert ids2["big"] == old and ids2["small"] != old


def test_ring_tables_count_members_by_type_and_density(spark):
    comms = _communities(spark, {"k": ["account:a", "account:b", "device:d", "card:k"]})
    comms = comms.withColumn("n_edges", comms["n_edges"] * 0 + 4)
    rings, members = ring_tables(comms, assign_ring_ids(comms, None, None, D1, 0.3), D1)
    r = rings.first()
    assert (r["size"], r["n_accounts"], r["n_devices"], r["n_cards"], r["n_ips"]) == (4, 2, 1, 1, 0)
    assert r["density"] == pytest.approx(4 / 6)
    assert r["first_seen"] == D1 and r["last_seen"] == D1
    assert sorted((m["entity_type"], m["entity_id"]) for m in members.collect()) == [
        ("account", "a"), ("account", "b"), ("card", "k"), ("device", "d")]


def test_discover_rings_end_to_end_over_two_nights(spark, config, materialise_to_parquet):
    # Night 1: two 4-cliques joined by one weak edge (one component, two communities),
    # plus a pair too small to be a ring.
    night1 = clique("a", 4) + clique("b", 4, w=1.0) + [("account:a0", "account:b0", 0.01, 0.0)] \
        + [("account:p0", "account:p1", 1.0, 0.0)]
    rings1, members1 = discover_rings(_components(spark, night1), _edges(spark, night1), config, D1)
    groups1 = {}
    for m in members1.collect():
        groups1.setdefault(m["ring_id"], set()).add(m["entity_id"])
    assert sorted(sorted(g) for g in groups1.values()) == [[f"a{i}" for i in range(4)], [f"b{i}" for i in range(4)]]
    assert {r["size"] for r in rings1.collect()} == {4}

    # Night 2: ring a persists (one member swapped), ring b is gone, ring c is new.
    night2 = clique("a", 3) + [(f"account:a{i}", "account:a9", 1.0, 0.0) for i in range(3)] + clique("c", 3)
    rings2, members2 = discover_rings(_components(spark, night2), _edges(spark, night2), config, D2,
                                      members1, rings1)
    # As the rings stage runs it: the communities written once and read back; the same tables.
    materialise, written = materialise_to_parquet
    rings_m, members_m = discover_rings(_components(spark, night2), _edges(spark, night2), config, D2,
                                        members1, rings1, materialise=materialise)
    assert written == ["candidates/communities"]
    assert sorted(map(tuple, rings_m.collect())) == sorted(map(tuple, rings2.collect()))
    assert sorted(map(tuple, members_m.collect())) == sorted(map(tuple, members2.collect()))
    by_ring = {}
    for m in members2.collect():
        by_ring.setdefault(m["ring_id"], set()).add(m["entity_id"])
    a_id = next(r for r, g in groups1.items() if "a0" in g)
    assert by_ring[a_id] == {"a0", "a1", "a2", "a9"}
    seen = {r["ring_id"]: (r["first_seen"], r["last_seen"]) for r in rings2.collect()}
    assert seen[a_id] == (D1, D2)
    new = [r for r in seen if r != a_id]
    assert len(new) == 1 and seen[new[0]] == (D2, D2) and new[0] not in groups1
