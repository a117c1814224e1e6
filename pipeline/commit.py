"""Writing a stage output: a fresh version folder, then the commit record, written last.

What the record is and how readers follow it: pipeline.record. A run opens its output
(`open_output`: the guards of pipeline.guards, the lock of pipeline.lock, a fresh version folder),
writes every file under ``out.uri``, and commits: each table among the files becomes a Delta
version (pipeline.tables), then ``<output>/_manifest.json`` names them all.

The version committed before a run is kept until the run's commit after it (a reader still reading
it keeps working); older versions and the folders of killed runs are deleted by the next run of
the same stage. Nothing else is ever deleted (`Output.collect` only ever names what the pipeline
writes).

API (the stage side; `pipeline.manifest.run_stage` does the opening and the final commit)::

    def run(cfg, out: Output) -> dict          # a stage: write under out.uri, return the summary
    out.uri        # absolute URI of this run's version folder: write every output file under it
                   # (also from Ray workers: it is absolute)
    out.side_uri("_errors")    # where this run writes the files of a side table (its own Delta table)
    out.root       # the output URI as configured
    out.run_id     # this run's id (the version folder is _v-<stage>-<run_id>)
    out.previous   # Commit | None: the last commit of this stage in this output (any status)
    out.carry(logical_paths)   # name these files of out.previous in this run's commits too
                               # (label resume: keep what earlier runs labelled, no copy)
    out.commit(status="partial", **fields) -> dict
                   # commit now what is under out.uri (+ carried files): periodic commits
                   # ("label progress survives a crash"). run_stage makes the final commit
                   # (status "complete", or "failed" with the reason when the stage raised
                   # StageFailed). Downstream stages refuse an input whose status is not complete.
    open_output(stage, uri, inputs, run_id=None, lock_ttl_s=None) -> Output   # context manager;
                   # for a stage's second output (ingest's quarantine): guards, lock, commit
    commit_copy(stage, src, dest, inputs, status="complete", **fields) -> dict
                   # commit a copy of the files under src as the output at dest
"""

from __future__ import annotations

import json
import os
import posixpath
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Self
from urllib.parse import urlparse

import pyarrow.fs as pafs

from pipeline import fsys, tables
from pipeline.guards import check_overlap, check_reusable, is_side_folder
from pipeline.lock import Lock, lock_ttl_s
from pipeline.record import (
    LOCK,
    MANIFEST,
    STAGING_PREFIX,
    VERSION_PREFIX,
    Commit,
    Input,
    side_table,
    version_folder,
)
from pipeline.runtime import new_run_id


def _age_s(info) -> float:
    """Seconds since `info` (a pyarrow FileInfo) was last modified; 0 when the filesystem does not say."""
    mtime = info.mtime
    return 0.0 if mtime is None else time.time() - mtime.timestamp()


def _children(root: str) -> list[pafs.FileInfo]:
    fs, path = fsys.filesystem(root)
    try:
        return fs.get_file_info(pafs.FileSelector(path, recursive=False, allow_not_found=True))
    except (FileNotFoundError, NotADirectoryError):
        return []


def _delete(root: str, info: pafs.FileInfo) -> None:
    fs, _ = fsys.filesystem(root)
    try:
        if info.type == pafs.FileType.Directory:
            fs.delete_dir(info.path)
        else:
            fs.delete_file(info.path)
    except (FileNotFoundError, OSError):
        pass  # already gone


