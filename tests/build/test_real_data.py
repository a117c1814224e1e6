"""The build stage's defaults on the real shared trajectories, ingested by the real ingest stage:
SWE-smith xml rows with their evaluation reports, and SWE-agent .traj files of unknown outcome
(which the default `unknown_outcome=unresolved` trains as failed runs, with their mistakes masked)."""

from __future__ import annotations

import numpy as np

from pipeline import fsys, io
from pipeline.build.builder import Built, Conversation
from pipeline.build.packing import unpack_row
from pipeline.schema import BUILD_ERROR, TRAINING_ROW, TRAJECTORY

from .conftest import label_for, labels_table


def test_defaults_on_ingested_shared_data(ray_session, shared_data, builder, tmp_path, capsys):
    from jobs.build import main as build
    from jobs.ingest import main as ingest

    ingest([f"input={shared_data}", f"resolution={shared_data / 'swe-smith' / 'run_evaluation'}",
            f"output={tmp_path / 'trajectories'}"])
    trajs = io.read_table(str(tmp_path / "trajectories"), TRAJECTORY).to_pylist()
    unknown = [t for t in trajs if t["resolved"] is None]
    assert len(trajs) >= 6 and len(unknown) >= 3  # SWE-smith rows are resolved, .traj files unknown
    # Step labels for every trajectory not known to be resolved (what label does by default).
    fsys.write_table(labels_table({t["traj_id"]: t["num_steps"] for t in trajs if t["resolved"] is not True}),
                     str(tmp_path / "labels" / "part-0.parquet"))

    out = tmp_path / "train_rows"
    s = build([f"trajectories={tmp_path / 'trajectories'}", f"labels={tmp_path / 'labels'}", f"output={out}",
               f"model={builder.model}"])  # every other setting: the stage's defaults
    progress = capsys.readouterr().err  # the driver's progress line: done/total, rate, errors so far
    assert f"[build] {len(trajs)}/{len(trajs)} trajectories" in progress and "errors 0" in progress
    cfg = s["config"]
    assert (cfg["recipe"], cfg["max_seq_len"], cfg["pack"]["seq_len"], cfg["unknown_outcome"]) == (
        "srft_mix", 32768, 32768, "unresolved")
    assert s["rows_in"] == len(trajs) == s["documents_out"] + s["rows_errored"] + s["rows_excluded"]
    assert s["rows_errored"] == 0 and s["documents_out"] >= len(trajs) - 1
    # resolved=null trajectories are trained as unresolved ones: masked, not excluded
    assert s["unknown_outcome"]["documents"] == len([t for t in unknown if t["num_steps"] > 0]) >= 1
    assert "resolution_unknown" not in s["exclusions"]
    assert s["tokens"]["masked"] > 0 and s["truncation"]["rows_truncated"] >= 1
    fc = s["tools"]
    assert fc["function_calling_documents"] >= 1
    assert fc["tools_missing"] + fc["documents_with_tools"] == fc["function_calling_documents"]
    assert s["template"]["renders_tool_calls"] is True

    table = io.read_table(str(out), TRAINING_ROW)
    assert table.num_rows == s["rows_out"] >= 1
    docs = {d.traj_id: d for row in table.to_pylist() for d in unpack_row(row)}
    assert len(docs) == s["documents_out"]
    by_id = {t["traj_id"]: t for t in trajs}
    b = builder.__class__(builder.model, max_len=32768)
    for tid, d in docs.items():  # each document is exactly the mask builder's, masks from the labels
        t = by_id[tid]
        masked = frozenset() if t["resolved"] else frozenset(
            k for k in range(t["num_steps"]) if label_for(k)[0] == "mistake" and label_for(k)[1] >= 0.5)
        (ref,) = b.build([Conversation(tid, t["messages"], masked, t.get("tools"))])
        assert isinstance(ref, Built)
        assert np.array_equal(d.input_ids, ref.input_ids) and np.array_equal(d.loss_mask[1:], ref.loss_mask[1:])
    excluded = io.read_table(f"{out}/_excluded", BUILD_ERROR).num_rows if s["rows_excluded"] else 0
    assert excluded == s["rows_excluded"]

    # The mask inspector on these real rows: roles recovered from what the summary names, checked
    # against the stored ids and mask, for a SWE-agent trajectory of unknown outcome (masked).
    from pipeline.inspect.command import inspect_rows
    from pipeline.inspect.config import InspectConfig

    tid = next(t["traj_id"] for t in unknown if t["traj_id"] in docs and t["num_steps"] > 2)
    res = inspect_rows(InspectConfig(rows=str(out), traj_id=tid, format="text", color=False,
                                     output=str(tmp_path / "inspect.txt")))
    assert res["verified"], res["note"]
    expected = {k for k in range(by_id[tid]["num_steps"]) if label_for(k)[0] == "mistake" and label_for(k)[1] >= 0.5}
    assert res["masked_steps"] and set(res["masked_steps"]) <= expected
    assert res["tokens"]["trained"] == int(docs[tid].loss_mask.sum())
    page = inspect_rows(InspectConfig(rows=str(out), output=str(tmp_path / "inspect.html")))
    assert page["verified"] and page["masked_steps"]
