"""What the label output already holds (for resume), and writing its rows from the Ray workers.

Logical layout of the committed output (pipeline.commit; each run writes into its version folder
``<output>/_v-label-<run_id>/`` and the commit record names the files)::

    part-<run_id>-<batch>.parquet           STEP_LABEL rows of one critic batch (whole trajectories)
    _errors/part-<run_id>-<batch>.parquet   LABEL_ERROR rows (one per trajectory still unlabelled)
    _summary.json                           the run's summary

Who writes what. The critic actors' outcomes go to `write_outcomes`, a Ray Data map that runs on
the workers: it turns one critic batch into one label file and one error file and hands the driver
a `REPORT` row per trajectory (counts, not labels). The driver only commits, and only the files
whose report reached it (``Output.admit``), so a file written by a task whose answer was lost (a
killed node, an aborted run) is never committed. A file's name comes from its batch's trajectory
ids, so a task Ray re-runs after a lost node rewrites the same file instead of adding a second copy.
The driver itself writes only error rows it makes (earlier errors kept, ``run_aborted``).

Readers go through `io.list_files` / `io.read_table`, which follow the commit record, or through
the Delta table (pipeline.tables).
"""

from __future__ import annotations

import hashlib

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import fsys
from pipeline.schema import LABEL_ERROR, LABELS, STEP_LABEL, check_version

ERRORS = "_errors"  # error rows, under the output

# What a worker tells the driver about one trajectory: counts for the summary, and the files that
# hold its rows. The label rows themselves never leave the worker.
REPORT = pa.schema([
    pa.field("traj_id", pa.string()),
    pa.field("error_reason", pa.string()),  # null when labelled
    *[pa.field(f"n_{label}", pa.int32()) for label in LABELS],  # labelled steps per label
    pa.field("confidence_sum", pa.float64()),
    pa.field("calls", pa.int32()),
    pa.field("prompt_tokens", pa.int64()),
    pa.field("completion_tokens", pa.int64()),
    pa.field("trajectory_tokens", pa.int64()),
    pa.field("critic_prompt_tokens", pa.int64()),
    pa.field("file", pa.string()),  # logical path of the file holding its rows (labels or error)
])


def read_columns(files: list[str], columns: list[str], schema: pa.Schema) -> pa.Table:
    """Selected columns of the given shards (checked for the schema version)."""
    tables = []
    for f in files:
        fs, path = fsys.filesystem(f)
        pf = pq.ParquetFile(path, filesystem=fs)
        check_version(pf.schema_arrow, f)
        tables.append(pf.read(columns=columns))
    if not tables:
        return schema.empty_table().select(columns)
    return pa.concat_tables(tables)


def previous_files(previous) -> tuple[dict[str, str], dict[str, str]]:
    """The label shards and the error shards ({logical path: URI} each) of a previous commit
    (a `pipeline.record.Commit`, or None for a new output)."""
    if previous is None:
        return {}, {}
    labels = {p: u for p, u in previous.uris().items() if not p.startswith(("_", ".")) and p.endswith(".parquet")}
    errors = {p: u for p, u in previous.uris(ERRORS).items() if p.endswith(".parquet")}
    return labels, errors


def existing_labels(files: list[str]) -> pa.Table:
    return read_columns(files, ["traj_id", "critic_model", "prompt_version"], STEP_LABEL)


def existing_errors(files: list[str]) -> pa.Table:
    return read_columns(files, list(LABEL_ERROR.names), LABEL_ERROR)


def batch_file(run_id: str, traj_ids: list[str]) -> str:
    """The file name of one batch's rows: the same trajectories give the same name (see above)."""
    digest = hashlib.sha256("\n".join(sorted(traj_ids)).encode()).hexdigest()[:20]
    return f"part-{run_id}-{digest}.parquet"


def error_record(tid: str, reason: str, detail: str | None, attempts: int, critic_model: str,
                 prompt_version: str, run_id: str) -> dict:
    return {"traj_id": tid, "reason": reason, "detail": detail, "attempts": attempts,
            "critic_model": critic_model, "prompt_version": prompt_version, "run_id": run_id}


def _label_rows(o: dict, critic_model: str, prompt_version: str, run_id: str) -> pa.Table:
    return pa.Table.from_pylist([{
        "traj_id": o["traj_id"], "step": v["step"], "label": v["label"], "confidence": v["confidence"],
        "reason": v["reason"], "critic_model": critic_model, "prompt_version": prompt_version,
        "num_samples": o["num_samples"], "run_id": run_id,
        "prompt_tokens": o["prompt_tokens"], "completion_tokens": o["completion_tokens"],
    } for v in o["verdicts"]], schema=STEP_LABEL)


def write_outcomes(batch: pa.Table, *, labels_uri: str, errors_uri: str, run_id: str, critic_model: str,
                   prompt_version: str) -> pa.Table:
    """Ray Data map (on a worker): the critic's outcomes of one batch (actor.OUTCOME rows, already
    scrubbed of secrets by the actor) -> one STEP_LABEL file and one LABEL_ERROR file under this
    run's version folders, and one REPORT row per trajectory for the driver."""
    outcomes = batch.to_pylist()
    name = batch_file(run_id, [o["traj_id"] for o in outcomes])
    labels, errors, reports = [], [], []
    for o in outcomes:
        report = {k: o.get(k) for k in ("traj_id", "calls", "prompt_tokens", "completion_tokens",
                                        "trajectory_tokens", "critic_prompt_tokens")}
        rows = None
        if o["verdicts"] is not None:
            try:  # e.g. a verdict that does not fit the schema: the trajectory becomes an error row
                rows = _label_rows(o, critic_model, prompt_version, run_id)
            except Exception as e:  # noqa: BLE001
                o = {**o, "error_reason": "unwritable", "error_detail": f"{type(e).__name__}: {e}"[:2000]}
        if rows is None:
            reason = o["error_reason"] or "unknown_error"
            errors.append(error_record(o["traj_id"], reason, o["error_detail"], o["attempts"] or 0,
                                       critic_model, prompt_version, run_id))
            reports.append({**report, "error_reason": reason, "file": f"{ERRORS}/{name}"})
            continue
        labels.append(rows)
        counts = dict.fromkeys(LABELS, 0)
        for label in rows["label"].to_pylist():
            counts[label] = counts.get(label, 0) + 1
        reports.append({**report, "error_reason": None, "file": name,
                        "confidence_sum": float(sum(rows["confidence"].to_pylist())),
                        **{f"n_{k}": v for k, v in counts.items()}})
    if labels:
        fsys.write_table(pa.concat_tables(labels), fsys.join(labels_uri, name))
    if errors:
        fsys.write_table(pa.Table.from_pylist(errors, schema=LABEL_ERROR), fsys.join(errors_uri, name))
    return pa.Table.from_pylist(reports, schema=REPORT)
