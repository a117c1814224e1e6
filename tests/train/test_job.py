"""jobs.train end to end under Ray Train: 2 CPU workers, gloo, FSDP2, tiny real Qwen2.

Three trained runs serve every assertion here: A (reference, to moto S3, TensorBoard tracking and
held-out eval rows), B (other rows into the same output) and a run whose train worker the test
SIGKILLs from outside (MLflow file-store tracking). A slow test re-runs A's identity into the
same output: it resumes A's finished run and trains nothing.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time

import psutil
import pyarrow.fs as pafs
import pytest
import torch

from pipeline import fsys, io
from pipeline.errors import UserError
from pipeline.train.config import TrainConfig
from pipeline.train.data import held_out
from pipeline.train.resume import plan_resume, run_identity
from tests.conftest import make_bucket
from tests.train.helpers import make_rows, write_rows

EVAL_FRACTION = 0.2
STEPS = ["train.max_steps=6", "train.epochs=2", "train.micro_batch_size=2", "train.grad_accum=2",
         "train.checkpoint_every_steps=2", "train.warmup_steps=1", "train.lr=3e-3", "train.shuffle=true",
         f"train.eval_fraction={EVAL_FRACTION}", "train.eval_every=3", "train.param_dtype=float32",
         "train.export_dtype=float32", "train.ce_chunk_tokens=1024", "scaling.num_workers=2",
         "scaling.cpus_per_worker=0.5", "scaling.use_gpu=false"]


def _run(argv):
    from jobs.train import main

    return main(argv)


def _metrics(output: str) -> list[dict]:
    return [json.loads(x) for x in io.read_bytes(fsys.join(output, "metrics.jsonl")).decode().splitlines()]


def _download(output: str, logical: str, dest) -> str:
    """Copy the committed files under <output>/<logical> (the commit record names them) to `dest`."""
    os.makedirs(dest, exist_ok=True)
    for uri in io.list_files(fsys.join(output, logical), ("",)):
        with open(os.path.join(dest, uri.rsplit("/", 1)[-1]), "wb") as f:
            f.write(io.read_bytes(uri))
    return str(dest)


def _export_weights(output: str, dest) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(os.path.join(_download(output, "hf", dest), "model.safetensors"))


def _rows(seed: int) -> dict:
    # 30 rows, ~20% held out: 24-31 train rows -> 12-15 per rank -> 3 steps per epoch of 2 x 2 rows.
    rows = make_rows(30, seed=seed)
    n_train = sum(not held_out(t, EVAL_FRACTION) for t in rows["traj_ids"])
    assert 24 <= n_train <= 31, n_train  # a fixture property, not the code under test
    return rows


@pytest.fixture(scope="module")
def rows_a(tmp_path_factory):
    return write_rows(tmp_path_factory.mktemp("rows-a"), _rows(seed=12), files=5)  # blocks split unevenly


@pytest.fixture(scope="module")
def bucket(moto_s3):
    return make_bucket(moto_s3)


@pytest.fixture(scope="module")
def run_a(ray_session, bucket, rows_a, small_qwen2_path, tmp_path_factory):
    output = f"{bucket}/train"
    summary = _run([f"data={rows_a}", f"model={small_qwen2_path}", f"output={output}", "tracking=tensorboard",
                    *STEPS])
    weights = _export_weights(output, tmp_path_factory.mktemp("export-a"))
    return output, summary, _metrics(output), weights


def test_run_lowers_loss_checkpoints_to_s3_tracks_evaluates_and_exports(run_a, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from transformers import AutoModelForCausalLM, AutoTokenizer

    output, summary, metrics, _ = run_a
    n_eval = summary["eval_rows"]
    assert summary["steps"] == 6 and summary["world_size"] == 2 and summary["steps_per_epoch"] == 3
    assert summary["rows_in"] + n_eval == 30 and n_eval >= 2
    assert summary["resume"]["resumed"] is False and summary["restored_from"] is None
    losses = [m["loss"] for m in metrics]
    assert len(losses) == 6 and losses[-1] < losses[0], losses
    for key in ("loss", "tokens_per_s", "trained_tokens_per_s", "grad_norm", "peak_memory_gb"):
        assert metrics[-1][key] > 0, key
    assert all(m["mfu"] is None for m in metrics) and summary["mfu"] is None  # CPU: no MFU
    # Eval loss every 3 steps, in metrics.jsonl and the summary; it falls as training goes on.
    evals = [(m["step"], m["eval_loss"]) for m in metrics if "eval_loss" in m]
    assert [s for s, _ in evals] == [3, 6] and evals[1][1] < evals[0][1]
    assert summary["eval_loss"] == evals[-1][1] and [tuple(e) for e in summary["eval_losses"]] == evals
    # Checkpoints in the identity-named run folder on S3, DCP files of both ranks in one folder.
    run_name = summary["resume"]["run_name"]
    assert summary["identity"][:16] in run_name and summary["checkpoint"].endswith(f"{run_name}/checkpoint-step0000006")
    fs, _ = fsys.filesystem(output)
    names = sorted(f.base_name for f in fs.get_file_info(pafs.FileSelector(summary["checkpoint"])))
    assert names == [".metadata", "__0_0.distcp", "__1_0.distcp", "rng-0.pt", "rng-1.pt", "train_state.json"]
    # TensorBoard event files (written on rank 0, uploaded to S3 beside the run folders).
    tb = tmp_path / "tb"
    tb.mkdir()
    fs, path = fsys.filesystem(fsys.join(summary["checkpoint_storage"], "tensorboard", run_name))
    pafs.copy_files(path, str(tb), source_filesystem=fs)
    acc = EventAccumulator(str(tb))
    acc.Reload()
    assert [e.value for e in acc.Scalars("train/loss")] == pytest.approx(losses)
    assert [e.step for e in acc.Scalars("eval/loss")] == [3, 6]
    assert "config" in " ".join(acc.Tags()["tensors"])
    # The HF export loads with transformers as-is.
    _download(output, "hf", tmp_path / "hf")
    lm = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    AutoTokenizer.from_pretrained(tmp_path / "hf")
    with torch.no_grad():
        assert torch.isfinite(lm(torch.tensor([[1, 2, 3]])).logits).all()


def test_new_data_into_the_same_output_starts_a_new_run(run_a, small_qwen2_path, tmp_path):
    """Rows B into A's output: not a resume of A (#9); A's checkpoints are left where they are;
    the export is B's. Then A's data again: resume=auto finds A's finished run and trains nothing."""
    output, summary_a, _, weights_a = run_a
    rows_b = write_rows(tmp_path / "rows-b", _rows(seed=13), files=2)
    summary_b = _run([f"data={rows_b}", f"model={small_qwen2_path}", f"output={output}", *STEPS])
    plan = summary_b["resume"]
    assert plan["resumed"] is False and summary_b["restored_from"] is None
    assert summary_b["identity_parts"]["data"] != summary_a["identity_parts"]["data"]
    assert summary_b["identity_parts"]["config"] == summary_a["identity_parts"]["config"]
    assert summary_a["resume"]["run_name"] in plan["other_runs_not_resumed"]
    assert summary_b["steps"] == 6 and summary_b["steps_this_attempt"] == 6
    weights_b = _export_weights(output, tmp_path / "export-b")
    assert any(not torch.equal(weights_a[k], weights_b[k]) for k in weights_a)

    # A's data again: resume=auto (the default) picks A's run folder and its last checkpoint.
    plan = plan_resume(_config(summary_a), summary_a["checkpoint_storage"], _identity(summary_a))
    assert plan["resumed"] is True and plan["run_name"] == summary_a["resume"]["run_name"]
    assert plan["from"].endswith("checkpoint-step0000006") and plan["from_step"] == 6


