"""The plain-Python reader (no Ray): every known killer, evaluation reports of every bad shape,
SWE-agent tool schemas, and a property-based fuzz over JSONL lines, Parquet rows and .traj
documents of arbitrary shape: reading never raises and every row is accounted for."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from pipeline import io
from pipeline.ingest.normalize import normalize_messages
from pipeline.ingest.read import (
    FILE_REASONS,
    RECORD,
    SUFFIXES,
    quarantined,
    read_file,
    read_file_batches,
    trajectories,
)
from pipeline.ingest.resolution import read_resolution
from pipeline.ingest.tools import BadTools, normalize_tools, tools_from_command_docs
from pipeline.schema import TRAJECTORY
from tests.ingest.corpus import COMMAND_DOCS, write_corpus


def _read_all(root: Path, resolution: dict[str, bool]) -> list[dict]:
    return [r for f in io.list_files(str(root), SUFFIXES) for r in read_file(f, resolution)]


def test_corpus_every_row_accounted_for(tmp_path):
    corpus = write_corpus(tmp_path / "in", reports=tmp_path / "reports")
    resolution, report = read_resolution(str(tmp_path / "reports"))
    records = _read_all(tmp_path / "in", resolution)

    def where(r: dict) -> tuple[str, str]:
        return r["source"].rsplit("/", 1)[-1], r["location"]

    assert {where(r) for r in records if r.get("quarantine_reason") is None} == corpus.good
    assert {where(r): r["quarantine_reason"] for r in records if r.get("quarantine_reason")} == corpus.bad
    assert len(records) == corpus.rows_in
    for r in records:
        if r.get("quarantine_reason"):
            assert r["quarantine_detail"].startswith(f"{r['source']} {r['location']}: ")
    assert resolution == corpus.resolved
    assert dict(report.unusable) == corpus.unusable_reports and report.files == corpus.report_files


def test_file_failing_part_way_keeps_the_rows_read(tmp_path):
    """A Parquet file whose middle row group does not decode: the other groups' rows are kept,
    and each row of the broken group is quarantined at its place."""
    messages = json.dumps([{"role": "user", "content": "t"}, {"role": "assistant", "content": "a"}])
    table = pa.table({"instance_id": [f"i-{n}" for n in range(6)], "messages": [messages] * 6})
    path = tmp_path / "two_groups.parquet"
    pq.write_table(table, path, row_group_size=2, compression="snappy")
    meta = pq.ParquetFile(path).metadata
    start = meta.row_group(1).column(1).data_page_offset
    data = bytearray(path.read_bytes())
    data[start:start + 40] = b"\xff" * 40  # break the second group's `messages` page header
    path.write_bytes(bytes(data))

    records = list(read_file(str(path), {}))
    assert [r["location"] for r in records] == [f"row {n}" for n in range(6)]
    assert [r.get("quarantine_reason") for r in records] == [None, None, "unreadable_parquet",
                                                             "unreadable_parquet", None, None]
    assert "row group 1 does not decode" in records[2]["quarantine_detail"]


def test_file_name_that_is_not_unicode_is_quarantined():
    records = list(read_file("/data/bad\udcff.jsonl", {}))
    assert len(records) == 1 and records[0]["quarantine_reason"] == "undecodable_file_name"
    pa.Table.from_pylist(records, schema=RECORD)  # storable


def test_command_docs_become_swe_agent_tool_schemas():
    tools = tools_from_command_docs(COMMAND_DOCS + "edit:\n  docstring: Replace text.\nExample:\n  more\n\n"
                                    "  signature: edit <search>\n\n  arguments:\n"
                                    "    - search (string) [required]: what to find\n      across lines\n")
    assert [t["function"]["name"] for t in tools] == ["bash", "find_file", "submit", "edit"]
    find = tools[1]["function"]
    assert find["parameters"] == {"type": "object", "required": ["file_name"], "properties": {
        "file_name": {"type": "string", "description": "the name of the file to search for"},
        "dir": {"type": "string", "description": "the directory to search in"}}}
    assert tools[2]["function"]["parameters"] == {"type": "object"}
    edit = tools[3]["function"]
    assert edit["description"] == "Replace text.\nExample:\n  more"  # "Example:" is no command
    assert edit["parameters"]["properties"]["search"]["description"] == "what to find\n      across lines"
    # Bare function schemas are wrapped; junk is refused.
    wrapped = json.loads(normalize_tools([{"name": "f", "parameters": {}}], "tools"))
    assert wrapped == [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    assert normalize_tools([], "tools") is None and normalize_tools("", "tools") is None
    for junk in ([5], [{"function": {}}], [{"type": "function", "function": {"name": ""}}], {"name": "f"}, "[1"):
        with pytest.raises(BadTools):
            normalize_tools(junk, "tools")


def test_tool_schemas_and_calls_keep_the_source_key_order():
    """The template renders both as JSON text, so their key order is part of what the model saw:
    ingest must not sort it (inference renders the agent's own order)."""
    tools = [{"type": "function", "function": {"name": "edit", "description": "Edit a file.", "parameters": {
        "type": "object", "properties": {"path": {"type": "string"}, "old": {"type": "string"}}, "required": ["path"]}}}]
    assert normalize_tools(tools, "tools") == json.dumps(tools)
    assert normalize_tools(json.dumps(tools), "tools") == json.dumps(tools)
    call = {"id": "c1", "type": "function", "function": {"name": "edit", "arguments": {"path": "a.py", "old": "x"}}}
    (message,) = normalize_messages([{"role": "assistant", "content": "", "tool_calls": [call]}])
    assert message["tool_calls"] == json.dumps([call])


# ---------------------------------------------------------------------------------------------
# Fuzz: arbitrary shapes, with the known troublemakers mixed into the alphabet of values.

TEXT = st.one_of(
    st.text(max_size=20),
    st.sampled_from(["\ud800", "a\udfffb", "", " ", "True", "yes", "assistant", "tool", "<function=x>"]),
)
SCALAR = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), TEXT,
    st.just(int("9" * 80)),  # beyond int64
)
JSON = st.recursive(SCALAR, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(TEXT, inner, max_size=4)), max_leaves=12)
ROLE = st.one_of(st.sampled_from(["system", "user", "assistant", "tool"]), JSON)
CALL = st.just([{"id": "c", "type": "function", "function": {"name": "bash", "arguments": "{}"}}])
TOOL_CALLS = st.one_of(st.none(), CALL, CALL, JSON)
CLEAN = st.text(max_size=20)
ODD = st.one_of(CLEAN, CLEAN, CLEAN, TEXT)  # mostly fine, sometimes a troublemaker
CONTENT = st.one_of(TEXT, JSON, st.lists(st.one_of(TEXT, st.fixed_dictionaries(
    {"type": st.just("text"), "text": TEXT})), max_size=3))
