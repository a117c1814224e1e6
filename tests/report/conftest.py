"""A small, hand-computable fixture in the stage schemas for the report tests.

Trajectories (step sizes in characters of the assistant message):
  t1 resolved    4 steps [100, 100, 100, 100]          labels good good unnecessary good
  t2 failed      5 steps [100, 300, 100, 100, 100]     labels good mistake(0.83) recover good good
  t3 failed      5 steps [100, 150+50, 100, 100, 100]  labels good mistake(0.42) unnecessary good good
  t4 unknown     2 steps                               critic error critic_timeout
  t5 failed      2 steps                               critic error unparseable_output
Failed runs: 2 harmful of 10 labelled steps = 20%. Trainable chars (the build stage leaves out t4,
of unknown outcome, and t5, failed but unlabelled): 400 + 700 + 600 = 1700; masked 500 (threshold <= 0.42), 300
(0.42 < threshold <= 0.83), 0 above.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from pipeline import fsys
from pipeline.schema import LABEL_ERROR, STEP_LABEL, TRAINING_ROW, TRAJECTORY

TRAJ = {
    "t1": (True, [100, 100, 100, 100]),
    "t2": (False, [100, 300, 100, 100, 100]),
    "t3": (False, [100, 200, 100, 100, 100]),
    "t4": (None, [50, 50]),
    "t5": (False, [70, 70]),
}
LABELLED = {
    "t1": [("good", 0.9), ("good", 0.8), ("unnecessary", 0.62), ("good", 0.91)],
    "t2": [("good", 0.9), ("mistake", 0.83), ("recover", 0.71), ("good", 0.88), ("good", 0.93)],
    "t3": [("good", 0.9), ("mistake", 0.42), ("unnecessary", 0.33), ("good", 0.77), ("good", 0.96)],
}
ERRORS = [("t4", "critic_timeout", 2), ("t5", "unparseable_output", 3)]


def _messages(sizes: list[int]) -> list[dict]:
    msgs = [{"role": "system", "content": "You are a coding agent.", "tool_calls": None},
            {"role": "user", "content": "Fix the bug in foo.py", "tool_calls": None}]
    for k, n in enumerate(sizes):
        if n == 200:  # tool_calls text counts towards the step size
            calls = json.dumps([{"function": {"name": "bash", "arguments": "{}"}}], separators=(",", ":"))
            calls = calls + " " * (50 - len(calls))
            assert len(calls) == 50
            msgs.append({"role": "assistant", "content": "x" * 150, "tool_calls": calls})
        else:
            msgs.append({"role": "assistant", "content": "x" * n, "tool_calls": None})
        msgs.append({"role": "tool" if k % 2 else "user", "content": "OBSERVATION: " + "o" * 500, "tool_calls": None})
    return msgs


def write_fixture(root: str) -> dict[str, str]:
    traj_rows = []
    for tid, (resolved, sizes) in TRAJ.items():
        msgs = _messages(sizes)
        traj_rows.append({
            "traj_id": tid, "instance_id": f"repo__{tid}", "resolved": resolved, "source": "fixture.jsonl",
            "source_format": "tool", "model": "gpt-x", "patch": None, "messages": msgs,
            "num_steps": len(sizes), "num_messages": len(msgs), "unrecorded_final_action": None,
        })
    # two shards, to read more than one file
    fsys.write_table(pa.Table.from_pylist(traj_rows[:2], schema=TRAJECTORY), fsys.join(root, "traj", "part-0.parquet"))
    fsys.write_table(pa.Table.from_pylist(traj_rows[2:], schema=TRAJECTORY), fsys.join(root, "traj", "part-1.parquet"))

    base = {"reason": "r", "critic_model": "Qwen/critic", "prompt_version": "v1", "num_samples": 1}
    labels = []
    for tid, steps in LABELLED.items():
        for k, (label, conf) in enumerate(steps):
            labels.append({**base, "traj_id": tid, "step": k, "label": label, "confidence": conf,
                           "run_id": "20261123T090000-bbbbbb", "prompt_tokens": 1000 * len(steps),
                           "completion_tokens": 40 * len(steps)})
    # an older run's label for t1 step 0, superseded by the newer one
    labels.append({**base, "traj_id": "t1", "step": 0, "label": "mistake", "confidence": 0.99,
                   "run_id": "20261122T090000-aaaaaa", "prompt_tokens": 1200, "completion_tokens": 160})
    fsys.write_table(pa.Table.from_pylist(labels, schema=STEP_LABEL), fsys.join(root, "labels", "part-0.parquet"))
    errors = [{"traj_id": t, "reason": r, "detail": "d", "attempts": a, "critic_model": "Qwen/critic",
               "prompt_version": "v1", "run_id": "20261123T090000-bbbbbb"} for t, r, a in ERRORS]
    fsys.write_table(pa.Table.from_pylist(errors, schema=LABEL_ERROR),
                     fsys.join(root, "labels", "_errors", "part-0.parquet"))

    def row(recipe, n, trained, masked, tids):
        return {"input_ids": list(range(n)), "loss_mask": [0] * n, "position_ids": list(range(n)),
                "cu_seqlens": [0, n], "traj_ids": tids, "recipe": recipe, "num_tokens": n,
                "num_trained_tokens": trained, "num_masked_tokens": masked}
    rows = [row("srft", 1000, 600, 100, ["t1", "t2"]), row("srft", 500, 300, 50, ["t3"]),
            row("rft", 400, 250, 0, ["t1"])]
    fsys.write_table(pa.Table.from_pylist(rows, schema=TRAINING_ROW), fsys.join(root, "train_rows", "part-0.parquet"))

    metrics = []
    for step, loss in enumerate([2.0, 1.8, 1.5, 1.4, 1.2], 1):
        for rank, delta in ((0, 0.1), (1, -0.1)):  # one row per rank: the report averages them
            metrics.append({"step": step, "rank": rank, "loss": loss + delta, "lr": 5e-5})
    fsys.write_bytes(fsys.join(root, "train", "metrics.jsonl"),
                     "\n".join(json.dumps(m) for m in metrics).encode() + b"\n")
    return {
        "trajectories": fsys.join(root, "traj"),
        "labels": fsys.join(root, "labels"),
        "train_rows": fsys.join(root, "train_rows"),
        "train_metrics": fsys.join(root, "train", "metrics.jsonl"),
        "output": fsys.join(root, "report"),
    }


@pytest.fixture
def report_fixture(tmp_path) -> dict[str, str]:
    return write_fixture(str(tmp_path))
