"""The commit record of a stage output, and how readers find the committed files.

Layout of a stage's output folder (``<output>``, local or ``s3://``)::

    <output>/_manifest.json              the commit record: written LAST, atomically
    <output>/_v-<stage>-<run_id>/...     a version: the files one run wrote
    <output>/_lock.json                  held while a run writes (owner, host, pid; S3: heartbeat)
    <output>/_checkpoints/...            train's Ray Train checkpoints (never versioned or collected)

A run writes every file into a fresh version folder (its name starts with ``_``, so Arrow, Ray Data
and `io.list_files` never take it for output), then writes the commit record, which names the
stage, the status and every committed file: ``{"commit": {"version": "_v-...", "files": {logical
path: path under <output>}, "keep": [...]}}``. Writing one small object is atomic (local: temp file +
rename; S3: a single PUT), so whatever instant the writer dies at, the record names either the old
complete file set or the new one. Readers follow the record: `io.list_files`, `io.read_table`,
`io.exists` and `io.read_bytes` resolve ``<output>``, ``<output>/_errors`` or
``<output>/metrics.jsonl`` to the committed files, so no stage's reading code changes. The logical
path of a file is its path inside the version folder (``part-00000.parquet``, ``_errors/part-0.parquet``,
``hf/model.safetensors``).

A folder of files made by hand (no record, no ``_v-``/``_staging-``/``_lock`` traces) is read as it
is; one with traces but no record (`traces` names its stage) is refused, naming the stage to re-run
(pipeline.guards).

The writer is pipeline.commit, the checks at open pipeline.guards, the lock pipeline.lock.

API (the reader side)::

    Commit.stage, .status, .reason, .version, .files   # files: {logical: path under root}
    Commit.uris(under="") -> {logical: URI}            # committed files at or under a logical path
    read_commit(uri) -> Commit | None                  # the record of the output at `uri`
    locate(uri) -> Located | None                      # the committed output `uri` is or lies inside
    Input.of(uri) -> Input         # `uri` located once: what run_stage fingerprints and hands the stage
    uri_of(str | Input) -> str     # the configured URI of either, for messages
    resolve(uri) -> str            # the physical URI of a committed logical file or one-version folder
                                   # (resolve(<train output>/hf) for from_pretrained; humans: see the
                                   # manifest's commit.files)
    traces(uri) -> str | None      # the stage that left pipeline traces but no record at `uri`
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass
from urllib.parse import urlparse

import pyarrow.fs as pafs

from pipeline import fsys, tables

MANIFEST = "_manifest.json"
LOCK = "_lock.json"
VERSION_PREFIX = "_v-"
STAGING_PREFIX = "_staging-"  # the layout before versions; only cleaned up
CHECKPOINTS = "_checkpoints"


@dataclass(frozen=True)
class Commit:
    """The commit record of the output at `root`."""

    root: str
    manifest: dict

    @property
    def stage(self) -> str:
        return self.manifest.get("stage", "?")

    @property
    def status(self) -> str:
        return self.manifest.get("status", "?")

    @property
    def reason(self) -> str | None:
        return self.manifest.get("reason")

    @property
    def version(self) -> str:
        return self.manifest["commit"]["version"]

    @property
    def files(self) -> dict[str, str]:
        return self.manifest["commit"]["files"]

    def live_versions(self) -> set[str]:
        """The version folders holding this record's files (its own and those of carried files),
        as paths under root: ``_v-...`` or, for a side table's files, ``_errors/_v-...``."""
        c = self.manifest["commit"]
        return {c["version"], *(version_folder(p) for p in c["files"].values())}

    def versions(self) -> set[str]:
        """Every version folder this record keeps: its live ones and those of the commit before it
        (readers that started before this commit may still be reading them)."""
        return self.live_versions() | set(self.manifest["commit"].get("keep", []))

    def uris(self, under: str = "") -> dict[str, str]:
        """{logical path: URI} of the committed files equal to or under the logical path `under`."""
        under = under.strip("/")
        return {
            logical: fsys.join(self.root, physical)
            for logical, physical in sorted(self.files.items())
            if not under or logical == under or logical.startswith(under + "/")
        }


def version_folder(physical: str) -> str:
    """The version folder (a path under root) that holds the file at `physical` (a path under root)."""
    parts = physical.split("/")
    for i, p in enumerate(parts):
        if p.startswith(VERSION_PREFIX):
            return "/".join(parts[: i + 1])
    return parts[0]


def side_table(logical: str) -> str | None:
    """The side table (``_errors``, ``_quarantine``, ...) a logical path belongs to, or None for the
    main table's files and the output's loose files (``_summary.json``)."""
    head, sep, _ = logical.partition("/")
    return head if sep and head.startswith("_") else None


