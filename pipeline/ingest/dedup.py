"""Duplicate traj_ids: the first occurrence (by source, then position in it) is kept."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc


def duplicate_keys(keys: pa.Table) -> set[tuple[str, int]]:
    """(source, ordinal) of every good record whose traj_id appeared earlier.

    `keys` holds traj_id, source and ordinal of the good records only: small enough for the
    driver even for millions of trajectories.
    """
    ordered = keys.sort_by([("traj_id", "ascending"), ("source", "ascending"), ("ordinal", "ascending")])
    ids = ordered["traj_id"].to_pylist()
    sources = ordered["source"].to_pylist()
    ordinals = ordered["ordinal"].to_pylist()
    return {(sources[i], ordinals[i]) for i in range(1, len(ids)) if ids[i] == ids[i - 1]}


def mark_duplicates(records: pa.Table, losers: set[tuple[str, int]]) -> pa.Table:
    """Quarantine the records listed in `losers` with reason ``duplicate_traj_id``."""
    if not losers or records.num_rows == 0:
        return records
    hit = [(s, o) in losers for s, o in zip(records["source"].to_pylist(), records["ordinal"].to_pylist())]
    hit = pa.array(hit)
    detail = pc.binary_join_element_wise(
        records["source"], pa.scalar(" "), records["location"], pa.scalar(": traj_id "),
        records["traj_id"], pa.scalar(" already ingested from an earlier row"), pa.scalar(""),
    )
    reason = pc.if_else(hit, pa.scalar("duplicate_traj_id"), records["quarantine_reason"])
    detail = pc.if_else(hit, detail, records["quarantine_detail"])
    columns = {name: records[name] for name in records.column_names}
    columns["quarantine_reason"] = reason
    columns["quarantine_detail"] = detail
    return pa.table(columns, schema=records.schema)
