"""Ingest stage through Ray on real files: the shared SWE-smith / SWE-agent data, the project
sample, a corpus of every input known to have killed it, and an S3 round trip through a real
moto server. The plain-Python reader is fuzzed in test_read.py."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import fsys, io
from pipeline.errors import StageFailed, UserError
from pipeline.ingest.config import IngestConfig
from pipeline.ingest.stage import STAGE
from pipeline.manifest import run_direct
from pipeline.schema import QUARANTINE, TRAJECTORY
from pipeline.steps import split_steps
from tests.conftest import SAMPLE
from tests.ingest.corpus import write_corpus


def run(cfg: IngestConfig) -> dict:
    """The stage as its command runs it (run_direct: open, run and commit the output)."""
    return run_direct(STAGE, cfg)


def _ingest(tmp_path, **kw) -> tuple[dict, pa.Table, pa.Table]:
    out = str(tmp_path / "out")
    summary = run(IngestConfig(output=out, **kw))
    return summary, io.read_table(out, TRAJECTORY), io.read_table(fsys.join(out, "_quarantine"), QUARANTINE)


def test_real_shared_data(ray_session, shared_data, tmp_path):
    """The stage's own defaults (rows_per_shard, max_quarantine_fraction, ...) on the real files."""
    summary, traj, quarantine = _ingest(
        tmp_path, input=str(shared_data), resolution=str(shared_data / "swe-smith" / "run_evaluation")
    )
    assert summary["rows_in"] == 7 and summary["rows_out"] == 7 and quarantine.num_rows == 0
    assert summary["files_in"] == 5 and summary["files_failed"] == 0 and summary["files_without_rows"] == 0
    assert summary["files_skipped"] == {"unsupported suffix": 6}  # README.md and the .json reports
    assert summary["resolution"]["files"] == 5 and summary["resolution"]["unusable"] == 0
    assert summary["resolution"]["instances"] == 53
    # Tool schemas: the fc .traj with a replay_config carries SWE-agent's command_docs; the
    # simple demo has no config at all, so it is counted as missing.
    assert summary["tools_present"] == 1 and summary["tools_missing"] == 1
    rows = {r["source"].rsplit("/", 1)[-1] + ":" + str(r["instance_id"]): r for r in traj.to_pylist()}

    smith = sorted((r for r in rows.values() if r["source_format"] == "xml"), key=lambda r: r["num_steps"])
    assert [r["num_steps"] for r in smith] == [22, 37, 44]
    assert all(r["resolved"] is True for r in smith)  # all three are in ids_resolved / report.json
    longest = max(len(m["content"]) for r in smith for m in r["messages"])
    assert longest > 100_000  # the 100k-character observation is kept whole

    for f in sorted((shared_data / "swe-agent").glob("*.traj")):
        doc = json.loads(f.read_text())
        row = next(r for r in traj.to_pylist() if r["source"].endswith(f.name))
        history_assistant = sum(1 for m in doc["history"] if m["role"] == "assistant")
        assert row["num_steps"] == history_assistant
        assert row["num_messages"] == len(doc["history"])
        assert row["resolved"] is None  # no report covers these instances
        prompt, steps = split_steps(row["messages"])
        assert len(steps) == row["num_steps"]
        # Demonstrations are prompt, never steps.
        demo_at = [i for i, m in enumerate(doc["history"]) if m.get("is_demo")]
        assert all(i in prompt for i in demo_at)
        expected = "swe_agent_fc" if f.name.startswith("function_calling") else "swe_agent_text"
        assert row["source_format"] == expected
        # The closing submit present only in `trajectory` is recorded, not invented as a step.
        extra = len(doc.get("trajectory") or []) - history_assistant
        assert (row["unrecorded_final_action"] is not None) == (extra > 0)
    fc = next(r for r in traj.to_pylist() if r["source"].endswith("function_calling__sweagenttestrepo-1c2844.traj"))
    assert fc["unrecorded_final_action"] == "submit"
    assert fc["instance_id"] == "SWE-agent__test-repo-i1"
    tool_calls = [json.loads(m["tool_calls"]) for m in fc["messages"] if m["tool_calls"]]
    assert tool_calls and tool_calls[0][0]["function"]["name"] == "find_file"
    tools = json.loads(fc["tools"])
    names = [t["function"]["name"] for t in tools]
    assert names == ["bash", "goto", "open", "create", "scroll_up", "scroll_down", "find_file", "search_dir",
                     "search_file", "edit", "insert", "submit"]
    # Every call the agent made names a tool with exactly the arguments its schema declares.
    by_name = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    for call in (c for calls in tool_calls for c in calls):
        params = by_name[call["function"]["name"]]
        args = json.loads(call["function"]["arguments"])
        assert set(params["required"]) <= set(args) <= set(params["properties"])
    assert by_name["find_file"]["properties"]["dir"]["type"] == "string"
    assert by_name["scroll_up"] == {"type": "object"}  # SWE-agent's schema for a command without arguments
    assert all(r["tools"] is None for r in traj.to_pylist() if r["source_format"] != "swe_agent_fc")
    demo = next(r for r in traj.to_pylist() if r["source"].endswith("function_calling__simple_demo.traj"))
    assert demo["tools"] is None


