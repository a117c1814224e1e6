"""The train loop under torchrun, without Ray:

    torchrun --nproc_per_node=8 -m pipeline.train.torchrun data=... model=... output=...

Rows are read with pyarrow (`data.local_source`), checkpoints go in a run folder under
<checkpoint_storage or output/_checkpoints> (a filesystem every rank sees), and the identity and
resume rules are the Ray stage's (`resume.plan_resume`, decided on rank 0 and broadcast).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys

import torch
import torch.distributed as dist

from pipeline import fsys
from pipeline.config import load_config
from pipeline.runtime import new_run_id
from pipeline.train import checkpoint as ckpt
from pipeline.train.config import TrainConfig
from pipeline.train.data import local_source
from pipeline.train.loop import Reporter, dist_context, run
from pipeline.train.resume import plan_resume, run_identity


class LocalReporter(Reporter):
    """torchrun: checkpoints under a local (shared) run folder, metrics printed by rank 0."""

    def __init__(self, root: str, rank: int):
        self.root, self.rank = root, rank

    def latest_checkpoint(self):
        if not os.path.isdir(self.root):
            return None
        done = sorted(d for d in os.listdir(self.root) if os.path.exists(os.path.join(self.root, d, ".complete")))
        if not done:
            return None
        path = os.path.join(self.root, done[-1])
        return contextlib.nullcontext(path), path

    def report(self, metrics, model=None, optimizer=None, train_state=None, step=0):
        if self.rank == 0:
            print(json.dumps(metrics), flush=True)
        if model is not None:
            d = os.path.join(self.root, f"checkpoint-step{step:07d}")
            ckpt.save(d, model, optimizer, train_state)
            if dist.is_initialized():
                dist.barrier()
            if self.rank == 0:
                open(os.path.join(d, ".complete"), "w").close()


def main(argv: list[str]) -> dict:
    """Train on this rank (every rank runs this under torchrun) and return the run's summary."""
    cfg = load_config(TrainConfig, "train", argv)  # validated there
    if "RANK" in os.environ and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    ctx = dist_context()
    t = cfg.train
    storage = cfg.checkpoint_storage or fsys.join(cfg.output, "_checkpoints")
    plan = [None]
    if ctx.rank == 0:
        identity = run_identity(cfg)
        # plan_resume's "identity" is the hex digest; the loop takes the whole identity (its parts).
        plan = [{**plan_resume(cfg, storage, identity), "identity": identity}]
    if dist.is_initialized():
        dist.broadcast_object_list(plan, src=0)
    plan = plan[0]
    source, total_rows = local_source(cfg.data, ctx.rank, ctx.world, t.seq_len, t.micro_batch_size, t.shuffle,
                                      t.seed, eval_fraction=t.eval_fraction, side="train")
    eval_source, eval_rows = None, 0
    if t.eval_fraction > 0 or cfg.eval_data:
        batches, eval_rows = local_source(cfg.eval_data or cfg.data, ctx.rank, ctx.world, t.seq_len,
                                          t.micro_batch_size, False, t.seed, eval_fraction=t.eval_fraction,
                                          side="eval" if t.eval_fraction > 0 else "all", drop_last=False)
        eval_source = lambda: batches(0, 0)
    root = os.path.join(storage, plan["run_name"])
    try:
        return run(cfg, source, total_rows, LocalReporter(root, ctx.rank), ctx, new_run_id(),
                   identity=plan["identity"], run_name=plan["run_name"], resume_from=plan.get("resume_from"),
                   eval_source=eval_source, eval_rows=eval_rows)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
