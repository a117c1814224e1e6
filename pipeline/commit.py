"""Stage outputs that readers see whole or not at all, and one writer per output.

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

The version committed before a run is kept until the run's commit after it (a reader still reading
it keeps working); older versions and the folders of killed runs are deleted by the next run of
the same stage. Nothing else is ever deleted: a folder is accepted as an output only if it is
absent, empty, or holds a committed output of the same stage (or only that stage's leftovers).
A folder of files made by hand (no record, no ``_v-``/``_staging-``/``_lock`` traces) is read as it
is; one with traces but no record is refused, naming the stage to re-run.

API (the stage side; `pipeline.manifest.run_stage` does the opening and the final commit)::

    def run(cfg, out: Output) -> dict          # a stage: write under out.uri, return the summary
    out.uri        # absolute URI of this run's version folder: write every output file under it
                   # (also from Ray workers: it is absolute)
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

    Commit.stage, .status, .reason, .version, .files   # files: {logical: path under root}
    Commit.uris(under="") -> {logical: URI}            # committed files at or under a logical path
    read_commit(uri) -> Commit | None                  # the record of the output at `uri`
    resolve(uri) -> str            # the physical URI of a committed logical file or one-version folder
                                   # (resolve(<train output>/hf) for from_pretrained; humans: see the
                                   # manifest's commit.files)
    open_output(stage, uri, inputs, run_id=None, lock_ttl_s=None) -> Output   # context manager;
                   # for a stage's second output (ingest's quarantine): guards, lock, commit
    check_overlap(output, inputs)              # UserError if output equals/contains/lies inside an input
    check_input(name, uri)                     # UserError if uri is an uncommitted or not-complete output

Locks, one writer per output. Local disk (and any POSIX filesystem with ``flock``, NFS included):
the run holds an exclusive ``flock`` on ``_lock.json`` for its whole life. The kernel drops it the
instant the holder dies, so a killed run's output is free at once (the next run says on stderr whose
lock it found left behind), and nothing is ever "broken": the old expire-and-break scheme let two
breakers win in about 1 trial of 12. S3 has no such thing, so there ``_lock.json`` is created with a
conditional PUT (``If-None-Match: *``, which AWS S3 and moto honour), refreshed by a heartbeat
thread every ttl/4 (``If-Match`` on its ETag), checked again just before the commit record is
written, and deleted at the end. A lock whose heartbeat is older than its ttl (default 120 s,
``SRFT_LOCK_TTL_S``) belonged to a killed run and is taken over with ``If-Match`` on the stale ETag,
so of several breakers only one wins; a lock whose holder ran on this same host (same hostname,
boot id and pid namespace) and whose pid is gone is taken over at once. On an S3-compatible store
that ignores conditional headers the lock is best effort: it is read back after writing and the run
refuses if the token is not its own.
"""

from __future__ import annotations

import fcntl
import json
import os
import posixpath
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Self
from urllib.parse import urlparse

import pyarrow.fs as pafs

from pipeline import io, tables
from pipeline.errors import UserError

MANIFEST = "_manifest.json"
LOCK = "_lock.json"
VERSION_PREFIX = "_v-"
STAGING_PREFIX = "_staging-"  # the layout before versions; only cleaned up
CHECKPOINTS = "_checkpoints"
DEFAULT_LOCK_TTL_S = 120.0


def lock_ttl_s() -> float:
    return float(os.environ.get("SRFT_LOCK_TTL_S", DEFAULT_LOCK_TTL_S))


# --------------------------------------------------------------------------------------------
# Commit records and how readers find them
# --------------------------------------------------------------------------------------------


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
            logical: io.join(self.root, physical)
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
        return json.loads(io.read_bytes_physical(io.join(uri, MANIFEST)))
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
    fs, path = io.filesystem(uri)
    rel: list[str] = []
    while True:
        m = None
        mpath = posixpath.join(path, MANIFEST)
        if fs.get_file_info(mpath).type == pafs.FileType.File:
            try:
                m = json.loads(io.read_bytes_physical(io.as_uri(uri, mpath)))
            except (FileNotFoundError, ValueError):
                m = None
        if m is not None:
            if not isinstance(m.get("commit"), dict):
                return None  # an old-style manifest: its folder is read as it is
            return Located(Commit(io.as_uri(uri, path), m), "/".join(reversed(rel)))
        parent = posixpath.dirname(path)
        if not parent or parent == path or (scheme == "s3" and "/" not in path):
            return None
        rel.append(posixpath.basename(path))
        path = parent


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
                         f"with io.list_files instead")
    return io.join(loc.commit.root, versions.pop(), loc.rel) if loc.rel else io.join(loc.commit.root, versions.pop())


