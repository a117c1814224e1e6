"""Slow: fine-tune SmolLM2-135M-Instruct a few steps under Ray Train on build-stage-shaped rows
(chat-templated trajectories, assistant steps trained, one mistake step masked but kept)."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest
import torch

from pipeline import fsys, io
from pipeline.schema import TRAINING_ROW
from tests.train.helpers import write_rows

pytestmark = pytest.mark.slow

CONVERSATIONS = [
    [("system", "You are a coding agent."), ("user", "Fix the failing test in utils.py."),
     ("assistant", "Let me look at the file: cat utils.py"), ("user", "def add(a, b): return a - b"),
     ("assistant", "I will delete the test instead."), ("user", "Deleted."),
     ("assistant", "Actually the bug is the minus sign: sed -i 's/a - b/a + b/' utils.py"), ("user", "Done."),
     ("assistant", "Run the tests: pytest -q"), ("user", "1 passed")],
    [("system", "You are a coding agent."), ("user", "The CLI crashes on empty input."),
     ("assistant", "Reproduce it: python cli.py ''"), ("user", "IndexError: list index out of range"),
     ("assistant", "Guard the empty case in parse(): if not args: return []"), ("user", "Edited."),
     ("assistant", "Verify: python cli.py ''"), ("user", "[]")],
]


def _rows(tokenizer_path, n: int) -> dict:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_path)
    out = {f.name: [] for f in TRAINING_ROW}
    for r in range(n):
        conv = CONVERSATIONS[r % len(CONVERSATIONS)]
        ids, mask, k = [], [], 0
        for i in range(len(conv)):  # tokens of message i = template(conv[:i+1]) minus template(conv[:i])
            msgs = [{"role": role, "content": text} for role, text in conv[:i + 1]]
            text = tok.apply_chat_template(msgs, tokenize=False)
            full = tok(text, add_special_tokens=False)["input_ids"]
            new = full[len(ids):]
            trained = conv[i][0] == "assistant" and k != 1  # the 2nd assistant step is a mistake
            if conv[i][0] == "assistant":
                k += 1
            ids += new
            mask += [int(trained)] * len(new)
        out["input_ids"].append(ids)
        out["loss_mask"].append(mask)
        out["position_ids"].append(list(range(len(ids))))
        out["cu_seqlens"].append([0, len(ids)])
        out["traj_ids"].append([f"smol-{r}"])
        out["recipe"].append("srft")
        out["num_tokens"].append(len(ids))
        out["num_trained_tokens"].append(int(np.sum(mask)))
        out["num_masked_tokens"].append(len(ids) - int(np.sum(mask)))
    return out


def test_finetune_smollm2_few_steps(ray_session, smollm2_path, tmp_path):
    from transformers import AutoModelForCausalLM

    from jobs.train import main

    data = write_rows(tmp_path / "rows", _rows(smollm2_path, 4), files=2)
    output = str(tmp_path / "out")
    summary = main([f"data={data}", f"model={smollm2_path}", f"output={output}", f"run_name=smol-{uuid.uuid4().hex[:6]}",
                    "train.epochs=3", "train.micro_batch_size=2", "train.lr=1e-4", "train.warmup_steps=0",
                    "train.seq_len=2048", "train.checkpoint_every_steps=0", "train.export_dtype=bfloat16"])
    assert summary["steps"] == 3
    losses = [json.loads(x)["loss"] for x in io.read_bytes(fsys.join(output, "metrics.jsonl")).decode().splitlines()]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses
    lm = AutoModelForCausalLM.from_pretrained(summary["export"])  # in the committed version: <output>/_v-train-<run>/hf
    assert lm.dtype == torch.bfloat16
    with torch.no_grad():
        assert torch.isfinite(lm(torch.tensor([[1, 2, 3]])).logits.float()).all()
