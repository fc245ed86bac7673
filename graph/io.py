"""Reading inputs and writing run outputs atomically.

Every output table of a run lives at ``OUTPUT/ds=YYYY-MM-DD/<table>/``. A
table is first written to ``OUTPUT/ds=.../_staging/<table>-<token>/`` and
then renamed into place, so a reader (or a re-run after a kill) never sees a
half-written table: it sees the old complete table or the new one. Renames
go through Hadoop's FileSystem API, so the same code works on local disk,
HDFS and object stores with a committer.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

from pyspark.sql import DataFrame, SparkSession

from graph.errors import RingfenceError

STAGING = "_staging"


def run_dir(output_root: str, ds: dt.date | str) -> str:
    return f"{str(output_root).rstrip('/')}/ds={ds}"


def table_path(output_root: str, ds: dt.date | str, table: str) -> str:
    return f"{run_dir(output_root, ds)}/{table}"


def filesystem(spark: SparkSession, path: str):
    """(Hadoop FileSystem, Hadoop Path, JVM view) for ``path``: local disk, HDFS and object stores alike."""
    jvm = spark.sparkContext._jvm
    hpath = jvm.org.apache.hadoop.fs.Path(path)
    fs = hpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    return fs, hpath, jvm


def exists(spark: SparkSession, path: str) -> bool:
    fs, hpath, _ = filesystem(spark, path)
    return bool(fs.exists(hpath))


def delete(spark: SparkSession, path: str) -> None:
    fs, hpath, _ = filesystem(spark, path)
    if fs.exists(hpath):
        fs.delete(hpath, True)


def replace(spark: SparkSession, staged: str, final: str) -> None:
    """Move ``staged`` to ``final``, replacing what was there.

    The old table is first renamed aside, then the new one into place, then
    the old one deleted: at every instant ``final`` is absent or complete.
    """
    fs, src, jvm = filesystem(spark, staged)
    dst = jvm.org.apache.hadoop.fs.Path(final)
    old = None
    if fs.exists(dst):
        old = jvm.org.apache.hadoop.fs.Path(f"{staged}.old")
        if not fs.rename(dst, old):
            raise OSError(f"could not move aside {final}")
    fs.mkdirs(dst.getParent())
    if not fs.rename(src, dst):
        if old is not None:
            fs.rename(old, dst)
        raise OSError(f"could not rename {staged} to {final}")
    if old is not None:
        fs.delete(old, True)


def write_table(df: DataFrame, output_root: str, ds: dt.date | str, table: str,
                partition_by: list[str] | None = None) -> str:
    """Write ``df`` as Parquet to ``OUTPUT/ds=.../table`` atomically; return the final path."""
    spark = df.sparkSession
    final = table_path(output_root, ds, table)
    staged = f"{run_dir(output_root, ds)}/{STAGING}/{table}-{uuid.uuid4().hex[:12]}"
    writer = df.write.mode("overwrite")
    if partition_by:
        writer = writer.partitionBy(*partition_by)
    writer.parquet(staged)
    replace(spark, staged, final)
    return final


def hadoop_path(spark: SparkSession, path: str):
    return spark.sparkContext._jvm.org.apache.hadoop.fs.Path(path)


def write_bytes(spark: SparkSession, path: str, data: bytes) -> None:
    """Create or overwrite one small file (not atomic: write to a staging path and move it)."""
    fs, hpath, _ = filesystem(spark, path)
    out = fs.create(hpath, True)
    try:
        out.write(bytearray(data))
    finally:
        out.close()


def read_bytes(spark: SparkSession, path: str) -> bytes:
    fs, hpath, jvm = filesystem(spark, path)
    stream = fs.open(hpath)
    try:
        return bytes(jvm.org.apache.commons.io.IOUtils.toByteArray(stream))
    finally:
        stream.close()


def file_digest(spark: SparkSession, path: str) -> tuple[str, int]:
    """SHA-256 (hex) and size of a file, streamed inside the JVM (never loaded whole)."""
    fs, hpath, jvm = filesystem(spark, path)
    md = jvm.java.security.MessageDigest.getInstance("SHA-256")
    stream = jvm.java.security.DigestInputStream(fs.open(hpath), md)
    try:
        jvm.org.apache.hadoop.io.IOUtils.copyBytes(stream, jvm.java.io.OutputStream.nullOutputStream(),
                                                   1 << 16, False)
    finally:
        stream.close()
    return bytes(md.digest()).hex(), int(fs.getFileStatus(hpath).getLen())


def part_files(spark: SparkSession, folder: str) -> list[str]:
    """The ``part-*`` data files Spark wrote into ``folder``, sorted (empty if it does not exist)."""
    fs, hpath, _ = filesystem(spark, folder)
    if not fs.exists(hpath):
        return []
    return sorted(s.getPath().toString() for s in fs.listStatus(hpath)
                  if s.getPath().getName().startswith("part-"))


def move(spark: SparkSession, src: str, dst: str) -> None:
    """Rename ``src`` to ``dst`` (creating ``dst``'s parent); raise if the file system refuses."""
    fs, hsrc, _ = filesystem(spark, src)
    hdst = hadoop_path(spark, dst)
    fs.mkdirs(hdst.getParent())
    if not fs.rename(hsrc, hdst):
        raise OSError(f"could not rename {src} to {dst}")


def write_json(spark: SparkSession, path: str, obj: Any) -> None:
    """Write a small JSON document atomically (temp file + rename)."""
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    write_bytes(spark, tmp, json.dumps(obj, indent=2, default=str, sort_keys=True).encode())
    delete(spark, path)
    move(spark, tmp, path)


def read_json(spark: SparkSession, path: str) -> Any:
    """The JSON document at ``path``, or None when there is none."""
    if not exists(spark, path):
        return None
    return json.loads(read_bytes(spark, path).decode("utf-8"))


def clear_staging(spark: SparkSession, output_root: str, ds: dt.date | str) -> None:
    """Remove leftovers of a killed run (called at the start of every run, under the run lock)."""
    delete(spark, f"{run_dir(output_root, ds)}/{STAGING}")


class RunLocked(RingfenceError):
    """Another live run holds this ``ds``."""


LOCK = "_LOCK"
STALE_LOCK_SECONDS = 6 * 3600


def _holder_alive(holder: dict[str, Any]) -> bool:
    if holder.get("host") == socket.gethostname():
        try:
            os.kill(int(holder["pid"]), 0)
        except ProcessLookupError:
            return False
        except (PermissionError, KeyError, ValueError):
            return True
        return True
    # Another machine: trust the lock until it is stale.
    return time.time() - float(holder.get("started", 0)) < STALE_LOCK_SECONDS


@contextlib.contextmanager
def run_lock(spark: SparkSession, output_root: str, ds: dt.date | str) -> Iterator[None]:
    """Hold ``OUTPUT/ds=.../_LOCK`` while a run writes, so two runs of one ``ds`` never interleave.

    The lock file is created with overwrite=false, which is atomic on local
    disk and HDFS. A lock left by a killed run (its process gone on this host,
    or older than ``STALE_LOCK_SECONDS`` elsewhere) is taken over; a live one
    makes this run fail fast with ``RunLocked`` naming the holder.
    """
    path = f"{run_dir(output_root, ds)}/{LOCK}"
    fs, hpath, _ = filesystem(spark, path)
    me = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(), "token": uuid.uuid4().hex}
    fs.mkdirs(hpath.getParent())
    for _attempt in range(2):
        try:
            out = fs.create(hpath, False)
        except Exception:  # the JVM says FileAlreadyExistsException
            holder = read_json(spark, path) or {}
            if _holder_alive(holder):
                raise RunLocked(
                    f"ds={ds} is being processed by pid {holder.get('pid')} on {holder.get('host')} "
                    f"since {dt.datetime.fromtimestamp(float(holder.get('started', 0)), dt.UTC):%Y-%m-%d %H:%M:%S} UTC; "
                    f"remove {path} only if that run is dead") from None
            fs.delete(hpath, False)
            continue
        try:
            out.write(bytearray(json.dumps(me).encode()))
        finally:
            out.close()
        break
    else:
        raise RunLocked(f"could not take {path}")
    try:
        yield
    finally:
        holder = read_json(spark, path) or {}
        if holder.get("token") == me["token"]:
            fs.delete(hpath, False)


def read_output(spark: SparkSession, output_root: str, ds: dt.date | str, table: str) -> DataFrame:
    return spark.read.parquet(table_path(output_root, ds, table))


def latest_ds_before(spark: SparkSession, output_root: str, ds: dt.date | str, marker: str) -> str | None:
    """The latest ``ds`` before this one whose run folder holds ``marker`` (a relative path)."""
    fs, hpath, jvm = filesystem(spark, str(output_root))
    if not fs.exists(hpath):
        return None
    found = []
    for status in fs.listStatus(hpath):
        name = status.getPath().getName()
        if name.startswith("ds=") and name[3:] < str(ds):
            if fs.exists(jvm.org.apache.hadoop.fs.Path(f"{status.getPath().toString()}/{marker}")):
                found.append(name[3:])
    return max(found) if found else None


def previous_run_ds(spark: SparkSession, output_root: str, ds: dt.date | str) -> str | None:
    """The latest ``ds`` before this one that has a complete run (``_RUN_COMPLETE`` marker)."""
    return latest_ds_before(spark, output_root, ds, "_RUN_COMPLETE")