# Mostly well-formed messages with odd values, so that fuzzing reaches past the first check.
WELL_FORMED = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant", "tool"]), "content": ODD},
    optional={"tool_calls": TOOL_CALLS, "is_demo": st.booleans()},
)
MESSAGE = st.one_of(WELL_FORMED, WELL_FORMED, WELL_FORMED, JSON, st.fixed_dictionaries(
    {"role": ROLE}, optional={"content": CONTENT, "tool_calls": TOOL_CALLS, "is_demo": st.booleans()}))
CONVERSATION = st.one_of(  # ends with an assistant turn, as trajectories do
    st.lists(MESSAGE, min_size=1, max_size=6).map(lambda m: [*m, {"role": "assistant", "content": "a"}]),
    st.lists(WELL_FORMED, min_size=1, max_size=6).map(lambda m: [*m, {"role": "assistant", "content": "a"}]),
)
MESSAGES = st.one_of(CONVERSATION, CONVERSATION, st.lists(MESSAGE, max_size=6), JSON)
TOOLS = st.one_of(st.none(), st.none(), JSON, st.just([{"type": "function", "function": {"name": "bash"}}]), st.just("[]"))
FIELD = st.one_of(st.none(), CLEAN, CLEAN, TEXT, JSON)
ROW = st.one_of(JSON, *[st.fixed_dictionaries(
    {"messages": st.one_of(MESSAGES, MESSAGES.map(lambda m: json.dumps(m)))},
    optional={k: FIELD for k in ("instance_id", "model", "traj_id", "patch")}
    | {"resolved": st.one_of(st.booleans(), st.booleans(), FIELD), "tools": TOOLS},
)] * 3)
def mostly(strategy, junk=JSON):
    """`strategy` three times in four, else junk of any shape."""
    return st.one_of(strategy, strategy, strategy, junk)


TRAJ = st.fixed_dictionaries(
    {"history": st.one_of(CONVERSATION, CONVERSATION, MESSAGES)},
    optional={
        "trajectory": mostly(st.lists(st.dictionaries(st.just("action"), FIELD), max_size=4)),
        "info": mostly(st.fixed_dictionaries({}, optional={"submission": FIELD, "exit_status": FIELD})),
        "replay_config": mostly(st.fixed_dictionaries({}, optional={
            "problem_statement": mostly(st.fixed_dictionaries({}, optional={"id": FIELD})),
            "agent": mostly(st.fixed_dictionaries({}, optional={
                "model": mostly(st.fixed_dictionaries({}, optional={"name": FIELD})),
                "tools": mostly(st.fixed_dictionaries({}, optional={
                    "command_docs": st.one_of(JSON, st.just(COMMAND_DOCS), TEXT.map(lambda t: "x:\n  docstring: " + t)),
                })),
            })),
        })).flatmap(lambda rc: st.sampled_from([rc, json.dumps(rc)])),
        "tools": TOOLS,
    },
)


