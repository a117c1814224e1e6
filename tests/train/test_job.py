"""jobs.train end to end under Ray Train: 2 CPU workers, gloo, FSDP2, tiny real Qwen2."""

from __future__ import annotations

import json
import uuid

import pytest
import torch

from pipeline import io
from tests.conftest import make_bucket
from tests.train.helpers import make_rows, write_rows

STEPS = ["train.max_steps=6", "train.epochs=2", "train.micro_batch_size=2", "train.grad_accum=2",
         "train.checkpoint_every_steps=2", "train.warmup_steps=1", "train.lr=3e-3", "train.shuffle=true"]


def _run(argv):
    from jobs.train import main

    return main(argv)


def _losses(output: str) -> list[float]:
    lines = io.read_bytes(io.join(output, "metrics.jsonl")).decode().splitlines()
    return [json.loads(line)["loss"] for line in lines]


@pytest.fixture(scope="module")
def rows_uri(tmp_path_factory):
    # 24 rows -> 12 per rank -> 3 steps per epoch of 2 x 2 rows; files of 5 rows: blocks split unevenly.
    return write_rows(tmp_path_factory.mktemp("rows"), make_rows(24, seed=11), files=5)


@pytest.fixture(scope="module")
def uninterrupted(ray_session, s3_bucket_module, rows_uri, small_qwen2_path):
    output = f"{s3_bucket_module}/train-a"
    summary = _run([f"data={rows_uri}", f"model={small_qwen2_path}", f"output={output}",
                    f"run_name=a-{uuid.uuid4().hex[:6]}", *STEPS])
    return output, summary


@pytest.fixture(scope="module")
def s3_bucket_module(moto_s3):
    return make_bucket(moto_s3)


def test_two_worker_run_lowers_loss_checkpoints_to_s3_and_exports(uninterrupted, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    output, summary = uninterrupted
    assert summary["steps"] == 6 and summary["world_size"] == 2 and summary["steps_per_epoch"] == 3
    assert summary["rows_in"] == 24 and summary["rows_out"] == 24
    losses = _losses(output)
    assert len(losses) == 6
    assert losses[-1] < losses[0], losses
    metrics = [json.loads(x) for x in io.read_bytes(io.join(output, "metrics.jsonl")).decode().splitlines()]
    for key in ("loss", "tokens_per_s", "trained_tokens_per_s", "lr", "grad_norm", "peak_memory_gb", "mfu"):
        assert metrics[-1][key] > 0 or key == "lr", key
    assert summary["checkpoint"].startswith(output.removeprefix("s3://")) and "checkpoint-step0000006" in summary["checkpoint"]
    # DCP files of both ranks landed in the one checkpoint folder on S3
    import pyarrow.fs as pafs

    fs, _ = io.filesystem(output)
    names = sorted(f.base_name for f in fs.get_file_info(pafs.FileSelector(summary["checkpoint"])))
    assert names == [".metadata", "__0_0.distcp", "__1_0.distcp", "rng-0.pt", "rng-1.pt", "train_state.json"]
    # The HF export loads with transformers as-is
    fs, path = io.filesystem(io.join(output, "hf"))
    (tmp_path / "hf").mkdir()
    pafs.copy_files(path, str(tmp_path / "hf"), source_filesystem=fs)
    lm = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    AutoTokenizer.from_pretrained(tmp_path / "hf")
    with torch.no_grad():
        assert torch.isfinite(lm(torch.tensor([[1, 2, 3]])).logits).all()


def test_resume_after_worker_killed_reproduces_losses(uninterrupted, rows_uri, small_qwen2_path, tmp_path):
    ref_output, _ = uninterrupted
    output = str(tmp_path / "out")
    # The last rank exits hard before step 4 (0-based 3); the latest checkpoint is after step 2.
    summary = _run([f"data={rows_uri}", f"model={small_qwen2_path}", f"output={output}",
                    f"run_name=b-{uuid.uuid4().hex[:6]}", "train.debug_fail_at_step=3", "train.max_failures=1",
                    *STEPS])
    assert summary["resumed"] is True and summary["steps"] == 6
    assert _losses(output) == pytest.approx(_losses(ref_output), rel=1e-5, abs=1e-6)
