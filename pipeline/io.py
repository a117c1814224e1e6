"""Reads that follow commit records.

Stage outputs are committed atomically (pipeline.commit): each run writes a ``_v-...`` version
folder, then a commit record (pipeline.record). `list_files`, `read_table`, `exists` and
`read_bytes` follow the record, so a reader sees exactly the committed files of a stage output, and
a plain folder of files as it is. `list_files_with_skips` also returns what was left out and why.
The physical helpers underneath (URIs to filesystems, writing a file) are in pipeline.fsys.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline import fsys, guards, record
from pipeline.errors import InputNotFound, UserError
from pipeline.schema import check_version


def exists(source: str | record.Input) -> bool:
    """Whether `source` exists, following commit records: ``<output>/_errors`` exists when the
    committed version holds it (see pipeline.record). An `Input` is not located again."""
    if isinstance(source, record.Input):
        uri, loc = source.base, source.located
    else:
        uri, loc = source, record.locate(source)
    if loc is not None and loc.rel:  # a logical path inside a committed output: what its record says
        return bool(loc.commit.uris(loc.rel))  # (a side table's folder exists before it holds rows)
    return fsys.exists(uri) or (loc is not None and bool(loc.commit.uris(loc.rel)))


def list_files(source: str | record.Input, suffixes: tuple[str, ...]) -> list[str]:
    """The files of `list_files_with_skips`, without the skipped ones."""
    return list_files_with_skips(source, suffixes)[0]


def list_files_with_skips(source: str | record.Input, suffixes: tuple[str, ...]) -> tuple[list[str], list[dict]]:
    """Files under `source` (a file, a folder searched recursively, or a glob on the last part) as
    sorted URIs, and the files left out as ``[{"uri": ..., "reason": ...}]``.

    `source` is a URI, or a stage input as `run_stage` located it (record.Input): then the commit
    it names is read as it was located, not looked up again.

    A stage output is read through its commit record: only its committed files, in the order of
    their logical paths (pipeline.record). An output with pipeline traces but no record is refused
    (UserError naming the stage to re-run). Elsewhere suffixes match case-insensitively; symlinked
    folders are followed once (a loop, or an alias of a folder already listed, is skipped); hidden
    and ``_``-prefixed names are skipped whole (one entry each, not descended into). Missing input
    fails at once (FileNotFoundError).
    """
    src = source if isinstance(source, record.Input) else record.Input.of(source)
    wanted = tuple(s.lower() for s in suffixes)
    if src.located is not None:
        return _committed_files(src.located, wanted, src.pattern)
    uri = src.base
    fs, path = fsys.filesystem(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise InputNotFound(f"input {uri} does not exist; check the path (or the bucket and the AWS_* environment)")
    if info.type == pafs.FileType.File:
        return [uri], []
    stage = record.traces(uri)
    if stage:
        raise guards.refuse_uncommitted(uri, stage)
    return fsys.walk(fs, uri, path, wanted, src.pattern)


def _committed_files(loc: record.Located, wanted: tuple[str, ...],
                     pattern: str | None) -> tuple[list[str], list[dict]]:
    files = loc.commit.uris(loc.rel)
    if loc.rel and loc.rel in files:  # the URI names one committed file
        return [files[loc.rel]], []
    if not files and loc.rel:
        raise InputNotFound(f"input {fsys.join(loc.commit.root, loc.rel)} does not exist in the committed output "
                            f"(stage {loc.commit.stage}, run {loc.commit.manifest.get('run_id')})")
    found, skipped = [], []
    for logical, uri in files.items():
        inner = logical[len(loc.rel):].lstrip("/") if loc.rel else logical
        if pattern is not None and "/" in inner:
            continue
        if any(p.startswith(("_", ".")) for p in inner.split("/")):
            continue  # pipeline side folders (_errors, _summary.json) are read by naming them
        if fsys.matches(posixpath.basename(inner), wanted, pattern):
            found.append(uri)
        elif pattern is None:
            skipped.append({"uri": uri, "reason": fsys.UNSUPPORTED_SUFFIX})
    return found, skipped


def read_bytes(uri: str) -> bytes:
    """The bytes of a file; a logical path inside a committed output (``<output>/_summary.json``)
    reads the committed file."""
    try:
        return fsys.read_bytes(uri)
    except FileNotFoundError:
        loc = record.locate(uri)
        files = loc.commit.uris(loc.rel) if loc is not None and loc.rel else {}
        if loc is None or loc.rel not in files:
            raise
        return fsys.read_bytes(files[loc.rel])


def read_table(uri: str, schema: pa.Schema) -> pa.Table:
    """Read every Parquet file under `uri` into one table of `schema`; empty if there are none."""
    if not exists(uri):
        return schema.empty_table()
    fs, _ = fsys.filesystem(uri)
    for attempt in range(3):
        files = list_files(uri, (".parquet",))
        try:
            tables = [pq.read_table(fsys.filesystem(f)[1], filesystem=fs, schema=schema) for f in files]
            break
        except FileNotFoundError:
            # The version we were reading was collected (two newer commits landed meanwhile):
            # follow the commit record again.
            if attempt == 2:
                raise
    return pa.concat_tables(tables) if tables else schema.empty_table()


@dataclass
class Shards:
    """The committed Parquet shards of one input, checked (`parquet_shards`)."""

    fs: pafs.FileSystem  # for Ray Data's ``filesystem=``
    files: list[str]  # URIs, in `list_files` order
    paths: list[str]  # the same files as paths in `fs`
    rows: int  # from the footers
    columns: set[str]  # the columns every shard has


def parquet_shards(source: str | record.Input, schema: pa.Schema, key: str, what: str, hint: str) -> Shards:
    """The Parquet shards under `source` (a URI, or an input as run_stage located it; following
    commit records), each checked from its footer for the schema version and for `schema`'s
    columns. None, or a shard of another table, is a one-line `UserError` naming the config `key`
    and what to do (`hint`); a missing `source` is `InputNotFound`."""
    uri = record.uri_of(source)
    files = list_files(source, (".parquet",))
    if not files:
        raise UserError(f"{key}={uri} holds no {what} .parquet shards; {hint}")
    fs = fsys.filesystem(uri)[0]
    paths = [fsys.filesystem(f)[1] for f in files]
    rows, common = 0, None
    for f, p in zip(files, paths):
        meta = pq.read_metadata(fs.open_input_file(p))
        found = meta.schema.to_arrow_schema()
        check_version(found, f)
        missing = [n for n in schema.names if n not in found.names]
        if missing:
            raise UserError(f"{f}: not a {what} shard (missing columns {missing}); {hint}")
        rows += meta.num_rows
        common = set(found.names) if common is None else common & set(found.names)
    return Shards(fs, files, paths, rows, common or set())
