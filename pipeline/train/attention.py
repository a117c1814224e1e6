"""Packed (padding-free) attention with no T x T tensor, for any decoder-only HF model.

A packed micro-batch is one sequence of T tokens holding D documents delimited by `cu_seqlens`
(0 = c_0 < c_1 < ... < c_D = T). Token t of document d may attend to token s iff
c_d <= s <= t < c_{d+1}: causal within a document, nothing across. The explicit way to say this
is a (T, T) boolean mask; at T = 32k that is 1 GiB per micro-batch, and a masked kernel still
computes every document pair before throwing most of it away. Cost of the exact computation is
instead sum_d len_d^2 / 2 score entries and O(T) memory, which is what every backend here does:

  varlen  CUDA, bf16/fp16, flash-capable GPU (sm80+): `torch.nn.attention.varlen.varlen_attn`,
          torch's own FlashAttention-2 varlen kernel driven by cu_seqlens (no extra package).
  flex    CUDA otherwise (fp32, older GPUs): compiled `flex_attention` with a document block
          mask; the BlockMask is O((T / 128)^2) bits and fully-masked blocks are skipped.
  loop    CPU (and any other device): one `scaled_dot_product_attention(is_causal=True)` per
          document over the cu_seqlens slices. Exact, and memory is linear in T because the
          CPU SDPA kernel is a blocked flash kernel (no len_d x len_d score matrix either).

`backend()` picks one automatically from the query's device and dtype; `use_backend(name)`
forces one (tests, the benchmark, the planner which runs on fake CUDA tensors).

The function is registered in transformers' attention registry under `NAME` and deliberately
*not* in its mask registry: `create_causal_mask` then returns None at once for this
implementation (no mask, and no data-dependent packed-sequence detection on position_ids, so the
step also runs on fake tensors for the planner), and the model forwards `cu_seq_lens_q` / `max_length_q` (the same keyword arguments as flash_attention_2) down
to every attention layer. Any model whose attention calls `ALL_ATTENTION_FUNCTIONS` works.
"""

from __future__ import annotations

import contextlib
import itertools
import os

import torch
import torch.nn.functional as F

NAME = "srft_packed"
BACKENDS = ("varlen", "flex", "loop")
_forced: str | None = None


def register() -> str:
    """Register the attention function with transformers (not a mask function: see above). Idempotent."""
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, packed_attention_forward)
    return NAME


@contextlib.contextmanager
def use_backend(name: str | None):
    global _forced
    if name is not None and name not in BACKENDS:
        raise ValueError(f"unknown packed attention backend {name!r} (one of {BACKENDS})")
    previous, _forced = _forced, name
    try:
        yield
    finally:
        _forced = previous


def backend(query: torch.Tensor) -> str:
    forced = _forced or os.environ.get("SRFT_PACKED_ATTN_BACKEND") or None
    if forced:
        return forced
    if query.device.type != "cuda":
        return "loop"
    if query.dtype in (torch.bfloat16, torch.float16) and torch.backends.cuda.is_flash_attention_available() \
            and torch.cuda.get_device_capability(query.device)[0] >= 8:
        return "varlen"
    return "flex"


def packed_attention_forward(module, query, key, value, attention_mask=None, dropout: float = 0.0,
                             scaling: float | None = None, sliding_window: int | None = None,
                             cu_seq_lens_q: torch.Tensor | None = None, max_length_q: int | None = None,
                             **kwargs):
    """transformers attention-function signature: query (1, Hq, T, Dh), key/value (1, Hkv, T, Dh)
    -> ((1, T, Hq, Dh), None)."""
    if query.shape[0] != 1:
        raise ValueError(f"{NAME}: packed rows have batch size 1 (got {query.shape[0]})")
    if dropout:
        raise ValueError(f"{NAME}: attention dropout is not supported in training")
    total = query.shape[2]
    if cu_seq_lens_q is None:  # unpacked call (e.g. generation): one document
        cu_seq_lens_q = torch.tensor([0, total], dtype=torch.int32, device=query.device)
        max_length_q = total
    if sliding_window is not None and max_length_q is not None and max_length_q > sliding_window:
        raise NotImplementedError(f"{NAME}: documents longer than the sliding window ({sliding_window})")
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    gqa = query.shape[1] != key.shape[1]
    which = backend(query)
    if which == "varlen":
        out = _varlen(query, key, value, cu_seq_lens_q, int(max_length_q), scale, gqa)
    elif which == "flex":
        out = _flex(query, key, value, cu_seq_lens_q, scale, gqa)
    else:
        out = _loop(query, key, value, cu_seq_lens_q, scale, gqa)
    return out, None


def _varlen(q, k, v, cu, max_len: int, scale: float, gqa: bool) -> torch.Tensor:
    from torch.nn.attention.varlen import varlen_attn

    cu = cu.to(torch.int32)
    # (1, H, T, D) -> (T, H, D), the varlen layout.
    out = varlen_attn(q[0].transpose(0, 1), k[0].transpose(0, 1), v[0].transpose(0, 1), cu, cu, max_len, max_len,
                      scale=scale, window_size=(-1, 0), enable_gqa=gqa)
    return out[None]  # (1, T, H, D)


def _loop(q, k, v, cu, scale: float, gqa: bool) -> torch.Tensor:
    bounds = cu.tolist()
    parts = []
    for start, end in itertools.pairwise(bounds):
        parts.append(F.scaled_dot_product_attention(
            q[:, :, start:end], k[:, :, start:end], v[:, :, start:end],
            is_causal=True, scale=scale, enable_gqa=gqa))
    return torch.cat(parts, dim=2).transpose(1, 2)  # (1, T, H, D)


_compiled_flex = None
_block_mask_cache: tuple | None = None


def document_block_mask(cu: torch.Tensor, total: int):
    """Flex BlockMask: causal within the documents delimited by cu_seqlens. Cached for the last
    boundaries seen (every layer of a forward reuses it; the backward recompute too)."""
    global _block_mask_cache
    from torch.nn.attention.flex_attention import create_block_mask

    # Keyed on the boundaries themselves, not on the tensor's address: a micro-batch's cu_seqlens
    # is often allocated where the previous one's was freed (or refilled in place), with the same
    # number of documents and the same packed length, and an address key then returned the
    # previous row's mask. (D + 1 integers: one small device-to-host copy per micro-batch.)
    key = (tuple(cu.tolist()), total, cu.device)
    if _block_mask_cache is not None and _block_mask_cache[0] == key:
        return _block_mask_cache[1]
    doc = torch.repeat_interleave(torch.arange(cu.numel() - 1, device=cu.device), (cu[1:] - cu[:-1]).long())

    def document_causal(b, h, q_idx, kv_idx):
        return (doc[q_idx] == doc[kv_idx]) & (q_idx >= kv_idx)

    mask = create_block_mask(document_causal, None, None, total, total, device=cu.device)
    _block_mask_cache = (key, mask)
    return mask


def _flex(q, k, v, cu, scale: float, gqa: bool) -> torch.Tensor:
    global _compiled_flex
    from torch.nn.attention.flex_attention import flex_attention

    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    mask = document_block_mask(cu, q.shape[2])
    out = _compiled_flex(q, k, v, block_mask=mask, scale=scale, enable_gqa=gqa)
    return out.transpose(1, 2)  # (1, T, H, D)