def traces(uri: str) -> str | None:
    """If the folder at `uri` holds pipeline traces (versions, staging folders, a lock) but no
    commit record, the name of the stage that left them ("a pipeline stage" if unknown); else None."""
    fs, path = io.filesystem(uri)
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
            return json.loads(io.read_bytes_physical(io.join(uri, LOCK))).get("stage") or "a pipeline stage"
        except (FileNotFoundError, ValueError):
            return "a pipeline stage"
    if CHECKPOINTS in names:
        return "train"
    if any(n.startswith(STAGING_PREFIX) for n in names):
        return "a pipeline stage"
    return None


def refuse_uncommitted(uri: str, stage: str) -> UserError:
    return UserError(
        f"{uri} holds an output of {stage} that was never committed (its run was interrupted); "
        f"re-run {stage} into it"
    )


def check_input(name: str, uri: str | None) -> None:
    """Refuse (UserError) an input that is a pipeline output without a commit record, or whose
    last commit did not complete; the message names the stage to re-run."""
    if not uri or urlparse(uri).scheme not in ("", "file", "s3"):
        return
    loc = locate(uri)
    if loc is not None:
        c = loc.commit
        if c.status != "complete":
            why = f": {c.reason}" if c.reason else ""
            raise UserError(
                f"{name}={uri} is the output of a {c.stage} run that did not complete (status "
                f"{c.status}{why}); re-run {c.stage} first"
            )
        return
    stage = traces(uri) if io.exists_physical(uri) else None
    if stage:
        raise refuse_uncommitted(f"{name}={uri}", stage)


# --------------------------------------------------------------------------------------------
# Guards at open: overlap, and what an existing output folder may hold
# --------------------------------------------------------------------------------------------


def _key(uri: str) -> tuple[str, str] | None:
    """(namespace, normalised path) to compare URIs by; None for schemes that cannot overlap."""
    scheme = urlparse(uri).scheme
    if scheme == "s3":
        return "s3", uri[len("s3://"):].strip("/")
    if scheme in ("", "file"):
        path = uri[len("file://"):] if scheme == "file" else uri
        return "local", os.path.realpath(os.path.abspath(path)).rstrip("/") or "/"
    return None


def _inside(child: str, parent: str) -> bool:
    return child == parent or parent in ("", "/") or child.startswith(parent.rstrip("/") + "/")


def check_overlap(output: str, inputs: dict[str, str | None]) -> None:
    """Refuse an output equal to, containing, or inside any input (local paths after resolving
    symlinks; s3:// by bucket and key prefix)."""
    out = _key(output)
    if out is None:
        return
    for name, uri in inputs.items():
        inp = _key(uri) if uri else None
        if inp is None or inp[0] != out[0]:
            continue
        if inp[1] == out[1]:
            how = "is the same folder as"
        elif _inside(inp[1], out[1]):
            how = "contains"
        elif _inside(out[1], inp[1]):
            how = "lies inside"
        else:
            continue
        raise UserError(
            f"output {output} {how} input {name}={uri}; writing there could overwrite or re-read the "
            f"input. Choose an output folder outside every input."
        )


def _check_reusable(root: str, stage: str) -> Commit | None:
    """The output folder may be absent, empty, hold a committed output of the same stage, or only
    this stage's leftovers. Returns the previous commit (any status) or None."""
    fs, path = io.filesystem(root)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        return None
    if info.type == pafs.FileType.File:
        raise UserError(f"output {root} is a file; an output must be a folder")
    m = read_manifest(root)
    if m is not None:
        if m.get("stage") != stage:
            raise UserError(
                f"output {root} holds the output of stage {m.get('stage')!r} (its _manifest.json says so), "
                f"not of {stage}; choose another output folder"
            )
        return read_commit(root)
    foreign = _foreign(root, stage)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise UserError(
            f"output {root} is not empty and holds no committed {stage} output (found {shown}); the pipeline "
            f"replaces only what it wrote. Choose a new or empty folder."
        )
    return None