def _config(summary: dict) -> TrainConfig:
    from omegaconf import OmegaConf

    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TrainConfig), summary["config"]))


def _identity(summary: dict) -> dict:
    identity = run_identity(_config(summary))
    assert identity == summary["identity_parts"]  # the same inputs and config: the same identity
    return identity


@pytest.mark.slow
def test_same_identity_again_resumes_the_finished_run_and_trains_nothing(run_a, small_qwen2_path, tmp_path):
    """The whole path of the check above: Ray Train resumes A's run folder by its name, trains 0
    steps, and exports exactly A's weights."""
    output, summary_a, _, weights_a = run_a
    again = _run([f"data={summary_a['config']['data']}", f"model={small_qwen2_path}", f"output={output}", *STEPS])
    assert again["resume"]["resumed"] is True and again["resume"]["run_name"] == summary_a["resume"]["run_name"]
    assert again["restored_step"] == 6 and again["steps_this_attempt"] == 0
    weights = _export_weights(output, tmp_path / "export-a-again")
    assert all(torch.equal(weights_a[k], weights[k]) for k in weights_a)


def test_resume_must_without_a_run_is_a_user_error(bucket, small_qwen2_path, tmp_path):
    rows = write_rows(tmp_path / "rows", _rows(seed=12), files=1)
    with pytest.raises(UserError, match="resume=must"):
        _run([f"data={rows}", f"model={small_qwen2_path}", f"output={tmp_path / 'out'}", "resume=must", *STEPS])


