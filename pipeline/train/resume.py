"""Which run this is: run identity, run folders, finding their checkpoints, and `plan_resume`.

Run identity. A run is what one (data, model, training config) trains; its identity is

    sha256(data files, model files, the config fields that change what is trained)

where files count by (path relative to the input, size, modification time): rewriting an input,
even with the same bytes, makes new data. Fields that only change logging, checkpointing, export
or speed are left out (`pipeline.train.config.NOT_IN_IDENTITY`). Checkpoints live in run folders

    <checkpoint_storage>/<run_name>-<identity[:16]>-<start time>/checkpoint-stepNNNNNNN/

so runs of different identities never share a folder, and `resume=auto` finds the newest run
folder of the same identity (its checkpoints' train_state.json must carry the full identity).

Which run this is (`plan_resume`). The run's identity (`run_identity`: data, model,
the config fields that change training) names its folder `<run_name>-<identity[:16]>-<start>`.
resume=auto takes the newest folder of the same identity that holds a checkpoint and runs under
that name, so Ray Train resumes it from its latest checkpoint; with none, a new folder is started
and the folders of other identities (other data, model or config) are left as they are. never
always starts a new folder; must fails unless there is one to resume. resume_from=URI starts a new
folder whose first attempt loads that checkpoint (the summary says whether its identity differs,
and in what). A fresh run name per start is what stops Ray Train from resuming a same-named run
of other data.

The Ray stage (`stage.py`) plans on the driver; under torchrun rank 0 plans and broadcasts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import posixpath
import re

import pyarrow.fs as pafs

from pipeline import fsys, io, record
from pipeline.errors import UserError
from pipeline.runtime import new_run_id
from pipeline.train.checkpoint import STATE_FILE, resolved_param_dtype
from pipeline.train.config import NOT_IN_IDENTITY, TrainConfig

# --------------------------------------------------------------------------------------------
# Run identity and run folders
# --------------------------------------------------------------------------------------------

def files_fingerprint(source: str | record.Input, suffixes: tuple[str, ...] | None = None) -> str:
    """sha256 over (relative path, size, mtime) of the files under `source` (a URI, or an input as
    run_stage located it; through `io.list_files`, which follows commit records); `suffixes=None`
    takes every file."""
    uri = source.uri if isinstance(source, record.Input) else source
    if suffixes is None:
        files = _all_files(uri)
    else:
        files = io.list_files(source, suffixes)
    fs, root = fsys.filesystem(uri)
    h = hashlib.sha256()
    for f in sorted(files):
        info = fs.get_file_info(fsys.filesystem(f)[1])
        rel = posixpath.relpath(info.path, root) if info.path != root else posixpath.basename(root)
        h.update(f"{rel}\t{info.size}\t{info.mtime_ns}\n".encode())
    return h.hexdigest()


def _all_files(uri: str) -> list[str]:
    fs, path = fsys.filesystem(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        return [uri]
    if info.type == pafs.FileType.NotFound:
        return []
    return [fsys.display(fs, f.path) if "://" in uri else f.path
            for f in fs.get_file_info(pafs.FileSelector(path, recursive=True))
            if f.type == pafs.FileType.File and not posixpath.basename(f.path).startswith(".")]


def identity_config(cfg) -> dict:
    """The config fields that change what a run trains (param_dtype resolved for the device)."""
    plain = dataclasses.asdict(cfg)
    out = {k: v for k, v in plain.items() if k not in NOT_IN_IDENTITY[""] and not isinstance(v, dict)}
    for section in ("train", "scaling"):
        out[section] = {k: v for k, v in plain[section].items() if k not in NOT_IN_IDENTITY[section]}
    out["train"]["param_dtype"] = resolved_param_dtype(cfg.train.param_dtype, cfg.scaling.use_gpu)
    return out


def run_identity(cfg, data: record.Input | None = None) -> dict:
    """{"identity": hex, "data": hex, "model": hex, "config": hex} of a TrainConfig; `data` is
    `cfg.data` as run_stage located it, when there is a run_stage (torchrun has none)."""
    parts = {
        "data": files_fingerprint(data or cfg.data, (".parquet",)),
        "model": files_fingerprint(cfg.model),
        "config": hashlib.sha256(json.dumps(identity_config(cfg), sort_keys=True).encode()).hexdigest(),
    }
    whole = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
    return {"identity": whole, **parts}


def run_folder_name(run_name: str, identity: str, run_id: str) -> str:
    return f"{run_name}-{identity[:16]}-{run_id}"


_RUN_FOLDER = re.compile(r"^.+-(?P<id>[0-9a-f]{16})-(?P<started>\d{8}T\d{6}-[0-9a-f]{6})$")
_CHECKPOINT = re.compile(r"^checkpoint-step(\d+)$")


def checkpoints(run_uri: str) -> list[tuple[int, str]]:
    """(step, URI) of the checkpoints in a run folder that have their train_state.json, by step."""
    fs, path = fsys.filesystem(run_uri)
    found = []
    for f in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)):
        m = _CHECKPOINT.match(posixpath.basename(f.path))
        if f.type == pafs.FileType.Directory and m and \
                fs.get_file_info(posixpath.join(f.path, STATE_FILE)).type == pafs.FileType.File:
            found.append((int(m.group(1)), fsys.join(run_uri, posixpath.basename(f.path))))
    return sorted(found)


def checkpoint_identity(checkpoint_uri: str) -> dict | None:
    """The identity recorded in a checkpoint's train_state.json (None for older checkpoints)."""
    state = json.loads(io.read_bytes(fsys.join(checkpoint_uri, STATE_FILE)))
    return state.get("identity")