def _is_trace_of(name: str, stage: str) -> bool:
    return (
        name.startswith((f"{VERSION_PREFIX}{stage}-", STAGING_PREFIX, LOCK + ".", MANIFEST + ".tmp-"))
        or name in (LOCK, CHECKPOINTS, tables.LOG)
    )


def _is_side_folder(name: str) -> bool:
    return name.startswith("_") and not name.startswith((VERSION_PREFIX, STAGING_PREFIX, LOCK, MANIFEST)) \
        and name not in (CHECKPOINTS, tables.LOG)


def _foreign(root: str, stage: str) -> list[str]:
    """Names under `root` that no run of `stage` wrote: anything but its traces, and side table
    folders holding only such traces."""
    fs, path = io.filesystem(root)
    out = []
    for e in fs.get_file_info(pafs.FileSelector(path, recursive=False)):
        name = posixpath.basename(e.path)
        if _is_trace_of(name, stage):
            continue
        if e.type == pafs.FileType.Directory and _is_side_folder(name) and not _foreign(io.join(root, name), stage):
            continue
        out.append(name)
    return sorted(out)


# --------------------------------------------------------------------------------------------
# One writer per output
# --------------------------------------------------------------------------------------------


class LockHeld(UserError):
    pass


_clients: dict = {}
_clients_lock = threading.Lock()


def _s3_client():
    """A boto3 S3 client (pyarrow's S3 filesystem cannot send conditional headers), shared by the
    threads of this process (boto3 clients are thread-safe; creating them is not). Same environment
    as `io.filesystem`: AWS_ENDPOINT_URL(_S3), AWS_REGION, the standard credentials."""
    import boto3

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    key = (endpoint, region, os.environ.get("AWS_ACCESS_KEY_ID"))
    with _clients_lock:
        if key not in _clients:
            _clients[key] = boto3.session.Session().client("s3", endpoint_url=endpoint, region_name=region)
        return _clients[key]


def _precondition_failed(e: Exception) -> bool:
    r = getattr(e, "response", None) or {}
    return r.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict", "412") or \
        r.get("ResponseMetadata", {}).get("HTTPStatusCode") in (409, 412)


