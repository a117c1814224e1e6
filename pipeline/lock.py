"""One writer per output: ``<output>/_lock.json``.

Local disk (and any POSIX filesystem with ``flock``, NFS included): the run holds an exclusive
``flock`` on ``_lock.json`` for its whole life. The kernel drops it the
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
import socket
import sys
import threading
import time
import uuid
from urllib.parse import urlparse

from pipeline import fsys
from pipeline.errors import UserError
from pipeline.record import LOCK

DEFAULT_LOCK_TTL_S = 120.0


def lock_ttl_s() -> float:
    return float(os.environ.get("SRFT_LOCK_TTL_S", DEFAULT_LOCK_TTL_S))


class LockHeld(UserError):
    pass


_clients: dict = {}
_clients_lock = threading.Lock()


def _s3_client():
    """A boto3 S3 client (pyarrow's S3 filesystem cannot send conditional headers), shared by the
    threads of this process (boto3 clients are thread-safe; creating them is not). Same environment
    as `fsys.filesystem`: AWS_ENDPOINT_URL(_S3), AWS_REGION, the standard credentials."""
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
        self.uri = fsys.join(root, LOCK)
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
            since = "last heartbeat" if self.s3 else "started"
            who = (f"run {held.get('run_id')} of stage {held.get('stage')} (host {held.get('host')}, "
                   f"pid {held.get('pid')}, {since} {age:.0f}s ago)")
            expires = f"in {max(0, left):.0f}s"
        else:  # taken this instant, its record not yet written (or damaged): still say how it is freed
            who, expires = "another run", f"within {lock_ttl_s():.0f}s"
        tail = (f"; if that run is dead, its lock expires {expires}" if self.s3
                else f" (its lock, {LOCK}, is freed the moment that process ends)")
        return LockHeld(f"output {self.root} is being written by {who}. Wait for it to finish{tail}.")

    def _say_taken_over(self, held: dict, why: str) -> None:
        print(f"[{self.stage}] output {self.root}: took over the lock of run {held.get('run_id')} "
              f"(host {held.get('host')}, pid {held.get('pid')}): {why}", file=sys.stderr, flush=True)

    # Local disk --------------------------------------------------------------------------------
    def _local_path(self) -> str:
        return fsys.filesystem(self.uri)[1]

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