def find_run(storage_uri: str, identity: str) -> tuple[str, str, int] | None:
    """The newest run folder under `storage_uri` of this identity that holds a checkpoint:
    (run folder name, its latest checkpoint URI, that checkpoint's step), or None."""
    fs, path = fsys.filesystem(storage_uri)
    candidates = []
    for f in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)):
        m = _RUN_FOLDER.match(posixpath.basename(f.path))
        if f.type == pafs.FileType.Directory and m and identity.startswith(m.group("id")):
            candidates.append((m.group("started"), posixpath.basename(f.path)))
    for _, name in sorted(candidates, reverse=True):
        found = checkpoints(fsys.join(storage_uri, name))
        if found and (checkpoint_identity(found[-1][1]) or {}).get("identity") == identity:
            step, uri = found[-1]
            return name, uri, step
    return None


# --------------------------------------------------------------------------------------------
# The plan: which run folder, starting from which checkpoint
# --------------------------------------------------------------------------------------------

def plan_resume(cfg: TrainConfig, storage_uri: str, identity: dict) -> dict:
    """Decide the run folder and what it starts from (see the module docstring). The returned
    dict goes into the summary and the manifest as `resume`."""
    ident = identity["identity"]
    fresh = run_folder_name(cfg.run_name, ident, new_run_id())
    plan = {"mode": cfg.resume, "identity": ident, "run_name": fresh, "resumed": False, "from": None,
            "from_step": None}
    if cfg.resume_from:
        uri = fsys.absolute(cfg.resume_from)
        if not io.exists(fsys.join(uri, STATE_FILE)):
            raise UserError(f"resume_from={cfg.resume_from}: no checkpoint there (no {STATE_FILE}); "
                            "point it at a checkpoint-stepNNNNNNN folder")
        state = json.loads(io.read_bytes(fsys.join(uri, STATE_FILE)))
        theirs = state.get("identity") or {}
        differs = [k for k in ("data", "model", "config") if theirs.get(k) != identity[k]]
        plan.update(mode="resume_from", resumed=True, resume_from=uri, **{"from": uri},
                    from_step=state.get("step"), identity_matches=not differs, identity_differs_in=differs)
        return plan
    if cfg.resume in ("auto", "must"):
        found = find_run(storage_uri, ident)
        if found is not None:
            name, uri, step = found
            plan.update(run_name=name, resumed=True, from_step=step, identity_matches=True, **{"from": uri})
            return plan
        if cfg.resume == "must":
            raise UserError(f"resume=must: no run of this identity ({ident[:16]}: same data, model and training "
                            f"config) with a checkpoint under {storage_uri}; use resume=auto to start one")
    # Not resumed: say which runs of other identities were left alone.
    fs, path = fsys.filesystem(storage_uri)
    others = sorted(posixpath.basename(f.path) for f in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
                    if f.type == pafs.FileType.Directory and ident[:16] not in posixpath.basename(f.path)
                    and checkpoints(fsys.join(storage_uri, posixpath.basename(f.path))))
    plan["other_runs_not_resumed"] = others[-10:]
    return plan
