"""Checks at open: what a stage may read, and where it may write.

Nothing is ever deleted that the pipeline did not write, and no output overlaps an input: a folder
is accepted as an output only if it is absent, empty, or holds a committed output of the same
stage (or only that stage's leftovers), and never one equal to, containing or inside an input. An
input that is a pipeline output must be committed and complete: one with traces but no record
(pipeline.record.traces) is refused, naming the stage to re-run.

API (`pipeline.manifest.run_stage` and pipeline.commit.open_output call these before any work)::

    check_overlap(output, inputs)              # UserError if output equals/contains/lies inside an input
    check_input(name, Input)                   # UserError if it is an uncommitted or not-complete output
    check_reusable(root, stage) -> Commit | None   # UserError if root holds anything but this stage's
                                                   # committed output or leftovers
    refuse_uncommitted(uri, stage) -> UserError    # the refusal of an output without a record
"""

from __future__ import annotations

import os
import posixpath
from urllib.parse import urlparse

import pyarrow.fs as pafs

from pipeline import fsys, tables
from pipeline.errors import UserError
from pipeline.record import (
    CHECKPOINTS,
    LOCK,
    MANIFEST,
    STAGING_PREFIX,
    VERSION_PREFIX,
    Commit,
    Input,
    read_commit,
    read_manifest,
    traces,
)


def refuse_uncommitted(uri: str, stage: str) -> UserError:
    return UserError(
        f"{uri} holds an output of {stage} that was never committed (its run was interrupted); "
        f"re-run {stage} into it"
    )


def check_input(name: str, inp: Input) -> None:
    """Refuse (UserError) an input that is a pipeline output without a commit record, or whose
    last commit did not complete; the message names the stage to re-run."""
    uri = inp.uri
    if not uri or urlparse(uri).scheme not in ("", "file", "s3"):
        return
    if inp.located is not None:
        c = inp.located.commit
        if c.status != "complete":
            why = f": {c.reason}" if c.reason else ""
            raise UserError(
                f"{name}={uri} is the output of a {c.stage} run that did not complete (status "
                f"{c.status}{why}); re-run {c.stage} first"
            )
        return
    stage = traces(inp.base) if fsys.exists(inp.base) else None
    if stage:
        raise refuse_uncommitted(f"{name}={uri}", stage)


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


def check_reusable(root: str, stage: str) -> Commit | None:
    """The output folder may be absent, empty, hold a committed output of the same stage, or only
    this stage's leftovers. Returns the previous commit (any status) or None."""
    fs, path = fsys.filesystem(root)
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


def is_side_folder(name: str) -> bool:
    return name.startswith("_") and not name.startswith((VERSION_PREFIX, STAGING_PREFIX, LOCK, MANIFEST)) \
        and name not in (CHECKPOINTS, tables.LOG)


def _foreign(root: str, stage: str) -> list[str]:
    """Names under `root` that no run of `stage` wrote: anything but its traces, and side table
    folders holding only such traces."""
    fs, path = fsys.filesystem(root)
    out = []
    for e in fs.get_file_info(pafs.FileSelector(path, recursive=False)):
        name = posixpath.basename(e.path)
        if _is_trace_of(name, stage):
            continue
        if e.type == pafs.FileType.Directory and is_side_folder(name) and not _foreign(fsys.join(root, name), stage):
            continue
        out.append(name)
    return sorted(out)
