"""The connected-components cost estimate (bench/bench_components_cost.py).

It is a benchmark estimate of what GraphFrames' two-phase connected components costs, not product code,
but its timing only means something if it computes connected components: its partition must equal
networkx's on hand-made graphs that reach each of its paths (self-loops and duplicate edges, leaf pruning,
many iterations with checkpoints, the broadcast path of the skewed join, integral ids) and on seeded
random graphs. The settings it does not mirror are refused.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import networkx as nx
import pytest
from pyspark.sql import functions as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from bench_components_cost import (  # noqa: E402
    NotMirrored,
    components_estimate,
    difference_examples,
    main,
    mirrored_settings,
    partition_difference,
)


def _partition(pairs) -> set[frozenset]:
    groups: dict = {}
    for v, c in pairs:
        groups.setdefault(c, set()).add(v)
    return {frozenset(g) for g in groups.values()}


def _networkx(edges) -> set[frozenset]:
    g = nx.Graph()
    g.add_edges_from(edges)
    return {frozenset(c) for c in nx.connected_components(g)}


def _estimate(spark, config, edges, threshold=None, interval=None, ddl="src STRING, dst STRING"):
    """(partition, Estimate) of the estimate on ``edges`` with the configured settings unless given."""
    df = spark.createDataFrame(edges, ddl)
    est = components_estimate(
        df, broadcast_threshold=config.rings.cc_broadcast_threshold if threshold is None else threshold,
        checkpoint_interval=config.rings.cc_checkpoint_interval if interval is None else interval)
    got = _partition((r["id"], r["component"]) for r in est.components.collect())
    est.cleanup()
    return got, est


def _random_edges(seed: int, prefix: str, n: int = 40, m: int = 34) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    return [(f"account:{prefix}{rng.randrange(n)}", f"account:{prefix}{rng.randrange(n)}") for _ in range(m)]


@pytest.mark.spark
def test_isolated_edges_a_star_and_seeded_random_graphs(spark, config):
    isolated = [(f"account:a{i}", f"account:b{i}") for i in range(6)]
    isolated += [("account:b0", "account:a0"), ("account:a1", "account:b1"), ("account:s", "account:s")]
    star = [("device:hub", f"account:leaf{i:02d}") for i in range(30)]
    edges = isolated + star + _random_edges(1, prefix="r") + _random_edges(2, prefix="q")
    got, est = _estimate(spark, config, edges)
    assert got == _networkx(edges)  # the self-loop's vertex is a component of its own
    assert est.pruned_at is not None  # sparse and mostly leaves: the pruned graph is far smaller
    assert est.hub_keys == 0  # the configured threshold (10^6) sends nothing down the broadcast path


@pytest.mark.spark
def test_a_long_chain_iterates_through_checkpoints(spark, config):
    edges = [(f"account:c{i:03d}", f"account:c{i + 1:03d}") for i in range(63)]
    got, est = _estimate(spark, config, edges, interval=2)
    assert got == _networkx(edges)
    assert est.iterations > 4  # checkpoints at iterations 2, 4, ..., each deleting the one before


@pytest.mark.spark
def test_integral_ids_and_a_vertex_above_the_broadcast_threshold(spark, config):
    rng = random.Random(5)
    edges = [(0, i) for i in range(1, 13)] + [(rng.randrange(40), rng.randrange(40)) for _ in range(25)]
    got, est = _estimate(spark, config, edges, threshold=4, ddl="src LONG, dst LONG")
    assert got == _networkx(edges)
    assert est.hub_keys >= 1  # vertex 0 (degree >= 12) is joined by broadcast


@pytest.mark.spark
def test_partition_difference_tells_a_split_from_a_relabelling(spark):
    ref = spark.createDataFrame([("a", "0"), ("b", "0"), ("c", "1")], "id STRING, component STRING")
    relabelled = ref.withColumn("component", F.concat(F.lit("x"), "component"))
    split = spark.createDataFrame([("a", "0"), ("b", "2"), ("c", "1")], "id STRING, component STRING")
    assert partition_difference(relabelled, ref)["same"]
    d = partition_difference(split, ref)
    assert not d["same"] and d["component_pairs"] == 3 and d["components_reference"] == 2
    examples = difference_examples(split.filter("id != 'c'"), ref)
    assert examples["only_in_reference"] == ["c"] and examples["only_in_estimate"] == []
    assert examples["reference_components_split_by_estimate"] == [{"reference": "0", "parts": 2}]


def test_settings_it_does_not_mirror_are_refused(config, tmp_path, capsys):
    assert mirrored_settings(config.rings) == (config.rings.cc_broadcast_threshold,
                                               config.rings.cc_checkpoint_interval)
    with pytest.raises(NotMirrored, match="graphx"):
        mirrored_settings(config.rings.model_copy(update={"cc_algorithm": "graphx"}))
    with pytest.raises(NotMirrored, match="runAQE"):
        mirrored_settings(config.rings.model_copy(update={"cc_broadcast_threshold": -1}))
    conf = tmp_path / "graphx.yaml"
    # jars_dir: "" -- a conf file's jars folder must exist, and a fresh worktree has none.
    conf.write_text('spark:\n  jars_dir: ""\nrings:\n  cc_algorithm: graphx\n')
    assert main(["--work", str(tmp_path), "--ds", "2026-11-24", "--label", "x", "--conf", str(conf)]) == 2
    assert "not mirrored" in capsys.readouterr().err