def _dumps(value) -> bytes:
    """JSON bytes as a careless writer would produce them: surrogates escaped, ints unbounded."""
    return json.dumps(value, ensure_ascii=True).encode()


LINE = st.one_of(
    ROW.map(_dumps),
    st.binary(max_size=40),
    st.integers(1, 3000).map(lambda n: b'{"messages": ' + b"[" * n + b"]" * n + b"}"),
    st.just(b'{"messages": [], "n": ' + b"1" * 5000 + b"}"),
)

FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _check(uri: str, records: list[dict], rows_in: int) -> None:
    """The properties: one record per input row, each either a valid trajectory or a quarantine
    row naming file, place and a row's reason (these files are readable: no failure may take the
    whole file), and all of them storable as Arrow."""
    assert len(records) == rows_in
    event("a trajectory came out" if any(r.get("quarantine_reason") is None for r in records) else "all quarantined")
    for reason in {r.get("quarantine_reason") for r in records} - {None}:
        event(f"quarantined: {reason}")
    for r in records:
        if r.get("quarantine_reason") is None:
            assert r["messages"] and r["num_steps"] >= 1 and r["traj_id"] and r["source"] == uri
            tools = json.loads(r["tools"]) if r["tools"] is not None else []
            assert all(isinstance(t["function"]["name"], str) for t in tools)
        else:
            assert r["quarantine_detail"].startswith(f"{r['source']} {r['location']}: ")
            assert r["quarantine_reason"] not in FILE_REASONS, r["quarantine_detail"]
    table = pa.Table.from_pylist(records, schema=RECORD)
    assert trajectories(table).num_rows + quarantined(table).num_rows == rows_in
    trajectories(table).cast(TRAJECTORY)
    batches = list(read_file_batches(uri, {}))
    assert sum(b.num_rows for b in batches) == rows_in


@FUZZ
@given(st.lists(LINE, max_size=8))
def test_fuzz_jsonl(lines):
    with tempfile.TemporaryDirectory() as d:
        uri = str(Path(d) / "rows.jsonl")
        Path(uri).write_bytes(b"\n".join(lines))
        rows_in = sum(1 for line in b"\n".join(lines).split(b"\n") if line.strip())
        _check(uri, list(read_file(uri, {})), rows_in)


@FUZZ
@given(st.one_of(TRAJ, TRAJ, TRAJ, JSON).map(_dumps))
def test_fuzz_traj(doc):
    with tempfile.TemporaryDirectory() as d:
        uri = str(Path(d) / "run.traj")
        Path(uri).write_bytes(doc)
        _check(uri, list(read_file(uri, {})), 1)


COLUMN = st.sampled_from([
    (pa.string(), st.one_of(st.none(), TEXT.filter(lambda t: _utf8(t)), MESSAGES.map(lambda m: json.dumps(m)))),
    (pa.int64(), st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1))),
    (pa.bool_(), st.one_of(st.none(), st.booleans())),
    (pa.timestamp("ms"), st.one_of(st.none(), st.integers(-(2**62), 2**62))),
    (pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())])),
     st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "x"]),
                                     "content": TEXT.filter(lambda t: _utf8(t))}), max_size=3)),
])


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


MESSAGES_COLUMN = st.one_of(st.just((pa.string(), MESSAGES.map(json.dumps))), COLUMN)


@FUZZ
@given(
    st.dictionaries(st.sampled_from(["instance_id", "resolved", "model", "tools", "created_at"]), COLUMN, max_size=3),
    st.one_of(st.none(), MESSAGES_COLUMN, MESSAGES_COLUMN),
    st.integers(0, 6),
    st.data(),
)
def test_fuzz_parquet(columns, messages, rows, data):
    if messages is not None:
        columns = {**columns, "messages": messages}
    columns = columns or {"model": (pa.string(), CLEAN)}  # a file needs a column
    arrays = {name: pa.array([data.draw(values) for _ in range(rows)], type)
              for name, (type, values) in columns.items()}
    with tempfile.TemporaryDirectory() as d:
        uri = str(Path(d) / "rows.parquet")
        pq.write_table(pa.table(arrays), uri, row_group_size=3)
        _check(uri, list(read_file(uri, {})), rows)
