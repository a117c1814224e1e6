"""The build stage end to end on real Ray: real trajectories joined with labels, packed rows on S3."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from pipeline import fsys, io, tables
from pipeline.build.builder import Built, Conversation
from pipeline.build.config import BuildConfig, MaskConfig, PackConfig
from pipeline.build.packing import unpack_row
from pipeline.manifest import run_direct
from pipeline.schema import BUILD_ERROR, TRAINING_ROW, TRAJECTORY

from .conftest import labels_table


@pytest.fixture(scope="module")
def inputs(real_rows, tmp_path_factory):
    """Real trajectories with a resolution for each (the SWE-agent files have none: two are set
    unresolved, one resolved, one left unknown), labels for all unresolved ones but one."""
    rows = [dict(r) for r in real_rows]
    agent = [r for r in rows if r["source_format"].startswith("swe_agent")]
    for r, res in zip(agent, [False, False, True, None]):
        r["resolved"] = res
    longest = max((r for r in rows if r["source_format"] == "xml"), key=lambda r: len(str(r["messages"])))
    longest["resolved"] = False  # the 55k-token row: truncated and masked
    unresolved = sorted((r for r in rows if r["resolved"] is False), key=lambda r: r["source_format"] != "xml")
    assert len(unresolved) >= 3
    labelled = {r["traj_id"]: r["num_steps"] for r in unresolved[:-1]}
    root = tmp_path_factory.mktemp("build")
    table = pa.Table.from_pylist([{k: r[k] for k in TRAJECTORY.names} for r in rows], schema=TRAJECTORY)
    fsys.write_table(table.slice(0, 4), str(root / "traj" / "a.parquet"))
    fsys.write_table(table.slice(4), str(root / "traj" / "b.parquet"))
    fsys.write_table(labels_table(labelled), str(root / "labels" / "part-0.parquet"))
    return root, rows, labelled, unresolved[-1]["traj_id"]


def test_build_srft_mix_packed_to_s3(ray_session, s3_bucket, inputs, builder, monkeypatch):
    from pipeline import record
    from pipeline.build.stage import STAGE as BUILD

    located = []  # run_stage locates each input once; the stage reads what it located
    real_locate = record.locate
    monkeypatch.setattr(record, "locate", lambda uri: located.append(uri) or real_locate(uri))

    root, rows, _labelled, unlabeled_id = inputs
    out = f"{s3_bucket}/train_rows"
    cfg = BuildConfig(
        trajectories=str(root / "traj"), labels=str(root / "labels"), output=out,
        model=str(builder.model), recipe="srft_mix", max_seq_len=32768,
        mask=MaskConfig(labels=["mistake"], threshold=0.5), pack=PackConfig(enabled=True, seq_len=40000),
        batch_size=2, num_workers=1, unknown_outcome="exclude",
    )
    s = run_direct(BUILD, cfg)
    assert (located.count(cfg.trajectories), located.count(cfg.labels), located.count(cfg.model)) == (1, 1, 1)
    assert s["rows_in"] == len(rows) == s["documents_out"] + s["rows_errored"] + s["rows_excluded"]
    assert s["exclusions"].get("unlabeled") == 1 and s["exclusions"].get("resolution_unknown") == 1
    assert s["rows_errored"] == 0

    table = io.read_table(out, TRAINING_ROW)
    assert table.num_rows == s["rows_out"] == s["rows_per_recipe"]["srft_mix"]
    assert tables.read(out).num_rows == table.num_rows  # the same rows as a Delta table on S3
    assert (table.schema.metadata or {}).get(b"srft.schema_version") is not None
    docs = {}
    for row in table.to_pylist():
        assert row["num_tokens"] == len(row["input_ids"]) <= 40000
        cu = row["cu_seqlens"]
        for k in range(len(cu) - 1):
            assert row["position_ids"][cu[k]:cu[k + 1]] == list(range(cu[k + 1] - cu[k]))
        for d in unpack_row(row):
            docs[d.traj_id] = d
    assert s["documents_out"] == len(docs)
    assert unlabeled_id not in docs

    # every document is exactly what the mask builder gives for that trajectory and recipe
    by_id = {r["traj_id"]: r for r in rows}

    trained = masked = 0
    for tid, d in docs.items():
        r = by_id[tid]
        masked_steps = frozenset(s for s in range(r["num_steps"]) if s % 5 == 1) if not r["resolved"] else frozenset()
        b = builder.build([Conversation(tid, r["messages"], masked_steps)])
        ref = b[0]
        if ref.num_tokens > 32768:  # the stage truncates at a step boundary
            import copy

            bb = copy.copy(builder)
            bb.max_len = 32768
            ref = bb.build([Conversation(tid, r["messages"], masked_steps)])[0]
        assert isinstance(ref, Built)
        assert np.array_equal(d.input_ids, ref.input_ids) and np.array_equal(d.loss_mask, ref.loss_mask)
        trained += int(ref.loss_mask.sum())
        masked += ref.num_masked_tokens
    t = s["tokens"]
    assert t["trained"] == trained and t["masked"] == masked > 0
    assert t["total"] == t["trained"] + t["masked"] + t["context_only"]
    assert s["truncation"]["rows_truncated"] >= 1
    assert json.loads(io.read_bytes(f"{out}/_summary.json"))["rows_out"] == s["rows_out"]
    excluded = io.read_table(f"{out}/_excluded", BUILD_ERROR)
    assert excluded.num_rows == s["rows_excluded"]


def test_build_rft_unpacked_and_drop(ray_session, inputs, builder, tmp_path):
    from jobs.build import main

    root, rows, _, _ = inputs
    out = tmp_path / "rows"
    s = main([f"trajectories={root / 'traj'}", f"output={out}", f"model={builder.model}", "recipe=rft",
              "pack.enabled=false", "overlong=drop", "max_seq_len=16000", "labels=null"])
    resolved = [r for r in rows if r["resolved"] is True]
    assert s["documents_out"] + s["exclusions"].get("overlong", 0) == len(resolved)
    assert s["documents_out"] >= 1 and s["exclusions"].get("overlong", 0) >= 1 and s["truncation"]["rows_dropped"] >= 1
    table = io.read_table(str(out), TRAINING_ROW)
    record = json.loads((out / "_manifest.json").read_text())
    assert s["run_id"] == record["run_id"] and record["commit"]["version"] == f"_v-build-{s['run_id']}"
    for row in table.to_pylist():
        assert row["cu_seqlens"] == [0, row["num_tokens"]] and len(row["traj_ids"]) == 1
        assert row["recipe"] == "rft" and row["num_masked_tokens"] == 0 and row["num_tokens"] <= 16000
