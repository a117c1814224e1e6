"""The report stage on the hand-computed fixture of conftest.py: the numbers and the files."""

from __future__ import annotations

import io as _io
import json
from pathlib import Path

import pyarrow as pa
import pytest
from PIL import Image

from pipeline import fsys, io, record
from pipeline.config import load_config
from pipeline.manifest import run_direct
from pipeline.report import stats
from pipeline.report.config import ReportConfig


@pytest.fixture
def fast_plots(monkeypatch):
    """Skip matplotlib's rendering (seconds per plot on a loaded 2-core box) where the test is about
    numbers; the figures are still built, and one test renders them all for real."""
    import matplotlib.pyplot as plt

    from pipeline.report import plots

    buf = _io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, format="PNG")

    def png(fig):
        plt.close(fig)
        return buf.getvalue()

    monkeypatch.setattr(plots, "_png", png)


def _run(uris: dict, *extra: str) -> dict:
    from pipeline.report.stage import STAGE as REPORT

    cfg = load_config(ReportConfig, "report", [f"{k}={v}" for k, v in uris.items()] + list(extra))
    return run_direct(REPORT, cfg)


def _committed(output: str) -> Path:
    """The folder holding the report's committed files (the version the commit record names)."""
    return Path(record.resolve(output))


def _png_ok(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    img = Image.open(_io.BytesIO(data))
    img.verify()
    return Image.open(_io.BytesIO(data)).size


def test_report_numbers_and_files(report_fixture):
    summary = _run(report_fixture)
    out = _committed(report_fixture["output"])
    md = (out / "report.md").read_text()
    rep = json.loads((out / "report.json").read_text())

    assert summary["rows_in"] == 14 and summary["trajectories"] == 5 and summary["labelled_trajectories"] == 3
    assert summary["label_errors"] == 2 and summary["skipped_sections"] == []
    assert json.loads((out / "_summary.json").read_text()) == summary

    # label distribution: the older run's label of t1 step 0 is superseded
    d = rep["label_distribution"]
    assert d["counts"] == {"good": 9, "unnecessary": 2, "mistake": 2, "recover": 1}
    assert rep["duplicate_labels"] == 1
    assert "| mistake | 2 | 14.3% |" in md
    assert "| `t2` | no | 5 | 3 | 0 | 1 | 1 |" in md

    # harmful share in failed runs: 2 of 10 steps, within the paper's 24%
    fail = rep["harmful"]["groups"]["unresolved"]
    assert (fail["steps"], fail["harmful_steps"], fail["harmful_share"]) == (10, 2, 0.2)
    assert fail["harmful_share_above_threshold"] == 0.1  # only the 0.83 mistake at threshold 0.5
    assert rep["harmful"]["failed_runs_within_paper_bound"] is True
    assert "Failed runs: 20.0% of steps harmful, 80.0% fine (within the paper's ≤24% harmful / 76% fine)" in md

    # confidence histogram: 20 bins, every step counted once
    c = rep["confidence"]
    assert sum(sum(v) for v in c["counts"].values()) == 14
    assert c["counts"]["mistake"][8] == 1 and c["counts"]["mistake"][16] == 1  # 0.42 and 0.83

    # sweep in characters: 1700 trainable; 500 masked up to 0.42, 300 up to 0.83, none above
    s = rep["sweep"]
    assert s["unit"] == "characters" and s["trainable_total"] == {"all": 1700, "unresolved": 1300}
    # the build stage leaves out t4 (outcome unknown) and t5 (failed, unlabelled)
    assert s["excluded_not_fully_labelled"] == {"resolution_unknown": 1, "unlabelled": 1}
    curve = dict(zip(s["thresholds"], s["fraction_masked"]["all"]))
    assert curve[0.0] == curve[0.4] == round(500 / 1700, 6)
    assert curve[0.45] == curve[0.5] == curve[0.8] == round(300 / 1700, 6)
    assert curve[0.85] == curve[1.0] == 0.0
    assert dict(zip(s["thresholds"], s["fraction_masked"]["unresolved"]))[0.4] == round(500 / 1300, 6)
    assert summary["fraction_masked_at_threshold"] == round(300 / 1700, 6)
    assert "| 0.4 | 29.41% | 38.46% |" in md
    assert "| 0.5 (current) | 17.65% | 23.08% |" in md
    assert "**Step size is counted in characters:**" in md

    # tokens per recipe
    r = rep["recipes"]
    assert r["srft"] == {"rows": 2, "documents": 3, "num_tokens": 1500, "num_trained_tokens": 900,
                         "num_masked_tokens": 150, "num_context_tokens": 450, "trained_share": 0.6,
                         "masked_share_of_trainable": round(150 / 1050, 6)}
    assert r["rft"]["num_masked_tokens"] == 0
    assert "| srft | 2 | 3 | 1,500 | 900 | 150 | 450 | 60.0% | 14.3% |" in md

    # loss: two ranks per step are averaged
    lc = rep["loss"]
    assert lc["num_steps"] == 5 and lc["first_loss"] == 2.0 and lc["last_loss"] == 1.2
    assert lc["other_metrics"] == {"lr": {"mean": 5e-5, "last": 5e-5}}  # step, epoch, rank are not metrics
    assert "| lr | 5e-05 | 5e-05 |" in md

    # critic errors and usage
    e = rep["errors"]
    assert e["reasons"] == {"critic_timeout": {"count": 1, "mean_attempts": 2.0},
                            "unparseable_output": {"count": 1, "mean_attempts": 3.0}}
    assert e["coverage"] == {"trajectories": 5, "labelled": 3, "errored": 2, "labelled_and_errored": 0,
                             "neither": 0}
    assert "| unparseable_output | 1 | 3.0 |" in md
    assert rep["critic_usage"]["prompt_tokens"] == 14000 and rep["critic_usage"]["completion_tokens"] == 560

    # every plot the Markdown names exists and is a real PNG of a readable size
    plots = sorted(p.name for p in (out / "plots").iterdir())
    assert plots == ["confidence_histogram.png", "critic_errors.png", "harmful_share.png",
                     "label_distribution.png", "loss_curve.png", "recipe_tokens.png", "threshold_sweep.png"]
    for name in plots:
        assert f"(plots/{name})" in md
        w, h = _png_ok((out / "plots" / name).read_bytes())
        assert w >= 400 and h >= 200
    html = (out / "report.html").read_text()
    assert "<table>" in html and 'src="plots/threshold_sweep.png"' in html
    assert not [p for p in out.iterdir() if p.name.startswith("_staging")]


def test_missing_training_inputs_skip_their_sections(fast_plots, report_fixture, tmp_path):
    uris = {**report_fixture, "train_rows": str(tmp_path / "nope"), "train_metrics": "null"}
    summary = _run(uris)
    md = (_committed(uris["output"]) / "report.md").read_text()
    assert summary["skipped_sections"] == ["tokens per recipe", "training loss"]
    assert f"> **Section skipped:** `train_rows` = `{tmp_path / 'nope'}` does not exist" in md
    assert "> **Section skipped:** no `train_metrics` URI was given" in md
    assert not (_committed(uris["output"]) / "plots" / "loss_curve.png").exists()


def test_threshold_and_labels_are_configurable(fast_plots, report_fixture):
    summary = _run(report_fixture, "mask.threshold=0.4", "mask.labels=[mistake,unnecessary]")
    rep = json.loads((_committed(report_fixture["output"]) / "report.json").read_text())
    # at 0.4: both mistakes (300 + 200); the 0.33 unnecessary step stays, and so does t1's 0.62 one:
    # t1 is resolved, and the build stage masks only runs that are not resolved
    assert summary["fraction_masked_at_threshold"] == round(500 / 1700, 6)
    assert rep["harmful"]["groups"]["unresolved"]["harmful_share_above_threshold"] == 0.2


def test_missing_required_input_fails_naming_it(report_fixture, tmp_path):
    with pytest.raises(FileNotFoundError, match="labels="):
        _run({**report_fixture, "labels": str(tmp_path / "no-labels")})


def test_bad_metrics_line_names_file_and_line(report_fixture):
    fsys.write_bytes(report_fixture["train_metrics"], b'{"step": 1, "loss": 2.0}\nnot json\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl: line 2 is not JSON"):
        _run(report_fixture)


def test_threshold_is_inclusive_at_float32_like_the_build():
    """7/10 and 9/10 vote shares, stored as float32 (0.699999988, 0.899999976), are masked at
    mask.threshold 0.7 and 0.9: the report's sweep agrees with the build stage's masks."""
    import numpy as np

    from pipeline.build.labels import at_threshold
    from pipeline.report.load import StepTokens

    T = StepTokens("chars", "characters", "x", resolved={"a": False}, step_sizes={"a": [10, 10]})
    for t in (0.7, 0.9):
        stored = float(np.float32(t))
        assert stored < t  # the trap: read back as a Python float, it is below the threshold
        rows = [{"traj_id": "a", "step": 0, "label": "mistake", "confidence": stored},
                {"traj_id": "a", "step": 1, "label": "good", "confidence": 0.95}]
        s = stats.threshold_sweep(rows, T, [t - 0.01, t, t + 0.01], ["mistake"], t)
        assert s["fraction_masked"]["all"] == [0.5, 0.5, 0.0]
        assert s["fraction_masked_at_current"]["all"] == 0.5
        assert at_threshold(pa.array([stored], pa.float32()), t).to_pylist() == [True]  # same rule as build
        h = stats.harmful_share(rows, {"a": False}, ["mistake"], t, 0.24)
        assert h["groups"]["unresolved"]["harmful_share_above_threshold"] == 0.5


def test_report_reads_and_writes_s3(fast_plots, s3_bucket):
    from tests.report.conftest import write_fixture

    uris = write_fixture(s3_bucket)
    summary = _run(uris, "html=false")
    assert summary["report"] == f"{s3_bucket}/report/report.md"
    md = io.read_bytes(f"{s3_bucket}/report/report.md").decode()
    assert "| 0.5 (current) | 17.65% | 23.08% |" in md
    _png_ok(io.read_bytes(f"{s3_bucket}/report/plots/threshold_sweep.png"))
    assert not io.exists(f"{s3_bucket}/report/report.html")


def test_tokenizer_method_needs_a_tokenizer(report_fixture):
    with pytest.raises(ValueError, match="tokens.method=tokenizer needs tokens.tokenizer"):
        _run(report_fixture, "tokens.method=tokenizer")


@pytest.mark.slow
def test_sweep_counts_student_tokens(fast_plots, report_fixture, qwen_tokenizer_path):
    from transformers import AutoTokenizer

    summary = _run(report_fixture, f"tokens.tokenizer={qwen_tokenizer_path}")
    rep = json.loads((_committed(report_fixture["output"]) / "report.json").read_text())
    tok = AutoTokenizer.from_pretrained(qwen_tokenizer_path)
    x100 = len(tok("x" * 100, add_special_tokens=False)["input_ids"])
    x300 = len(tok("x" * 300, add_special_tokens=False)["input_ids"])
    assert summary["step_size_unit"] == "tokens"
    assert rep["sweep"]["trainable_total"]["all"] - rep["sweep"]["trainable_total"]["unresolved"] == 4 * x100
    assert rep["sweep"]["fraction_masked_at_current"]["unresolved"] == round(
        x300 / rep["sweep"]["trainable_total"]["unresolved"], 6)
    assert "**Step size is counted in tokens:** student tokenizer" in (
        _committed(report_fixture["output"]) / "report.md").read_text()


def test_each_input_is_located_once(fast_plots, report_fixture, monkeypatch):
    """The report reads the inputs run_stage located (out.inputs), not their URIs again: each of
    its inputs is located exactly once, by run_stage (the inspector appendix is off here; it
    re-derives a document by URI, as `jobs.inspect` does)."""
    located = []
    real_locate = record.locate
    monkeypatch.setattr(record, "locate", lambda uri: located.append(uri) or real_locate(uri))
    summary = _run(report_fixture, "inspect=false")
    assert summary["rows_in"] == 14 and summary["label_errors"] == 2
    for name in ("trajectories", "labels", "train_rows", "train_metrics"):
        assert located.count(report_fixture[name]) == 1, (name, located)


def test_main_leaves_a_manifest(fast_plots, report_fixture):
    import jobs.report

    manifest = jobs.report.main([f"{k}={v}" for k, v in report_fixture.items()])
    out = _committed(report_fixture["output"])
    assert json.loads((Path(report_fixture["output"]) / "_manifest.json").read_text())["status"] == "complete"
    assert manifest["rows_in"] == 14 and (out / "report.md").exists()


@pytest.mark.slow
def test_tokenizer_from_s3_model_folder(fast_plots, s3_bucket, qwen_tokenizer_path, tmp_path, monkeypatch):
    from tests.report.conftest import write_fixture

    monkeypatch.setenv("HOME", str(tmp_path))  # the tokenizer cache goes under ~/.cache/srft
    for f in Path(qwen_tokenizer_path).iterdir():
        fsys.write_bytes(f"{s3_bucket}/models/student/{f.name}", f.read_bytes())
    fsys.write_bytes(f"{s3_bucket}/models/student/model-00001-of-00002.safetensors", b"not fetched")
    uris = write_fixture(s3_bucket)
    summary = _run(uris, f"tokens.tokenizer={s3_bucket}/models/student", "tokens.method=tokenizer")
    assert summary["step_size_unit"] == "tokens"
    (cached,) = (tmp_path / ".cache" / "srft" / "tokenizers").iterdir()
    assert (cached / "tokenizer.json").exists() and not list(cached.glob("*.safetensors"))


def test_refuses_labels_of_another_schema_version(report_fixture):
    import pyarrow.parquet as pq

    from pipeline.schema import STEP_LABEL

    path = Path(report_fixture["labels"]) / "part-0.parquet"
    table = pq.read_table(path)
    old = table.replace_schema_metadata({**STEP_LABEL.metadata, b"srft.schema_version": b"0"})
    pq.write_table(old, path)
    with pytest.raises(ValueError, match=r"part-0.parquet: written with srft schema version 0"):
        _run(report_fixture)
