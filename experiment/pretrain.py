"""The student's pretraining: copying from the context, before it sees any agent run.

    python -m experiment.pretrain SRC DEST [steps=600] [seed=0]

Why. The paper fine-tunes Qwen2.5-Coder-32B-Instruct, a model that copies a file name from a
tool's output into its next command from the first step. A randomly initialised student does
not: with every recipe it had to *discover* copying (an induction head) from the agent runs
themselves, a phase change that 3 of 15 trainings reached within 1,500 steps, so the table's
task success measured which training happened to reach it, not the recipe (docs/experiment.md,
"Task success"). Pretraining gives every recipe the same starting point a real base model has:
a student that can copy, and knows nothing of the environment.

What it is trained on. Only the classic induction corpus (Olsson et al., 2022, "In-context
learning and induction heads"): sequences of tokens drawn uniformly from the student's whole
vocabulary, each sequence a random segment followed by its own repeat, loss on the repeat only.
A token is predictable only by finding its earlier occurrence and copying its successor, so the
one thing learnt is copying. Nothing of the environment is in it: no chat template, no tool
call, no file, test, function or operator, no order or frequency of the task's words (the
module names are 16 of 606 equally likely tokens). The untrained-on-the-task `base` row stays
at 0 (it never produces a valid call), and the tests check that the corpus has no special token.

Why a plain torch loop and not the train stage. This is the base model's own training, which
in production happens before the pipeline (Qwen's pretraining); the pipeline's stages start from
its output, exactly as they start from a Hugging Face checkpoint. The loop is AdamW with warm-up
and cosine decay, one thread, deterministic for a seed.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np

SEGMENT = (8, 64)  # the repeated segment's length range: copies over 8-64 positions
SEQ_TOKENS = 4096  # tokens per step (sequences of 2 x segment, packed until this many)


def corpus_tokens(tokenizer) -> np.ndarray:
    """The token ids the corpus draws from: every entry of the vocabulary except the added tokens
    (the chat template's `<|im_start|>`, `<tool_call>`, ...), so no sequence looks like a chat."""
    added = set(tokenizer.added_tokens_decoder)
    return np.array(sorted(i for i in tokenizer.get_vocab().values() if i not in added), dtype=np.int64)


def batch(rng: np.random.Generator, vocab: np.ndarray, tokens: int = SEQ_TOKENS,
          segment: tuple[int, int] = SEGMENT) -> tuple[np.ndarray, np.ndarray]:
    """(input ids, loss mask) of shape (rows, 2 * max segment): each row a random segment and its
    repeat, padded; the mask is true on the repeat (the predictable half) only."""
    lengths = []
    while sum(2 * n for n in lengths) < tokens:
        lengths.append(int(rng.integers(segment[0], segment[1] + 1)))
    width = 2 * max(lengths)
    ids = np.zeros((len(lengths), width), dtype=np.int64)
    mask = np.zeros((len(lengths), width), dtype=bool)
    for r, n in enumerate(lengths):
        seg = rng.choice(vocab, size=n)
        ids[r, :2 * n] = np.concatenate([seg, seg])
        mask[r, n + 1:2 * n] = True  # the first repeated token follows nothing predictable
    return ids, mask


def copy_accuracy(model, rng: np.random.Generator, vocab: np.ndarray, rows: int = 16,
                  segment: tuple[int, int] = SEGMENT) -> float:
    """Greedy next-token accuracy on the repeats of fresh sequences (chance: 1 / len(vocab))."""
    import torch

    ids, mask = batch(rng, vocab, rows * 2 * segment[1], segment)
    with torch.no_grad():
        pred = model(input_ids=torch.from_numpy(ids)).logits.argmax(-1).numpy()
    # logits at t predict t + 1
    return float((pred[:, :-1] == ids[:, 1:])[mask[:, 1:]].mean())


def pretrain(src: str | Path, dest: str | Path, steps: int = 600, seed: int = 0, lr: float = 3e-3,
             threads: int = 1, segment: tuple[int, int] = SEGMENT, log=print) -> Path:
    """Pretrain the model at `src` on the induction corpus and save it (with its tokenizer) at
    `dest`; once: a `dest` that has its model is returned as it is. Its `pretrain.json` records the
    curve of copy accuracy."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dest = Path(dest)
    if (dest / "model.safetensors").exists():
        return dest
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(src)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    vocab = corpus_tokens(tok)
    rng = np.random.default_rng(seed)
    probe_rng = np.random.default_rng(10_000 + seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    # 5% warm-up, cosine to 10%: the shape of the train stage's schedule, written out rather than
    # pipeline.train.loop.lr_lambda, whose warm-up and end step differ by one step from the one the
    # measured students were pretrained with (bench/results/experiment-success/pretrain-seed*.json)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.1 + 0.45 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm))))
    curve, t0 = [], time.time()
    model.train()
    for step in range(steps):
        ids, mask = batch(rng, vocab, segment=segment)
        x = torch.from_numpy(ids)
        labels = torch.from_numpy(np.where(mask, ids, -100))
        logits = model(input_ids=x).logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1),
                                                 ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if (step + 1) % 100 == 0 or step + 1 == steps:
            model.eval()
            point = {"step": step + 1, "loss": round(loss.item(), 4),
                     "copy_accuracy": round(copy_accuracy(model, probe_rng, vocab, segment=segment), 4), "s": round(time.time() - t0)}
            model.train()
            curve.append(point)
            log(f"pretrain {dest.name}: {json.dumps(point)}")
    model.eval()
    part = dest.with_name(dest.name + ".partial")
    shutil.rmtree(part, ignore_errors=True)  # a killed earlier pretraining's, never read
    model.save_pretrained(part)
    tok.save_pretrained(part)
    (part / "pretrain.json").write_text(json.dumps(
        {"src": str(src), "steps": steps, "seed": seed, "lr": lr, "segment": list(segment), "seq_tokens": SEQ_TOKENS,
         "vocab": len(vocab), "curve": curve}, indent=2))
    part.rename(dest)  # a reader sees no model, or the whole pretrained one
    return dest


if __name__ == "__main__":
    a = dict(kv.split("=", 1) for kv in sys.argv[3:])
    pretrain(sys.argv[1], sys.argv[2], steps=int(a.get("steps", 600)), seed=int(a.get("seed", 0)),
             lr=float(a.get("lr", 3e-3)), segment=tuple(int(x) for x in a.get("segment", "{},{}".format(*SEGMENT)).split(",")))