class Lock:
    """``<root>/_lock.json``: taken at open, held for the run, released at the end.

    Local disk: the run holds an exclusive ``flock`` on ``_lock.json`` for its whole life. The
    kernel drops it the instant the holder dies, so there is no stale lock, no heartbeat and no
    break (the old break let 2 of several breakers win in ~1 trial of 10). The file's body names
    the holder (stage, run, host, pid) for the refusal message; the holder unlinks it before it
    unlocks, and a run that finds a body left behind says on stderr that it took over from a
    process that is gone.

    S3: created with a conditional PUT (``If-None-Match: *``), refreshed by a heartbeat thread
    every ttl/4 with ``If-Match`` on its ETag, and taken over (``If-Match`` on the stale ETag, so
    only one of several breakers wins) when its heartbeat is older than its ttl (120 s,
    ``SRFT_LOCK_TTL_S``), or at once when its holder ran on this same host (same hostname, boot
    and pid namespace) and its pid is gone, which is said on stderr. On an S3-compatible store that
    ignores conditional headers the lock is best effort: it is read back after writing and the run
    refuses if the token is not its own.
    """

    def __init__(self, root: str, stage: str, run_id: str, ttl_s: float | None = None):
        self.root, self.stage, self.run_id = root, stage, run_id
        self.ttl_s = float(ttl_s if ttl_s is not None else lock_ttl_s())
        self.uri = io.join(root, LOCK)
        self.token = uuid.uuid4().hex
        self.s3 = urlparse(root).scheme == "s3"
        self.etag: str | None = None
        self._fd: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost: str | None = None

    # The lock's content ------------------------------------------------------------------------
    def _body(self) -> bytes:
        now = time.time()
        return json.dumps({
            "stage": self.stage, "run_id": self.run_id, "host": socket.gethostname(), "pid": os.getpid(),
            "host_id": _host_id(), "token": self.token, "heartbeat_at": now, "expires_at": now + self.ttl_s,
            "ttl_s": self.ttl_s,
        }).encode()

    @staticmethod
    def _expired(held: dict | None, fallback_mtime: float | None) -> bool:
        if held and "expires_at" in held:
            return time.time() > float(held["expires_at"])
        # Unreadable (being written this instant, or damaged): judge by its age.
        return fallback_mtime is not None and time.time() - fallback_mtime > lock_ttl_s()

    def _refuse(self, held: dict | None) -> LockHeld:
        if held:
            age = time.time() - float(held.get("heartbeat_at", time.time()))
            left = float(held.get("expires_at", time.time())) - time.time()
            if self.s3:
                who = (f"run {held.get('run_id')} of stage {held.get('stage')} (host {held.get('host')}, "
                       f"pid {held.get('pid')}, last heartbeat {age:.0f}s ago)")
                tail = f"; if that run is dead, its lock expires in {max(0, left):.0f}s"
            else:
                who = (f"run {held.get('run_id')} of stage {held.get('stage')} (host {held.get('host')}, "
                       f"pid {held.get('pid')}, started {age:.0f}s ago)")
                tail = f" (its lock, {LOCK}, is freed the moment that process ends)"
        else:
            who, tail = "another run", ""
        return LockHeld(f"output {self.root} is being written by {who}. Wait for it to finish{tail}.")

    def _say_taken_over(self, held: dict, why: str) -> None:
        print(f"[{self.stage}] output {self.root}: took over the lock of run {held.get('run_id')} "
              f"(host {held.get('host')}, pid {held.get('pid')}): {why}", file=sys.stderr, flush=True)

    # Local disk --------------------------------------------------------------------------------
    def _local_path(self) -> str:
        return io.filesystem(self.uri)[1]

    def _local_read(self, path: str) -> tuple[dict | None, float | None]:
        try:
            mtime = os.stat(path).st_mtime
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None, None
        try:
            return json.loads(data), mtime
        except ValueError:
            return None, mtime

    def _local_acquire(self) -> None:
        path = self._local_path()
        os.makedirs(os.path.dirname(path), exist_ok=True)
        while True:
            fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise self._refuse(self._local_read(path)[0]) from None
            try:  # the holder before us unlinks the file before unlocking it: is ours still the path's?
                st = os.stat(path)
                mine = (st.st_dev, st.st_ino) == (os.fstat(fd).st_dev, os.fstat(fd).st_ino)
            except FileNotFoundError:
                mine = False
            if mine:
                break
            os.close(fd)
        left = os.pread(fd, 1 << 16, 0)
        try:
            held = json.loads(left) if left else None
        except ValueError:
            held = None
        if held:  # a holder that released would have unlinked it: this one died holding it
            self._say_taken_over(held, "its process is gone (the kernel released its lock); no wait needed")
        body = self._body()
        os.ftruncate(fd, 0)
        os.pwrite(fd, body, 0)
        os.fsync(fd)
        self._fd = fd

    def _local_release(self) -> None:
        if self._fd is None:
            return
        try:
            os.unlink(self._local_path())  # still locked: nobody else can be using the file at this path
        except FileNotFoundError:
            pass  # the output folder is gone, and the lock with it
        os.close(self._fd)
        self._fd = None

    # S3 ------------------------------------------------------------------------------------------
    def _s3_loc(self) -> tuple[str, str]:
        bucket, _, key = self.uri[len("s3://"):].partition("/")
        return bucket, key

    def _s3_read(self):
        bucket, key = self._s3_loc()
        c = _s3_client()
        try:
            r = c.get_object(Bucket=bucket, Key=key)
        except c.exceptions.NoSuchKey:
            return None, None, None
        data = r["Body"].read()
        mtime = r["LastModified"].timestamp()
        try:
            return json.loads(data), r["ETag"], mtime
        except ValueError:
            return None, r["ETag"], mtime

    def _s3_acquire(self) -> None:
        bucket, key = self._s3_loc()
        c = _s3_client()
        for _ in range(3):
            try:
                self.etag = c.put_object(Bucket=bucket, Key=key, Body=self._body(), IfNoneMatch="*")["ETag"]
            except Exception as e:  # botocore's ClientError
                if not _precondition_failed(e):
                    raise
                held, etag, mtime = self._s3_read()
                if etag is None:
                    continue
                gone = holder_gone(held)
                if not gone and not self._expired(held, mtime):
                    raise self._refuse(held) from None
                try:  # take the stale lock over only if nobody refreshed or took it meanwhile
                    self.etag = c.put_object(Bucket=bucket, Key=key, Body=self._body(), IfMatch=etag)["ETag"]
                except Exception as e2:
                    if not _precondition_failed(e2):
                        raise
                    continue
                if gone and held:
                    self._say_taken_over(held, "it ran on this host and its process is gone; no wait for the ttl")
            held, etag, _ = self._s3_read()  # a store that ignores conditions: verify
            if (held or {}).get("token") != self.token:
                raise self._refuse(held)
            self.etag = etag
            return
        raise self._refuse(self._s3_read()[0])

    def _s3_refresh(self) -> None:
        bucket, key = self._s3_loc()
        c = _s3_client()
        try:
            self.etag = c.put_object(Bucket=bucket, Key=key, Body=self._body(), IfMatch=self.etag)["ETag"]
        except Exception as e:
            if not _precondition_failed(e):
                raise
            held, _, _ = self._s3_read()
            self.lost = f"lock {self.uri} was taken over by {held and held.get('run_id')}"

    def _s3_release(self) -> None:
        bucket, key = self._s3_loc()
        c = _s3_client()
        try:
            c.delete_object(Bucket=bucket, Key=key, IfMatch=self.etag)
        except Exception as e:
            if not _precondition_failed(e):
                raise

    # Public --------------------------------------------------------------------------------------
    def acquire(self) -> None:
        if not self.s3:
            self._local_acquire()
            return
        self._s3_acquire()
        self._thread = threading.Thread(target=self._beat, name=f"lock-heartbeat-{self.stage}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl_s / 4):
            try:
                self.refresh()
            except Exception as e:  # noqa: BLE001 -- a failed heartbeat must not kill the run
                print(f"[{self.stage}] lock heartbeat failed: {e}", file=sys.stderr, flush=True)

    def refresh(self) -> None:
        if self.lost is None and self.s3:
            self._s3_refresh()

    def check(self) -> None:
        """Raise if this run no longer holds the lock (S3: it stalled past the ttl and another run took it)."""
        if self.s3:
            held, _, _ = self._s3_read()
        else:
            held, _ = self._local_read(self._local_path())
        if self.lost or (held or {}).get("token") != self.token:
            raise RuntimeError(
                f"{self.lost or f'lock {self.uri} is no longer held by this run'}; not committing over "
                f"another writer"
            )

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.lost is None:
            (self._s3_release if self.s3 else self._local_release)()


def _host_id() -> str:
    """This host's boot and pid namespace: a pid means the same process only where these agree
    (two containers can share a hostname, not a pid namespace)."""
    parts = []
    for p in ("/proc/sys/kernel/random/boot_id",):
        try:
            with open(p) as f:
                parts.append(f.read().strip())
        except OSError:
            parts.append("?")
    try:
        parts.append(os.readlink("/proc/self/ns/pid"))
    except OSError:
        parts.append("?")
    return "/".join(parts)


def holder_gone(held: dict | None) -> bool:
    """Whether a lock's holder ran on this host (hostname, boot and pid namespace) and its process
    no longer exists. A recycled pid reads as alive: then the lock waits for its ttl, as before."""
    if not held or held.get("host") != socket.gethostname() or held.get("host_id") != _host_id():
        return False
    try:
        pid = int(held["pid"])
    except (KeyError, TypeError, ValueError):
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # exists, owned by someone else
    return False


# --------------------------------------------------------------------------------------------
# Writing an output
# --------------------------------------------------------------------------------------------


def _age_s(info) -> float:
    """Seconds since `info` (a pyarrow FileInfo) was last modified; 0 when the filesystem does not say."""
    mtime = info.mtime
    return 0.0 if mtime is None else time.time() - mtime.timestamp()


def _children(root: str) -> list[pafs.FileInfo]:
    fs, path = io.filesystem(root)
    try:
        return fs.get_file_info(pafs.FileSelector(path, recursive=False, allow_not_found=True))
    except (FileNotFoundError, NotADirectoryError):
        return []


def _delete(root: str, info: pafs.FileInfo) -> None:
    fs, _ = io.filesystem(root)
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

    @property
    def version(self) -> str:
        return f"{VERSION_PREFIX}{self.stage}-{self.run_id}"

    @property
    def uri(self) -> str:
        return io.absolute(io.join(self.root, self.version))

    def side_uri(self, table: str) -> str:
        """Where this run writes the files of side table `table` (``_errors``, ``_quarantine``):
        a version folder inside the side table's own folder, so that the side table is a Delta
        table of its own (pipeline.tables). Their logical paths are ``<table>/<file>``."""
        if not table.startswith("_") or "/" in table or table.startswith((VERSION_PREFIX, tables.LOG)):
            raise ValueError(f"a side table is one folder name starting with '_', not {table!r}")
        return io.absolute(io.join(self.root, table, self.version))

    def carry(self, logical_paths: Iterable[str]) -> None:
        if self.previous is None:
            raise ValueError(f"{self.root} has no previous commit to carry files from")
        for p in logical_paths:
            self.carried[p] = self.previous.files[p]

    def _side_tables(self) -> list[str]:
        """Side table folders under root (named ``_...``, not a version, log, lock or checkpoint)."""
        return sorted(
            posixpath.basename(i.path) for i in _children(self.root)
            if i.type == pafs.FileType.Directory and _is_side_folder(posixpath.basename(i.path))
        )

    def written(self) -> dict[str, str]:
        """{logical: path under root} of every file this run has written so far: under its version
        folder, and under its version folder in each side table."""
        out = {}
        for prefix in ["", *self._side_tables()]:
            folder = posixpath.join(prefix, self.version) if prefix else self.version
            fs, path = io.filesystem(io.join(self.root, folder))
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
            table: tables.publish(io.join(self.root, table) if table else self.root, sorted(rel),
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
        io.write_bytes(io.join(self.root, MANIFEST), json.dumps(manifest, indent=2, default=str).encode())
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
            folder = io.join(self.root, prefix) if prefix else self.root
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
            _delete(self.root, io.filesystem(self.uri)[0].get_file_info(io.filesystem(self.uri)[1]))
        if self.lock is not None:
            self.lock.release()
            self.lock = None
        if untouched and self.created_root and urlparse(self.root).scheme in ("", "file"):
            try:
                os.rmdir(io.filesystem(self.root)[1])  # only if empty
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
    from pipeline.runtime import new_run_id

    check_overlap(uri, inputs or {})
    previous = _check_reusable(uri, stage)
    created_root = not io.exists_physical(uri)
    run_id = run_id or new_run_id()
    lock = Lock(uri, stage, run_id, lock_ttl_s)
    lock.acquire()
    out = Output(stage=stage, root=uri.rstrip("/"), run_id=run_id, previous=previous, lock=lock,
                 created_root=created_root)
    try:
        # Re-read under the lock: another run may have committed between the check and the lock.
        out.previous = _check_reusable(uri, stage)
        out.collect(None)
        fs, path = io.filesystem(out.uri)
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
        fs, src_path = io.filesystem(src)
        _, dst_path = io.filesystem(side.uri)
        for f in fs.get_file_info(pafs.FileSelector(src_path, recursive=True, allow_not_found=True)):
            if f.type == pafs.FileType.File:
                target = posixpath.join(dst_path, f.path[len(src_path.rstrip("/")) + 1:])
                fs.create_dir(posixpath.dirname(target), recursive=True)
                fs.copy_file(f.path, target)
        return side.commit(status, **fields)
