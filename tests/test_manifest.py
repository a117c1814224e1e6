"""run_stage: skip when complete for the same inputs and config, force, secrets never written,
commit semantics (failed runs, StageFailed, empty outputs), and checks on inputs."""

import json
import os
from dataclasses import dataclass

import pytest

from pipeline import fsys, io, record
from pipeline.errors import StageFailed, UserError
from pipeline.manifest import fingerprint, run_stage
from pipeline.record import MANIFEST, Input


@dataclass
class Cfg:
    output: str
    n: int = 1
    api_key: str = "sk-live-123"
    allow_empty: bool = False


def _stage(calls):
    def fn(cfg, out):
        calls.append(cfg.n)
        fsys.write_bytes(fsys.join(out.uri, "part-0.txt"), b"x" * cfg.n)
        return {"rows_in": cfg.n, "rows_out": cfg.n}
    return fn


@pytest.mark.parametrize("where", ["local", "s3"])
def test_skip_force_and_invalidation(tmp_path, where, request):
    root = request.getfixturevalue("s3_bucket") if where == "s3" else str(tmp_path)
    inp = fsys.join(root, "in.txt")
    fsys.write_bytes(inp, b"input")
    calls = []
    cfg = Cfg(output=fsys.join(root, "out"))
    m1 = run_stage("demo", cfg, {"input": inp}, cfg.output, _stage(calls))
    assert not m1["skipped"] and m1["rows_out"] == 1 and m1["status"] == "complete"
    assert run_stage("demo", cfg, {"input": inp}, cfg.output, _stage(calls))["skipped"]
    assert calls == [1]
    assert not run_stage("demo", cfg, {"input": inp}, cfg.output, _stage(calls), force=True)["skipped"]
    assert calls == [1, 1]
    cfg.n = 2  # config changed -> runs
    assert not run_stage("demo", cfg, {"input": inp}, cfg.output, _stage(calls))["skipped"]
    fsys.write_bytes(inp, b"changed input")  # input changed -> runs
    assert not run_stage("demo", cfg, {"input": inp}, cfg.output, _stage(calls))["skipped"]
    assert calls == [1, 1, 2, 2]
    assert io.read_bytes(fsys.join(cfg.output, "part-0.txt")) == b"xx"  # the committed file, via the record

    text = io.read_bytes(fsys.join(cfg.output, MANIFEST)).decode()
    assert "sk-live-123" not in text
    m = json.loads(text)
    assert m["config"]["api_key"] == "<redacted>" and m["inputs"] == {"input": inp}
    assert m["code_version"] and m["started_at"] <= m["finished_at"]
    assert list(m["commit"]["files"]) == ["part-0.txt"]


def test_failed_rerun_keeps_the_previous_output(tmp_path):
    cfg = Cfg(output=str(tmp_path / "out"))
    run_stage("demo", cfg, {}, cfg.output, _stage([]))
    before = record.read_commit(cfg.output)

    def boom(cfg, out):
        fsys.write_bytes(fsys.join(out.uri, "part-0.txt"), b"half")
        raise RuntimeError("killed mid-stage")

    with pytest.raises(RuntimeError):
        run_stage("demo", cfg, {}, cfg.output, boom, force=True)
    after = record.read_commit(cfg.output)
    assert after.manifest == before.manifest and after.status == "complete"
    assert io.read_bytes(fsys.join(cfg.output, "part-0.txt")) == b"x"
    leftovers = [n for n in os.listdir(cfg.output) if n.startswith("_v-") and n != before.version]
    assert len(leftovers) == 1  # the failed run's version, until the next run cleans it
    run_stage("demo", cfg, {}, cfg.output, _stage([]), force=True)
    assert leftovers[0] not in os.listdir(cfg.output)
    assert "_lock.json" not in os.listdir(cfg.output)


def test_stage_failed_commits_what_it_wrote_and_downstream_refuses_it(tmp_path):
    cfg = Cfg(output=str(tmp_path / "out"))

    def mostly_errors(cfg, out):
        fsys.write_bytes(fsys.join(out.uri, "part-0.txt"), b"some")
        raise StageFailed("9 of 10 rows errored")

    with pytest.raises(StageFailed, match="9 of 10"):
        run_stage("demo", cfg, {}, cfg.output, mostly_errors)
    c = record.read_commit(cfg.output)
    assert c.status == "failed" and c.reason == "9 of 10 rows errored" and list(c.files) == ["part-0.txt"]
    with pytest.raises(UserError, match="re-run demo"):
        run_stage("next", Cfg(output=str(tmp_path / "next")), {"input": cfg.output}, str(tmp_path / "next"),
                  _stage([]))
    assert not (tmp_path / "next").exists()


