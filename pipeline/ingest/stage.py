"""Ingest: SWE-smith rows and SWE-agent .traj files -> normalised trajectory shards.

    python -m jobs.ingest input=URI output=URI [resolution=URI] [quarantine=URI]

Bad data never stops the stage: a row or file that cannot be used becomes a quarantine row
naming its file, its place in it and a reason (pipeline/ingest/read.py), and an unusable
evaluation report is counted in the summary (pipeline/ingest/resolution.py). The summary
accounts for every input: ``rows_in = rows_out + rows_quarantined``; files listed but not read
are in ``files_skipped`` by reason. The run exits non-zero, after writing its output, when it
produced no trajectory (unless ``allow_empty``) or quarantined more than
``max_quarantine_fraction`` of its rows.
"""

from __future__ import annotations

import json
from collections import Counter

import pyarrow as pa
import ray

from pipeline import fsys, io
from pipeline.commit import Output, commit_copy
from pipeline.errors import StageFailed, UserError
from pipeline.ingest.config import IngestConfig
from pipeline.ingest.dedup import duplicate_keys, mark_duplicates
from pipeline.ingest.read import RECORD, SUFFIXES, quarantined, read_file_batches, trajectories
from pipeline.ingest.resolution import read_resolution
from pipeline.ingest.summary import SUMMARY_COLUMNS, summarize, summary_keys
from pipeline.manifest import Stage
from pipeline.runtime import init_ray
from pipeline.schema import QUARANTINE, TRAJECTORY


def _read(batch: pa.Table, resolution: dict[str, bool]):
    for uri in batch["uri"].to_pylist():
        yield from read_file_batches(uri, resolution)


def _collect(ds: ray.data.Dataset, columns: list[str]) -> pa.Table:
    """`columns` of every row of `ds`, on the driver (small key columns only)."""
    if ds.count() == 0:  # no block, hence no schema to select from (a folder of empty files)
        return pa.schema([RECORD.field(c) if c in RECORD.names else SUMMARY_COLUMNS.field(c)
                          for c in columns]).empty_table()
    return pa.concat_tables(ray.get(ds.select_columns(columns).to_arrow_refs()))


def _write(ds: ray.data.Dataset, uri: str, schema: pa.Schema, rows_per_shard: int) -> None:
    fs, path = fsys.filesystem(uri)
    ds.write_parquet(path, filesystem=fs, schema=schema, min_rows_per_file=rows_per_shard)


def _list_inputs(cfg: IngestConfig, out: Output) -> tuple[list[str], dict[str, int]]:
    """The input files and the skipped ones counted by reason, or a short `UserError` naming the key when there is nothing to read."""
    try:
        files, skipped = io.list_files_with_skips(out.inputs["input"], SUFFIXES)
    except FileNotFoundError:
        raise UserError(f"input={cfg.input}: no such file or folder") from None
    if not files:
        raise UserError(f"input={cfg.input} holds no {', '.join(SUFFIXES)} files"
                        + (f" ({len(skipped)} other files skipped)" if skipped else ""))
    # "unreadable (Permission denied)" and "unreadable (...)" count as one reason.
    return files, dict(Counter(s["reason"].split(" (")[0] for s in skipped))


def _read_resolution(cfg: IngestConfig, out: Output):
    try:
        return read_resolution(out.inputs["resolution"])
    except FileNotFoundError:
        raise UserError(f"resolution={cfg.resolution}: no such file or folder") from None


def run(cfg: IngestConfig, out: Output) -> dict:
    files, skipped = _list_inputs(cfg, out)
    resolution, resolution_report = _read_resolution(cfg, out)
    init_ray()

    records = (
        ray.data.from_items([{"uri": f} for f in files], override_num_blocks=len(files))
        .map_batches(_read, batch_size=1, batch_format="pyarrow", fn_kwargs={"resolution": resolution})
        .materialize()
    )
    keys = _collect(records, ["traj_id", "source", "ordinal", "quarantine_reason"])
    losers = duplicate_keys(keys.filter(keys["quarantine_reason"].is_null()))
    records = records.map_batches(mark_duplicates, batch_format="pyarrow", fn_kwargs={"losers": losers})
    summary = summarize(
        _collect(records.map_batches(summary_keys, batch_format="pyarrow"), SUMMARY_COLUMNS.names),
        files=files, skipped=skipped, resolution=resolution_report.as_dict(),
    )

    _write(records.map_batches(trajectories, batch_format="pyarrow"), out.uri, TRAJECTORY, cfg.rows_per_shard)
    quarantine_folder = out.side_uri("_quarantine")
    _write(records.map_batches(quarantined, batch_format="pyarrow"), quarantine_folder, QUARANTINE, 10_000)
    if cfg.quarantine:  # a second output, committed on its own
        commit_copy("ingest.quarantine", quarantine_folder, cfg.quarantine, {**inputs(cfg), "output": cfg.output},
                    summary={"run_id": out.run_id, "rows_quarantined": summary.get("rows_quarantined")})
    fsys.write_bytes(fsys.join(out.uri, "_summary.json"), json.dumps(summary, indent=2).encode())
    _check_outcome(summary, cfg)
    return summary


def _check_outcome(summary: dict, cfg: IngestConfig) -> None:
    """Exit honestly: raise `StageFailed` (run_stage then commits the output as failed, with the
    summary) when the run gave nothing usable or mostly quarantine."""
    rows_in, rows_out = summary["rows_in"], summary["rows_out"]
    reason = None
    if rows_out == 0 and not cfg.allow_empty:
        reason = (f"ingest produced no trajectory from {summary['files_in']} files ({rows_in} rows, "
                  f"{summary['rows_quarantined']} quarantined: {summary['quarantined_by_reason']}); "
                  f"see the quarantine, or pass allow_empty=true")
    elif rows_in and summary["rows_quarantined"] / rows_in > cfg.max_quarantine_fraction:
        reason = (f"ingest quarantined {summary['rows_quarantined']} of {rows_in} rows (more than "
                  f"max_quarantine_fraction={cfg.max_quarantine_fraction}): {summary['quarantined_by_reason']}")
    if reason:
        failure = StageFailed(reason)
        failure.summary = summary
        raise failure


def inputs(cfg: IngestConfig) -> dict[str, str | None]:
    return {"input": cfg.input, "resolution": cfg.resolution}


STAGE = Stage(name="ingest", config=IngestConfig, run=run, inputs=inputs)
