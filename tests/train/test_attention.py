"""Packed attention (pipeline/train/attention.py): packed logits equal each document run alone,
and the loss gradient equals the explicit block-diagonal-mask path's, with no T x T tensor."""

from __future__ import annotations

import itertools

import pytest
import torch
from transformers import Qwen2Config

from pipeline.train import attention
from pipeline.train.data import collate
from pipeline.train.model import build, packed_logits

DOC_LENS = (7, 19, 1, 12)  # a one-token document too


def _config() -> Qwen2Config:
    return Qwen2Config(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                       tie_word_embeddings=False)


def _rows(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    total = sum(DOC_LENS)
    cu = [0]
    for n in DOC_LENS:
        cu.append(cu[-1] + n)
    pos = [p for n in DOC_LENS for p in range(n)]
    return {"input_ids": [torch.randint(0, 512, (total,), generator=g).tolist()], "loss_mask": [[1] * total],
            "position_ids": [pos], "cu_seqlens": [cu], "traj_ids": [["a", "b", "c", "d"]], "num_tokens": [total]}


def _devices() -> list[str]:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", _devices())
def test_packed_logits_equal_each_document_alone(device):
    dev = torch.device(device)
    model = build(_config(), dev, None, attn_implementation="auto", activation_checkpointing=False, seed=1)
    lm = model.lm
    assert lm.config._attn_implementation == attention.NAME
    mb = collate(_rows(), seq_len=256).to(dev)
    with torch.no_grad():
        packed = packed_logits(lm, mb)[0]
        # Reference: each document alone through transformers' own eager attention (no packing).
        lm.set_attn_implementation("eager")
        bounds = mb.cu_seqlens.tolist()
        alone = torch.cat([
            lm(input_ids=mb.input_ids[:, s:e], position_ids=mb.position_ids[:, s:e], use_cache=False).logits[0]
            for s, e in itertools.pairwise(bounds)
        ])
    assert packed.shape == (sum(DOC_LENS), 512)
    torch.testing.assert_close(packed, alone, rtol=1e-4, atol=1e-4)


def test_gradient_equals_block_mask_path():
    """The loss and every parameter gradient equal the old explicit 4-D mask (sdpa) path's."""
    results = []
    for impl in ("auto", "sdpa"):
        model = build(_config(), torch.device("cpu"), None, attn_implementation=impl, activation_checkpointing=True,
                      ce_chunk_tokens=16, seed=3)
        loss = model(collate(_rows(seed=2), seq_len=256))
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-5, atol=1e-5)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-4, atol=1e-5, msg=name)


def test_cpu_picks_the_per_document_loop_and_forcing_works():
    q = torch.zeros(1, 4, 8, 16)
    assert attention.backend(q) == "loop"
    with attention.use_backend("varlen"):
        assert attention.backend(q) == "varlen"
    assert attention.backend(q) == "loop"
    with pytest.raises(ValueError, match="unknown packed attention backend"), attention.use_backend("nope"):
        pass


def test_flex_backend_follows_the_boundaries_of_each_micro_batch(monkeypatch):
    """The flex path (CUDA's fallback) on CPU, eagerly: packed attention equals each document alone,
    also for a second micro-batch whose cu_seqlens has the same length and the same packed length
    as the first and lives at the same address (its block mask must not be the first one's)."""
    from torch.nn.attention.flex_attention import flex_attention

    monkeypatch.setattr(attention, "_compiled_flex", flex_attention)  # eager: no compiler in the test
    monkeypatch.setattr(attention, "_block_mask_cache", None)
    g = torch.Generator().manual_seed(0)
    total, heads, kv_heads, dim = 256, 4, 2, 16  # the flex block size is 128: boundaries inside blocks
    cu = torch.tensor([0, 100, 130, 256], dtype=torch.int32)
    for bounds in ([0, 100, 130, 256], [0, 7, 200, 256]):
        cu.copy_(torch.tensor(bounds, dtype=torch.int32))  # same tensor, refilled: same address
        q = torch.randn(1, heads, total, dim, generator=g)
        k, v = (torch.randn(1, kv_heads, total, dim, generator=g) for _ in range(2))
        with attention.use_backend("flex"):
            packed, _ = attention.packed_attention_forward(None, q, k, v, cu_seq_lens_q=cu, max_length_q=200)
        with attention.use_backend("loop"):
            alone, _ = attention.packed_attention_forward(None, q, k, v, cu_seq_lens_q=cu, max_length_q=200)
        torch.testing.assert_close(packed, alone, rtol=1e-5, atol=1e-5, msg=f"boundaries {bounds}")
