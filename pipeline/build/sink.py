"""The build stage's Ray Data datasink: each write task packs one unit of records and writes its rows.

A unit is what Ray Data hands one `write()` call: whole consecutive record blocks, at least
`unit_records` records (`Datasink.min_rows_per_write`), in input order. The task packs the unit's
documents with the stage's StreamingPacker, writes its TRAINING_ROW shards
(`part-<unit>-<shard>.parquet`) into the run's version folder and its side tables
(`part-<unit>.parquet`) into the run's folders of `_errors` and `_excluded`
(`Output.side_uri`), and returns a few counters. The
driver sees those counters, never a token or a side-table row.

Why the output is deterministic: with `preserve_order` the records reach the write operator in input
order; block boundaries follow the input files and their sizes (Ray Data's read planning), and Ray
Data's bundler takes whole blocks until a unit holds `unit_records` records, so the same inputs and
config (and Ray version) give the same units,
numbered in the same order (`TaskContext.task_idx` counts write tasks as they are submitted, in
that order). The packer is deterministic given its input order, so each unit gives the same rows.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from urllib.parse import urlparse

import numpy as np
import pyarrow as pa
from ray.data.block import BlockAccessor
from ray.data.datasource import Datasink

from pipeline import fsys
from pipeline.build.config import BuildConfig
from pipeline.build.packing import Doc, StreamingPacker, pack_row
from pipeline.build.records import rows_table
from pipeline.schema import BUILD_ERROR

# Records per packing unit, as a multiple of pack.window. Each unit ends with a flush that writes out
# its open rows (at most pack.max_open_bins) however full they are; 4 windows (1,024 records by
# default) cost 0.17 points of fill against one global stream on SWE-smith-like lengths
# (docs/build.md), and bound a write task's records to a few hundred MB at 32k-token documents.
UNIT_WINDOWS = 4

SIDE_FOLDERS = {"error": "_errors", "excluded": "_excluded"}


def unit_records(cfg: BuildConfig) -> int:
    return UNIT_WINDOWS * cfg.pack.window


def pack_unit(blocks: Iterable[pa.Table], cfg: BuildConfig, folder: str, unit: int,
              side_folders: dict[str, str] | None = None) -> dict:
    """Pack and write one unit of records (records.RECORD blocks); return its counters. Side
    tables go to `side_folders` ({"_errors": URI, ...}; default: folders of those names in `folder`)."""
    packer = (
        StreamingPacker(cfg.pack.seq_len, cfg.pack.window, cfg.pack.max_open_bins, cfg.pack.target_fill)
        if cfg.pack.enabled
        else None
    )
    side: dict[str, list[dict]] = {"error": [], "excluded": []}
    reasons = {"error": Counter(), "excluded": Counter()}
    kinds, tok, tools = Counter(), Counter(), Counter()
    rows: list[dict] = []
    shards = 0
    stats = Counter()  # rows, row_tokens, max_row_tokens

    def write_shard() -> None:
        nonlocal rows, shards
        if rows:
            fsys.write_table(rows_table(rows), fsys.join(folder, f"part-{unit:05d}-{shards:05d}.parquet"))
            shards += 1
            rows = []

    def emit(docs: list[Doc]) -> None:
        row = pack_row(docs, cfg.recipe)
        stats["rows"] += 1
        stats["row_tokens"] += row["num_tokens"]
        stats["max_row_tokens"] = max(stats["max_row_tokens"], row["num_tokens"])
        tok["trained"] += row["num_trained_tokens"]
        rows.append(row)
        if len(rows) >= cfg.rows_per_shard:
            write_shard()

    records = 0
    for block in blocks:
        records += block.num_rows
        col = {k: block[k].to_pylist() for k in (
            "traj_id", "status", "reason", "detail", "kind", "num_masked_tokens", "truncated_tokens",
            "truncated_steps", "straddled_steps", "outcome_unknown", "function_calling", "has_tools")}
        ids_col, mask_col = block["input_ids"].combine_chunks(), block["loss_mask"].combine_chunks()
        for i, st in enumerate(col["status"]):
            if st != "doc":
                r = {k: col[k][i] for k in ("traj_id", "reason", "detail")}
                side[st].append(r)
                reasons[st][r["reason"]] += 1
                continue
            ids = ids_col[i].values.to_numpy(zero_copy_only=False)
            mask = mask_col[i].values.to_numpy(zero_copy_only=False)
            doc = Doc(col["traj_id"][i], ids, mask, col["num_masked_tokens"][i])
            kinds[col["kind"][i]] += 1
            function_calling, has_tools = col["function_calling"][i], col["has_tools"][i]
            tools["documents_with_tools"] += has_tools
            tools["function_calling_documents"] += function_calling
            tools["tools_missing"] += function_calling and not has_tools
            tok["outcome_unknown_documents"] += col["outcome_unknown"][i]
            tok["total"] += len(doc)
            tok["masked"] += doc.num_masked_tokens
            tok["trained_before_packing"] += int(mask.sum(dtype=np.int64))
            tok["truncated_tokens"] += col["truncated_tokens"][i]
            tok["truncated_steps"] += col["truncated_steps"][i]
            tok["truncated_rows"] += int(col["truncated_tokens"][i] > 0)
            tok["straddled_steps"] += col["straddled_steps"][i]
            if packer is None:
                emit([doc])
            else:
                for b in packer.add(doc):
                    emit(b.docs)
    if packer is not None:
        for b in packer.flush():
            emit(b.docs)
    write_shard()
    for st, sub in SIDE_FOLDERS.items():
        if side[st]:
            fsys.write_table(pa.Table.from_pylist(side[st], schema=BUILD_ERROR),
                             fsys.join((side_folders or {}).get(sub) or fsys.join(folder, sub), f"part-{unit:05d}.parquet"))
    assert tok["trained"] == tok["trained_before_packing"], "packing changed the trained token count"
    return {"unit": unit, "records": records, "shards": shards, "kinds": dict(kinds), "tokens": dict(tok),
            "tools": dict(tools), "errors": dict(reasons["error"]), "excluded": dict(reasons["excluded"]),
            **dict(stats)}


def combine(units: list[dict]) -> dict:
    """The per-unit counters summed over the units (max_row_tokens: the largest)."""
    total: dict = {"records": 0, "shards": 0, "rows": 0, "row_tokens": 0, "max_row_tokens": 0}
    counters = {k: Counter() for k in ("kinds", "tokens", "tools", "errors", "excluded")}
    for u in units:
        for k in ("records", "shards", "rows", "row_tokens"):
            total[k] += u.get(k, 0)
        total["max_row_tokens"] = max(total["max_row_tokens"], u.get("max_row_tokens", 0))
        for k, c in counters.items():
            c.update(u[k])
    return {**total, **counters, "units": len(units)}


class TrainingRowSink(Datasink):
    """Writes TRAINING_ROW shards and side tables into `folder`, one packing unit per write task."""

    def __init__(self, cfg: BuildConfig, folder: str, side_folders: dict[str, str] | None = None):
        self.cfg, self.folder, self.side_folders = cfg, folder, side_folders
        self.units: list[dict] = []  # filled on the driver by on_write_complete

    @property
    def min_rows_per_write(self) -> int:
        return unit_records(self.cfg)

    @property
    def supports_distributed_writes(self) -> bool:
        # A local folder is on the driver's disk: write tasks then run on the driver's node.
        return urlparse(self.folder).scheme not in ("", "file")

    def write(self, blocks: Iterable, ctx) -> dict:
        tables = (BlockAccessor.for_block(b).to_arrow() for b in blocks)
        return pack_unit(tables, self.cfg, self.folder, ctx.task_idx, self.side_folders)

    def on_write_complete(self, write_result) -> None:
        self.units = sorted((r for r in write_result.write_returns if r is not None), key=lambda r: r["unit"])
