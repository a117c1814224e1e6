"""The production plan (pipeline/plan): the shipped presets fit and are costed; presets that cannot
fit are refused, naming the key to change. One simulation of the 32B step (at 4, 6 and 8 layers,
extrapolated) is shared by the tests of this module (the simulation is memoised per process). The
simulation itself is checked against a real gloo step of the training code at a small shape."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pipeline.errors import StageFailed, UserError
from pipeline.plan import simulate as sim
from pipeline.plan.config import PlanConfig
from pipeline.plan.plan import plan_label, run
from tests.train.helpers import spawn

PROD = Path("conf/prod")


@pytest.fixture(scope="module")
def prod_plan() -> dict:
    return run(PlanConfig(train_preset=str(PROD / "train.yaml"), label_preset=str(PROD / "label.yaml")))


def test_shipped_presets_fit_and_are_costed(prod_plan):
    train = prod_plan["train"]
    mem = train["memory_gib_per_gpu"]
    assert train["fits"] and train["world_size"] == 32 and train["seq_len"] == 32768
    assert 3.2e10 < train["params"] < 3.3e10  # Qwen2.5-Coder-32B: 32.76B parameters
    # The simulated peak holds at least the sharded fp32 states and stays under the budget.
    states = mem["params_fp32_sharded"] + mem["grads_fp32_sharded"] + mem["adamw_state_sharded"]
    assert states < mem["simulated_peak"] <= mem["capacity"] - mem["reserved"]
    assert train["simulation"].startswith("simulated at 4, 6, 8 layers (on one line")
    assert train["step_time_s"] > 0 and train["gpu_hours"] > 0 and train["steps"]["total"] > 0
    assert train["flops_per_step"]["model"] > 0
    label = prod_plan["label"]
    assert label["tensor_parallel_size"] == 4 and label["kv_bytes_per_token_per_gpu"] == 2 * 64 * 2 * 128 * 2
    assert label["max_concurrent_sequences"]["at_max_model_len"] >= 1
    assert label["trajectories_per_hour_per_actor"] > 0


def test_pipeline_preset_sections_plan_the_same(prod_plan):
    both = run(PlanConfig(train_preset=str(PROD / "pipeline.yaml"), label_preset=str(PROD / "pipeline.yaml")))
    assert both["train"]["memory_gib_per_gpu"] == prod_plan["train"]["memory_gib_per_gpu"]
    assert both["label"]["kv_tokens_per_actor"] == prod_plan["label"]["kv_tokens_per_actor"]


def test_too_few_gpus_is_refused_before_simulating(tmp_path):
    preset = yaml.safe_load((PROD / "train.yaml").read_text())
    preset["scaling"]["num_workers"] = 4
    path = tmp_path / "train-4gpu.yaml"
    path.write_text(yaml.safe_dump(preset))
    with pytest.raises(UserError, match=r"scaling.num_workers") as err:
        run(PlanConfig(train_preset=str(path), label_preset=str(PROD / "label.yaml")),
            simulate_fn=lambda *a: pytest.fail("simulated a preset whose states cannot fit"))
    assert "does not fit" in str(err.value)


def test_simulated_peak_over_capacity_is_refused(prod_plan):
    """The same preset on a 48 GiB GPU: the (memoised) simulation's peak does not fit."""
    cfg = PlanConfig(train_preset=str(PROD / "train.yaml"), label_preset=str(PROD / "label.yaml"))
    cfg.gpu.memory_gib = 48.0
    with pytest.raises(UserError, match=r"simulated peak .* train.seq_len"):
        run(cfg)


def test_critic_at_tp1_is_refused(tmp_path):
    preset = yaml.safe_load((PROD / "label.yaml").read_text())
    preset["critic"]["tensor_parallel_size"] = preset["critic"]["num_gpus_per_actor"] = 1
    path = tmp_path / "label-tp1.yaml"
    path.write_text(yaml.safe_dump(preset))
    with pytest.raises(UserError, match=r"critic.tensor_parallel_size"):
        plan_label(PlanConfig(), str(path))


def test_plan_json_written(prod_plan, tmp_path):
    run(PlanConfig(output=str(tmp_path)))  # memoised simulation
    written = json.loads((tmp_path / "plan.json").read_text())
    assert written["train"]["gpu_hours"] == prod_plan["train"]["gpu_hours"]


# --------------------------------------------------------------------------------------------
# The simulation against real tensors
# --------------------------------------------------------------------------------------------

def _small_qwen2():
    from transformers import Qwen2Config

    return Qwen2Config(hidden_size=256, intermediate_size=768, num_attention_heads=4, num_key_value_heads=2,
                       vocab_size=1024, num_hidden_layers=8, max_position_embeddings=4096, tie_word_embeddings=False)


def _small_train():
    from pipeline.train.config import TrainParams

    return TrainParams(seq_len=512, ce_chunk_tokens=256, param_dtype="bfloat16")


def _real_peaks(rank, world, depths, out):
    peaks = [sim.measure_step(_small_qwen2(), _small_train(), d).peak_bytes["Total"] for d in depths]
    if rank == 0:
        Path(out).write_text(json.dumps(peaks))


def test_simulated_peak_matches_a_real_gloo_step(tmp_path):
    """The same step (training code's FSDP2, checkpointing, bf16/fp32, chunked CE, clip, AdamW) on
    real tensors over gloo (world 2) and simulated on fake tensors over a fake world of 2: the peaks
    and the per-layer slope agree. At this shape a layer's unsharded fp32 weights (3 MiB) are large
    against its saved input (0.25 MiB), so the artifact that made the 64-layer 32B simulation report
    137 GiB (DTensor's shape propagation counted as memory, see sim.sharding_propagation_off_the_books)
    shows at 6 layers: simulated 60.1 MiB against a real 52.3."""
    depths = [2, 6]
    out = tmp_path / "real.json"
    spawn(_real_peaks, 2, depths, str(out))
    real = json.loads(out.read_text())
    fake = [sim.simulate_step(_small_qwen2(), _small_train(), 2, d).peak_bytes["Total"] for d in depths]
    for d, r, f in zip(depths, real, fake):
        assert f == pytest.approx(r, rel=0.03), f"{d} layers: simulated {f / 2**20:.2f} MiB, real {r / 2**20:.2f} MiB"
    real_slope, fake_slope = ((x[1] - x[0]) / (depths[1] - depths[0]) for x in (real, fake))
    assert fake_slope == pytest.approx(real_slope, rel=0.03)
    assert real_slope > 4 * 2**20  # a layer's fp32 param + AdamW shards alone: 4.5 MiB at world 2


def test_depths_off_the_line_are_refused(monkeypatch):
    """A third depth off the line through the first two stops the plan instead of extrapolating."""
    peaks = {4: 24.0, 6: 25.0, 8: 27.0}  # GiB: the slope doubles past 6 layers

    def step(hf_config, train, world, layers):
        return sim.StepSimulation(layers, dict.fromkeys(sim.CATEGORIES, peaks[layers] * 2**30), 1.0, 0.0)

    monkeypatch.setattr(sim, "simulate_step", step)
    model = _small_qwen2()
    model.num_hidden_layers = 64
    with pytest.raises(StageFailed, match=r"not affine .* 8 layers,.*sim_layers=\[64\]"):
        sim._simulate(model, _small_train(), 32, [4, 6, 8])
    peaks[8] = 26.0
    assert sim._simulate(model, _small_train(), 32, [4, 6, 8])["figures"]["Total"] == 26.0 * 2**30 + 56 * 2**29
