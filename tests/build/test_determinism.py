"""Deterministic builds: the same inputs and config give byte-identical rows in the same order,
whatever order the tokenizer actors finish in, with packing split over several write tasks."""

from __future__ import annotations

import hashlib
import posixpath
import re

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import fsys, io
from pipeline.build.config import BuildConfig, MaskConfig, PackConfig
from pipeline.manifest import run_direct
from pipeline.record import read_commit
from pipeline.schema import BUILD_ERROR, TRAINING_ROW, TRAJECTORY

from .conftest import labels_table


def shard_digest(uri: str, schema: pa.Schema) -> tuple[str, list]:
    table = io.read_table(uri, schema)
    h = hashlib.sha256()
    for col in table.columns:
        h.update(repr(col.to_pylist()).encode())
    return h.hexdigest(), table.to_pylist()


def test_two_builds_give_identical_rows(ray_session, real_rows, builder, tmp_path):
    """One trajectory per file, the longest first and copies of the short ones after it, so that
    two actors fed one trajectory at a time finish out of order; a small packing window makes the
    packed rows depend on the order the documents arrive in. pack.window=1 makes packing units of
    at least 4 records (sink.UNIT_WINDOWS x pack.window)."""
    from pipeline.build.stage import STAGE as BUILD

    rows = sorted((dict(r) for r in real_rows), key=lambda r: -len(str(r["messages"])))
    short = rows[len(rows) // 2:]  # the shorter half, after one long trajectory
    docs = [{**rows[0], "resolved": True}]
    for copy in range(2):
        for k, r in enumerate(short[:3]):
            docs.append({**r, "traj_id": f"{r['traj_id']}#{copy}", "resolved": (k + copy) % 3 != 0})
    for i, d in enumerate(docs):
        table = pa.Table.from_pylist([{k: d.get(k) for k in TRAJECTORY.names}], schema=TRAJECTORY)
        fsys.write_table(table, str(tmp_path / "traj" / f"{i:03d}.parquet"))
    fsys.write_table(labels_table({d["traj_id"]: d["num_steps"] for d in docs if not d["resolved"]}),
                     str(tmp_path / "labels" / "part-0.parquet"))
    outs = []
    for n in range(2):
        cfg = BuildConfig(
            trajectories=str(tmp_path / "traj"), labels=str(tmp_path / "labels"), output=str(tmp_path / f"out{n}"),
            model=str(builder.model), recipe="srft_mix", max_seq_len=20000,
            mask=MaskConfig(labels=["mistake"], threshold=0.5),
            pack=PackConfig(enabled=True, seq_len=24000, window=1, max_open_bins=2),
            batch_size=1, num_workers=2, rows_per_shard=2,
        )
        summary = run_direct(BUILD, cfg)
        assert summary["documents_out"] >= 6 and summary["rows_out"] >= 3
        digest, table = shard_digest(cfg.output, TRAINING_ROW)
        errors = io.read_table(f"{cfg.output}/_excluded", BUILD_ERROR).to_pylist()
        files = [fsys.read_bytes(f) for f in io.list_files(cfg.output, (".parquet",))]
        outs.append((digest, table, errors, {k: v for k, v in summary.items() if k not in ("run_id", "config")},
                     files))
    (d0, t0, e0, s0, f0), (d1, t1, e1, s1, f1) = outs
    assert [r["traj_ids"] for r in t0] == [r["traj_ids"] for r in t1]
    assert d0 == d1 and t0 == t1
    assert e0 == e1 and s0 == s1
    assert len(f0) == s0["shards"] >= 2
    assert f0 == f1  # the shard files themselves are byte-identical
    check_units(str(tmp_path / "out0"), [d["traj_id"] for d in docs], s0, t0)


def check_units(root: str, input_order: list[str], summary: dict, rows: list[dict]) -> None:
    """Each write task packed one unit: a run of consecutive input records, its shards named
    part-<unit>-<shard>.parquet; the summary's counters (summed from the units) match the rows;
    the commit record names every file the write tasks wrote."""
    commit = read_commit(root)
    shards = sorted(f for f in commit.files if "/" not in f and f.endswith(".parquet"))
    names = [re.fullmatch(r"part-(\d{5})-(\d{5})\.parquet", f) for f in shards]
    assert all(names), shards
    units = sorted({int(m[1]) for m in names})
    # How many units: Ray Data's blocks decide (small files are read into shared blocks), so here
    # one or more; tests/build/test_sink.py checks several units without Ray.
    assert summary["packing"]["units"] == len(units) >= 1 and units == list(range(len(units)))
    assert summary["packing"]["unit_records"] == 4
    per_unit: dict[int, list[str]] = {u: [] for u in units}
    for f, m in zip(shards, names):
        table = pq.read_table(posixpath.join(root, commit.files[f]))
        per_unit[int(m[1])] += [t for ids in table["traj_ids"].to_pylist() for t in ids]
    side = sorted(f for f in commit.files if f.startswith(("_excluded/", "_errors/")))
    side_rows = 0
    for f in side:  # the side tables are written per unit too, by the same write task
        unit = int(re.fullmatch(r"_(?:excluded|errors)/part-(\d{5})\.parquet", f)[1])
        ids = pq.read_table(posixpath.join(root, commit.files[f]))["traj_id"].to_pylist()
        per_unit[unit] += ids
        side_rows += len(ids)
    assert side_rows == summary["rows_excluded"] + summary["rows_errored"]
    done = 0
    for u in units:  # unit u holds exactly the next records of the input, whatever the packing order
        ids = per_unit[u]
        assert (len(ids) >= 4 or u == units[-1]) and sorted(ids) == sorted(input_order[done:done + len(ids)]), (u, ids)
        done += len(ids)
    assert done == summary["rows_in"] == len(input_order)
    assert summary["rows_out"] == len(rows)
    assert summary["tokens"]["total"] == sum(r["num_tokens"] for r in rows)
    assert summary["tokens"]["trained"] == sum(r["num_trained_tokens"] for r in rows)
    assert summary["tokens"]["masked"] == sum(r["num_masked_tokens"] for r in rows)
    assert summary["packing"]["max_row_tokens"] == max(r["num_tokens"] for r in rows)
