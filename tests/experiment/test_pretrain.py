"""The student's pretraining corpus teaches copying and nothing of the environment, and the
pretrained student is written once, whole."""

from __future__ import annotations

import json

import numpy as np
import pytest
from transformers import AutoTokenizer

from experiment import pretrain as pt
from experiment.student import student_tokenizer
from pipeline.models import tiny_qwen2


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain")
    tok = student_tokenizer(root / "tok")
    return tiny_qwen2(root / "init", hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1,
                      intermediate_size=128, max_position_embeddings=256, tokenizer=tok)


def test_corpus_is_segments_and_their_repeats_with_no_chat_token(student):
    tok = AutoTokenizer.from_pretrained(student)
    vocab = pt.corpus_tokens(tok)
    added = set(tok.added_tokens_decoder)  # <|im_start|>, <tool_call>, ...
    assert len(vocab) > 500 and not added & set(vocab.tolist())
    ids, mask = pt.batch(np.random.default_rng(0), vocab)
    assert ids.shape[0] * ids.shape[1] >= pt.SEQ_TOKENS
    for row, m in zip(ids, mask):
        n = int(m.sum()) + 1  # the segment's length: the repeat less its first token
        assert not added & set(row[:2 * n].tolist())  # (what follows is padding, after the sequence)
        assert pt.SEGMENT[0] <= n <= pt.SEGMENT[1]
        assert (row[:n] == row[n:2 * n]).all() and (row[2 * n:] == 0).all()
        # the loss is on the repeat's predictable tokens only: each one copies a token n back
        assert m[n + 1:2 * n].all() and not m[:n + 1].any() and not m[2 * n:].any()
    again, _ = pt.batch(np.random.default_rng(0), vocab)
    assert (again == ids).all()  # deterministic for a seed


def test_pretrain_writes_the_model_once_and_learns(student, tmp_path):
    dest = pt.pretrain(student, tmp_path / "student", steps=20, seed=0, lr=1e-2, log=lambda _: None)
    record = json.loads((dest / "pretrain.json").read_text())
    assert record["steps"] == 20 and record["curve"][-1]["step"] == 20
    assert not (tmp_path / "student.partial").exists()
    tok = AutoTokenizer.from_pretrained(dest)  # the tokenizer and its chat template travel along
    assert tok.chat_template == AutoTokenizer.from_pretrained(student).chat_template
    # the weights moved, and the loss on the repeats fell below the uniform guess
    from safetensors.numpy import load_file
    before, after = load_file(student / "model.safetensors"), load_file(dest / "model.safetensors")
    assert any(not np.array_equal(before[k], after[k]) for k in before)
    assert record["curve"][-1]["loss"] < np.log(len(pt.corpus_tokens(tok)))
    stamp = (dest / "model.safetensors").stat().st_mtime_ns
    assert pt.pretrain(student, dest, steps=20) == dest  # done: returned as it is
    assert (dest / "model.safetensors").stat().st_mtime_ns == stamp