def _train_workers() -> list[psutil.Process]:
    """This test session's Ray Train workers: descendants of this process (the local Ray that
    the ray_session fixture started) whose process title names the Train worker actor."""
    found = []
    for p in psutil.Process().children(recursive=True):
        try:
            if "RayTrainWorker" in " ".join(p.cmdline()):
                found.append(p)
        except psutil.Error:
            continue
    return found


def test_worker_killed_from_outside_resumes_and_continues_the_losses(run_a, rows_a, small_qwen2_path, tmp_path):
    """SIGKILL one train worker by pid, at a moment the test picks (after the step-2 checkpoint,
    while later steps run). Ray Train restarts the group (max_failures), the run resumes from its
    latest checkpoint, and its losses are the uninterrupted run's."""
    _, _, reference, _ = run_a
    output = tmp_path / "out"
    storage = tmp_path / "checkpoints"
    killed: dict = {}

    def killer():
        deadline = time.time() + 600
        while time.time() < deadline and not killed:
            # Ray Train registered the step-2 checkpoint (its snapshot names it): a restart finds it.
            done = [p for p in storage.glob("*/checkpoint_manager_snapshot.json")
                    if "checkpoint-step0000002" in p.read_text(errors="replace")]
            workers = _train_workers()
            if done and len(workers) == 2:
                time.sleep(random.uniform(0.0, 0.5))  # somewhere inside step 3 or 4
                victim = random.choice(workers)
                killed.update(pid=victim.pid, at=time.time())
                victim.kill()  # SIGKILL
                return
            time.sleep(0.05)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    summary = _run([f"data={rows_a}", f"model={small_qwen2_path}", f"output={output}",
                    f"checkpoint_storage={storage}", "train.max_failures=1", "tracking=mlflow",
                    f"tracking_uri={tmp_path / 'mlruns'}", *STEPS])
    thread.join(timeout=5)
    assert killed, "no train worker was found to kill"
    assert not psutil.pid_exists(killed["pid"]) or psutil.Process(killed["pid"]).status() == psutil.STATUS_ZOMBIE
    # The restarted attempt started from a checkpoint of this run (step 2, or 4 if the kill came late).
    assert summary["restored_from"] is not None and summary["restored_step"] in (2, 4, 6)
    assert summary["resume"]["resumed"] is False  # a fresh run; the restart is inside it
    assert summary["steps"] == 6
    got = _metrics(str(output))
    assert [m["loss"] for m in got] == pytest.approx([m["loss"] for m in reference], rel=1e-5, abs=1e-6)
    evals = [(m["step"], m["eval_loss"]) for m in got if "eval_loss" in m]
    assert evals == [(3, pytest.approx(m["eval_loss"], rel=1e-5)) for m in reference if m["step"] == 3] + \
        [(6, pytest.approx(reference[-1]["eval_loss"], rel=1e-5))]
    # MLflow (file store): the restarted rank 0 continued the same tracking run.
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"file://{tmp_path / 'mlruns'}")
    (exp,) = [e for e in client.search_experiments() if e.name == "srft"]
    (run,) = client.search_runs([exp.experiment_id])
    assert run.data.tags["srft.run"] == summary["resume"]["run_name"]
    history = client.get_metric_history(run.info.run_id, "train/loss")
    last_by_step = {m.step: m.value for m in sorted(history, key=lambda m: m.timestamp)}
    assert [last_by_step[s] for s in range(1, 7)] == pytest.approx([m["loss"] for m in reference], rel=1e-5)
    assert run.data.params["config.train.lr"] == "0.003"
