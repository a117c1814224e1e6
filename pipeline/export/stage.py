"""Export rows: the built TRAINING_ROW rows in the pretokenized form TRL or axolotl consume.

    python -m jobs.export_rows rows=URI format=trl|axolotl output=URI [unpack=true]

Masks are carried token for token (pipeline/export/convert.py derives the mapping); packed rows
either stay packed with their document lengths (TRL's `seq_lengths`, for its padding-free
collator) or are split into one example per document (axolotl, or unpack=true). How to train
them: docs/interop.md.

Output (committed atomically under `output`): part-NNNNN.parquet, _errors/part-00000.parquet
(rows that could not be exported, with their trajectory ids and the reason) and _summary.json.
Counts add up: rows_in = rows exported + rows_quarantined, and the trained-token count of the
exported examples equals that of the exported rows (else the run fails: a conversion bug).
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

from pipeline import fsys, io
from pipeline.commit import Output
from pipeline.errors import StageFailed, UserError
from pipeline.export.config import ExportConfig
from pipeline.export.convert import EXPORT_ERROR, check_row, convert_row, schema_for, trained_tokens
from pipeline.manifest import Stage
from pipeline.progress import Progress
from pipeline.schema import TRAINING_ROW, check_version


def _row_trained(mask: np.ndarray, cu: np.ndarray) -> int:
    """Trained tokens of a row as our trainer counts them: loss_mask 1, not a document's first token."""
    trained = mask == 1
    trained[cu[:-1]] = False
    return int(trained.sum())


def run(cfg: ExportConfig, out: Output) -> dict:
    unpack = cfg.unpacked()
    schema = schema_for(cfg.format, unpack)
    files = io.list_files(out.inputs["rows"], (".parquet",))
    if not files:
        raise UserError(f"rows={cfg.rows}: no Parquet files (the build stage's output)")
    shards, buffer, errors = [], [], []
    counts = {"rows_in": 0, "rows_exported": 0, "rows_quarantined": 0, "documents": 0, "examples": 0,
              "trained_tokens_in": 0, "trained_tokens_out": 0, "tokens": 0}

    def flush() -> None:
        if buffer:
            name = f"part-{len(shards):05d}.parquet"
            fsys.write_table(pa.Table.from_pylist(buffer, schema=schema), fsys.join(out.uri, name))
            shards.append(name)
            buffer.clear()

    progress = Progress("export_rows", len(files), "files")
    for f in files:
        table = io.read_table(f, TRAINING_ROW)
        check_version(table.schema, f)
        cols = {c: table.column(c).to_numpy(zero_copy_only=False)
                for c in ("input_ids", "loss_mask", "position_ids", "cu_seqlens", "traj_ids")}
        for i in range(table.num_rows):
            counts["rows_in"] += 1
            ids, mask, pos, cu = (np.asarray(cols[c][i]) for c in ("input_ids", "loss_mask", "position_ids",
                                                                   "cu_seqlens"))
            traj_ids = list(cols["traj_ids"][i])
            reason = check_row(ids, mask, pos, cu, len(traj_ids))
            if reason is not None:
                errors.append({"traj_ids": traj_ids, "reason": reason})
                counts["rows_quarantined"] += 1
                continue
            counts["rows_exported"] += 1
            counts["documents"] += len(cu) - 1
            counts["tokens"] += len(ids)
            counts["trained_tokens_in"] += _row_trained(mask.astype(np.int8), cu)
            for example in convert_row(cfg.format, unpack, ids.astype(np.int32), mask.astype(np.int8), cu, traj_ids):
                counts["trained_tokens_out"] += trained_tokens(example)
                counts["examples"] += 1
                buffer.append(example)
                if len(buffer) >= cfg.rows_per_shard:
                    flush()
        progress.update(done=1, errors=0, rows=counts["rows_in"])
    flush()
    if errors:
        fsys.write_table(pa.Table.from_pylist(errors, schema=EXPORT_ERROR), fsys.join(out.side_uri("_errors"), "part-00000.parquet"))
    summary = {**counts, "rows_out": counts["examples"], "format": cfg.format, "unpacked": unpack,
               "files": shards, "output": cfg.output,
               "quarantine_reasons": sorted({e["reason"] for e in errors})[:10]}
    fsys.write_bytes(fsys.join(out.uri, "_summary.json"), json.dumps(summary, indent=2).encode())
    if counts["trained_tokens_in"] != counts["trained_tokens_out"]:
        raise StageFailed(f"trained tokens changed in the export ({counts['trained_tokens_in']} in, "
                          f"{counts['trained_tokens_out']} out): a conversion bug, do not train on this output")
    if counts["rows_in"] and counts["rows_quarantined"] * 2 > counts["rows_in"]:
        raise StageFailed(f"{counts['rows_quarantined']} of {counts['rows_in']} rows could not be exported "
                          f"(see {fsys.join(cfg.output, '_errors')}): {summary['quarantine_reasons'][:3]}")
    return summary


def inputs(cfg: ExportConfig) -> dict[str, str | None]:
    return {"rows": cfg.rows}


STAGE = Stage(name="export_rows", config=ExportConfig, run=run, inputs=inputs)