@dataclass
class Output:
    """An output opened for writing by one run. See the module docstring."""

    stage: str
    root: str
    run_id: str
    previous: Commit | None
    lock: Lock | None = None
    record: dict = field(default_factory=dict)  # fields every commit record of this run carries
    carried: dict[str, str] = field(default_factory=dict)
    committed: dict | None = None
    # Which of the Parquet files found under this run's folders a commit may take ({logical} -> bool);
    # None takes all. A stage whose workers write files sets it (label: only the files whose
    # worker reports reached the driver, never one from a task whose answer was lost).
    admit: Callable[[str], bool] | None = None
    created_root: bool = False  # the output folder did not exist before this run
    # The stage's inputs as run_stage located them ({name: record.Input}); the stage reads these,
    # not its config's URIs, so it reads the commits its manifest fingerprinted.
    inputs: dict[str, Input] = field(default_factory=dict)

    @property
    def version(self) -> str:
        return f"{VERSION_PREFIX}{self.stage}-{self.run_id}"

    @property
    def uri(self) -> str:
        return fsys.absolute(fsys.join(self.root, self.version))

    def side_uri(self, table: str) -> str:
        """Where this run writes the files of side table `table` (``_errors``, ``_quarantine``):
        a version folder inside the side table's own folder, so that the side table is a Delta
        table of its own (pipeline.tables). Their logical paths are ``<table>/<file>``."""
        if not table.startswith("_") or "/" in table or table.startswith((VERSION_PREFIX, tables.LOG)):
            raise ValueError(f"a side table is one folder name starting with '_', not {table!r}")
        return fsys.absolute(fsys.join(self.root, table, self.version))

    def carry(self, logical_paths: Iterable[str]) -> None:
        if self.previous is None:
            raise ValueError(f"{self.root} has no previous commit to carry files from")
        for p in logical_paths:
            self.carried[p] = self.previous.files[p]

    def _side_tables(self) -> list[str]:
        """Side table folders under root (named ``_...``, not a version, log, lock or checkpoint)."""
        return sorted(
            posixpath.basename(i.path) for i in _children(self.root)
            if i.type == pafs.FileType.Directory and is_side_folder(posixpath.basename(i.path))
        )

    def written(self) -> dict[str, str]:
        """{logical: path under root} of every file this run has written so far: under its version
        folder, and under its version folder in each side table."""
        out = {}
        for prefix in ["", *self._side_tables()]:
            folder = posixpath.join(prefix, self.version) if prefix else self.version
            fs, path = fsys.filesystem(fsys.join(self.root, folder))
            for f in fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True)):
                if f.type != pafs.FileType.File or ".tmp-" in posixpath.basename(f.path):
                    continue
                rel = f.path[len(path.rstrip("/")) + 1:]  # not posixpath.relpath: it needs a cwd for S3 keys
                logical = posixpath.join(prefix, rel) if prefix else rel
                if self.admit is None or self.admit(logical):
                    out[logical] = f"{folder}/{rel}"
        return out

    def publish_tables(self, files: dict[str, str], status: str) -> dict[str, int]:
        """Make each table among `files` ({logical: physical}) a new Delta version (pipeline.tables);
        returns {table ("" for the main one): version}. Files of a side table that live in the main
        version folder (the layout before side tables had folders of their own) have no table."""
        groups: dict[str, list[str]] = {}
        for logical, physical in files.items():
            if not logical.endswith(".parquet"):
                continue
            table = side_table(logical)
            if table is None and "/" not in logical:
                groups.setdefault("", []).append(physical)
            elif table is not None and physical.startswith(table + "/" + VERSION_PREFIX):
                groups.setdefault(table, []).append(physical[len(table) + 1:])
        return {
            table: tables.publish(fsys.join(self.root, table) if table else self.root, sorted(rel),
                                  stage=self.stage, run_id=self.run_id, status=status)
            for table, rel in sorted(groups.items())
        }

    def commit(self, status: str = "partial", **fields) -> dict:
        """Write the commit record naming the carried files and everything written now, after
        publishing each table among them as a Delta version (pipeline.tables)."""
        files = {**self.carried, **self.written()}
        keep = sorted(self.previous.live_versions() - {self.version}) if self.previous else []
        if self.lock is not None:
            self.lock.check()
        versions = self.publish_tables(files, status)
        manifest = {
            **self.record, **fields,
            "stage": self.stage, "status": status, "run_id": self.run_id, "output": self.root,
            "commit": {"version": self.version, "files": files, "keep": keep, "tables": versions,
                       "committed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
        }
        if self.lock is not None:
            self.lock.check()
        fsys.write_bytes(fsys.join(self.root, MANIFEST), json.dumps(manifest, indent=2, default=str).encode())
        self.committed = manifest
        self.collect(Commit(self.root, manifest))
        return manifest

    def collect(self, current: Commit | None) -> None:
        """Delete version folders that neither `current`, this run nor the latest Delta version of
        any table needs, staging folders of the old layout and leftovers of killed runs; only ever
        names the pipeline itself writes."""
        last = current if current is not None else self.previous
        needed = last.versions() if last is not None else set()
        for prefix in ["", *self._side_tables()]:
            folder = fsys.join(self.root, prefix) if prefix else self.root
            in_delta = {version_folder(f) for f in tables.referenced(folder)}
            for info in _children(folder):
                name = posixpath.basename(info.path)
                key = posixpath.join(prefix, name) if prefix else name
                stale = (
                    (name.startswith(VERSION_PREFIX) and name != self.version and key not in needed
                     and name not in in_delta)
                    or (not prefix and name.startswith((STAGING_PREFIX, MANIFEST + ".tmp-", LOCK + ".stale-")))
                    # a heartbeat's temporary file left by a run of the old (mutex) lock; nobody's now
                    or (not prefix and name.startswith(LOCK + ".tmp-") and _age_s(info) > lock_ttl_s())
                )
                if stale:
                    _delete(self.root, info)

    def close(self) -> None:
        """Release the lock. A run that committed nothing and wrote nothing (refused by the stage
        at its start) leaves no trace: its empty version folder goes, and the output folder too
        if this run created it."""
        untouched = self.committed is None and not self.written()
        if untouched:
            _delete(self.root, fsys.filesystem(self.uri)[0].get_file_info(fsys.filesystem(self.uri)[1]))
        if self.lock is not None:
            self.lock.release()
            self.lock = None
        if untouched and self.created_root and urlparse(self.root).scheme in ("", "file"):
            try:
                os.rmdir(fsys.filesystem(self.root)[1])  # only if empty
            except OSError:
                pass

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_output(
    stage: str,
    uri: str,
    inputs: dict[str, str | None] | None = None,
    run_id: str | None = None,
    lock_ttl_s: float | None = None,
) -> Output:
    """Open `uri` for one run of `stage`: refuse overlap with `inputs` and foreign folders, take
    the lock, delete leftovers of killed runs. Use as a context manager (releases the lock)."""
    check_overlap(uri, inputs or {})
    previous = check_reusable(uri, stage)
    created_root = not fsys.exists(uri)
    run_id = run_id or new_run_id()
    lock = Lock(uri, stage, run_id, lock_ttl_s)
    lock.acquire()
    out = Output(stage=stage, root=uri.rstrip("/"), run_id=run_id, previous=previous, lock=lock,
                 created_root=created_root)
    try:
        # Re-read under the lock: another run may have committed between the check and the lock.
        out.previous = check_reusable(uri, stage)
        out.collect(None)
        fs, path = fsys.filesystem(out.uri)
        fs.create_dir(path, recursive=True)
    except BaseException:
        out.close()
        raise
    return out


def commit_copy(stage: str, src: str, dest: str, inputs: dict[str, str | None], status: str = "complete",
                **fields) -> dict:
    """Commit a copy of the files under `src` as the output at `dest`: a stage's second output
    (ingest's ``quarantine=URI``), with the same guards, lock and commit record as the first."""
    with open_output(stage, dest, inputs) as side:
        fs, src_path = fsys.filesystem(src)
        _, dst_path = fsys.filesystem(side.uri)
        for f in fs.get_file_info(pafs.FileSelector(src_path, recursive=True, allow_not_found=True)):
            if f.type == pafs.FileType.File:
                target = posixpath.join(dst_path, f.path[len(src_path.rstrip("/")) + 1:])
                fs.create_dir(posixpath.dirname(target), recursive=True)
                fs.copy_file(f.path, target)
        return side.commit(status, **fields)

