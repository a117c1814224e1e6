"""The demo's second build, with hand-made reference labels: the report shows it beside the critic's
build, and its inspect.html shows a masked mistake step with its label, confidence, reason and where
the label came from (issue 20, item 2). Real stages throughout: reference_labels, build (Ray Data),
report, on a trajectory whose critic labels say every step is good (as the demo's SmolLM2 does)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline import fsys, record
from pipeline.errors import UserError
from pipeline.manifest import run_direct
from pipeline.schema import STEP_LABEL, TRAJECTORY

STEPS = 4
MISTAKE = 2
REASON = "deletes the sleep instead of importing time"


def trajectory(tid: str) -> dict:
    msgs = [{"role": "system", "content": "You are an agent.", "tool_calls": None},
            {"role": "user", "content": f"Fix {tid}.", "tool_calls": None}]
    for s in range(STEPS):
        msgs += [{"role": "assistant", "content": f"Step {s}: edit file_{s}.py", "tool_calls": None},
                 {"role": "user", "content": f"OBSERVATION: done {s}", "tool_calls": None}]
    return {"traj_id": tid, "instance_id": tid, "resolved": False, "source": "mem", "source_format": "xml",
            "messages": msgs, "num_steps": STEPS, "num_messages": len(msgs)}


@pytest.fixture(scope="module")
def builds(ray_session, qwen_tokenizer_path, tmp_path_factory):
    from pipeline import reference_labels
    from pipeline.build.config import BuildConfig, PackConfig
    from pipeline.build.stage import STAGE as BUILD

    root = tmp_path_factory.mktemp("reference")
    fsys.write_table(pa.Table.from_pylist([trajectory("t1")], schema=TRAJECTORY), str(root / "traj" / "part-0.parquet"))
    critic = [{"traj_id": "t1", "step": s, "label": "good", "confidence": 0.8, "reason": "fine",
               "critic_model": "smollm2", "prompt_version": "v", "num_samples": 3, "run_id": "r1",
               "prompt_tokens": 1, "completion_tokens": 1} for s in range(STEPS)]
    fsys.write_table(pa.Table.from_pylist(critic, schema=STEP_LABEL), str(root / "labels" / "part-0.parquet"))
    (root / "hand").mkdir()
    (root / "hand" / "t1.jsonl").write_text("".join(
        json.dumps({"traj_id": "t1", "step": s, "label": "mistake" if s == MISTAKE else "good", "confidence": 1.0,
                    "reason": REASON if s == MISTAKE else "ok"}) + "\n" for s in range(STEPS)))
    ref = reference_labels.ReferenceLabelsConfig(input=str(root / "hand"), output=str(root / "ref_labels"))
    assert run_direct(reference_labels.STAGE, ref)["labels"]["mistake"] == 1
    for labels, rows in (("labels", "rows"), ("ref_labels", "ref_rows")):
        run_direct(BUILD, BuildConfig(trajectories=str(root / "traj"), labels=str(root / labels), output=str(root / rows),
                          model=str(qwen_tokenizer_path), pack=PackConfig(seq_len=1024), num_workers=1))
    return root


@pytest.mark.slow  # two builds through Ray Data: ~35 s on an idle 2-core machine, minutes on a busy one
def test_report_shows_the_reference_build_and_its_masked_mistake(builds, qwen_tokenizer_path):
    from pipeline.report.config import ReferenceBuildConfig, ReportConfig
    from pipeline.report.stage import STAGE as REPORT

    root = builds
    cfg = ReportConfig(trajectories=str(root / "traj"), labels=str(root / "labels"), train_rows=str(root / "rows"),
                       output=str(root / "report"), html=False,
                       reference=ReferenceBuildConfig(labels=str(root / "ref_labels"), train_rows=str(root / "ref_rows")))
    run_direct(REPORT, cfg)
    out = Path(record.resolve(cfg.output))
    report = json.loads((out / "report.json").read_text())
    assert report["recipes"]["srft_mix"]["num_masked_tokens"] == 0  # the critic's build masks nothing
    ref = report["reference"]
    assert ref["name"] == "reference labels (hand-made)"
    assert ref["label_counts"] == {"good": 3, "unnecessary": 0, "mistake": 1, "recover": 0}
    assert ref["recipes"]["srft_mix"]["num_masked_tokens"] > 0
    assert report["inspector"]["labels_from"] == "reference labels (hand-made)"
    assert report["inspector"]["masked_steps"] == [MISTAKE]
    assert report["inspector"]["critic_build_masked_steps"] == []
    md = (out / "report.md").read_text()
    assert "### The same build with reference labels (hand-made)" in md
    assert "labels from **reference labels (hand-made)**; masked steps: 2 of 4" in md
    page = (out / "inspect.html").read_text()
    assert f"step {MISTAKE} · MASKED · mistake (confidence 1.00): {REASON} [reference labels (hand-made)]" in page
    assert "step 1 · trained · good (confidence 1.00): ok [reference labels (hand-made)]" in page


def test_bad_reference_row_named(tmp_path):
    from pipeline.reference_labels import read_reference

    (tmp_path / "bad.jsonl").write_text('{"traj_id": "t", "step": 0, "label": "oops"}\n')
    with pytest.raises(UserError, match=r"bad.jsonl: line 1: label 'oops'"):
        read_reference(str(tmp_path), "x")
