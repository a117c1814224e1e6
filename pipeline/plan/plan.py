"""The production plan: will the presets fit, and what will they cost?

    python -m jobs.plan [train_preset=conf/prod/train.yaml] [label_preset=conf/prod/label.yaml] [mfu=0.4]

Train (per GPU, one rank of `scaling.num_workers`):
  * simulated: one step of the real architecture through the training code (FSDP2, activation
    checkpointing, mixed precision, packed attention, chunked cross-entropy, AdamW) on fake tensors
    (pipeline/plan/simulate.py): the peak of all live tensors, and the FLOPs executed;
  * analytic, as a cross-check and a breakdown: with N parameters sharded over W ranks and kept
    in fp32, parameters 4N/W, gradients 4N/W, AdamW moments 8N/W bytes; one cross-entropy chunk
    holds c x V logits in bf16 and fp32 plus the fp32 gradient: c * V * (2 + 4 + 4) bytes;
  * fits when simulated peak + gpu.reserved_gib <= gpu.memory_gib;
  * step time = model FLOPs / (W * peak * mfu), model FLOPs = 6 * N_matmul * tokens + causal
    attention (pipeline.train.data.doc_attention_flops); GPU-hours for the dataset's packed rows.

Label (per critic actor = one vLLM engine over tensor_parallel_size GPUs):
  * weights 2 * N / TP bytes per GPU (bf16);
  * KV cache per token per GPU: 2 (K and V) * layers * ceil(kv_heads / TP) * head_dim * 2 bytes;
  * KV budget per GPU = gpu_memory_utilization * memory - weights - activation reserve;
  * concurrent sequences = KV tokens per actor / tokens per sequence (at max_model_len, and at a
    typical trajectory: the prompt once - prefix caching shares it among the k votes - plus k
    answers);
  * trajectories/hour/actor from a public throughput figure (config.label.source), scaled by TP
    and a TP efficiency; the k votes multiply the decode tokens.

A preset that does not fit is refused with `UserError` (exit 2), naming what to change.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from omegaconf import OmegaConf

from pipeline.errors import UserError
from pipeline.plan.config import PlanConfig

GIB = 2**30


def _section(path: str, key: str) -> dict:
    """A stage preset, or the `key` section of a pipeline preset."""
    if not Path(path).exists():
        raise UserError(f"{key}_preset={path}: no such preset file (presets live in conf/prod/)")
    raw = OmegaConf.to_container(OmegaConf.load(path))
    if key in raw and isinstance(raw[key], dict) and "stages" in raw:
        return raw[key]
    return raw


def load_train(path: str):
    from pipeline.train.config import TrainConfig

    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TrainConfig), _section(path, "train")))


def load_label(path: str):
    from pipeline.label.config import LabelConfig

    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(LabelConfig), _section(path, "label")))


def hf_config(path: str):
    from transformers import AutoConfig

    if not Path(path).exists():
        raise UserError(f"model config {path}: no such file (ship the model's config.json under conf/models/)")
    return AutoConfig.from_pretrained(path)


def total_params(config) -> float:
    from pipeline.train.model import num_params

    embed = config.vocab_size * config.hidden_size
    return num_params(config)["matmul"] + (0 if config.tie_word_embeddings else embed)


# --------------------------------------------------------------------------------------------
# Train
# --------------------------------------------------------------------------------------------

def plan_train(cfg: PlanConfig, preset: str, simulate_fn=None) -> dict:
    from pipeline.plan.simulate import simulate
    from pipeline.train.data import doc_attention_flops
    from pipeline.train.model import num_params

    tc = load_train(preset)
    t, s = tc.train, tc.scaling
    model = hf_config(cfg.model_config)
    where = f"train_preset={preset}"
    if not s.use_gpu:
        raise UserError(f"{where}: scaling.use_gpu is false; the plan is for GPU training")
    world = int(s.num_workers * max(1, s.gpus_per_worker))
    if s.gpus_per_worker != 1:
        raise UserError(f"{where}: scaling.gpus_per_worker={s.gpus_per_worker}: FSDP runs one rank per GPU (set 1)")
    if t.seq_len > model.max_position_embeddings:
        raise UserError(f"{where}: train.seq_len={t.seq_len} exceeds the model's max_position_embeddings="
                        f"{model.max_position_embeddings}; lower train.seq_len")
    n = total_params(model)
    budget = cfg.gpu.memory_gib - cfg.gpu.reserved_gib
    states = 16 * n / world  # fp32 params + grads + AdamW moments, sharded
    ce_chunk = t.ce_chunk_tokens * model.vocab_size * (2 + 4 + 4)
    fix = ("raise scaling.num_workers (more shards), lower train.seq_len or train.ce_chunk_tokens, "
           "keep train.activation_checkpointing=true, or set train.cpu_offload=true")
    if states / GIB > budget:
        raise UserError(f"{where}: does not fit: the sharded fp32 parameters, gradients and AdamW state alone "
                        f"need {states / GIB:.1f} GiB per GPU at {world} GPUs (budget {budget:.1f} GiB); "
                        f"use at least {math.ceil(16 * n / (budget * GIB))} GPUs (scaling.num_workers)")
    sim = (simulate_fn or simulate)(model, t, world, list(cfg.sim_layers))
    fig = sim["figures"]
    peak = fig["Total"]
    fits = peak / GIB + cfg.gpu.reserved_gib <= cfg.gpu.memory_gib

    counts = num_params(model)
    doc_len = min(cfg.dataset.mean_tokens, t.seq_len)
    docs_per_row = max(1, int(t.seq_len * cfg.dataset.pack_fill // doc_len))
    import torch

    cu = torch.tensor([i * doc_len for i in range(docs_per_row + 1)])
    row_tokens = docs_per_row * doc_len
    rows_per_step = world * t.micro_batch_size * t.grad_accum
    model_flops = rows_per_step * (6 * counts["matmul"] * row_tokens
                                   + doc_attention_flops(cu, int(counts["layers"]), int(counts["attn_dim"])))
    step_s = model_flops / (world * cfg.gpu.peak_tflops * 1e12 * cfg.mfu)
    dataset_tokens = cfg.dataset.trajectories * doc_len
    rows = math.ceil(cfg.dataset.trajectories / docs_per_row)
    steps_per_epoch = rows // rows_per_step
    steps = steps_per_epoch * t.epochs
    report = {
        "preset": preset, "world_size": world, "seq_len": t.seq_len, "params": n,
        "memory_gib_per_gpu": {
            "simulated_peak": round(peak / GIB, 2),
            "simulated_by_kind": {k: round(v / GIB, 2) for k, v in fig.items() if k not in ("Total", "executed_flops")},
            "params_fp32_sharded": round(4 * n / world / GIB, 2),
            "grads_fp32_sharded": round(4 * n / world / GIB, 2),
            "adamw_state_sharded": round(8 * n / world / GIB, 2),
            "ce_chunk": round(ce_chunk / GIB, 2),
            "reserved": cfg.gpu.reserved_gib,
            "capacity": cfg.gpu.memory_gib,
            "headroom": round(cfg.gpu.memory_gib - cfg.gpu.reserved_gib - peak / GIB, 2),
        },
        "simulation": sim["method"], "simulation_wall_s": round(sim["wall_s"], 1),
        "flops_per_step": {"model": model_flops, "executed_per_gpu_simulated": fig["executed_flops"],
                           "note": "model = 6*N*tokens + causal attention (MFU numerator); executed includes "
                                   "the activation-checkpointing recompute, for one rank's micro-batch"},
        "mfu_assumed": cfg.mfu, "step_time_s": round(step_s, 1),
        "tokens_per_s_per_gpu": round(row_tokens * t.micro_batch_size * t.grad_accum / step_s, 1),
        "dataset": {"trajectories": cfg.dataset.trajectories, "tokens_per_trajectory": doc_len,
                    "tokens": dataset_tokens, "packed_rows": rows, "docs_per_row": docs_per_row},
        "steps": {"per_epoch": steps_per_epoch, "epochs": t.epochs, "total": steps},
        "wall_hours": round(steps * step_s / 3600, 2),
        "gpu_hours": round(steps * step_s * world / 3600, 1),
        "fits": fits,
    }
    if steps_per_epoch == 0:
        raise UserError(f"{where}: {rows} packed rows are less than one step of {rows_per_step} rows "
                        "(scaling.num_workers x micro_batch_size x grad_accum); lower scaling.num_workers")
    if not fits:
        raise UserError(f"{where}: does not fit: simulated peak {peak / GIB:.1f} GiB + {cfg.gpu.reserved_gib} GiB "
                        f"reserved > {cfg.gpu.memory_gib} GiB per GPU at seq_len={t.seq_len}, {world} GPUs; {fix}")
    return report


# --------------------------------------------------------------------------------------------
# Label
# --------------------------------------------------------------------------------------------

def plan_label(cfg: PlanConfig, preset: str) -> dict:
    lc = load_label(preset)
    c = lc.critic
    where = f"label_preset={preset}"
    if c.backend != "vllm":
        return {"preset": preset, "backend": c.backend, "note": "an OpenAI-compatible endpoint: no GPU plan"}
    model = hf_config(cfg.critic_config)
    tp = c.tensor_parallel_size
    if tp > cfg.gpu.per_node:
        raise UserError(f"{where}: critic.tensor_parallel_size={tp} exceeds the {cfg.gpu.per_node} GPUs of a node; "
                        f"use TP <= {cfg.gpu.per_node}")
    if c.num_gpus_per_actor not in (None, tp):  # None: derived from TP (CriticConfig.actor_resources)
        raise UserError(f"{where}: critic.num_gpus_per_actor={c.num_gpus_per_actor} must equal "
                        f"critic.tensor_parallel_size={tp} (one engine per actor)")
    if model.num_attention_heads % tp:
        raise UserError(f"{where}: {model.num_attention_heads} attention heads do not split over TP={tp}")
    head_dim = getattr(model, "head_dim", None) or model.hidden_size // model.num_attention_heads
    kv_heads_per_gpu = math.ceil(model.num_key_value_heads / tp)  # vLLM replicates KV heads when TP > kv heads
    kv_per_token = 2 * model.num_hidden_layers * kv_heads_per_gpu * head_dim * 2  # bytes per GPU
    n = total_params(model)
    weights = 2 * n / tp
    budget = c.gpu_memory_utilization * cfg.gpu.memory_gib * GIB - weights - cfg.label.activation_reserve_gib * GIB
    if budget <= 0:
        raise UserError(f"{where}: the critic's bf16 weights ({weights / GIB:.1f} GiB per GPU at TP={tp}) leave no KV "
                        f"cache; raise critic.tensor_parallel_size or critic.gpu_memory_utilization")
    kv_tokens = budget / kv_per_token
    if kv_tokens < c.max_model_len:
        raise UserError(f"{where}: the KV cache holds {int(kv_tokens)} tokens per actor, less than one "
                        f"critic.max_model_len={c.max_model_len} sequence; raise critic.tensor_parallel_size "
                        "or lower critic.max_model_len")
    steps = cfg.label.steps_per_trajectory
    output = steps * c.output_tokens_per_step  # one sampled labelling
    # The critic prompt (critic-v2) shows the whole trajectory while the budget allows, and is
    # compacted to the budget otherwise (pipeline/label/prompt.py).
    prompt = min(c.max_model_len - output, cfg.dataset.mean_tokens)
    per_trajectory_kv = prompt + c.num_samples * output  # prompt shared by the k votes (prefix caching)
    work = prompt + c.num_samples * output  # tokens processed (prefill once, decode k answers)
    actor_tps = cfg.label.tokens_per_s_per_gpu * tp * cfg.label.tp_efficiency
    per_hour = 3600 * actor_tps / work
    labelled = cfg.dataset.trajectories * cfg.dataset.label_fraction
    actors = c.pool.max
    return {
        "preset": preset, "tensor_parallel_size": tp, "actors_max": actors, "gpus_max": actors * tp,
        "weights_gib_per_gpu": round(weights / GIB, 2),
        "kv_bytes_per_token_per_gpu": kv_per_token,
        "kv_cache_gib_per_gpu": round(budget / GIB, 2),
        "kv_cache_gib_per_actor": round(budget * tp / GIB, 2),
        "kv_tokens_per_actor": int(kv_tokens),
        "max_concurrent_sequences": {"at_max_model_len": int(kv_tokens // c.max_model_len),
                                     "at_typical_trajectory": int(kv_tokens // per_trajectory_kv)},
        "batch_size_vs_concurrency": ("critic.batch_size keeps the engine full" if c.batch_size
                                      >= kv_tokens // per_trajectory_kv else "critic.batch_size is below what fits"),
        "typical_trajectory": {"prompt_tokens": prompt, "answer_tokens": output, "votes": c.num_samples,
                               "tokens_processed": work,
                               "note": "the k votes multiply the decode tokens, not the prefill"},
        "throughput": {"tokens_per_s_per_gpu": cfg.label.tokens_per_s_per_gpu, "source": cfg.label.source,
                       "tp_efficiency": cfg.label.tp_efficiency, "tokens_per_s_per_actor": round(actor_tps, 1)},
        "trajectories_per_hour_per_actor": round(per_hour, 1),
        "dataset_trajectories": int(labelled),
        "wall_hours_at_pool_max": round(labelled / (per_hour * actors), 2),
        "gpu_hours": round(labelled / per_hour * tp, 1),
    }


def run(cfg: PlanConfig, simulate_fn=None) -> dict:
    cfg.validate()
    plan = {"gpu": cfg.gpu.name, "train": plan_train(cfg, cfg.train_preset, simulate_fn),
            "label": plan_label(cfg, cfg.label_preset)}
    if cfg.output:
        from pipeline import fsys

        fsys.write_bytes(fsys.join(cfg.output, "plan.json"), json.dumps(plan, indent=2, default=float).encode())
    return plan
