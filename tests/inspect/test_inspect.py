"""The mask inspector on rows built by the real build stage: roles recovered and checked against the
stored ids and mask, an HTML page that a real headless Chromium renders with the masked steps
visible, and a terminal rendering."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline import fsys
from pipeline.build.config import BuildConfig, MaskConfig, PackConfig
from pipeline.errors import UserError
from pipeline.inspect.config import InspectConfig
from pipeline.inspect.render import COLOURS, MASKED_RGB
from pipeline.manifest import run_direct
from pipeline.schema import STEP_LABEL, TRAJECTORY

STEPS = 6
MISTAKE_STEPS = {1, 4}  # labelled mistake at 0.9 (masked at threshold 0.9: inclusive)


def trajectory(tid: str, resolved: bool | None) -> dict:
    def calls(s: int) -> str:
        return json.dumps([{"id": f"c{s}", "type": "function",
                            "function": {"name": "bash", "arguments": json.dumps({"command": f"ls dir{s}"})}}])

    msgs = [{"role": "system", "content": "You are a careful agent.", "tool_calls": None},
            {"role": "user", "content": f"Fix issue {tid} — naïve café ✓", "tool_calls": None}]
    for s in range(STEPS):
        msgs.append({"role": "assistant", "content": f"Step {s}: I will look at dir{s}.", "tool_calls": calls(s)})
        msgs.append({"role": "tool", "content": f"file_{s}.py\nREADME.md", "tool_calls": None})
    return {"traj_id": tid, "instance_id": tid, "resolved": resolved, "source": "mem", "source_format": "tool",
            "messages": msgs, "num_steps": STEPS, "num_messages": len(msgs)}


def label_rows(tid: str, run_id: str = "r1", flip: bool = False) -> list[dict]:
    rows = []
    for s in range(STEPS):
        mistake = (s in MISTAKE_STEPS) != (flip and s == 2)
        rows.append({"traj_id": tid, "step": s, "label": "mistake" if mistake else "good",
                     "confidence": 0.9, "reason": f"reason for step {s}" + (" <b>&</b>" if mistake else ""),
                     "critic_model": "c", "prompt_version": "v", "num_samples": 10, "run_id": run_id,
                     "prompt_tokens": 1, "completion_tokens": 1})
    return rows


@pytest.fixture(scope="module")
def built(ray_session, qwen_tokenizer_path, tmp_path_factory):
    from pipeline.build.stage import STAGE as BUILD

    root = tmp_path_factory.mktemp("inspect")
    trajs = [trajectory("solved", True), trajectory("failed", False), trajectory("unknown", None)]
    fsys.write_table(pa.Table.from_pylist(trajs, schema=TRAJECTORY), str(root / "traj" / "part-0.parquet"))
    labels = label_rows("failed") + label_rows("unknown")
    fsys.write_table(pa.Table.from_pylist(labels, schema=STEP_LABEL), str(root / "labels" / "part-0.parquet"))
    cfg = BuildConfig(trajectories=str(root / "traj"), labels=str(root / "labels"), output=str(root / "rows"),
                      model=str(qwen_tokenizer_path), recipe="srft_mix", mask=MaskConfig(threshold=0.9),
                      pack=PackConfig(seq_len=4096), batch_size=4, num_workers=1)
    summary = run_direct(BUILD, cfg)
    assert summary["documents_out"] == 3 and summary["rows_errored"] == 0
    return root, summary


def inspect(**kw) -> dict:
    from pipeline.inspect.command import inspect_rows

    return inspect_rows(InspectConfig(**kw))


def test_roles_recovered_and_verified(built, tmp_path, qwen_tokenizer_path):
    from pipeline.inspect.document import inspect_document

    root, _ = built
    insp = inspect_document(InspectConfig(rows=str(root / "rows"), traj_id="failed"))
    assert insp.verified, insp.note
    assert [s.number for s in insp.steps if not s.trained] == sorted(MISTAKE_STEPS)
    c = insp.counts()
    assert c["trained"] == int(insp.loss_mask.sum()) and c["masked"] > 0 and c["prompt"] > 0
    assert sum(c.values()) == len(insp.ids)
    # every token is shown, and the shown text is the document's text
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(qwen_tokenizer_path))
    assert "".join(insp.tokens) == tok.decode(insp.ids.tolist(), clean_up_tokenization_spaces=False)
    masked_text = "".join(t for t, r in zip(insp.tokens, insp.roles) if r == "masked")
    assert masked_text == "".join(f"Step {s}: I will look at dir{s}.\n<tool_call>\n{{\"name\": \"bash\", "
                                  f"\"arguments\": {{\"command\": \"ls dir{s}\"}}}}\n</tool_call><|im_end|>"
                                  for s in sorted(MISTAKE_STEPS))
    prompt_text = "".join(t for t, r in zip(insp.tokens, insp.roles) if r == "prompt")
    assert "careful agent" in prompt_text and "naïve café ✓" in prompt_text
    assert all(r in ("context", "prompt") for t, r in zip(insp.tokens, insp.roles) if "file_" in t)
    step = insp.steps[1]
    assert (step.label, round(step.confidence, 2), step.reason) == ("mistake", 0.9, "reason for step 1 <b>&</b>")
    # unknown outcome: masked like an unresolved run (the build's default policy); resolved: all trained
    unknown = inspect_document(InspectConfig(rows=str(root / "rows"), traj_id="unknown"))
    assert unknown.verified and [s.number for s in unknown.steps if not s.trained] == sorted(MISTAKE_STEPS)
    solved = inspect_document(InspectConfig(rows=str(root / "rows"), traj_id="solved"))
    assert solved.verified and all(s.trained for s in solved.steps) and solved.counts()["masked"] == 0


def test_default_document_has_a_masked_step_and_html_is_self_contained(built, tmp_path):
    root, _ = built
    out = tmp_path / "page.html"
    result = inspect(rows=str(root / "rows"), output=str(out))
    assert result["traj_id"] in ("failed", "unknown") and result["masked_steps"] == sorted(MISTAKE_STEPS)
    page = out.read_text()
    assert page.startswith("<!doctype html>") and "<script" not in page and "http" not in page.split("<body>")[0]
    assert page.count('class="step is-masked"') == len(MISTAKE_STEPS)
    assert page.count('class="step') == STEPS + 1  # the prompt and every step, each delimited and numbered
    for s in range(STEPS):
        assert f'id="step-{s}"' in page
    assert "step 1 · MASKED · mistake (confidence 0.90): reason for step 1 &lt;b&gt;&amp;&lt;/b&gt;" in page
    assert COLOURS["masked"] in page


def test_text_rendering(built, tmp_path):
    root, _ = built
    plain = tmp_path / "plain.txt"
    inspect(rows=str(root / "rows"), traj_id="failed", format="text", color=False, output=str(plain))
    text = plain.read_text()
    assert text.count("━━ step") == STEPS and "[MASKED]Step 1: I will look at dir1." in text
    assert "[trained]Step 0: I will look at dir0." in text and "\033[" not in text
    coloured = tmp_path / "colour.txt"
    inspect(rows=str(root / "rows"), traj_id="failed", format="text", color=True, output=str(coloured))
    assert "\033[97;41mStep 1: I will look at dir1." in coloured.read_text()


def test_changed_labels_are_not_trusted(built, tmp_path):
    """Labels edited after the build: the rebuild disagrees with the stored mask, so the page says
    so and shows the stored mask only, never roles it cannot vouch for."""
    from pipeline.inspect.document import inspect_document

    root, _ = built
    labels = tmp_path / "labels"
    fsys.write_table(pa.Table.from_pylist(label_rows("failed", "r2", flip=True), schema=STEP_LABEL),
                     str(labels / "part-0.parquet"))
    insp = inspect_document(InspectConfig(rows=str(root / "rows"), traj_id="failed", labels=str(labels)))
    assert not insp.verified and "labels changed" in insp.note and not insp.steps
    assert insp.counts()["masked"] == 0 and insp.counts()["trained"] == int(insp.loss_mask.sum())


def test_user_errors(built, tmp_path):
    root, _ = built
    with pytest.raises(UserError, match="traj_id='nope' is not in rows"):
        inspect(rows=str(root / "rows"), traj_id="nope")
    with pytest.raises(UserError, match="_summary.json"):
        inspect(rows=str(tmp_path))
    with pytest.raises(UserError, match="format="):
        InspectConfig(rows="x", format="pdf").validate()


def test_command_line(built, tmp_path):
    """The door: `python -m jobs.inspect` in a fresh process, and its --help."""
    root, _ = built
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    out = tmp_path / "cli.html"
    p = subprocess.run([str(repo / ".venv/bin/python"), "-m", "jobs.inspect", f"rows={root / 'rows'}",
                        "traj_id=failed", f"output={out}"], check=False, cwd=repo, env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert out.exists() and 'class="step is-masked"' in out.read_text()
    h = subprocess.run([str(repo / ".venv/bin/python"), "-m", "jobs.inspect", "--help"], check=False, cwd=repo, env=env,
                       capture_output=True, text=True, timeout=120)
    assert h.returncode == 0 and "rows" in h.stdout and "traj_id" in h.stdout and "format" in h.stdout
    bad = subprocess.run([str(repo / ".venv/bin/python"), "-m", "jobs.inspect", f"rows={root / 'rows'}",
                          "traj_id=nope"], check=False, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "traj_id='nope'" in bad.stderr


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def screenshot(page: Path, png: Path, fragment: str = "") -> None:
    profile = tempfile.mkdtemp(prefix="chromium-")
    try:
        subprocess.run(
            [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", f"--screenshot={png}", "--window-size=1200,900",
             "--hide-scrollbars", f"file://{page}{fragment}"],
            check=True, capture_output=True, timeout=180,
        )
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def colour_pixels(png: Path, rgb: tuple[int, int, int], tolerance: int = 3) -> int:
    from PIL import Image

    img = Image.open(png).convert("RGB")
    return sum(n for n, px in img.getcolors(img.width * img.height)
               if all(abs(a - b) <= tolerance for a, b in zip(px, rgb)))


@pytest.mark.skipif(chromium() is None, reason="chromium is not installed (Debian: apt-get install -y chromium)")
def test_masked_steps_visible_in_headless_chromium(built, tmp_path):
    root, _ = built
    page = tmp_path / "page.html"
    inspect(rows=str(root / "rows"), traj_id="failed", output=str(page))
    solved = tmp_path / "solved.html"
    inspect(rows=str(root / "rows"), traj_id="solved", output=str(solved))
    shots = {"failed": tmp_path / "failed.png", "solved": tmp_path / "solved.png"}
    screenshot(page, shots["failed"])
    screenshot(solved, shots["solved"])
    keep = os.environ.get("SRFT_INSPECT_SCREENSHOTS")  # a folder to keep the PNGs in, to look at them
    if keep:
        for p in shots.values():
            shutil.copy(p, Path(keep) / p.name)
    green = tuple(int(COLOURS["trained"][i:i + 2], 16) for i in (1, 3, 5))
    failed_px, solved_px = (colour_pixels(shots[k], MASKED_RGB) for k in ("failed", "solved"))
    # Both pages show the legend's masked swatch; only the page with masked steps shows more of that
    # colour: the step map's masked steps and the masked step's own tokens (step 1 is on screen).
    assert solved_px > 1000 and failed_px > solved_px + 5000, (failed_px, solved_px)
    assert colour_pixels(shots["failed"], green) > 5000
