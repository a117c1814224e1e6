"""The training loop of one rank: plain torch.distributed, driven by Ray Train
(`pipeline.train.stage.ray_train_loop`) or torchrun (`pipeline.train.torchrun`).

Loss normalisation (verl and TRL both shipped bugs here). For one optimizer step, over data-
parallel ranks r, gradient-accumulation micro-batches m and token positions t:

    N    = sum_r sum_m #{t : labels[r,m,t] != -100}       (counted on the SHIFTED labels)
    loss = (1 / N) * sum_r sum_m sum_{t : labels[r,m,t] != -100} CE(logits[r,m,t], labels[r,m,t])

Each rank all-reduces its local count once per step, before any forward, and back-propagates
`sum_t CE / N` for every micro-batch; FSDP *sums* the gradients over ranks (divide factor 1).
The gradient is then exactly that of the global token mean, however the trained tokens are
spread over ranks and micro-batches (a per-rank or per-micro-batch mean would weight tokens of
short batches more).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh

from pipeline import fsys
from pipeline.config import redacted
from pipeline.progress import Progress
from pipeline.train import checkpoint as ckpt
from pipeline.train.config import TrainConfig
from pipeline.train.data import MicroBatch, Source, doc_attention_flops, total_steps
from pipeline.train.metrics import peak_flops, peak_memory_bytes
from pipeline.train.model import CausalLMLoss, build, dtype_of, local_model_path, num_params
from pipeline.train.tracking import SafeTracker, open_tracker

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Dist:
    rank: int
    world: int
    local_rank: int
    local_world: int
    device: torch.device


def dist_context(device: torch.device | None = None) -> Dist:
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    if device is None:
        device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    return Dist(rank, world, local_rank, local_world, device)


def lr_lambda(warmup: int, total: int, min_ratio: float, schedule: str = "cosine") -> Callable[[int], float]:
    """Linear warmup over `warmup` steps (step s trains at (s+1)/(warmup+1) of lr: never 0), then
    `schedule` from lr to min_ratio * lr at the last step: cosine, linear, or constant (stays at lr)."""
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / max(1, total - warmup - 1))
        if schedule == "constant":
            return 1.0
        if schedule == "linear":
            return 1.0 - (1 - min_ratio) * progress
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return f


def make_optimizer(model: torch.nn.Module, t) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]  # norms and biases
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=t.lr, betas=(t.adam_beta1, t.adam_beta2), eps=t.adam_eps,
    )


def _all_reduce(values: list[float], device: torch.device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


def forward_backward(model: CausalLMLoss, micro_batches: list[MicroBatch], device) -> tuple[float, float]:
    """Accumulate the gradient of the global token-mean loss over this rank's micro-batches.
    Returns (global loss, global trainable-token count N). Collective."""
    local_targets = sum(mb.num_targets for mb in micro_batches)
    (n_global,) = _all_reduce([local_targets], device)
    denom = max(n_global, 1.0)  # an all-masked step contributes zero gradient
    loss_sum = torch.zeros((), dtype=torch.float32, device=device)
    for mb in micro_batches:
        part = model(mb.to(device))  # sum of CE over this micro-batch's trained targets
        (part / denom).backward()  # FSDP sums these over ranks: grad of (1/N) * sum CE
        loss_sum += part.detach()
    (loss_total,) = _all_reduce([float(loss_sum)], device)
    return loss_total / denom, n_global


def train_step(model: CausalLMLoss, optimizer, scheduler, micro_batches: list[MicroBatch], device,
               max_grad_norm: float, flops_per_token: float, attn: tuple[int, int]) -> dict:
    """One optimizer step over this rank's micro-batches (see the module docstring for the loss).
    Every rank must call it the same number of times."""
    local_tokens = sum(mb.num_tokens for mb in micro_batches)
    local_seq = sum(mb.input_ids.shape[1] for mb in micro_batches)
    local_attn = sum(doc_attention_flops(mb.cu_seqlens, *attn) for mb in micro_batches)
    tokens, seq, attn_flops = _all_reduce([local_tokens, local_seq, local_attn], device)
    loss, n_global = forward_backward(model, micro_batches, device)
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    if hasattr(grad_norm, "full_tensor"):
        grad_norm = grad_norm.full_tensor()
    lr = optimizer.param_groups[0]["lr"]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return {
        "loss": loss,
        "grad_norm": float(grad_norm),
        "lr": lr,
        "trained_tokens": n_global,
        "tokens": tokens,
        # MFU numerator: 6 * N_matmul * tokens (forward 2N + backward 4N) + causal attention.
        "flops": 6 * flops_per_token * seq + attn_flops,
    }


class Reporter:
    """Where metrics and checkpoints go: Ray Train (`stage.RayReporter`) or a local folder
    (`torchrun.LocalReporter`)."""

    def latest_checkpoint(self):  # (context manager yielding a local dir, its URI) or None
        ...

    def report(self, metrics: dict, model=None, optimizer=None, train_state=None, step: int = 0) -> None: ...


def evaluate(model: CausalLMLoss, batches, ctx: Dist) -> tuple[float, float]:
    """Token-mean cross-entropy over the trained targets of every rank's eval rows:
    (sum over ranks of CE sums) / (sum over ranks of target counts). The ranks go in lock step
    (each forward is collective under FSDP) and stop together when any runs out."""
    loss_sum, count = 0.0, 0
    was_training = model.training
    model.eval()
    it = iter(batches)
    with torch.no_grad():
        while True:
            mb = next(it, None)
            (have,) = _all_reduce([float(mb is not None)], ctx.device)
            if have < ctx.world:
                break
            loss_sum += float(model(mb.to(ctx.device)))
            count += mb.num_targets
    model.train(was_training)
    total, n = _all_reduce([loss_sum, count], ctx.device)
    return total / max(n, 1.0), n


def export_dtype(name: str, config) -> torch.dtype:
    """auto = the input model's own dtype (its config.json), bfloat16 when it names none."""
    if name != "auto":
        return dtype_of(name)
    stored = getattr(config, "torch_dtype", None) or getattr(config, "dtype", None)
    if isinstance(stored, torch.dtype):
        return stored
    return dtype_of(stored) if isinstance(stored, str) and stored in ("bfloat16", "float16", "float32") \
        else torch.bfloat16


