"""The whole label stage on a real vLLM CPU engine (tiny random Qwen2) in a real Ray actor pool:
prompt, ActorPoolStrategy, schema-constrained generation, parsing, shards, summary, resume."""

from __future__ import annotations

import pytest

from pipeline import fsys, io
from pipeline.commit import open_output
from pipeline.errors import UserError
from pipeline.label import eval_critic
from pipeline.label import stage as label
from pipeline.label.config import CriticConfig, EvalCriticConfig, LabelConfig, PoolConfig
from pipeline.label.prompt import PROMPT_VERSION
from pipeline.manifest import run_direct
from pipeline.schema import LABEL_ERROR, LABELS, STEP_LABEL
from tests.label.helpers import trajectory, write_trajectories


def tiny_critic(model, **kw) -> CriticConfig:
    base = {
        "model": str(model), "max_model_len": 2048, "dtype": "float32", "enforce_eager": True, "num_samples": 1,
        "reason_max_chars": 12, "output_tokens_per_step": 32, "batch_size": 2, "num_cpus_per_actor": 0.5,
        "env": {"VLLM_CPU_KVCACHE_SPACE": "1"}, "pool": PoolConfig(min=1, max=1), "max_retries": 1,
    }
    base.update(kw)
    return CriticConfig(**base)


@pytest.fixture(scope="module")
def traj_input(tmp_path_factory):
    root = tmp_path_factory.mktemp("label-in")
    rows = [trajectory(f"u{i}", 2 + i, resolved=False) for i in range(3)]
    rows += [trajectory("r0", 2, resolved=True), trajectory("unknown0", 3, resolved=None),
             trajectory("nosteps", 0, resolved=False)]
    return write_trajectories(rows, str(root / "trajectories"))


def _seed_label(out: str, traj_id: str, steps: int, critic_model: str, prompt_version: str = PROMPT_VERSION) -> None:
    """A committed shard as an interrupted earlier run of the same critic would have left it
    (one of its periodic commits, status partial)."""
    import pyarrow as pa

    rows = [{"traj_id": traj_id, "step": k, "label": "good", "confidence": 1.0, "reason": "earlier run",
             "critic_model": critic_model, "prompt_version": prompt_version, "num_samples": 1,
             "run_id": "earlier", "prompt_tokens": 1, "completion_tokens": 1} for k in range(steps)]
    with open_output("label", out) as o:
        fsys.write_table(pa.Table.from_pylist(rows, schema=STEP_LABEL), fsys.join(o.uri, "part-earlier-00000.parquet"))
        o.commit("partial")


def test_label_resume_and_eval(ray_session, tiny_qwen2_path, traj_input, tmp_path):
    out = str(tmp_path / "labels")
    # a random tiny model: its error share is not this test's subject
    cfg = LabelConfig(input=traj_input, output=out, critic=tiny_critic(tiny_qwen2_path),
                      max_error_fraction=1.0)
    _seed_label(out, "u0", 2, label.critic_name(cfg))  # resume: u0 is already done
    s = run_direct(label.STAGE, cfg)
    # default: unresolved and unknown-outcome trajectories only; u0 skipped as already labelled
    assert s["rows_in"] == 6 and s["skipped_resolved"] == 1 and s["skipped_already_labelled"] == 1
    assert s["skipped_no_steps"] == 1  # nothing to label: counted, neither sent nor an error
    assert s["trajectories_selected"] == 3
    assert s["trajectories_labelled"] + s["trajectories_errored"] == 3
    assert s["calls_per_trajectory"] >= 1  # one call per trajectory (more on retries)
    t = io.read_table(out, STEP_LABEL)
    assert t.schema.metadata[b"srft.table"] == b"step_label"
    labelled = set(t["traj_id"].to_pylist())
    assert "r0" not in labelled and "nosteps" not in labelled
    assert t.filter(pa_eq(t["traj_id"], "u0"))["run_id"].to_pylist() == ["earlier"] * 2  # not redone
    # one row per (traj_id, step), every step of every labelled trajectory present
    pairs = list(zip(t["traj_id"].to_pylist(), t["step"].to_pylist()))
    assert len(pairs) == len(set(pairs)) == s["rows_out"] == s["rows_written"] + 2 and s["rows_carried"] == 2
    steps = {"u0": 2, "u1": 3, "u2": 4, "unknown0": 3}
    for tid in labelled:
        assert sorted(st for x, st in pairs if x == tid) == list(range(steps[tid]))
    assert set(t["label"].to_pylist()) <= set(LABELS)
    assert all(0.0 <= c <= 1.0 for c in t["confidence"].to_pylist())
    assert set(t["prompt_version"].to_pylist()) == {PROMPT_VERSION}
    assert all(n == 1 for n in t["num_samples"].to_pylist()) and all(p > 0 for p in t["prompt_tokens"].to_pylist())
    errs = io.read_table(fsys.join(out, "_errors"), LABEL_ERROR)
    assert errs.num_rows == s["trajectories_errored"] and "nosteps" not in errs["traj_id"].to_pylist()
    assert io.exists(fsys.join(out, "_summary.json"))

    # Re-run without retrying errors: idempotent, nothing selected, so no engine starts
    cfg.retry_errors = False
    again = run_direct(label.STAGE, cfg)
    assert again["trajectories_selected"] == 0 and again["skipped_already_labelled"] == len(labelled)
    assert again["skipped_previous_error"] == s["trajectories_errored"]
    assert io.read_table(out, STEP_LABEL).num_rows == t.num_rows
    assert io.read_table(fsys.join(out, "_errors"), LABEL_ERROR).num_rows == errs.num_rows

    # Selection only (limit=0: nothing runs): errors are retried by default, label_resolved adds r0
    cfg.retry_errors, cfg.limit, cfg.critic.label_resolved = True, 0, True
    sel = run_direct(label.STAGE, cfg)
    assert sel["skipped_resolved"] == 0 and sel["skipped_limit"] == 1 + s["trajectories_errored"]

    # the eval harness on these labels against themselves: perfect scores, full confusion
    m = eval_critic.run(EvalCriticConfig(labels=out, reference=out))
    assert m["accuracy"] == 1.0 and m["unlabelled_reference_steps"] == 0
    assert sum(sum(r.values()) for r in m["confusion"].values()) == t.num_rows


def pa_eq(col, value):
    import pyarrow.compute as pc

    return pc.equal(col, value)


def test_other_critic_refused(ray_session, tiny_qwen2_path, traj_input, tmp_path):
    out = str(tmp_path / "labels")
    _seed_label(out, "u0", 1, "another", "p0")
    with pytest.raises(UserError, match="another critic"):
        run_direct(label.STAGE, LabelConfig(input=traj_input, output=out, critic=tiny_critic(tiny_qwen2_path)))


def test_missing_input_fails_at_once(tmp_path, tiny_qwen2_path):
    with pytest.raises(FileNotFoundError):
        run_direct(label.STAGE, LabelConfig(input=str(tmp_path / "nope"), output=str(tmp_path / "o"),
                              critic=tiny_critic(tiny_qwen2_path)))
