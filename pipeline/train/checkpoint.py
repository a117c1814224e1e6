"""Training state on disk: DCP sharded checkpoints (resume) and the final HF safetensors export.
Run identity, run folders and which checkpoint a run resumes from: `pipeline.train.resume`.

A checkpoint folder holds
  .metadata, __<rank>_0.distcp   DCP: model + optimizer state, each rank writing only its shards
  train_state.json               step, epoch, data position, scheduler, metric history (rank 0)
  rng-<rank>.pt                  each rank's torch / numpy / python RNG state
Under Ray each rank writes into its own local folder and `ray.train.report(checkpoint=...)` merges
them into one folder under RunConfig(storage_path) (local or s3://).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile

import numpy as np
import pyarrow.fs as pafs
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from pipeline import fsys
from pipeline.train.model import hf_state_keys

STATE_FILE = "train_state.json"
# Non-weight files of a HF model folder that the export carries over (tokenizer, chat template).
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".safetensors.index.json", ".bin.index.json")


def resolved_param_dtype(name: str, on_gpu: bool) -> str:
    if name != "auto":
        return {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}.get(name, name)
    return "bfloat16" if on_gpu else "float32"


def local_copy(checkpoint_uri: str) -> str:
    """A local folder holding the checkpoint (the folder itself when it is local)."""
    fs, path = fsys.filesystem(checkpoint_uri)
    if isinstance(fs, pafs.LocalFileSystem):
        return path
    local = tempfile.mkdtemp(prefix="srft-resume-")
    pafs.copy_files(path, local, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    return local


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save(directory: str, model: nn.Module, optimizer: torch.optim.Optimizer, train_state: dict) -> str:
    """Write this rank's part of a checkpoint into `directory` (collective: every rank calls)."""
    os.makedirs(directory, exist_ok=True)
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=directory,
             no_dist=not dist.is_initialized())
    torch.save(rng_state(), os.path.join(directory, f"rng-{_rank()}.pt"))
    if _rank() == 0:
        with open(os.path.join(directory, STATE_FILE), "w") as f:
            json.dump(train_state, f)
    return directory


def load(directory: str, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Restore model, optimizer and this rank's RNG from `directory`; returns train_state."""
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=directory, no_dist=not dist.is_initialized())
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    rng = os.path.join(directory, f"rng-{_rank()}.pt")
    if os.path.exists(rng):  # absent when resuming at another world size
        set_rng_state(torch.load(rng, weights_only=False))
    with open(os.path.join(directory, STATE_FILE)) as f:
        return json.load(f)


def new_local_dir() -> str:
    return tempfile.mkdtemp(prefix="srft-ckpt-")


# --------------------------------------------------------------------------------------------
# HF export
# --------------------------------------------------------------------------------------------

def export_hf(lm: nn.Module, source_dir: str, output_uri: str, dtype: torch.dtype,
              shard_bytes: int = 5_000_000_000, run_id: str = "export") -> str | None:
    """Write `lm` as a HF model folder at `output_uri` (config, tokenizer, safetensors shards +
    index), loadable as-is by transformers and vLLM. Collective: parameters are gathered one at
    a time (DTensor.full_tensor) so no rank holds more than one full tensor plus rank 0's current
    shard buffer. Rank 0 writes a staging folder, then publishes it. Returns the URI on rank 0."""
    from safetensors.torch import save_file
    from torch.distributed.tensor import DTensor

    rank = _rank()
    local = tempfile.mkdtemp(prefix="srft-export-") if rank == 0 else None
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    files: list[str] = []

    def flush():
        nonlocal size
        if shards[-1]:
            name = f"part-{len(files):05d}.safetensors"
            save_file(shards[-1], os.path.join(local, name), metadata={"format": "pt"})
            files.append(name)
            weight_map.update({k: name for k in shards[-1]})
        shards[-1] = {}
        size = 0

    weight_map: dict[str, str] = {}
    total = 0
    for name, tensor in hf_state_keys(lm).items():
        full = tensor.full_tensor() if isinstance(tensor, DTensor) else tensor
        if rank == 0:
            t = full.detach().to(device="cpu", dtype=dtype).contiguous()
            shards[-1][name] = t
            size += t.numel() * t.element_size()
            total += t.numel() * t.element_size()
            if size >= shard_bytes:
                flush()
        del full
    if rank != 0:
        if dist.is_initialized():
            dist.barrier()
        return None
    flush()
    # HF names: model.safetensors, or model-0000i-of-0000n.safetensors + index.
    renamed = {}
    if len(files) == 1:
        renamed[files[0]] = "model.safetensors"
    else:
        for i, f in enumerate(files):
            renamed[f] = f"model-{i + 1:05d}-of-{len(files):05d}.safetensors"
    for old, new in renamed.items():
        os.rename(os.path.join(local, old), os.path.join(local, new))
    if len(files) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": {k: renamed[v] for k, v in weight_map.items()}}
        with open(os.path.join(local, "model.safetensors.index.json"), "w") as f:
            json.dump(index, f, indent=2)
    for entry in os.listdir(source_dir):
        src = os.path.join(source_dir, entry)
        if os.path.isfile(src) and not entry.endswith(_WEIGHT_SUFFIXES) and entry != "config.json" \
                and not entry.startswith("."):
            shutil.copy2(src, os.path.join(local, entry))
    lm.config.save_pretrained(local)  # after the copies: our config (use_cache, dtype) wins
    with open(os.path.join(local, "config.json")) as f:
        config = json.load(f)
    config["dtype"] = config["torch_dtype"] = str(dtype).replace("torch.", "")
    config["use_cache"] = True
    with open(os.path.join(local, "config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    staging = fsys.staging_uri(output_uri, run_id)
    fs, staging_path = fsys.filesystem(staging)
    fs.create_dir(staging_path, recursive=True)
    pafs.copy_files(local, staging_path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    fsys.publish(staging, output_uri)
    shutil.rmtree(local, ignore_errors=True)
    if dist.is_initialized():
        dist.barrier()
    return output_uri
