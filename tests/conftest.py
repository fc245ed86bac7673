"""Shared fixtures: one SparkSession for the whole run, tuned for tiny data."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time

import pytest


@pytest.fixture(scope="session")
def spark_conf():
    from graph.config import SparkConf

    # Adaptive query execution and 200 shuffle partitions are pure planning
    # and scheduling overhead on the few rows the tests use.
    return SparkConf(
        app_name="ringfence-tests",
        master="local[2]",
        shuffle_partitions=2,
        # The candidate graph's plan is large (identifier, money and exit rules; the link table is used
        # several times by the attach edges). With 2 GB, tests/test_candidates.py ran out of driver heap
        # (OutOfMemoryError in collectToPython, 2026-12-01, after the ip_exit rule); with 4 GB, the
        # product's default driver size, the file passes (25 tests, 430 s).
        driver_memory="4g",
        checkpoint_dir=tempfile.mkdtemp(prefix="ringfence-ckpt-"),
        extra_conf={
            "spark.ui.enabled": "false",
            "spark.sql.adaptive.enabled": "false",
            "spark.default.parallelism": "2",
            "spark.sql.session.timeZone": "UTC",
            # Every hash aggregate and sorter of a task grabs a page up front (~32 MB at this heap); a
            # deep plan of joins and aggregates on two concurrent tasks then exhausted execution memory
            # (UNABLE_TO_ACQUIRE_MEMORY in test_ip_footprint_matches_reference, CI of 2026-11-30).
            # Tiny test data needs small pages.
            "spark.buffer.pageSize": "2m",
        },
        log_level="ERROR",
    )


@pytest.fixture(scope="session")
def spark(spark_conf):
    from graph.session import build_session

    session = build_session(spark_conf)
    yield session
    session.stop()


@pytest.fixture(scope="session")
def config():
    from graph.config import load_config

    return load_config()


@pytest.fixture
def materialise_to_parquet(spark, tmp_path):
    """``(materialise, names)``: a ``materialise(df, name)`` as the stages pass one (write Parquet, read it
    back), and the names it was called with, in order."""
    names: list[str] = []

    def materialise(df, name):
        names.append(name)
        df.write.parquet(str(tmp_path / name))
        return spark.read.parquet(str(tmp_path / name))

    return materialise, names


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def redis_server():
    """A real redis-server on a free loopback port, for the whole session."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server not installed: run `make setup`")
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="ringfence-redis-")
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", workdir],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    import redis

    client = redis.Redis(host="127.0.0.1", port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("redis-server did not start")
    yield {"host": "127.0.0.1", "port": port}
    proc.terminate()
    proc.wait(timeout=10)
    shutil.rmtree(workdir, ignore_errors=True)
