"""The one SparkSession factory, configured from ``SparkConf``.

Only ``jobs/``, the CLI and the test fixture call ``build_session``; library
functions receive the session they work with.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from graph.config import SparkConf, resolve_path

GRAPHFRAMES_VERSION = "0.12.2"
GRAPHFRAMES_ARTIFACTS = (
    f"io.graphframes:graphframes-spark4_2.13:{GRAPHFRAMES_VERSION}",
    f"io.graphframes:graphframes-graphx-spark4_2.13:{GRAPHFRAMES_VERSION}",
)


class GraphFramesUnavailable(RuntimeError):
    """The GraphFrames JVM jars are not on the session's classpath."""


def local_jars(conf: SparkConf) -> list[Path]:
    """The jar files in the configured jars folder (empty when none)."""
    if not conf.jars_dir:
        return []
    folder = resolve_path(conf.jars_dir)
    return sorted(folder.glob("*.jar")) if folder.is_dir() else []


def jars_status(conf: SparkConf) -> str:
    """Why the GraphFrames jars are missing, as ``make setup`` recorded it (or '')."""
    if not conf.jars_dir:
        return ""
    marker = resolve_path(conf.jars_dir) / "UNAVAILABLE.txt"
    return marker.read_text().strip() if marker.is_file() else ""


def launched_by_spark_submit() -> bool:
    """True inside a Python app started by ``spark-submit`` (it hands over a JVM gateway)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def build_session(conf: SparkConf, app_name: str | None = None):
    """Build (or get) the SparkSession described by ``conf``."""
    # Workers must run the same interpreter as the driver, or pandas UDFs
    # fail with "No module named pandas" in the worker processes.
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(app_name or conf.app_name)
    if not launched_by_spark_submit():
        # Under spark-submit the launcher's --master (e.g. the Airflow
        # connection) decides; a builder master would silently override it.
        builder = builder.master(conf.master)
    builder = (
        builder.config("spark.sql.shuffle.partitions", str(conf.shuffle_partitions))
        .config("spark.driver.memory", conf.driver_memory)
        .config("spark.sql.session.timeZone", "UTC")
    )
    jars = local_jars(conf)
    if jars:
        builder = builder.config("spark.jars", ",".join(str(j) for j in jars))
    if conf.jars_packages:
        builder = builder.config("spark.jars.packages", ",".join(conf.jars_packages))
    for key, value in conf.extra_conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(conf.log_level)
    spark.sparkContext.setCheckpointDir(conf.checkpoint_dir)
    return spark


def graphframes_available(spark) -> bool:
    """True when the GraphFrames JVM classes can be loaded in this session."""
    try:
        jvm = spark.sparkContext._jvm
        jvm.java.lang.Class.forName(
            "org.graphframes.GraphFramePythonAPI",
            True,
            jvm.java.lang.Thread.currentThread().getContextClassLoader(),
        )
        return True
    except Exception:
        return False


def require_graphframes(spark, conf: SparkConf | None = None) -> None:
    """Fail with a clear message when the GraphFrames jars are not loaded."""
    if graphframes_available(spark):
        return
    why = jars_status(conf) if conf is not None else ""
    raise GraphFramesUnavailable(
        "GraphFrames JVM classes are not on the Spark classpath. Needed: "
        + ", ".join(GRAPHFRAMES_ARTIFACTS)
        + ". Run `make setup` (fetches them with mvn into .jars/) or set "
        "spark.jars_packages for a cluster."
        + (f" make setup recorded: {why}" if why else "")
    )
