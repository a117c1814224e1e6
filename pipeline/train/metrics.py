"""What a training step is measured against: the device's peak FLOP/s (the MFU denominator) and
the process's peak memory. The MFU numerator is `loop.train_step`'s `flops`."""

from __future__ import annotations

import resource

import torch


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


# Dense (no sparsity) bf16/fp16 tensor-core peak of one GPU, from the vendor data sheets, matched
# against torch.cuda.get_device_name() in this order (first substring that matches wins).
PEAK_BF16_FLOPS: list[tuple[str, float]] = [
    ("GH200", 989e12),
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM5 (reported as "NVIDIA H100 80GB HBM3")
    ("H800", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("A10G", 70e12),
]
HALF = ("bfloat16", "float16")


def peak_flops(device: torch.device, param_dtype: str, override: float | None) -> float | None:
    """The device's dense peak FLOP/s for the MFU, or None where it is not known: never on CPU
    (a CPU "MFU" means nothing), and not for fp32 compute (the table holds half-precision peaks)."""
    if device.type != "cuda":
        return None
    if override:
        return override
    if param_dtype not in HALF:
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_BF16_FLOPS if key in name), None)