def read_manifest(uri: str) -> dict | None:
    """The ``_manifest.json`` of the output at `uri`, or None."""
    try:
        return json.loads(fsys.read_bytes(fsys.join(uri, MANIFEST)))
    except FileNotFoundError:
        return None


def read_commit(uri: str) -> Commit | None:
    """The commit record of the output at `uri` (None for a plain folder or an old-style manifest)."""
    m = read_manifest(uri)
    return Commit(uri.rstrip("/"), m) if m and isinstance(m.get("commit"), dict) else None


def is_physical(uri: str) -> bool:
    """A path into a version folder (``.../_v-.../...``) names files directly; it is never resolved."""
    return any(p.startswith(VERSION_PREFIX) for p in uri.split("/"))


@dataclass(frozen=True)
class Located:
    commit: Commit
    rel: str  # logical path inside the committed output; "" for all of it


def locate(uri: str) -> Located | None:
    """The committed output that `uri` is, or lies inside (walking up its ancestors), or None."""
    scheme = urlparse(uri).scheme
    if scheme not in ("", "file", "s3") or is_physical(uri):
        return None
    fs, path = fsys.filesystem(uri)
    rel: list[str] = []
    while True:
        m = None
        mpath = posixpath.join(path, MANIFEST)
        if fs.get_file_info(mpath).type == pafs.FileType.File:
            try:
                m = json.loads(fsys.read_bytes(fsys.as_uri(uri, mpath)))
            except (FileNotFoundError, ValueError):
                m = None
        if m is not None:
            if not isinstance(m.get("commit"), dict):
                return None  # an old-style manifest: its folder is read as it is
            return Located(Commit(fsys.as_uri(uri, path), m), "/".join(reversed(rel)))
        parent = posixpath.dirname(path)
        if not parent or parent == path or (scheme == "s3" and "/" not in path):
            return None
        rel.append(posixpath.basename(path))
        path = parent


@dataclass(frozen=True)
class Input:
    """One input URI, located once. `run_stage` makes one per stage input before the stage runs;
    the fingerprint, the guards and the stage's own reads (`io.list_files`, `io.parquet_shards`)
    all use it, so the stage reads exactly the commit its manifest fingerprinted, even when that
    input is re-committed while the stage runs, and no stage walks the storage a second time."""

    uri: str | None  # as configured (it may end in a glob)
    base: str | None  # `uri` without the glob on its last part
    pattern: str | None  # that glob, if any
    located: Located | None  # the committed output `base` is or lies inside, at resolution time

    @classmethod
    def of(cls, uri: str | None) -> Input:
        if not uri:
            return cls(uri, uri, None, None)
        base, pattern = fsys.split_glob(uri)
        return cls(uri, base, pattern, locate(base))


def uri_of(source: str | Input | None) -> str | None:
    """The URI a reader names in its messages: as configured, for a located `Input`."""
    return source.uri if isinstance(source, Input) else source


def resolve(uri: str) -> str:
    """Where the committed content of `uri` physically is: for a logical file inside a committed
    output, that file's URI; for a logical folder whose files all live in one version folder, that
    folder (e.g. ``resolve(<train output>/hf)`` for ``from_pretrained``). Anything else: `uri`."""
    loc = locate(uri)
    if loc is None:
        return uri
    files = loc.commit.uris(loc.rel)
    if loc.rel in files:
        return files[loc.rel]
    versions = {loc.commit.files[logical].split("/", 1)[0] for logical in files}
    if len(versions) != 1:
        raise ValueError(f"{uri}: its committed files live in {len(versions)} version folders; list them "
                         f"with fsys.list_files instead")
    return fsys.join(loc.commit.root, versions.pop(), loc.rel) if loc.rel else fsys.join(loc.commit.root, versions.pop())


def traces(uri: str) -> str | None:
    """If the folder at `uri` holds pipeline traces (versions, staging folders, a lock) but no
    commit record, the name of the stage that left them ("a pipeline stage" if unknown); else None."""
    fs, path = fsys.filesystem(uri)
    try:
        entries = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    except (FileNotFoundError, NotADirectoryError, OSError):
        return None
    names = {posixpath.basename(e.path) for e in entries}
    if MANIFEST in names:
        return None
    for n in sorted(names):
        if n.startswith(VERSION_PREFIX):
            return n[len(VERSION_PREFIX):].split("-", 1)[0]
    if tables.LOG in names:
        return "a pipeline stage"
    if LOCK in names:
        try:
            return json.loads(fsys.read_bytes(fsys.join(uri, LOCK))).get("stage") or "a pipeline stage"
        except (FileNotFoundError, ValueError):
            return "a pipeline stage"
    if CHECKPOINTS in names:
        return "train"
    if any(n.startswith(STAGING_PREFIX) for n in names):
        return "a pipeline stage"
    return None
