"""Every tabular output is also a Delta Lake table, so that any tool of the field reads it.

A stage output's Parquet files are written by the stage into its run's version folder, and the
commit record (``_manifest.json``, pipeline.record) names them. Just before that record is
written, `publish` makes the same file set the new version of a Delta table (delta-rs,
``deltalake``) rooted at the output, or at the side folder the files belong to::

    <output>/_delta_log/...                   the main table (trajectories, step labels, rows)
    <output>/_v-<stage>-<run>/part-*.parquet  its files, referenced from the log by relative path
    <output>/_errors/_delta_log/...           a side table (label errors, build errors, ...)
    <output>/_errors/_v-<stage>-<run>/...     its files

So pandas (``deltalake.DeltaTable(uri).to_pandas()``), Polars (``pl.read_delta``), DuckDB (over
``DeltaTable(uri).to_pyarrow_dataset()``, or its own ``delta_scan``), Spark and Ray Data
(``ray.data.read_delta``) read exactly the rows of the latest commit, or of an earlier one by
time travel (``version=N``). No file is written twice: the Delta log only points at the files the
stage wrote. A plain ``pandas.read_parquet(<output>)`` still finds nothing (the files live in
``_``-prefixed folders, which Parquet readers skip), which is the point: a glob over the folder
would read every kept version at once; the log says which files are the table.

Why a log beside our record rather than the log alone: one stage run commits several tables (rows
and their side tables) and non-tabular files (``_summary.json``) as one unit, and the project's
own readers must see all of them from the same commit. Delta commits one table at a time. So the
record stays the unit of the pipeline's atomicity and names each table's Delta version
(``commit.tables``); each Delta version on its own is atomic too (delta-rs writes
``_delta_log/<version>.json`` with put-if-absent: a no-replace rename on local disk, a conditional
PUT on S3, no lock service). A writer killed between a Delta commit and the record leaves a Delta
version newer than the record; its files are kept (pipeline.commit never collects a folder the
latest Delta version references), and the next run's commit replaces it.

Each Delta commit carries ``srft.stage``, ``srft.run_id`` and ``srft.status`` in its commit info:
the latest version of a label table may be a periodic ``partial`` commit of a run still going
(``DeltaTable(uri).history(1)``). The last complete one is what ``_manifest.json`` names.
"""

from __future__ import annotations

import json
import os
import posixpath
import time
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline import fsys

LOG = "_delta_log"


def location(uri: str) -> str:
    """The URI delta-rs is given: an absolute local path, or ``s3://bucket/key``."""
    scheme = urlparse(uri).scheme
    if scheme in ("", "file"):
        return os.path.abspath(uri[len("file://"):] if scheme == "file" else uri)
    return uri.rstrip("/")


def storage_options(uri: str) -> dict[str, str] | None:
    """delta-rs reads credentials and region from the standard AWS environment itself; only the
    endpoint of an S3-compatible store, and plain HTTP to it, are passed on. Never a secret."""
    if urlparse(uri).scheme != "s3":
        return None
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or ""
    if not endpoint:
        return {}
    opts = {"AWS_ENDPOINT_URL": endpoint}
    if endpoint.startswith("http://"):
        opts["AWS_ALLOW_HTTP"] = "true"
    return opts


def is_table(uri: str) -> bool:
    """Whether `uri` holds a Delta log with at least one commit."""
    if urlparse(uri).scheme not in ("", "file", "s3"):
        return False
    try:
        fs, path = fsys.filesystem(uri)
        infos = fs.get_file_info(pafs.FileSelector(posixpath.join(path, LOG), allow_not_found=True))
    except (OSError, ValueError):
        return False
    return any(i.path.endswith(".json") for i in infos)


def open_table(uri: str, version: int | None = None):
    """The ``deltalake.DeltaTable`` at `uri` (its latest version, or `version`)."""
    from deltalake import DeltaTable

    return DeltaTable(location(uri), version=version, storage_options=storage_options(uri))


def referenced(uri: str) -> set[str]:
    """Paths (relative to the table root) of the files of the table's latest version; empty if
    there is no table."""
    return _relative_files(open_table(uri), uri) if is_table(uri) else set()


def _relative_files(dt, uri: str) -> set[str]:
    root = location(uri).rstrip("/")
    out = set()
    for f in dt.file_uris():
        f = f.removeprefix("file://")
        out.add(f[len(root) + 1:] if f.startswith(root + "/") else f)
    return out


def publish(table_uri: str, files: list[str], *, stage: str, run_id: str, status: str) -> int:
    """Make `files` (paths relative to `table_uri`, Parquet files already written) the rows of the
    table's next version, and return that version. An append when every file of the latest
    version is among them (a periodic or resumed label commit), else an overwrite (a new run).
    The table is created on first use, with the schema of the first file."""
    from deltalake import CommitProperties, DeltaTable
    from deltalake.transaction import AddAction

    fs, root = fsys.filesystem(table_uri)
    schema = pq.read_schema(posixpath.join(root, files[0]), filesystem=fs) if files else None
    loc, opts = location(table_uri), storage_options(table_uri)
    props = CommitProperties(custom_metadata={"srft.stage": stage, "srft.run_id": run_id, "srft.status": status})
    if not is_table(table_uri):
        if schema is None:
            raise ValueError(f"{table_uri}: no files to create a table from")
        DeltaTable.create(loc, _delta_schema(schema), mode="error", storage_options=opts,
                          description=f"srft {stage} output; schema {_schema_version(schema)}",
                          commit_properties=CommitProperties(custom_metadata={"srft.stage": stage}))
    dt = DeltaTable(loc, storage_options=opts)
    current = _relative_files(dt, table_uri)
    schema = schema if schema is not None else dt.schema().to_arrow()
    new = sorted(set(files) - current) if current <= set(files) else sorted(files)
    mode = "append" if current <= set(files) else "overwrite"
    if mode == "append" and not new and current:
        return dt.version()  # nothing new since the last commit: no empty Delta version
    now_ms = int(time.time() * 1000)
    actions = []
    for rel in new:
        path = posixpath.join(root, rel)
        rows = pq.read_metadata(path, filesystem=fs).num_rows
        actions.append(AddAction(rel, fs.get_file_info(path).size, {}, now_ms, True,
                                 json.dumps({"numRecords": rows})))
    dt.create_write_transaction(actions, mode, _delta_schema(schema), commit_properties=props)
    dt.update_incremental()
    return dt.version()


def _schema_version(schema: pa.Schema) -> str:
    return (schema.metadata or {}).get(b"srft.schema_version", b"?").decode()


def _delta_schema(schema: pa.Schema) -> pa.Schema:
    """The Arrow schema as Delta stores it: without the Parquet-level metadata (the srft schema
    version stays in every Parquet footer and in the table's description)."""
    return schema.remove_metadata()


def read(uri: str, version: int | None = None) -> pa.Table:
    """The rows of the Delta table at `uri` (tests and notebooks; the pipeline reads through its record)."""
    return open_table(uri, version).to_pyarrow_table()
