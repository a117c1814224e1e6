"""The student model under FSDP2: meta-device init, sharded HF loading, packed attention, the loss.

Build order (no rank ever materialises the full model):
  1. `AutoModelForCausalLM.from_config` with parameters on the meta device (buffers such as the
     rotary `inv_freq` stay real and are kept aside);
  2. activation checkpointing per decoder layer, optional `torch.compile` per layer;
  3. `fully_shard` on every decoder layer, then on the root (a `CausalLMLoss` wrapper, so that the
     root's all-gather also covers the chunked lm_head + cross-entropy);
  4. `to_empty` on the device: each rank allocates only its shards;
  5. `dcp.load` with `HuggingFaceStorageReader`: each rank reads only its slices of the
     safetensors shards (`safe_open(...).get_slice`) straight into its DTensor shards.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os

import pyarrow.fs as pafs
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from pipeline import fsys
from pipeline.train import attention
from pipeline.train.data import IGNORE, MicroBatch

log = logging.getLogger(__name__)

DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16,
          "fp16": torch.float16, "float32": torch.float32, "fp32": torch.float32}
FLASH = ("flash_attention_2", "flash_attention_3")
PACKED = attention.NAME


def dtype_of(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r} (one of {sorted(DTYPES)})") from None


def resolve_attn_implementation(name: str, device: torch.device) -> str:
    """auto = packed attention with no T x T mask on every device (pipeline/train/attention.py:
    torch's varlen flash kernel or flex_attention on CUDA, a per-document SDPA loop on CPU)."""
    if name in ("auto", PACKED):
        return attention.register()
    return name


@contextlib.contextmanager
def params_on_meta():
    """Create parameters on the meta device while buffers stay real (like accelerate's
    init_empty_weights(include_buffers=False)): non-persistent buffers such as the rotary
    inv_freq are computed at construction and are not in the checkpoint."""
    original = nn.Module.register_parameter

    def register(module, name, param):
        original(module, name, param)
        if param is not None and param.device.type != "meta":  # a re-registered (tied) meta param stays itself
            kwargs = module._parameters[name].__dict__
            module._parameters[name] = type(param)(module._parameters[name].to("meta"), **kwargs)
            module._parameters[name].requires_grad = param.requires_grad

    nn.Module.register_parameter = register
    try:
        yield
    finally:
        nn.Module.register_parameter = original


def decoder_layers(lm: nn.Module) -> nn.ModuleList:
    decoder = lm.get_decoder() if hasattr(lm, "get_decoder") else lm.model
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise TypeError(f"{type(lm).__name__}: cannot find the decoder layers (expected <decoder>.layers)")
    return layers


# --------------------------------------------------------------------------------------------
# Packed attention
# --------------------------------------------------------------------------------------------

def block_causal_mask(cu_seqlens: torch.Tensor, total: int, device: torch.device) -> torch.Tensor:
    """(1, 1, T, T) bool, True = may attend: causal within each document, nothing across."""
    doc = torch.repeat_interleave(
        torch.arange(len(cu_seqlens) - 1, device=device), (cu_seqlens[1:] - cu_seqlens[:-1]).to(device)
    )
    assert doc.numel() == total, (doc.numel(), total)
    idx = torch.arange(total, device=device)
    mask = (doc[:, None] == doc[None, :]) & (idx[:, None] >= idx[None, :])
    return mask[None, None]


def attention_inputs(lm: nn.Module, mb: MicroBatch) -> dict:
    """Keyword arguments that make the HF decoder attend within documents only.

    srft_packed (auto) and flash_attention_2/3: cu_seqlens, no mask at all.
    sdpa: an explicit block-diagonal causal bool mask (SDPA's memory-efficient kernel takes it).
    eager: the same mask as an additive float mask.
    """
    impl = lm.config._attn_implementation
    device = mb.input_ids.device
    total = mb.input_ids.shape[1]
    if impl in FLASH or impl == PACKED:
        cu = mb.cu_seqlens.to(device=device, dtype=torch.int32)
        return {"attention_mask": None, "cu_seq_lens_q": cu, "cu_seq_lens_k": cu,
                "max_length_q": mb.max_seqlen, "max_length_k": mb.max_seqlen}
    mask = block_causal_mask(mb.cu_seqlens, total, device)
    if impl == "eager":
        mask = torch.zeros(mask.shape, device=device).masked_fill(~mask, torch.finfo(torch.float32).min)
    elif impl != "sdpa":
        raise ValueError(f"attn_implementation {impl!r} is not supported for packed rows "
                         "(use flash_attention_2, flash_attention_3, sdpa or eager)")
    if getattr(lm.get_decoder(), "has_sliding_layers", False):
        # Models with per-layer-type masks (Qwen2 with sliding layers) take a mapping; documents
        # shorter than the window get the same mask.
        return {"attention_mask": {"full_attention": mask, "sliding_attention": mask}}
    return {"attention_mask": mask}  # a 4-D mask is used as-is by create_causal_mask (Qwen2, Llama, ...)


def hidden_states(lm: nn.Module, mb: MicroBatch) -> torch.Tensor:
    """Final-norm hidden states (1, T, H) of a packed micro-batch, documents isolated."""
    out = lm.get_decoder()(
        input_ids=mb.input_ids, position_ids=mb.position_ids, use_cache=False, **attention_inputs(lm, mb)
    )
    return out.last_hidden_state


def packed_logits(lm: nn.Module, mb: MicroBatch) -> torch.Tensor:
    return lm.get_output_embeddings()(hidden_states(lm, mb))


# --------------------------------------------------------------------------------------------
# Loss
# --------------------------------------------------------------------------------------------

def _ce_sum(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = F.linear(h, weight).float()
    return F.cross_entropy(logits, targets, reduction="sum")


class CausalLMLoss(nn.Module):
    """The FSDP root: decoder forward, then lm_head + cross-entropy over the trained targets only,
    in checkpointed chunks so that the (targets x vocab) logits never exist at once.

    forward returns the *sum* of token cross-entropies of this micro-batch; the caller divides by
    the global trainable-token count (see `pipeline.train.loop.train_step`)."""

    def __init__(self, lm: nn.Module, ce_chunk_tokens: int = 4096):
        super().__init__()
        self.lm = lm
        self.ce_chunk_tokens = ce_chunk_tokens

    def forward(self, mb: MicroBatch) -> torch.Tensor:
        h = hidden_states(self.lm, mb)[0]
        labels = mb.labels[0]
        keep = labels != IGNORE
        h, targets = h[keep], labels[keep]
        weight = self.lm.get_output_embeddings().weight
        total = h.new_zeros((), dtype=torch.float32)
        for start in range(0, targets.numel(), self.ce_chunk_tokens):
            sl = slice(start, start + self.ce_chunk_tokens)
            if torch.is_grad_enabled():
                total = total + checkpoint(_ce_sum, h[sl], weight, targets[sl], use_reentrant=False)
            else:
                total = total + _ce_sum(h[sl], weight, targets[sl])
        if targets.numel() == 0:  # keep every parameter in the graph so FSDP's hooks still fire
            total = total + 0.0 * h.sum() + 0.0 * weight.sum()
        return total


# --------------------------------------------------------------------------------------------
# Build + load
# --------------------------------------------------------------------------------------------

def build(
    config,  # transformers PretrainedConfig
    device: torch.device,
    mesh,  # DeviceMesh or None (single process, no FSDP)
    *,
    attn_implementation: str = "auto",
    param_dtype: str = "bfloat16",
    reduce_dtype: str = "float32",
    activation_checkpointing: bool = True,
    cpu_offload: bool = False,
    compile: bool = False,
    ce_chunk_tokens: int = 4096,
    weights: str | None = None,  # local HF folder with *.safetensors; None = random init
    seed: int = 0,
) -> CausalLMLoss:
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard
    from transformers import AutoModelForCausalLM

    impl = resolve_attn_implementation(attn_implementation, device)
    with params_on_meta():
        lm = AutoModelForCausalLM.from_config(config, attn_implementation=impl, dtype=torch.float32)
    lm.config.use_cache = False
    buffers = {name: buf.clone() for name, buf in lm.named_buffers()}
    if activation_checkpointing:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    layers = decoder_layers(lm)
    if compile:
        for layer in layers:
            layer.compile()
    model = CausalLMLoss(lm, ce_chunk_tokens)

    if mesh is not None:
        mp = MixedPrecisionPolicy(param_dtype=dtype_of(param_dtype), reduce_dtype=dtype_of(reduce_dtype))
        kwargs = {"mesh": mesh, "mp_policy": mp}
        if cpu_offload:
            kwargs["offload_policy"] = CPUOffloadPolicy()
        for i, layer in enumerate(layers):
            # The last layer's params are needed again right at the start of backward.
            fully_shard(layer, reshard_after_forward=i < len(layers) - 1, **kwargs)
        fully_shard(model, reshard_after_forward=False, **kwargs)
        for m in model.modules():
            if hasattr(m, "set_gradient_divide_factor"):
                # Sum (not average) gradients over ranks: the loss is already divided by the
                # global trainable-token count.
                m.set_gradient_divide_factor(1.0)
                m.set_force_sum_reduction_for_comms(True)  # plain SUM (gloo has no PREMUL_SUM)
    init_device = "cpu" if cpu_offload else device
    model.to_empty(device=init_device)
    if mesh is None and getattr(config, "tie_word_embeddings", False):
        lm.tie_weights()  # to_empty makes new tensors per module; FSDP2 keeps the shared DTensor
    with torch.no_grad():
        for name, buf in buffers.items():
            model.lm.get_buffer(name).copy_(buf)
    if weights is not None:
        load_hf_weights(model.lm, weights)
    else:
        random_init(model.lm, config, seed)
    if mesh is None and param_dtype != "float32":
        log.warning("single process without FSDP: computing in float32")
    return model


def random_init(lm: nn.Module, config, seed: int) -> None:
    """Normal(0, initializer_range) for matrices, ones for norms, zeros for biases. Works on
    sharded DTensors (same seed on every rank: each rank fills its own shard)."""
    std = getattr(config, "initializer_range", 0.02)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in lm.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
            elif name.endswith("bias"):
                p.zero_()
            else:
                p.normal_(0.0, std)


def hf_state_keys(lm: nn.Module) -> dict[str, torch.Tensor]:
    """The HF checkpoint keys of this model: its state dict without tied duplicates."""
    sd = lm.state_dict()
    if getattr(lm.config, "tie_word_embeddings", False):
        sd.pop("lm_head.weight", None)
    return sd


def load_hf_weights(lm: nn.Module, path: str) -> None:
    """Load HF safetensors into the (sharded) parameters: DCP's HuggingFaceStorageReader plans
    per-rank reads of only the local shard slices; dtype is converted on copy."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader

    sd = hf_state_keys(lm)
    reader = HuggingFaceStorageReader(path)
    stored = set(reader.read_metadata().state_dict_metadata)
    missing = sorted(set(sd) - stored)
    if missing:
        raise ValueError(f"{path}: checkpoint lacks {len(missing)} weights, e.g. {missing[:5]}")
    if dist.is_initialized():
        dcp.load(sd, storage_reader=HuggingFaceStorageReader(path))
    else:
        dcp.load(sd, storage_reader=HuggingFaceStorageReader(path), no_dist=True)
    # dcp.load copies into the local shards of the state-dict tensors, which alias the params.
    lm.load_state_dict(sd, strict=False)


def num_params(config) -> dict[str, float]:
    """Parameter counts for the FLOP estimate from the config (no materialised model needed)."""
    h, l, v = config.hidden_size, config.num_hidden_layers, config.vocab_size
    heads, kv = config.num_attention_heads, getattr(config, "num_key_value_heads", config.num_attention_heads)
    hd = getattr(config, "head_dim", None) or h // heads
    ffn = config.intermediate_size
    attn = h * heads * hd + 2 * h * kv * hd + heads * hd * h + (heads * hd + 2 * kv * hd)  # q,k,v,o + qkv bias
    mlp = 3 * h * ffn
    per_layer = attn + mlp + 2 * h
    # Matmul params: layers + lm_head (the input embedding is a lookup, not a matmul).
    return {"matmul": float(l * per_layer + v * h), "attn_dim": float(heads * hd), "layers": float(l)}


def local_model_path(uri: str) -> str:
    """A local folder for the model: a local path as-is, an s3:// folder downloaded once per
    node (by local rank 0, the other ranks wait)."""
    if "://" not in uri or uri.startswith("file://"):
        return uri.removeprefix("file://")
    dest = os.path.join(os.path.expanduser("~/.cache/srft/models"), hashlib.sha1(uri.encode()).hexdigest()[:16])
    if int(os.environ.get("LOCAL_RANK", "0")) == 0 and not os.path.exists(os.path.join(dest, ".complete")):
        fs, path = fsys.filesystem(uri)
        os.makedirs(dest, exist_ok=True)
        pafs.copy_files(path, dest, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        open(os.path.join(dest, ".complete"), "w").close()
    if dist.is_initialized():
        dist.barrier()
    return dest
