"""Physical storage: URIs to filesystems, and the files at a path as they are.

A URI is a local path, ``file://``, ``s3://bucket/key`` or ``hf://datasets/...``. S3
credentials, region and endpoint come from the standard AWS environment variables
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``, ``AWS_ENDPOINT_URL``);
nothing here reads them from config files.

Nothing here consults a commit record: `exists`, `read_bytes` and `walk` see the files that are
physically at a path, `write_bytes` and `write_table` write one. Readers of stage outputs use
pipeline.io, which follows the records (pipeline.record) and uses these helpers underneath.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import posixpath
import stat
import uuid
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """Return the Arrow filesystem for `uri` and the path inside it."""
    scheme = urlparse(uri).scheme
    if scheme == "s3":
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        kwargs = {}
        if endpoint:
            parsed = urlparse(endpoint)
            kwargs = {"endpoint_override": parsed.netloc or endpoint, "scheme": parsed.scheme or "https"}
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            kwargs["region"] = region
        return pafs.S3FileSystem(**kwargs), uri[len("s3://"):].rstrip("/")
    if scheme == "hf":
        # Thin path for users with network access: the same readers over fsspec's HF filesystem.
        from huggingface_hub import HfFileSystem

        return pafs.PyFileSystem(pafs.FSSpecHandler(HfFileSystem())), uri[len("hf://"):]
    if scheme in ("", "file"):
        path = uri[len("file://"):] if scheme == "file" else uri
        return pafs.LocalFileSystem(), os.path.abspath(path)
    raise ValueError(f"unsupported URI scheme {scheme!r} in {uri!r} (use a local path, s3:// or hf://)")

def absolute(uri: str) -> str:
    """A local relative path made absolute against this (the driver's) working directory, for
    URIs handed to Ray workers, which run elsewhere; other URIs unchanged."""
    return os.path.abspath(uri) if urlparse(uri).scheme == "" else uri

def join(uri: str, *parts: str) -> str:
    return posixpath.join(uri.rstrip("/"), *parts)


def split_glob(uri: str) -> tuple[str, str | None]:
    """(`uri` without a glob on its last part, that glob or None): ``out/*.parquet`` -> (``out``, ``*.parquet``)."""
    _, path = filesystem(uri)
    if not any(c in posixpath.basename(path) for c in "*?["):
        return uri, None
    folder, pattern = posixpath.split(path)
    return as_uri(uri, folder), pattern


def as_uri(reference: str, path: str) -> str:
    """`path` (inside the filesystem of `reference`) as a URI of the same scheme."""
    scheme = urlparse(reference).scheme
    return f"{scheme}://{path}" if scheme in ("s3", "hf") else path

def display(fs: pafs.FileSystem, path: str) -> str:
    """A URI for a path inside `fs`, for error messages and provenance columns."""
    if isinstance(fs, pafs.S3FileSystem):
        return f"s3://{path}"
    return path

def exists(uri: str) -> bool:
    """Whether something is at `uri` physically (no commit record is followed; see io.exists)."""
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound

def read_bytes(uri: str) -> bytes:
    """The bytes of the file physically at `uri` (no commit record is followed; see io.read_bytes)."""
    fs, path = filesystem(uri)
    with fs.open_input_stream(path) as f:
        return f.read()

def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole file so that readers see either nothing or all of it."""
    fs, path = filesystem(uri)
    fs.create_dir(posixpath.dirname(path), recursive=True)
    if isinstance(fs, pafs.LocalFileSystem):
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with fs.open_output_stream(tmp) as f:
            f.write(data)
        fs.move(tmp, path)
    else:  # An S3 object appears only once its upload completes.
        with fs.open_output_stream(path) as f:
            f.write(data)

def write_table(table: pa.Table, uri: str) -> None:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    write_bytes(uri, sink.getvalue().to_pybytes())

# Why a file under a listed folder was not returned (summaries count these).
UNSUPPORTED_SUFFIX = "unsupported suffix"
DANGLING_LINK = "dangling symlink"
NOT_REGULAR = "not a regular file"
UNREADABLE = "unreadable"
SYMLINK_LOOP = "symlink loop or folder already listed"
DUPLICATE_LINK = "symlink to a file already listed"
HIDDEN = "hidden name (starts with '.' or '_')"

def matches(name: str, wanted: tuple[str, ...], pattern: str | None) -> bool:
    if pattern is not None:
        return fnmatch.fnmatch(name, pattern)
    return name.lower().endswith(wanted)

def walk(fs: pafs.FileSystem, uri: str, path: str, wanted: tuple[str, ...],
         pattern: str | None) -> tuple[list[str], list[dict]]:
    """The files physically under the folder `uri` (`path` inside `fs`) whose names end in one of
    `wanted` (lower case) or match the glob `pattern`, sorted, and the files left out as
    ``[{"uri": ..., "reason": ...}]``. Symlinked folders are followed once (a loop, or an alias of
    a folder already listed, is skipped); hidden and ``_``-prefixed names are skipped whole (one
    entry each, not descended into)."""
    if isinstance(fs, pafs.LocalFileSystem):
        found, skipped = _walk_local(path, wanted, pattern)
    else:
        found, skipped = _walk_fs(fs, uri, path, wanted, pattern)
    return sorted(found), skipped

def _walk_local(root: str, wanted: tuple[str, ...], pattern: str | None) -> tuple[list[str], list[dict]]:
    """Depth-first, sorted, following symlinks once per real folder and once per real file."""
    found: list[str] = []
    skipped: list[dict] = []
    seen_dirs = {os.path.realpath(root)}
    seen_files: dict[str, str] = {}

    def visit(folder: str) -> None:
        try:
            # Real entries before links, so a file reached both ways is listed under its real path.
            entries = sorted(os.scandir(folder), key=lambda e: (e.is_symlink(), e.name))
        except OSError as e:
            skipped.append({"uri": folder, "reason": f"{UNREADABLE} ({e.strerror or e})"})
            return
        for e in entries:
            p = e.path
            if e.name.startswith(("_", ".")):
                skipped.append({"uri": p, "reason": HIDDEN})
                continue
            try:
                st = os.stat(p)  # follows links
            except FileNotFoundError:
                skipped.append({"uri": p, "reason": DANGLING_LINK if e.is_symlink() else UNREADABLE})
                continue
            except OSError as err:  # ELOOP: a link to itself; EACCES: a folder we may not enter
                reason = DANGLING_LINK if e.is_symlink() and err.errno == errno.ELOOP else UNREADABLE
                skipped.append({"uri": p, "reason": f"{reason} ({err.strerror})"})
                continue
            if stat.S_ISDIR(st.st_mode):
                if pattern is not None:
                    continue  # a glob names files in one folder
                real = os.path.realpath(p)
                if real in seen_dirs:
                    skipped.append({"uri": p, "reason": SYMLINK_LOOP})
                    continue
                seen_dirs.add(real)
                visit(p)
                continue
            if not stat.S_ISREG(st.st_mode):
                skipped.append({"uri": p, "reason": NOT_REGULAR})
                continue
            if not matches(e.name, wanted, pattern):
                if pattern is None:
                    skipped.append({"uri": p, "reason": UNSUPPORTED_SUFFIX})
                continue
            if not os.access(p, os.R_OK):
                skipped.append({"uri": p, "reason": UNREADABLE})
                continue
            real = os.path.realpath(p)
            if real in seen_files:
                skipped.append({"uri": p, "reason": f"{DUPLICATE_LINK} ({seen_files[real]})"})
                continue
            seen_files[real] = p
            found.append(p)

    visit(root)
    return found, skipped

def _walk_fs(fs: pafs.FileSystem, uri: str, path: str, wanted: tuple[str, ...], pattern: str | None):
    """Object stores have no links or special files: only suffixes and hidden prefixes to check."""
    found, skipped, hidden = [], [], set()
    for f in fs.get_file_info(pafs.FileSelector(path, recursive=pattern is None)):
        if f.type != pafs.FileType.File:
            continue
        rel = posixpath.relpath(f.path, path).split("/")
        h = next((i for i, p in enumerate(rel) if p.startswith(("_", "."))), None)
        if h is not None:
            top = posixpath.join(path, *rel[: h + 1])
            if top not in hidden:
                hidden.add(top)
                skipped.append({"uri": as_uri(uri, top), "reason": HIDDEN})
            continue
        if matches(rel[-1], wanted, pattern):
            found.append(as_uri(uri, f.path))
        elif pattern is None:
            skipped.append({"uri": as_uri(uri, f.path), "reason": UNSUPPORTED_SUFFIX})
    return found, skipped


def staging_uri(output: str, run_id: str) -> str:
    return join(output, f"_staging-{run_id}")


def publish(staging: str, output: str) -> list[str]:
    """Move every file of `staging` into `output` (keeping relative paths, overwriting files of
    the same name), then remove `staging`. Nothing else in `output` is touched: nothing here
    deletes what a folder held. Stage outputs are replaced by committing a new version
    (pipeline.commit), not by this; train's HF export inside its version folder uses it.
    """
    fs, src = filesystem(staging)
    _, dst = filesystem(output)
    if fs.get_file_info(src).type == pafs.FileType.NotFound:
        fs.create_dir(src, recursive=True)
    moved = []
    for f in fs.get_file_info(pafs.FileSelector(src, recursive=True)):
        if f.type != pafs.FileType.File:
            continue
        target = posixpath.join(dst, posixpath.relpath(f.path, src))
        fs.create_dir(posixpath.dirname(target), recursive=True)
        fs.move(f.path, target)
        moved.append(as_uri(output, target))
    fs.delete_dir(src)
    return moved
