"""The build's write tasks (pipeline/build/sink.py), without Ray: one unit of records in, its rows,
side tables and counters out; counters of several units add up to those of one stream."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from pipeline import io
from pipeline.build.config import BuildConfig, PackConfig
from pipeline.build.packing import Doc, StreamingPacker, pack_row
from pipeline.build.records import RECORD, rows_table
from pipeline.build.sink import combine, pack_unit
from pipeline.schema import BUILD_ERROR, TRAINING_ROW


def records(n: int, seed: int = 0) -> list[dict]:
    """n RECORD rows: mostly documents of random length, every 7th an exclusion, every 11th an error."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        tid = f"t{i:03d}"
        if i % 7 == 3:
            out.append({"traj_id": tid, "status": "excluded", "reason": "overlong", "detail": "d",
                        "input_ids": [], "loss_mask": []})
            continue
        if i % 11 == 5:
            out.append({"traj_id": tid, "status": "error", "reason": "num_steps_mismatch", "detail": "e",
                        "input_ids": [], "loss_mask": []})
            continue
        length = int(rng.integers(300, 5000))
        mask = (rng.random(length) < 0.6).astype(np.int8)
        mask[0] = 0
        cut = int(i % 5 == 0) * 17
        out.append({"traj_id": tid, "status": "doc", "kind": ["resolved_all", "unresolved_masked"][i % 2],
                    "input_ids": rng.integers(0, 150000, length, dtype=np.int32).tolist(), "loss_mask": mask.tolist(),
                    "num_masked_tokens": int(i % 4), "num_steps": 3, "truncated_tokens": cut, "truncated_steps": int(cut > 0),
                    "straddled_steps": int(i % 3 == 0), "outcome_unknown": i % 6 == 0, "function_calling": i % 2 == 1,
                    "has_tools": i % 4 == 1})
    return out


def as_blocks(recs: list[dict], size: int) -> list[pa.Table]:
    full = [{f.name: r.get(f.name, 0 if pa.types.is_integer(f.type) else False if pa.types.is_boolean(f.type)
                           else None) for f in RECORD} for r in recs]
    return [pa.Table.from_pylist(full[k:k + size], schema=RECORD) for k in range(0, len(full), size)]


CFG = BuildConfig(trajectories="x", output="y", model="m", recipe="srft_mix", rows_per_shard=4,
                  pack=PackConfig(enabled=True, seq_len=8192, window=8, max_open_bins=3))


def test_one_unit_is_the_stream_packer_over_its_records(tmp_path):
    recs = records(60)
    counters = pack_unit(as_blocks(recs, 9), CFG, str(tmp_path), unit=7)
    # The same documents through one StreamingPacker, in record order: the rows the old driver wrote.
    packer = StreamingPacker(8192, 8, 3, CFG.pack.target_fill)
    docs = [Doc(r["traj_id"], np.array(r["input_ids"], np.int32), np.array(r["loss_mask"], np.int8),
                r["num_masked_tokens"]) for r in recs if r["status"] == "doc"]
    bins = [b for d in docs for b in packer.add(d)] + packer.flush()
    expected = rows_table([pack_row(b.docs, "srft_mix") for b in bins])
    files = io.list_files(str(tmp_path), (".parquet",))
    assert [f.rsplit("/", 1)[1] for f in files] == [f"part-00007-{k:05d}.parquet" for k in range(-(-len(bins) // 4))]
    assert io.read_table(str(tmp_path), TRAINING_ROW).equals(expected)
    side = {st: io.read_table(str(tmp_path / sub), BUILD_ERROR).to_pylist() for st, sub in (("error", "_errors"),
                                                                                          ("excluded", "_excluded"))}
    assert [r["traj_id"] for r in side["excluded"]] == [r["traj_id"] for r in recs if r["status"] == "excluded"]
    assert [r["traj_id"] for r in side["error"]] == [r["traj_id"] for r in recs if r["status"] == "error"]
    assert (tmp_path / "_errors" / "part-00007.parquet").exists()
    ds = [r for r in recs if r["status"] == "doc"]
    assert counters["records"] == 60 and counters["rows"] == len(bins) and counters["shards"] == len(files)
    assert counters["excluded"] == {"overlong": len(side["excluded"])}
    assert counters["errors"] == {"num_steps_mismatch": len(side["error"])}
    assert counters["kinds"] == {"resolved_all": sum(r["kind"] == "resolved_all" for r in ds),
                                 "unresolved_masked": sum(r["kind"] == "unresolved_masked" for r in ds)}
    tok = counters["tokens"]
    assert tok["total"] == counters["row_tokens"] == sum(len(r["input_ids"]) for r in ds)
    assert tok["trained"] == sum(sum(r["loss_mask"]) for r in ds) == pa.compute.sum(expected["num_trained_tokens"]).as_py()
    assert tok["masked"] == sum(r["num_masked_tokens"] for r in ds)
    assert tok["truncated_rows"] == sum(r["truncated_tokens"] > 0 for r in ds)
    assert tok["truncated_tokens"] == sum(r["truncated_tokens"] for r in ds)
    assert tok["straddled_steps"] == sum(r["straddled_steps"] for r in ds)
    assert tok["outcome_unknown_documents"] == sum(r["outcome_unknown"] for r in ds)
    assert counters["tools"] == {"documents_with_tools": sum(r["has_tools"] for r in ds),
                                 "function_calling_documents": sum(r["function_calling"] for r in ds),
                                 "tools_missing": sum(r["function_calling"] and not r["has_tools"] for r in ds)}
    assert counters["max_row_tokens"] == max(pa.compute.max(expected["num_tokens"]).as_py(), 0)


def test_counters_of_units_add_up_to_one_stream(tmp_path):
    recs = records(90, seed=1)
    whole = combine([pack_unit(as_blocks(recs, 10), CFG, str(tmp_path / "whole"), unit=0)])
    parts = combine([pack_unit(as_blocks(recs[k:k + 30], 10), CFG, str(tmp_path / "parts"), unit=k // 30)
                     for k in range(0, 90, 30)])
    for key in ("records", "kinds", "tokens", "tools", "errors", "excluded", "row_tokens"):
        assert parts[key] == whole[key], key
    assert parts["units"] == 3 and whole["units"] == 1
    # Three units end with three flushes: at least as many rows as one stream, the same documents.
    assert parts["rows"] >= whole["rows"]
    rows = io.read_table(str(tmp_path / "parts"), TRAINING_ROW)
    assert parts["rows"] == rows.num_rows
    assert sorted(t for ids in rows["traj_ids"].to_pylist() for t in ids) == [
        r["traj_id"] for r in recs if r["status"] == "doc"]
    assert parts["max_row_tokens"] == pa.compute.max(rows["num_tokens"]).as_py()


def test_unpacked_unit_writes_one_row_per_document(tmp_path):
    cfg = BuildConfig(trajectories="x", output="y", model="m", recipe="rft", rows_per_shard=100,
                      pack=PackConfig(enabled=False))
    recs = records(20, seed=2)
    counters = pack_unit(as_blocks(recs, 6), cfg, str(tmp_path), unit=0)
    rows = io.read_table(str(tmp_path), TRAINING_ROW)
    assert [ids for ids in rows["traj_ids"].to_pylist()] == [[r["traj_id"]] for r in recs if r["status"] == "doc"]
    assert counters["rows"] == rows.num_rows == counters["kinds"]["resolved_all"] + counters["kinds"]["unresolved_masked"]
