"""Test helpers: TRAINING_ROW rows written with pyarrow, and a gloo process-group launcher."""

from __future__ import annotations

import os
import socket
import tempfile
import traceback
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.schema import TRAINING_ROW


def small_qwen2(dest, tokenizer) -> str:
    """A random Qwen2 with a 4,096-token vocabulary (the tokenizer folder `tokenizer` rides along
    for the export; rows use ids < 2,000): the lm_head + cross-entropy of the full 151,936-token
    vocabulary would dominate every CPU step."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    shutil.copytree(tokenizer, dest)
    config = Qwen2Config(
        vocab_size=4096, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
        tie_word_embeddings=True, eos_token_id=2, pad_token_id=0, bos_token_id=None,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(dest, safe_serialization=True)
    return str(dest)


def make_rows(n_rows: int, seed: int = 0, vocab: int = 2000, docs: tuple[int, int] = (1, 3),
              doc_len: tuple[int, int] = (8, 40), masked_step_every: int = 3) -> dict:
    """Rows shaped like the build stage's: packed documents, each a prompt (mask 0) followed by
    steps of 4-10 tokens; every `masked_step_every`-th step is a masked mistake (mask 0, kept in
    context), the others are trained (mask 1)."""
    rng = np.random.default_rng(seed)
    out = {f.name: [] for f in TRAINING_ROW}
    for r in range(n_rows):
        ids, mask, pos, cu, trajs = [], [], [], [0], []
        for d in range(int(rng.integers(docs[0], docs[1] + 1))):
            n = int(rng.integers(*doc_len))
            m = np.zeros(n, dtype=np.int8)
            t, k = int(rng.integers(2, 5)), 0
            while t < n:
                step = int(rng.integers(4, 11))
                m[t:t + step] = 0 if k % masked_step_every == masked_step_every - 1 else 1
                t, k = t + step, k + 1
            ids.append(rng.integers(10, vocab, n))
            mask.append(m)
            pos.append(np.arange(n))
            cu.append(cu[-1] + n)
            trajs.append(f"traj-{seed}-{r}-{d}")
        ids, mask = np.concatenate(ids), np.concatenate(mask)
        out["input_ids"].append(ids.astype(np.int32).tolist())
        out["loss_mask"].append(mask.tolist())
        out["position_ids"].append(np.concatenate(pos).astype(np.int32).tolist())
        out["cu_seqlens"].append(cu)
        out["traj_ids"].append(trajs)
        out["recipe"].append("srft")
        out["num_tokens"].append(len(ids))
        out["num_trained_tokens"].append(int(mask.sum()))
        out["num_masked_tokens"].append(int((mask == 0).sum()))
    return out


def write_rows(path, rows: dict, files: int = 1) -> str:
    table = pa.Table.from_pydict(rows, schema=TRAINING_ROW)
    os.makedirs(path, exist_ok=True)
    per = -(-table.num_rows // files)
    for i in range(files):
        pq.write_table(table.slice(i * per, per), os.path.join(path, f"part-{i:03d}.parquet"))
    return str(path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, fn, args, errfile):
    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        fn(rank, world, *args)
    except BaseException:
        with open(f"{errfile}.{rank}", "w") as f:
            f.write(traceback.format_exc())
        raise
    finally:
        dist.destroy_process_group()


def spawn(fn, world: int, *args) -> None:
    """Run fn(rank, world, *args) in `world` processes joined by a gloo process group."""
    import torch.multiprocessing as mp

    errfile = tempfile.mktemp(prefix="srft-spawn-")
    try:
        mp.spawn(_worker, args=(world, _free_port(), fn, args, errfile), nprocs=world, join=True)
    except Exception as e:  # noqa: BLE001 - any rank's failure: report the ranks' own tracebacks instead
        msgs = [Path(f"{errfile}.{r}").read_text() for r in range(world) if os.path.exists(f"{errfile}.{r}")]
        raise RuntimeError("\n".join(msgs) or str(e)) from None