def run(cfg: TrainConfig, source: Source, total_rows: int, reporter: Reporter, ctx: Dist | None = None,
        run_id: str = "train", *, identity: dict | None = None, run_name: str = "train",
        resume_from: str | None = None, eval_source: Callable[[], object] | None = None,
        eval_rows: int = 0) -> dict:
    """Train on this rank. Every rank runs exactly `total` steps (from the global row count).

    A checkpoint of this run (after a worker-group restart, or a run resumed by name) wins over
    `resume_from`, which is read only when the run has none yet."""
    from transformers import AutoConfig  # transformers takes seconds to import: only where a model is built

    t = cfg.train
    ctx = ctx or dist_context()
    if ctx.device.type == "cpu":
        torch.set_num_threads(t.cpu_threads or max(1, (os.cpu_count() or 1) // max(1, ctx.local_world)))
    else:
        torch.cuda.set_device(ctx.device)
    torch.manual_seed(t.seed + ctx.rank)
    param_dtype = ckpt.resolved_param_dtype(t.param_dtype, ctx.device.type == "cuda")

    model_dir = local_model_path(cfg.model)
    config = AutoConfig.from_pretrained(model_dir)
    mesh = init_device_mesh(ctx.device.type, (ctx.world,)) if dist.is_initialized() else None
    model = build(
        config, ctx.device, mesh, attn_implementation=t.attn_implementation, param_dtype=param_dtype,
        reduce_dtype=t.reduce_dtype, activation_checkpointing=t.activation_checkpointing,
        cpu_offload=t.cpu_offload, compile=t.compile, ce_chunk_tokens=t.ce_chunk_tokens,
        weights=model_dir, seed=t.seed,
    )
    model.train()
    optimizer = make_optimizer(model, t)
    per_epoch, total = total_steps(total_rows, ctx.world, t.micro_batch_size, t.grad_accum, t.epochs, t.max_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(t.warmup_steps, total, t.min_lr_ratio, t.lr_schedule))
    counts = num_params(config)
    peak = peak_flops(ctx.device, param_dtype, t.peak_flops_per_device)

    step, history, restored_from = 0, [], None
    latest = reporter.latest_checkpoint()
    temporary = None
    if latest is None and resume_from:
        local = ckpt.local_copy(resume_from)
        temporary = local if local != fsys.filesystem(resume_from)[1] else None
        latest = (contextlib.nullcontext(local), resume_from)
    if latest is not None:
        opener, restored_from = latest
        with opener as directory:
            state = ckpt.load(directory, model, optimizer)
        if temporary:
            shutil.rmtree(temporary, ignore_errors=True)
        scheduler.load_state_dict(state["scheduler"])
        step, history = state["step"], state["history"]
        if ctx.rank == 0:
            log.warning("restored step %d (epoch %d) from %s", step, step // per_epoch, restored_from)
    restored_step = step

    rank0 = ctx.rank == 0
    tracker = SafeTracker(lambda: open_tracker(cfg, run_name, step) if rank0 else None)
    if rank0:
        tracker.log_config({"config": redacted(cfg), "identity": identity or {}})
    progress = Progress("train", total, "steps", every_s=30.0) if rank0 else None
    if progress:
        progress.done = step

    metrics_uri = fsys.join(cfg.output, "metrics.jsonl")
    started = time.time()
    last = {}
    while step < total:
        epoch, in_epoch = divmod(step, per_epoch)
        batches = source(epoch, in_epoch * t.grad_accum)  # data position: skip what was trained
        for _ in range(in_epoch, per_epoch):
            mbs = [mb for _, mb in zip(range(t.grad_accum), batches)]  # range first: no row lost
            (ready,) = _all_reduce([float(len(mbs) == t.grad_accum)], ctx.device)
            if ready < ctx.world:  # cannot happen with an equal split; fail loudly rather than hang
                raise RuntimeError(f"rank {ctx.rank}: data ran out at step {step} (epoch {epoch}); "
                                   f"{int(ctx.world - ready)} ranks had no full step")
            t0 = time.perf_counter()
            out = train_step(model, optimizer, scheduler, mbs, ctx.device, t.max_grad_norm,
                             counts["matmul"], (int(counts["layers"]), int(counts["attn_dim"])))
            if ctx.device.type == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            step += 1
            last = {
                "step": step, "epoch": epoch, "loss": out["loss"], "lr": out["lr"],
                "grad_norm": out["grad_norm"], "tokens_per_s": out["tokens"] / dt,
                "trained_tokens_per_s": out["trained_tokens"] / dt,
                "trained_tokens": out["trained_tokens"], "step_time_s": dt,
                "mfu": out["flops"] / (dt * ctx.world * peak) if peak else None,
                "peak_memory_gb": peak_memory_bytes(ctx.device) / 2**30,
            }
            if eval_source is not None and (step == total or (t.eval_every > 0 and step % t.eval_every == 0)):
                last["eval_loss"], last["eval_targets"] = evaluate(model, eval_source(), ctx)
            history.append(last)
            save = step == total or (t.checkpoint_every_steps > 0 and step % t.checkpoint_every_steps == 0)
            logged = step % t.log_every_steps == 0 or "eval_loss" in last
            if rank0:
                progress.update(1, force=logged or step == total, loss=last["loss"],
                                tok_s=round(last["tokens_per_s"]), lr=last["lr"],
                                **({"eval_loss": last["eval_loss"]} if "eval_loss" in last else {}))
                if logged:
                    tracker.log_metrics({f"train/{k}": v for k, v in last.items() if k not in ("step", "eval_loss",
                                                                                                "eval_targets")}
                                        | ({"eval/loss": last["eval_loss"]} if "eval_loss" in last else {}), step)
                if save or logged:
                    fsys.write_bytes(metrics_uri, "".join(json.dumps(h) + "\n" for h in history).encode())
            if save:
                state = {"step": step, "epoch": epoch, "micro_batches_in_epoch": (in_epoch + 1) * t.grad_accum,
                         "scheduler": scheduler.state_dict(), "history": history, "world_size": ctx.world,
                         "identity": identity}
                reporter.report(last, model, optimizer, state, step)
                if rank0:
                    tracker.sync()
            elif logged:
                reporter.report(last)
            in_epoch += 1
            if step >= total:
                break
        for _ in batches:  # drain the epoch so every rank's split finishes it
            pass

    export_uri = None
    if t.export:
        export_uri = ckpt.export_hf(model.lm, model_dir, fsys.join(cfg.output, "hf"), export_dtype(t.export_dtype, config),
                                    t.export_shard_bytes, run_id)
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    summary = {
        "rows_in": total_rows, "rows_per_rank": total_rows // ctx.world, "world_size": ctx.world,
        "steps": step, "steps_this_attempt": step - restored_step, "steps_per_epoch": per_epoch,
        "epochs": t.epochs, "trained_tokens": sum(h["trained_tokens"] for h in history),
        "first_loss": history[0]["loss"] if history else None,
        "final_loss": history[-1]["loss"] if history else None,
        "eval_rows": eval_rows, "eval_loss": evals[-1][1] if evals else None, "eval_losses": evals,
        "mfu": last.get("mfu") if last else None, "param_dtype": param_dtype,
        "export": export_uri, "metrics": metrics_uri,
        # The checkpoint this attempt started from: an earlier run's (resume) or this run's own
        # after a worker-group restart.
        "restored_from": restored_from, "restored_step": restored_step if restored_from else None,
        "identity": (identity or {}).get("identity"), "run_name": run_name,
        "tracking": cfg.tracking, "tracking_error": tracker.error,
        "wall_s": time.time() - started,
    }
    if rank0:
        tracker.close()
        # Every attempt writes the whole history (a resumed finished run trains no step at all).
        fsys.write_bytes(metrics_uri, "".join(json.dumps(h) + "\n" for h in history).encode())
        fsys.write_bytes(fsys.join(cfg.output, "_summary.json"), json.dumps(summary, indent=2).encode())
    return summary
