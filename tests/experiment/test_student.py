"""The experiment's student tokenizer: small, deterministic, and rendering exactly what Qwen2.5's
template renders (tool schemas and tool calls included), so the build stage's masks over it mean
what they mean over the real Qwen tokenizer."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from experiment import generate as gen
from experiment.env import TOOLS, make_tasks
from experiment.student import student_tokenizer
from pipeline.models import tiny_qwen2


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    root = tmp_path_factory.mktemp("student")
    path = student_tokenizer(root / "tok")
    return AutoTokenizer.from_pretrained(path), AutoTokenizer.from_pretrained(root / "tok.qwen"), root


def test_small_vocabulary_same_text_as_qwen(tokenizers):
    small, qwen, _ = tokenizers
    assert len(small) < 2048  # vs Qwen's 151,665: the point of the student tokenizer
    # held-out runs (other task seeds than the corpus): the same rendered text, token for token decodable
    for run in gen.generate(make_tasks(5000, 12, "eval0"), gen.Mix(), 5000):
        chat = gen.chat(run.row["messages"])
        text = qwen.apply_chat_template(chat, tools=TOOLS, tokenize=False)
        assert small.apply_chat_template(chat, tools=TOOLS, tokenize=False) == text
        ids = small.apply_chat_template(chat, tools=TOOLS, tokenize=True, return_dict=True)["input_ids"]
        assert small.decode(ids) == text
        assert ids.count(small.convert_tokens_to_ids("<tool_call>")) == text.count("<tool_call>") > 0
    for token in ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<tool_call>", "</tool_call>"):
        assert small.convert_ids_to_tokens(small.convert_tokens_to_ids(token)) == token
    assert small.eos_token == "<|im_end|>" and small.pad_token == "<|endoftext|>"
    assert "<tool_call>" not in small.all_special_tokens  # a plain added token, as in Qwen2.5


def test_tokenizer_and_student_are_deterministic(tokenizers, tmp_path):
    small, _, root = tokenizers
    again = AutoTokenizer.from_pretrained(student_tokenizer(tmp_path / "tok"))
    assert again.get_vocab() == small.get_vocab()
    shape = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "num_kv_heads": 1, "intermediate_size": 64,
             "max_position_embeddings": 256, "seed": 3}
    a = tiny_qwen2(tmp_path / "a", tokenizer=root / "tok", **shape)
    b = tiny_qwen2(tmp_path / "b", tokenizer=root / "tok", **shape)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    config = json.loads((a / "config.json").read_text())
    assert config["vocab_size"] >= len(small) and config["vocab_size"] % 64 == 0
    assert AutoTokenizer.from_pretrained(a).get_vocab() == small.get_vocab()


def test_every_action_of_a_run_fits_one_generated_turn(tokenizers):
    """The closed loop generates at most evaluate.MAX_ACTION_TOKENS per turn: every action of every
    run kind (the fix and the test edit are the longest) must fit, through its end of turn, or the
    loop can never take it (a cap of 64 cut every fix off)."""
    from experiment import evaluate as ev

    small, _, _ = tokenizers
    student = ev.Student(None, small, TOOLS)
    longest = 0
    for run in gen.generate(make_tasks(7000, 60, "loop0"), gen.Mix(), 7000):
        messages = run.row["messages"]
        for k, m in enumerate(messages):
            if m["role"] == "assistant":
                call = m["tool_calls"][0]["function"]
                seq, start = student._turn(messages[:k], {"name": call["name"], "arguments": json.loads(call["arguments"])})
                longest = max(longest, len(seq) - start)
    assert 64 < longest <= ev.MAX_ACTION_TOKENS
