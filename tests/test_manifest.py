"""Manifests: skip when complete for the same inputs and config, force, secrets never written."""

import json
from dataclasses import dataclass

import pytest

from pipeline import io
from pipeline.manifest import MANIFEST, run_stage


@dataclass
class Cfg:
    output: str
    n: int = 1
    api_key: str = "sk-live-123"


def _stage(calls):
    def fn(cfg):
        calls.append(cfg.n)
        io.write_bytes(io.join(cfg.output, "part-0.txt"), b"x" * cfg.n)
        return {"rows_in": cfg.n, "rows_out": cfg.n}
    return fn


@pytest.mark.parametrize("where", ["local", "s3"])
def test_skip_force_and_invalidation(tmp_path, where, request):
    root = request.getfixturevalue("s3_bucket") if where == "s3" else str(tmp_path)
    inp = io.join(root, "in.txt")
    io.write_bytes(inp, b"input")
    calls = []
    cfg = Cfg(output=io.join(root, "out"))
    m1 = run_stage("demo", cfg, {"input": inp}, cfg.output, _stage(calls))
    assert not m1["skipped"] and m1["rows_out"] == 1 and m1["status"] == "complete"
    assert run_stage("demo", cfg, {"input": inp}, cfg.output, _stage(calls))["skipped"]
    assert calls == [1]
    assert not run_stage("demo", cfg, {"input": inp}, cfg.output, _stage(calls), force=True)["skipped"]
    assert calls == [1, 1]
    cfg.n = 2  # config changed -> runs
    assert not run_stage("demo", cfg, {"input": inp}, cfg.output, _stage(calls))["skipped"]
    io.write_bytes(inp, b"changed input")  # input changed -> runs
    assert not run_stage("demo", cfg, {"input": inp}, cfg.output, _stage(calls))["skipped"]
    assert calls == [1, 1, 2, 2]

    text = io.read_bytes(io.join(cfg.output, MANIFEST)).decode()
    assert "sk-live-123" not in text
    m = json.loads(text)
    assert m["config"]["api_key"] == "<redacted>" and m["inputs"] == {"input": inp}
    assert m["code_version"] and m["started_at"] <= m["finished_at"]


def test_failed_rerun_leaves_no_complete_manifest(tmp_path):
    cfg = Cfg(output=str(tmp_path / "out"))
    run_stage("demo", cfg, {}, cfg.output, _stage([]))

    def boom(_):
        raise RuntimeError("killed mid-stage")

    with pytest.raises(RuntimeError):
        run_stage("demo", cfg, {}, cfg.output, boom, force=True)
    assert not (tmp_path / "out" / MANIFEST).exists()
    assert not run_stage("demo", cfg, {}, cfg.output, _stage([]))["skipped"]
