"""The loop under torchrun, without Ray: `torchrun -m pipeline.train.torchrun`, 2 CPU ranks (gloo),
tiny real Qwen2. A first run trains and writes its summary; the same command again resumes that
run's last checkpoint (resume=auto, same identity) and trains nothing."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from pipeline.train.config import TrainConfig
from pipeline.train.resume import run_identity
from tests.train.helpers import make_rows, write_rows

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(argv: list[str]) -> dict:
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    cmd = [torchrun, "--nproc_per_node=2", f"--master_port={_free_port()}", "-m", "pipeline.train.torchrun", *argv]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    output = next(a.split("=", 1)[1] for a in argv if a.startswith("output="))
    with open(os.path.join(output, "_summary.json")) as f:
        return json.load(f)


def test_torchrun_trains_then_resumes_its_own_run(tmp_path, small_qwen2_path):
    data = write_rows(tmp_path / "rows", make_rows(16, seed=3), files=2)
    argv = [f"data={data}", f"model={small_qwen2_path}", f"output={tmp_path / 'out'}", "train.max_steps=3",
            "train.micro_batch_size=2", "train.grad_accum=1", "train.checkpoint_every_steps=2",
            "train.warmup_steps=1", "train.param_dtype=float32", "train.export=false", "train.ce_chunk_tokens=1024",
            "train.cpu_threads=1", "scaling.num_workers=2", "scaling.use_gpu=false"]
    first = _torchrun(argv)
    assert (first["world_size"], first["rows_in"], first["steps"], first["steps_this_attempt"]) == (2, 16, 3, 3)
    cfg = TrainConfig(data=data, model=str(small_qwen2_path), output=str(tmp_path / "out"))
    cfg.train.max_steps, cfg.train.micro_batch_size, cfg.train.grad_accum = 3, 2, 1
    cfg.train.checkpoint_every_steps, cfg.train.warmup_steps, cfg.train.param_dtype = 2, 1, "float32"
    cfg.train.export, cfg.train.ce_chunk_tokens, cfg.train.cpu_threads = False, 1024, 1
    cfg.scaling.num_workers, cfg.scaling.use_gpu = 2, False
    assert first["identity"] == run_identity(cfg)["identity"]
    assert first["restored_from"] is None
    runs = os.listdir(tmp_path / "out" / "_checkpoints")
    assert len(runs) == 1 and runs[0] == first["run_name"]
    assert sorted(os.listdir(tmp_path / "out" / "_checkpoints" / runs[0])) == [
        "checkpoint-step0000002", "checkpoint-step0000003"]

    again = _torchrun(argv)  # resume=auto: the same identity resumes the finished run
    assert again["run_name"] == first["run_name"]
    assert (again["steps"], again["steps_this_attempt"], again["restored_step"]) == (3, 0, 3)
    assert again["final_loss"] == first["final_loss"]
