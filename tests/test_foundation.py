"""Foundation: config loading, the session factory, the CLI, GraphFrames on the classpath."""


import random
import subprocess
import sys
from pathlib import Path

import networkx as nx
import pytest
from blocked import needs_graphframes

from graph.config import ConfigError, RingfenceConfig, load_config
from graph.session import GraphFramesUnavailable, graphframes_available, require_graphframes

REPO = Path(__file__).resolve().parent.parent


def test_default_config_loads_with_local_defaults():
    cfg = load_config()
    assert cfg.spark.master == "local[*]"
    assert cfg.pipeline.lookback_days == 30
    # conf/default.yaml and the code defaults carry the same (fitted) scoring: neither drifts alone.
    assert cfg.scoring == RingfenceConfig().scoring


def test_override_file_merges_over_defaults(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("spark:\n  shuffle_partitions: 3\npipeline:\n  lookback_days: 150\n")
    cfg = load_config(f)
    assert cfg.spark.shuffle_partitions == 3
    assert cfg.pipeline.lookback_days == 150
    assert cfg.spark.master == "local[*]"  # untouched keys keep their defaults


@pytest.mark.parametrize(
    ("yaml_text", "needle"),
    [
        ("spark:\n  shufle_partitions: 3\n", "spark.shufle_partitions"),
        ("spark:\n  shuffle_partitions: lots\n", "spark.shuffle_partitions"),
        ("hubs:\n  max_accounts_per_ip: 0\n", "hubs.max_accounts_per_ip"),
        ("nonsense: 1\n", "nonsense"),
        ("redis:\n  password: hunter2\n", "redis.password"),
        ("spark:\n  jars_dir: /no/such/dir\n", "spark.jars_dir"),
    ],
)
def test_bad_config_names_file_and_key(tmp_path, yaml_text, needle):
    f = tmp_path / "bad.yaml"
    f.write_text(yaml_text)
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert str(f) in str(e.value)
    assert needle in str(e.value)


def test_missing_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_environment_overrides_paths():
    cfg = load_config(env={"RINGFENCE_SPARK_MASTER": "local[1]", "RINGFENCE_REDIS_PORT": "6390"})
    assert cfg.spark.master == "local[1]"
    assert cfg.redis.port == 6390


def test_cluster_example_config_is_valid():
    cfg = load_config(REPO / "conf" / "cluster.example.yaml")
    assert cfg.spark.master.startswith("spark://")
    assert any("graphframes-spark4_2.13" in p for p in cfg.spark.jars_packages)


def test_cli_help_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "graph.cli", "--help"], capture_output=True, text=True,
                         check=True, cwd=REPO).stdout
    for sub in ("generate", "run", "validate", "evaluate", "export", "verify", "publish", "rollback", "gc"):
        assert sub in out


def test_cli_rejects_bad_date():
    r = subprocess.run([sys.executable, "-m", "graph.cli", "run", "--input", "x", "--output", "y",
                        "--ds", "2024-13-01"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2
    assert "not a date" in r.stderr


@pytest.mark.spark
def test_session_factory_applies_config(spark, spark_conf):
    import os

    assert spark.conf.get("spark.sql.shuffle.partitions") == str(spark_conf.shuffle_partitions)
    assert spark.conf.get("spark.sql.session.timeZone") == "UTC"
    assert os.environ["PYSPARK_PYTHON"] == sys.executable
    assert spark.sparkContext.getCheckpointDir().endswith(Path(spark_conf.checkpoint_dir).name) or \
        Path(spark_conf.checkpoint_dir).name in spark.sparkContext.getCheckpointDir()


@pytest.mark.spark
def test_pandas_udf_runs_in_workers(spark):
    # Workers must find pandas: the factory points PYSPARK_PYTHON at this interpreter.
    # (No `from __future__ import annotations` in this file: pandas_udf reads the hints.)
    import pandas as pd
    from pyspark.sql.functions import pandas_udf

    @pandas_udf("long")
    def plus_one(s: pd.Series) -> pd.Series:
        return s + 1

    assert [r[0] for r in spark.range(3).select(plus_one("id")).collect()] == [1, 2, 3]


@pytest.mark.spark
def test_missing_graphframes_is_a_clear_error(spark, spark_conf):
    if graphframes_available(spark):
        require_graphframes(spark, spark_conf)  # must not raise when the jars are there
        return
    with pytest.raises(GraphFramesUnavailable) as e:
        require_graphframes(spark, spark_conf)
    assert "io.graphframes:graphframes-spark4_2.13" in str(e.value)
    assert "make setup" in str(e.value)


def _random_graph(seed: int):
    rng = random.Random(seed)
    n = rng.randint(5, 60)
    m = rng.randint(0, 2 * n)
    edges = {(rng.randrange(n), rng.randrange(n)) for _ in range(m)}
    return n, sorted((a, b) for a, b in edges if a != b)


@pytest.mark.spark
@needs_graphframes
@pytest.mark.parametrize("seed", range(10))
def test_graphframes_connected_components_match_networkx(spark, spark_conf, seed):
    require_graphframes(spark, spark_conf)
    from graphframes import GraphFrame

    n, edges = _random_graph(seed)
    v = spark.createDataFrame([(i,) for i in range(n)], "id long")
    e = spark.createDataFrame(edges, "src long, dst long")
    got = {r["id"]: r["component"] for r in GraphFrame(v, e).connectedComponents().collect()}
    g = nx.Graph()
    g.add_nodes_from(range(n))
    g.add_edges_from(edges)
    want = [frozenset(c) for c in nx.connected_components(g)]
    got_groups: dict[int, set[int]] = {}
    for node, comp in got.items():
        got_groups.setdefault(comp, set()).add(node)
    assert sorted(map(sorted, got_groups.values())) == sorted(map(sorted, want))
