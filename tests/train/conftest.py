"""A small Qwen2 for the train tests: the tiny_qwen2 fixture's 151,936-token vocabulary makes the
lm_head + cross-entropy dominate every CPU step, so the loop tests use a 4,096-token vocabulary
(the Qwen tokenizer files ride along for the export; rows use ids < 2,000)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def small_qwen2_path(tmp_path_factory, qwen_tokenizer_path) -> Path:
    import shutil

    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    dest = tmp_path_factory.mktemp("small-qwen2") / "model"
    shutil.copytree(qwen_tokenizer_path, dest)
    config = Qwen2Config(
        vocab_size=4096, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
        tie_word_embeddings=True, eos_token_id=2, pad_token_id=0, bos_token_id=None,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(dest, safe_serialization=True)
    return dest