def test_sample_covers_every_style(ray_session, tmp_path):
    summary, traj, _ = _ingest(tmp_path, input=str(SAMPLE / "trajectories"), resolution=str(SAMPLE / "reports"))
    by_instance = {r["instance_id"]: r for r in traj.to_pylist()}
    assert {r["source_format"] for r in by_instance.values()} == {
        "xml", "tool", "ticks", "swe_agent_fc", "swe_agent_text"
    }
    # resolved from a string report, a bool report, a summary, and the row's own column.
    assert by_instance["sample__pager-1"]["resolved"] is False
    assert by_instance["sample__textkit-2"]["resolved"] is True
    assert by_instance["sample__retry-5"]["resolved"] is False
    assert by_instance["sample__dates-6"]["resolved"] is True
    assert by_instance["sample__memo-4"]["resolved"] is False
    assert by_instance["sample__confy-3"]["resolved"] is False
    assert by_instance["sample__confy-3"]["traj_id"] == "sample-confy-3-run0"  # given ids are kept
    # {type, text} content blocks became plain text.
    assert all(isinstance(m["content"], str) for r in by_instance.values() for m in r["messages"])
    assert summary["by_format_and_resolution"]["xml/unresolved"] == 1


def _bad_corpus(root: Path) -> None:
    """Writes 15 input rows: 4 usable (one with a 10 MB observation) and 11 bad ones."""
    good = {"instance_id": "x__y-1", "messages": [
        {"role": "system", "content": "sys"}, {"role": "user", "content": "task"},
        {"role": "assistant", "content": "look"}, {"role": "user", "content": "OBSERVATION:\nok"},
    ]}
    huge = {"instance_id": "x__huge", "messages": good["messages"][:3] + [
        {"role": "user", "content": "OBSERVATION:\n" + "x" * 10_000_000}]}
    lines = [
        json.dumps(good).encode(),
        json.dumps(good)[:40].encode(),  # truncated JSON
        json.dumps({"messages": 42}).encode(),  # wrong type for messages
        json.dumps({"messages": json.dumps(good["messages"])[:-5]}).encode(),  # messages string, bad JSON
        json.dumps({"messages": good["messages"][:2]}).encode(),  # no assistant message
        json.dumps({"messages": good["messages"] + [{"role": "critic", "content": "?"}]}).encode(),
        json.dumps({"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": " "}]}).encode(),
        b'{"messages": [{"role": "assistant", "content": "caf\xe9"}]}',  # invalid UTF-8 (latin-1 byte)
        json.dumps(huge).encode(),  # a 10 MB observation is valid: kept
        json.dumps(good).encode(),  # same content -> same derived traj_id: duplicate
        json.dumps({**good, "traj_id": "given-1"}).encode(),
        json.dumps({**good, "traj_id": "given-1", "instance_id": "other"}).encode(),  # duplicate given id
    ]
    (root / "rows.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    (root / "broken.traj").write_text('{"history": [{"role": "assistant", "content": "hi"}')
    pq.write_table(pa.table({"messages": [json.dumps(good["messages"]), "not json"],
                             "instance_id": ["p__1", "p__2"]}), root / "rows.parquet")


def test_bad_inputs_are_quarantined_with_reasons(ray_session, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    _bad_corpus(corpus)
    summary, traj, quarantine = _ingest(tmp_path, input=str(corpus), max_quarantine_fraction=1.0)

    assert summary["rows_in"] == 15
    assert summary["rows_in"] == summary["rows_out"] + summary["rows_quarantined"]
    assert traj.num_rows == summary["rows_out"] and quarantine.num_rows == summary["rows_quarantined"]
    reasons = summary["quarantined_by_reason"]
    assert reasons == {
        "duplicate_traj_id": 2,  # line 10 repeats line 1; line 12 repeats given-1
        "empty_content": 1,
        "invalid_json": 4,  # truncated line, messages string, parquet "not json", broken .traj
        "bad_messages_type": 1,
        "no_assistant_message": 1,
        "invalid_utf8": 1,
        "unknown_role": 1,
    }
    # Good rows: the first `good`, the 10 MB one, given-1 (first occurrence), parquet row 0.
    assert traj.num_rows == 4
    assert max(len(m["content"]) for r in traj.to_pylist() for m in r["messages"]) > 10_000_000
    given = [r for r in traj.to_pylist() if r["traj_id"] == "given-1"]
    assert len(given) == 1 and given[0]["instance_id"] == "x__y-1"  # first occurrence wins

    by_location = {(r["source"].rsplit("/", 1)[-1], r["location"]): r for r in quarantine.to_pylist()}
    assert by_location[("rows.jsonl", "line 2")]["reason"] == "invalid_json"
    assert by_location[("rows.jsonl", "line 6")]["reason"] == "unknown_role"
    assert "'critic'" in by_location[("rows.jsonl", "line 6")]["detail"]
    assert by_location[("rows.jsonl", "line 8")]["reason"] == "invalid_utf8"
    assert by_location[("rows.jsonl", "line 10")]["reason"] == "duplicate_traj_id"
    assert by_location[("rows.parquet", "row 1")]["reason"] == "invalid_json"
    assert by_location[("broken.traj", "file")]["reason"] == "invalid_json"
    assert all(r["detail"].startswith(r["source"]) for r in quarantine.to_pylist())


def test_every_known_killer_is_quarantined_and_the_rest_ingested(ray_session, tmp_path):
    """The whole bad-input corpus through Ray: the stage exits normally, every good row comes
    out, every bad one is quarantined with its file, place and reason, and the counts add up."""
    corpus = write_corpus(tmp_path / "in", reports=tmp_path / "reports")
    summary, traj, quarantine = _ingest(
        tmp_path, input=str(tmp_path / "in"), resolution=str(tmp_path / "reports"), max_quarantine_fraction=1.0
    )
    assert summary["rows_in"] == corpus.rows_in == summary["rows_out"] + summary["rows_quarantined"]
    assert traj.num_rows == summary["rows_out"] and quarantine.num_rows == summary["rows_quarantined"]

    def name(r: dict) -> str:
        return r["source"].rsplit("/", 1)[-1]

    assert sorted((name(r), r["instance_id"]) for r in traj.to_pylist()) == sorted(corpus.good_ids)
    assert {(name(r), r["location"]): r["reason"] for r in quarantine.to_pylist()} == corpus.bad
    for r in quarantine.to_pylist():  # the detail names the file and the line, row or "file"
        assert r["detail"].startswith(f"{r['source']} {r['location']}: ") and len(r["detail"]) > len(r["source"]) + 12

    assert summary["files_in"] == 18 and summary["files_without_rows"] == corpus.empty_files
    assert summary["files_failed"] == 3  # corrupt, empty and truncated Parquet
    rows = {r["instance_id"]: r for r in traj.to_pylist()}
    assert {i: rows[i]["resolved"] for i in corpus.resolved} == corpus.resolved
    assert rows["ts-1"]["resolved"] is None  # its report says `null`: unknown, not a guess
    assert summary["resolution"]["files"] == corpus.report_files
    assert summary["resolution"]["unusable_by_reason"] == corpus.unusable_reports
    assert {i: rows[i]["tools"] is not None for i in corpus.tools} == corpus.tools
    assert summary["tools_missing"] == 2 and summary["tools_missing_by_format"] == {"tool": 1, "swe_agent_fc": 1}
    fc = json.loads(rows["fc-ok"]["tools"])
    assert [t["function"]["name"] for t in fc] == ["bash", "find_file", "submit"]
    assert fc[1]["function"]["parameters"]["required"] == ["file_name"]


def test_input_of_only_empty_files_fails_honestly(ray_session, tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl").write_bytes(b"")
    (tmp_path / "in" / "b.jsonl").write_bytes(b"\n\n")
    cfg = IngestConfig(input=str(tmp_path / "in"), output=str(tmp_path / "out"))
    with pytest.raises(StageFailed, match="no trajectory from 2 files"):
        run(cfg)
    summary = run(IngestConfig(input=str(tmp_path / "in"), output=str(tmp_path / "out2"), allow_empty=True))
    assert summary["rows_in"] == 0 and summary["files_without_rows"] == 2
    assert io.read_table(str(tmp_path / "out2"), TRAJECTORY).num_rows == 0


def test_mostly_quarantined_input_fails_after_writing(ray_session, tmp_path):
    (tmp_path / "in").mkdir()
    good = {"messages": [{"role": "user", "content": "t"}, {"role": "assistant", "content": "a"}]}
    (tmp_path / "in" / "a.jsonl").write_text(json.dumps(good) + "\nnot json\nnot json either\n")
    with pytest.raises(StageFailed, match="quarantined 2 of 3 rows"):
        run(IngestConfig(input=str(tmp_path / "in"), output=str(tmp_path / "out")))
    assert io.read_table(str(tmp_path / "out"), TRAJECTORY).num_rows == 1  # what was good is kept


def test_missing_input_is_a_short_user_error(tmp_path):
    with pytest.raises(UserError, match="does-not-exist"):
        run(IngestConfig(input=str(tmp_path / "does-not-exist"), output=str(tmp_path / "out")))
    with pytest.raises(UserError, match="^resolution="):
        run(IngestConfig(input=str(SAMPLE / "trajectories"), resolution=str(tmp_path / "nope"),
                         output=str(tmp_path / "out")))


@pytest.mark.parametrize("key, value", [
    ("rows_per_shard", 0), ("rows_per_shard", -3), ("max_quarantine_fraction", 1.5),
    ("max_quarantine_fraction", -0.1), ("input", ""), ("resolution", " "),
])
def test_bad_settings_name_their_key(key, value):
    cfg = IngestConfig(**{"input": "in", "output": "out", key: value})
    with pytest.raises(UserError, match=f"^{key} "):
        cfg.validate()
    IngestConfig(input="in", output="out").validate()


def test_rerun_replaces_output_and_leaves_no_staging(ray_session, tmp_path):
    kw = {"input": str(SAMPLE / "trajectories"), "resolution": str(SAMPLE / "reports")}
    _ingest(tmp_path, **kw)
    summary, traj, _ = _ingest(tmp_path, **kw)
    assert traj.num_rows == summary["rows_out"] == 6
    assert not list((tmp_path / "out").glob("_staging-*"))
    assert json.loads(io.read_bytes(str(tmp_path / "out" / "_summary.json"))) == summary


def test_s3_round_trip(ray_session, s3_bucket, tmp_path):
    for f in sorted((SAMPLE / "trajectories").rglob("*")) + sorted((SAMPLE / "reports").rglob("*")):
        if f.is_file():
            fsys.write_bytes(fsys.join(s3_bucket, "in", str(f.relative_to(SAMPLE))), f.read_bytes())
    out = fsys.join(s3_bucket, "ingested")
    summary = run(IngestConfig(
        input=fsys.join(s3_bucket, "in", "trajectories"), resolution=fsys.join(s3_bucket, "in", "reports"), output=out
    ))
    traj = io.read_table(out, TRAJECTORY)
    assert summary["rows_out"] == traj.num_rows == 6
    assert all(r["source"].startswith(s3_bucket + "/in/") for r in traj.to_pylist())
    assert {r["instance_id"]: r["resolved"] for r in traj.to_pylist()}["sample__textkit-2"] is True
    assert io.exists(fsys.join(out, "_summary.json"))
