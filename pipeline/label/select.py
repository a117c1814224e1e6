"""Which trajectories a label run labels, and reading exactly those rows.

`select` is a pure function of the input's key columns and of what the output already holds. It
decides per input *row*, not per id: the first row of a traj_id is the one labelled, a later row
with the same id is counted ``duplicate_in_input``. The rows to label are named by position
(file, row group, row), and `read_rows` (a Ray Data map on the workers) reads just those. That is
why the stage does not use ``ray.data.read_parquet`` with a filter on ids: a filter would let both
copies of a duplicated id through, and the workers, which write the labels, cannot tell them apart.

Every input row ends in exactly one place: selected, or skipped with one of `SKIPS`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import fsys, io, record
from pipeline.outcome import effective_resolved
from pipeline.schema import TRAJECTORY

INPUT_COLUMNS = ["traj_id", "messages", "resolved", "num_steps"]  # what the critic actors read
INPUT_SCHEMA = pa.schema([TRAJECTORY.field(n) for n in INPUT_COLUMNS])
SKIPS = ("skipped_resolved", "skipped_unknown_outcome", "skipped_no_steps", "skipped_already_labelled",
         "skipped_previous_error", "skipped_limit", "duplicate_in_input")


def read_keys(input_uri: str | record.Input) -> tuple[pa.Table, list[str]]:
    """The key columns of every input row with its position (``file`` index into the returned file
    list, ``row_group``, ``row`` within the group); fails at once on a missing or foreign input."""
    shards = io.parquet_shards(input_uri, INPUT_SCHEMA, "input", "trajectory", "run jobs.ingest into it first")
    tables = []
    for i, path in enumerate(shards.paths):
        pf = pq.ParquetFile(path, filesystem=shards.fs)
        for g in range(pf.num_row_groups):
            t = pf.read_row_group(g, columns=["traj_id", "resolved", "num_steps"])
            n = t.num_rows
            tables.append(t.append_column("file", pa.array([i] * n, pa.int32()))
                           .append_column("row_group", pa.array([g] * n, pa.int32()))
                           .append_column("row", pa.array(range(n), pa.int32())))
    if not tables:  # shards without row groups: no rows
        tables = [pa.table({"traj_id": pa.array([], pa.string()), "resolved": pa.array([], pa.bool_()),
                            "num_steps": pa.array([], pa.int32()), "file": pa.array([], pa.int32()),
                            "row_group": pa.array([], pa.int32()), "row": pa.array([], pa.int32())})]
    return pa.concat_tables(tables), shards.files


@dataclass
class Selection:
    ids: list[str] = field(default_factory=list)  # in input order
    skipped: Counter = field(default_factory=Counter)  # input rows not labelled, by reason (SKIPS)
    reads: list[dict] = field(default_factory=list)  # {"file", "row_group", "rows"}: where `ids` are


def select(keys: pa.Table, files: list[str], *, done: set[str], previous_errors: set[str],
           unknown_outcome: str, label_resolved: bool, retry_errors: bool, limit: int | None) -> Selection:
    """The rows this run labels. `done`: trajectories the output already holds labels for;
    `previous_errors`: those it holds an error row for (retried only with `retry_errors`)."""
    s = Selection()
    seen: set[str] = set()
    places: dict[tuple[int, int], list[int]] = {}
    columns = (keys[k].to_pylist() for k in ("traj_id", "resolved", "num_steps", "file", "row_group", "row"))
    for tid, resolved, num_steps, f, g, row in zip(*columns):
        if tid in seen:
            s.skipped["duplicate_in_input"] += 1
            continue
        seen.add(tid)
        outcome = effective_resolved(resolved, unknown_outcome)
        if outcome is None:
            s.skipped["skipped_unknown_outcome"] += 1
        elif outcome is True and not label_resolved:
            s.skipped["skipped_resolved"] += 1
        elif not num_steps:  # no assistant step: nothing to label (not an error of the critic)
            s.skipped["skipped_no_steps"] += 1
        elif tid in done:
            s.skipped["skipped_already_labelled"] += 1
        elif tid in previous_errors and not retry_errors:
            s.skipped["skipped_previous_error"] += 1
        elif limit is not None and len(s.ids) >= limit:
            s.skipped["skipped_limit"] += 1
        else:
            s.ids.append(tid)
            places.setdefault((f, g), []).append(row)
    s.reads = [{"file": files[f], "row_group": g, "rows": rows} for (f, g), rows in places.items()]
    return s


def read_rows(places: pa.Table) -> pa.Table:
    """Ray Data map (on a worker): the selected rows of each (file, row group) in `places`."""
    out = []
    for p in places.to_pylist():
        fs, path = fsys.filesystem(p["file"])
        group = pq.ParquetFile(path, filesystem=fs).read_row_group(p["row_group"], columns=INPUT_COLUMNS)
        out.append(group.take(pa.array(p["rows"], pa.int32())).select(INPUT_COLUMNS).cast(INPUT_SCHEMA))
    return pa.concat_tables(out) if out else INPUT_SCHEMA.empty_table()
