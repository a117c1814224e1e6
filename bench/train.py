"""Train-loop throughput benchmark, no Ray, no hub: a Qwen2-shaped model built from a config,
random weights, synthetic packed rows, the real FSDP2 training step.

    torchrun --nproc_per_node=1 -m bench.train --size 1.5b --seq-len 32768 --steps 8
    python -m bench.train --size tiny --seq-len 512 --steps 3          # CPU smoke run

Prints one JSON line per step and a summary: tokens/s, MFU (6*N*tokens + causal attention FLOPs
over --peak-flops per device), peak memory, and the attention that ran: `--attn auto` is the
training default, packed attention with no T x T mask (pipeline/train/attention.py), whose backend
on an H100 in bf16 is torch's varlen flash kernel. Run it under torchrun (even on one GPU) so that
FSDP2's bf16 mixed precision applies; a plain single process computes in fp32.

The GPU figures of BENCHMARKS.md (0.5B and 1.5B, packed at 8k and 32k):

    for size in 0.5b 1.5b; do for len in 8192 32768; do
      torchrun --nproc_per_node=1 -m bench.train --size $size --seq-len $len --steps 8; done; done
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.distributed as dist

SIZES = {
    # Qwen2.5-0.5B / 1.5B shapes (vocab 151,936).
    "0.5b": {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
                 "num_key_value_heads": 2, "tie_word_embeddings": True},
    "1.5b": {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12,
                 "num_key_value_heads": 2, "tie_word_embeddings": True},
    "tiny": {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
                 "num_key_value_heads": 2, "tie_word_embeddings": True},
}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size", choices=sorted(SIZES), default="1.5b")
    p.add_argument("--vocab", type=int, default=151936)
    p.add_argument("--seq-len", type=int, default=32768)
    p.add_argument("--docs-per-row", type=int, default=4)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2, help="steps left out of the averages")
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--attn", default="auto")
    p.add_argument("--dtype", default=None, help="param dtype (default bf16 on GPU, fp32 on CPU)")
    p.add_argument("--no-ac", action="store_true", help="no activation checkpointing")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--peak-flops", type=float, default=989e12, help="per device (H100 SXM bf16 dense)")
    args = p.parse_args()

    from torch.distributed.device_mesh import init_device_mesh
    from transformers import Qwen2Config

    from pipeline.train import attention
    from pipeline.train.config import TrainParams
    from pipeline.train.data import collate, synthetic_rows
    from pipeline.train.loop import dist_context, lr_lambda, make_optimizer, train_step
    from pipeline.train.model import build, dtype_of, num_params

    if "RANK" in os.environ:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    ctx = dist_context()
    gpu = ctx.device.type == "cuda"
    if gpu:
        torch.cuda.set_device(ctx.device)
    config = Qwen2Config(vocab_size=args.vocab, max_position_embeddings=max(32768, args.seq_len),
                         rope_theta=1e6, **SIZES[args.size])
    mesh = init_device_mesh(ctx.device.type, (ctx.world,)) if dist.is_initialized() else None
    dtype = args.dtype or ("bfloat16" if gpu else "float32")
    model = build(config, ctx.device, mesh, attn_implementation=args.attn, param_dtype=dtype,
                  activation_checkpointing=not args.no_ac, compile=args.compile, weights=None)
    t = TrainParams(lr=1e-5, warmup_steps=1)
    opt = make_optimizer(model, t)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(1, args.steps, 0.1))
    counts = num_params(config)
    rows = synthetic_rows(args.steps * args.grad_accum, args.seq_len, args.vocab, seed=ctx.rank,
                          docs_per_row=args.docs_per_row)
    results = []
    for s in range(args.steps):
        mbs = [collate({k: [v[s * args.grad_accum + a]] for k, v in rows.items()}, args.seq_len)
               for a in range(args.grad_accum)]
        if gpu:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = train_step(model, opt, sched, mbs, ctx.device, 1.0, counts["matmul"],
                         (int(counts["layers"]), int(counts["attn_dim"])))
        if gpu:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        from pipeline.train.metrics import peak_memory_bytes

        r = {"step": s, "loss": round(out["loss"], 4), "step_time_s": round(dt, 3),
             "tokens_per_s": out["tokens"] / dt, "tokens_per_s_per_device": out["tokens"] / dt / ctx.world,
             "mfu": out["flops"] / (dt * ctx.world * args.peak_flops),
             "peak_memory_gb": round(peak_memory_bytes(ctx.device) / 2**30, 2)}
        results.append(r)
        if ctx.rank == 0:
            print(json.dumps(r), flush=True)
    timed = results[args.warmup:] or results
    summary = {
        "size": args.size, "params_matmul": counts["matmul"], "seq_len": args.seq_len,
        "docs_per_row": args.docs_per_row, "world": ctx.world, "device": str(ctx.device),
        "attn": model.lm.config._attn_implementation,
        "attn_backend": attention.backend(torch.empty(0, device=ctx.device, dtype=dtype_of(dtype)))
        if model.lm.config._attn_implementation == attention.NAME else None,
        "dtype": dtype, "activation_checkpointing": not args.no_ac,
        "tokens_per_s_per_device": sum(r["tokens_per_s_per_device"] for r in timed) / len(timed),
        "mfu": sum(r["mfu"] for r in timed) / len(timed),
        "peak_memory_gb": max(r["peak_memory_gb"] for r in results),
    }
    if ctx.rank == 0:
        print("SUMMARY " + json.dumps(summary), flush=True)
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