def test_rows_in_but_none_out_fails_unless_allowed(tmp_path):
    def nothing(cfg, out):
        return {"rows_in": 5, "rows_out": 0}

    cfg = Cfg(output=str(tmp_path / "out"))
    with pytest.raises(StageFailed, match="read 5 rows and wrote none"):
        run_stage("demo", cfg, {}, cfg.output, nothing)
    assert record.read_commit(cfg.output).status == "failed"
    cfg.allow_empty = True
    assert run_stage("demo", cfg, {}, cfg.output, nothing, force=True)["status"] == "complete"


def test_input_with_traces_but_no_record_is_refused(tmp_path):
    up = tmp_path / "up"
    (up / "_v-build-20260101T000000-abcdef").mkdir(parents=True)
    (up / "_v-build-20260101T000000-abcdef" / "part-0.parquet").write_bytes(b"PAR1")
    with pytest.raises(UserError, match="re-run build"):
        run_stage("demo", Cfg(output=str(tmp_path / "out")), {"rows": str(up)}, str(tmp_path / "out"), _stage([]))
    with pytest.raises(UserError, match="re-run build"):
        io.list_files(str(up), (".parquet",))


def test_fingerprint_ignores_locks_and_old_versions(tmp_path):
    cfg = Cfg(output=str(tmp_path / "up"))
    run_stage("demo", cfg, {}, cfg.output, _stage([]))
    fp = fingerprint({"up": Input.of(cfg.output)})
    (tmp_path / "up" / "_lock.json").write_text("{}")
    (tmp_path / "up" / "_v-demo-killed").mkdir()
    (tmp_path / "up" / "_v-demo-killed" / "part-9.txt").write_text("x")
    assert fingerprint({"up": Input.of(cfg.output)}) == fp
    (tmp_path / "up" / "_lock.json").unlink()
    run_stage("demo", cfg, {}, cfg.output, _stage([]), force=True)
    assert fingerprint({"up": Input.of(cfg.output)}) != fp  # a new commit is a new input


def test_each_input_is_located_once_and_read_as_fingerprinted(tmp_path, monkeypatch):
    """run_stage locates each input once and hands that to the stage (out.inputs): the stage's
    reads do not walk the storage again, and an input re-committed while the stage runs does not
    change what the stage reads, so the manifest's fingerprint names the files it read."""
    up = Cfg(output=str(tmp_path / "up"), n=1)
    run_stage("up", up, {}, up.output, _stage([]))  # committed: part-0.txt = b"x"
    located = []
    real_locate = record.locate
    monkeypatch.setattr(record, "locate", lambda uri: located.append(uri) or real_locate(uri))
    seen = {}

    def downstream(cfg, out):
        seen["located_before_reads"] = located.count(up.output)
        # the upstream is re-committed (part-0.txt = b"xxx") while this stage runs
        run_stage("up", Cfg(output=up.output, n=3), {}, up.output, _stage([]), force=True)
        before = located.count(up.output)
        files = io.list_files(out.inputs["rows"], (".txt",))
        seen["bytes"] = [fsys.read_bytes(f) for f in files]
        seen["located_by_reads"] = located.count(up.output) - before
        return {"rows_in": 1, "rows_out": 1}

    down = Cfg(output=str(tmp_path / "down"))
    m = run_stage("down", down, {"rows": up.output}, down.output, downstream)
    assert seen == {"located_before_reads": 1, "located_by_reads": 0, "bytes": [b"x"]}
    assert m["status"] == "complete"
    assert io.read_bytes(fsys.join(up.output, "part-0.txt")) == b"xxx"  # the new commit is there for the next run


def test_a_run_refused_by_its_stage_leaves_no_trace(tmp_path):
    def refuse(cfg, out):
        raise UserError("input holds no files")

    cfg = Cfg(output=str(tmp_path / "out"))
    with pytest.raises(UserError):
        run_stage("demo", cfg, {}, cfg.output, refuse)
    assert not (tmp_path / "out").exists()
    (tmp_path / "empty").mkdir()  # a folder the user made stays
    with pytest.raises(UserError):
        run_stage("demo", cfg, {}, str(tmp_path / "empty"), refuse)
    assert (tmp_path / "empty").exists() and not os.listdir(tmp_path / "empty")
