"""A small Qwen2 for the train tests: the tiny_qwen2 fixture's 151,936-token vocabulary makes the
lm_head + cross-entropy dominate every CPU step, so the loop tests use a 4,096-token vocabulary
(the Qwen tokenizer files ride along for the export; rows use ids < 2,000)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def small_qwen2_path(tmp_path_factory, qwen_tokenizer_path) -> Path:
    from tests.train.helpers import small_qwen2

    return Path(small_qwen2(tmp_path_factory.mktemp("small-qwen2") / "model", qwen_tokenizer_path))
