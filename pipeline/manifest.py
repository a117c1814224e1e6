"""Stage manifests: what ran, on what, with which config, and whether it finished.

`run_stage` opens the stage's output (pipeline.commit.open_output: the overlap and same-stage
checks of pipeline.guards, the lock of pipeline.lock, a fresh version folder), runs
``stage.run(cfg, out)`` with each input located once (``out.inputs``: the fingerprint, the checks and
the stage's reads see the same commit of it), and commits: ``<output>/_manifest.json`` is the commit record and the
manifest at once, written last. Its status is ``complete``, or ``failed`` with the reason when the
stage raised `StageFailed` (what it wrote is still committed; the error propagates), or ``partial``
for a stage's own periodic commits. Inputs that are stage outputs must be committed and complete.
A stage whose manifest says it completed with the same config and the same inputs (a fingerprint of
the committed input files' paths, sizes and modification times) is skipped, unless forced.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from pipeline import commit, fsys, guards, record
from pipeline.commit import Output
from pipeline.config import redacted, validate
from pipeline.errors import StageFailed
from pipeline.record import MANIFEST


@dataclass(frozen=True)
class Stage:
    """What the CLI and the pipeline driver need to know of a stage: its config dataclass, the
    function that runs it (``run(cfg, out)``, writing under ``out.uri``), and the input URIs that
    its manifest fingerprints and that its output must not overlap."""

    name: str
    config: type
    run: Callable[[Any, Output], dict]
    inputs: Callable[[Any], dict[str, str | None]]


def run_direct(stage: Stage, cfg: Any) -> dict:
    """Run a stage the way its command does (open, run, commit) and return its summary: what a
    stage's ``run(cfg)`` does when called without an opened output (tests, notebooks). A config
    built in code is validated here, as `load_config` validates one loaded from YAML and the
    command line: the stages themselves never re-validate."""
    validate(cfg)
    return run_stage(stage.name, cfg, stage.inputs(cfg), cfg.output, stage.run, force=True)["summary"]


def code_version() -> str:
    """The git commit of the code, or the package version when not run from a checkout."""
    repo = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5, check=False,
        ).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import version

        return "srft-pipeline " + version("srft-pipeline")


def fingerprint(inputs: dict[str, record.Input]) -> str:
    """A hash of every input file's path, size and mtime. A stage output counts by its committed
    files and its commit record (which changes whenever it re-runs); locks, old versions and
    leftovers of killed runs do not count."""
    h = hashlib.sha256()
    for name, inp in sorted(inputs.items()):
        h.update(f"{name}={inp.uri}\n".encode())
        if inp.located is not None:
            loc = inp.located
            c = loc.commit
            h.update(f"commit\t{c.manifest.get('run_id')}\t{c.version}\t{c.status}\n".encode())
            fs, _ = fsys.filesystem(inp.base)
            for logical, f in c.uris(loc.rel).items():
                info = fs.get_file_info(fsys.filesystem(f)[1])
                h.update(f"{logical}\t{info.size}\t{info.mtime_ns}\n".encode())
            continue
        if not inp.uri or not fsys.exists(inp.uri):
            continue
        fs, path = fsys.filesystem(inp.uri)
        info = fs.get_file_info(path)
        infos = [info] if info.type == pafs.FileType.File else fs.get_file_info(pafs.FileSelector(path, recursive=True))
        for f in sorted(infos, key=lambda f: f.path):
            rel = f.path[len(path):]
            if f.type == pafs.FileType.File and not any(
                p.startswith((record.STAGING_PREFIX, record.LOCK, record.VERSION_PREFIX)) for p in rel.split("/")
            ):
                h.update(f"{f.path}\t{f.size}\t{f.mtime_ns}\n".encode())
    return h.hexdigest()


def _config_hash(cfg: dict) -> str:
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()


def is_complete(output: str, stage: str, cfg: dict, inputs_fingerprint: str) -> bool:
    m = record.read_manifest(output)
    return (
        m is not None
        and m.get("status") == "complete"
        and m.get("stage") == stage
        and m.get("config_sha256") == _config_hash(cfg)
        and m.get("inputs_fingerprint") == inputs_fingerprint
    )


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def run_stage(
    stage: str,
    cfg: Any,
    inputs: dict[str, str | None],
    output: str,
    fn: Callable[[Any, Output], dict],
    force: bool = False,
) -> dict:
    """Run ``fn(cfg, out)`` unless a complete manifest for the same config and inputs exists,
    then commit what it wrote. Returns the manifest (``skipped`` says whether it ran).

    Before any work: the inputs must be committed, complete outputs (or plain files), and the
    output must not overlap them, must be absent, empty or this stage's, and unlocked. A stage
    that raises StageFailed has its outputs committed with status ``failed`` and the reason; so
    does one that turned rows into nothing (``rows_in > 0``, ``rows_out == 0``) unless its config
    says ``allow_empty=true``. Any other exception commits nothing: the previous output stays.
    """
    plain = redacted(cfg)
    # Each input is located once, here: the fingerprint, the guards and the stage's reads
    # (out.inputs) all see the same commit of it.
    located = {name: record.Input.of(uri) for name, uri in inputs.items()}
    inputs_fp = fingerprint(located)
    if not force and is_complete(output, stage, plain, inputs_fp):
        manifest = record.read_manifest(output)
        print(f"[{stage}] complete for these inputs and config, skipped ({fsys.join(output, MANIFEST)}); force=true re-runs it")
        return {**manifest, "skipped": True}
    for name, inp in located.items():
        guards.check_input(name, inp)
    started = time.time()
    with commit.open_output(stage, output, inputs) as out:
        out.inputs = located
        out.record = {
            "config": plain,
            "config_sha256": _config_hash(plain),
            "inputs": dict(inputs),
            "inputs_fingerprint": inputs_fp,
            "code_version": code_version(),
            "started_at": _now(),
        }

        def finish(status: str, summary: dict | None, reason: str | None = None) -> dict:
            summary = summary or {}
            return out.commit(
                status,
                reason=reason,
                rows_in=summary.get("rows_in"),
                rows_out=summary.get("rows_out"),
                summary=summary,
                finished_at=_now(),
                duration_s=round(time.time() - started, 3),
            )

        try:
            summary = fn(cfg, out)
        except StageFailed as e:
            finish("failed", getattr(e, "summary", None), str(e))
            raise
        rows_in, rows_out = summary.get("rows_in"), summary.get("rows_out")
        if rows_in and rows_out == 0 and not getattr(cfg, "allow_empty", False):
            reason = (f"{stage} read {rows_in} rows and wrote none; check its input and config "
                      f"(allow_empty=true accepts an empty output)")
            finish("failed", summary, reason)
            raise StageFailed(reason)
        manifest = finish("complete", summary)
    return {**manifest, "skipped": False}
