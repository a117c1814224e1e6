"""Label rows are written by the Ray workers, never by the driver (#18): exact selection by
position (a duplicated id is labelled once, wherever its copies are), the worker-side writer, and
commits that take only the files whose reports reached the driver."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import fsys, io, tables
from pipeline.commit import open_output
from pipeline.label import stage as label
from pipeline.label.config import LabelConfig
from pipeline.label.select import SKIPS, read_keys, read_rows, select
from pipeline.label.store import REPORT, batch_file, write_outcomes
from pipeline.manifest import run_direct
from pipeline.schema import LABEL_ERROR, STEP_LABEL, TRAJECTORY
from tests.label.helpers import http_critic, trajectory
from tests.label.test_openai_stage import unique_pairs

SELECT_DEFAULTS = {"unknown_outcome": "unresolved", "label_resolved": False, "retry_errors": True, "limit": None}


def write_groups(uri: str, groups: list[list[dict]]) -> str:
    """One file per element of `groups`, each of row groups of 2 rows."""
    for i, rows in enumerate(groups):
        fs, path = fsys.filesystem(fsys.join(uri, f"part-{i}.parquet"))
        fs.create_dir(str(Path(path).parent), recursive=True)
        pq.write_table(pa.Table.from_pylist(rows, schema=TRAJECTORY), path, row_group_size=2)
    return uri


key_rows = st.lists(st.tuples(st.sampled_from("abcdef"), st.sampled_from([True, False, None]),
                              st.sampled_from([0, 1, 3])), min_size=1, max_size=14)


@settings(max_examples=60, deadline=None)
@given(rows=key_rows, done=st.sets(st.sampled_from("abcdef")), errored=st.sets(st.sampled_from("abcdef")),
       retry=st.booleans(), limit=st.one_of(st.none(), st.integers(0, 4)))
def test_every_input_row_is_selected_or_skipped_once(rows, done, errored, retry, limit):
    keys = pa.table({"traj_id": [r[0] for r in rows], "resolved": [r[1] for r in rows],
                     "num_steps": pa.array([r[2] for r in rows], pa.int32()),
                     "file": pa.array([i % 2 for i in range(len(rows))], pa.int32()),
                     "row_group": pa.array([i // 4 for i in range(len(rows))], pa.int32()),
                     "row": pa.array(range(len(rows)), pa.int32())})
    s = select(keys, ["f0", "f1"], done=done, previous_errors=errored,
               **{**SELECT_DEFAULTS, "retry_errors": retry, "limit": limit})
    assert len(s.ids) + sum(s.skipped.values()) == len(rows) and set(s.skipped) <= set(SKIPS)
    assert len(set(s.ids)) == len(s.ids) and not set(s.ids) & done
    assert s.skipped["duplicate_in_input"] == len(rows) - len({r[0] for r in rows})
    first = {}
    for i, r in enumerate(rows):
        first.setdefault(r[0], i)
    named = sorted((f"f{i % 2}", i // 4, i) for i in (first[t] for t in s.ids))  # each id's first row only
    assert sorted((p["file"], p["row_group"], row) for p in s.reads for row in p["rows"]) == named


def test_read_rows_reads_the_first_copy_of_each_id_across_files_and_row_groups(tmp_path):
    # "a" twice in one row group, "b" in two row groups of one file, "c" in two files
    files = [[trajectory("a", 2), trajectory("a", 3), trajectory("b", 1), trajectory("c", 2), trajectory("b", 4)],
             [trajectory("c", 5), trajectory("d", 1)]]
    uri = write_groups(str(tmp_path / "traj"), files)
    keys, listed = read_keys(uri)
    assert keys.num_rows == 7 and keys["row_group"].to_pylist() == [0, 0, 1, 1, 2, 0, 0]
    s = select(keys, listed, done=set(), previous_errors=set(), **SELECT_DEFAULTS)
    assert s.ids == ["a", "b", "c", "d"] and s.skipped["duplicate_in_input"] == 3
    read = read_rows(pa.Table.from_pylist(s.reads))
    assert read["traj_id"].to_pylist() == ["a", "b", "c", "d"]
    assert read["num_steps"].to_pylist() == [2, 1, 2, 1]  # the first copies, not the later ones


def outcome(tid: str, steps: int | None, **kw) -> dict:
    verdicts = None if steps is None else [
        {"step": k, "label": "mistake" if k == 1 else "good", "confidence": 0.5, "reason": "r"} for k in range(steps)]
    return {"traj_id": tid, "verdicts": verdicts, "num_samples": 3, "prompt_tokens": 10, "completion_tokens": 5,
            "attempts": 1, "calls": 1, "trajectory_tokens": 8, "critic_prompt_tokens": 9,
            "error_reason": None if steps is not None else "bad_response", "error_detail": "d", **kw}


def test_write_outcomes_writes_one_file_per_batch_and_reports_counts_only(tmp_path):
    from pipeline.label.actor import OUTCOME

    batch = pa.Table.from_pylist([outcome("u", 3), outcome("v", 2), outcome("w", None)], schema=OUTCOME)
    kw = {"labels_uri": str(tmp_path / "v"), "errors_uri": str(tmp_path / "e"), "run_id": "r1",
          "critic_model": "m", "prompt_version": "p"}
    reports = write_outcomes(batch, **kw)
    assert reports.schema == REPORT and "label" not in REPORT.names and "reason" not in REPORT.names
    name = batch_file("r1", ["u", "v", "w"])
    labels = pq.read_table(tmp_path / "v" / name)
    errors = pq.read_table(tmp_path / "e" / name)
    assert labels.num_rows == 5 and errors["traj_id"].to_pylist() == ["w"]
    r = {row["traj_id"]: row for row in reports.to_pylist()}
    assert (r["u"]["n_good"], r["u"]["n_mistake"], r["u"]["file"]) == (2, 1, name)
    assert r["w"]["error_reason"] == "bad_response" and r["w"]["file"] == f"_errors/{name}"
    # a batch Ray re-runs (a lost node) writes the same file again, not a second copy
    write_outcomes(batch, **kw)
    assert sorted(p.name for p in (tmp_path / "v").iterdir()) == [name]


def test_a_verdict_that_does_not_fit_the_schema_becomes_an_error_row(tmp_path):
    """(Built without actor.OUTCOME, which would refuse the bad step before the writer sees it.)"""
    rows = [outcome("u", 2), outcome("x", 2)]
    rows[1]["verdicts"][1]["step"] = 2**40  # overflows int32: STEP_LABEL refuses it
    table = pa.table({k: [r[k] for r in rows] for k in rows[0]})
    reports = write_outcomes(table, labels_uri=str(tmp_path / "v"), errors_uri=str(tmp_path / "e"), run_id="r",
                             critic_model="m", prompt_version="p")
    r = {row["traj_id"]: row for row in reports.to_pylist()}
    assert r["u"]["error_reason"] is None and r["x"]["error_reason"] == "unwritable"
    assert pq.read_table(next((tmp_path / "e").iterdir()))["traj_id"].to_pylist() == ["x"]


def test_a_commit_takes_only_the_admitted_files(tmp_path):
    root = str(tmp_path / "out")
    rows = pa.Table.from_pylist([{"traj_id": "t", "step": 0, "label": "good", "confidence": 1.0, "reason": None,
                                  "critic_model": "m", "prompt_version": "p", "num_samples": 1, "run_id": "r",
                                  "prompt_tokens": 1, "completion_tokens": 1}], schema=STEP_LABEL)
    with open_output("label", root) as o:
        fsys.write_table(rows, fsys.join(o.uri, "part-reported.parquet"))
        fsys.write_table(rows, fsys.join(o.uri, "part-lost.parquet"))  # its task's report never came back
        o.admit = lambda logical: logical != "part-lost.parquet"
        m = o.commit("complete")
    assert list(m["commit"]["files"]) == ["part-reported.parquet"]
    assert io.read_table(root, STEP_LABEL).num_rows == 1 and tables.read(root).num_rows == 1


def test_duplicated_ids_are_labelled_once_and_the_driver_sees_reports_only(
        ray_session, qwen_tokenizer_path, critic_server, tmp_path, monkeypatch):
    files = [[trajectory("good.a", 2), trajectory("good.a", 2), trajectory("good.b", 3), trajectory("good.c", 1),
              trajectory("good.b", 3)], [trajectory("good.c", 1), trajectory("good.d", 2)]]
    inp = write_groups(str(tmp_path / "traj"), files)
    seen_by_driver = []
    real = label.critic_reports

    def spy(*a, **kw):
        for batch in real(*a, **kw):
            seen_by_driver.append(batch.schema)
            yield batch

    monkeypatch.setattr(label, "critic_reports", spy)
    out = str(tmp_path / "labels")
    cfg = LabelConfig(input=inp, output=out, critic=http_critic(critic_server, qwen_tokenizer_path, batch_size=2))
    s = run_direct(label.STAGE, cfg)
    assert s["trajectories_labelled"] == 4 and s["duplicate_in_input"] == 3 and s["trajectories_errored"] == 0
    t = io.read_table(out, STEP_LABEL)
    assert unique_pairs(t) and Counter(t["traj_id"].to_pylist()) == {"good.a": 2, "good.b": 3, "good.c": 1, "good.d": 2}
    assert s["rows_out"] == t.num_rows == 8
    assert seen_by_driver and all(schema == REPORT for schema in seen_by_driver)
    manifest = json.loads(Path(out, "_manifest.json").read_text())
    assert sorted(p for p in manifest["commit"]["files"] if p.endswith(".parquet")) == s["label_shards"]
    assert len(s["label_shards"]) == 2  # one file per critic batch of 2
    assert tables.read(out).num_rows == 8  # the Delta table names the same files
    assert io.read_table(fsys.join(out, "_errors"), LABEL_ERROR).num_rows == 0
