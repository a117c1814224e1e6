"""Shared by the safety tests: snapshots of folders (to prove an input is byte-identical after)."""

from __future__ import annotations

import hashlib

import pyarrow.fs as pafs

from pipeline import fsys


def snapshot(uri: str) -> dict[str, str]:
    """{path: sha256} of every file under `uri` (local or s3://), links not followed locally."""
    fs, path = fsys.filesystem(uri)
    out = {}
    for f in fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True)):
        if f.type == pafs.FileType.File:
            with fs.open_input_stream(f.path) as s:
                out[f.path[len(path):]] = hashlib.sha256(s.read()).hexdigest()
    return out
