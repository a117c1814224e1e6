"""PlanConfig: `python -m jobs.plan [train_preset=YAML] [label_preset=YAML] [mfu=0.4] [key=value ...]`.

Every number the plan assumes rather than simulates is a key here, with where it comes from.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.errors import UserError


@dataclass
class GpuSpec:
    name: str = "H100-SXM5-80GB"
    memory_gib: float = 79.6  # 81,559 MiB as nvidia-smi reports an H100 80GB
    # Not available to tensors: CUDA context, NCCL buffers, cuBLAS / flash workspaces, allocator
    # fragmentation. 6 GiB is a conservative figure for FSDP on 32k rows.
    reserved_gib: float = 6.0
    peak_tflops: float = 989.0  # dense bf16 (NVIDIA H100 SXM datasheet)
    per_node: int = 8  # p5.48xlarge


@dataclass
class DatasetSpec:
    # SWE-smith trajectories (HF SWE-bench/SWE-smith-trajectories, splits xml/tool/ticks: ~26k rows,
    # as conf/prod/ingest.yaml states).
    trajectories: int = 26_000
    # About 30k Qwen tokens per trajectory: the shared SWE-smith rows (../shared/data/README.md).
    mean_tokens: int = 30_000
    # Labelled share: the label stage skips resolved trajectories unless critic.label_resolved; 1.0 = all.
    label_fraction: float = 1.0
    pack_fill: float = 0.995  # conf/prod/build.yaml pack.target_fill


@dataclass
class LabelThroughput:
    """Public vLLM throughput of a 32B dense model on one H100, used to scale the critic."""
    # GPUStack performance lab, "Optimizing Qwen3-32B Throughput on NVIDIA H100 GPUs"
    # (https://docs.gpustack.ai/2.0/performance-lab/qwen3-32b/h100): vLLM baseline, "Very Long
    # Prompt" case, total (input + output) 2,771.81 tokens/s. Qwen3-32B has the same 64 x 5120
    # dense shape and 8 KV heads as Qwen2.5-Coder-32B.
    tokens_per_s_per_gpu: float = 2771.81
    source: str = "GPUStack performance lab, Qwen3-32B on H100, vLLM baseline, Very Long Prompt, total TPS"
    tp_efficiency: float = 0.8  # TP all-reduce cost per GPU added (assumed; NVLink within a node)
    steps_per_trajectory: int = 35  # 45-89 messages per SWE-smith row (../shared/data/README.md)
    activation_reserve_gib: float = 4.0  # vLLM's activation + CUDA graph memory outside the KV cache


@dataclass
class PlanConfig:
    train_preset: str = "conf/prod/train.yaml"  # a train preset, or a pipeline preset (its train section)
    label_preset: str = "conf/prod/label.yaml"  # a label preset, or a pipeline preset (its label section)
    model_config: str = "conf/models/qwen2.5-coder-32b-instruct.json"  # the student's HF config.json
    critic_config: str = "conf/models/qwen2.5-coder-32b-instruct.json"  # the critic's HF config.json
    mfu: float = 0.40  # model FLOPs utilisation assumed for the step time (torchtitan FSDP2: 40-50%)
    # Depths of the reduced-layer simulation (extrapolated linearly, see pipeline/plan/simulate.py):
    # every depth past the first two must lie on their line, or the plan stops; [<the model's
    # layers>] simulates the full model (about 3 min of CPU for the 32B at 64 layers).
    sim_layers: list[int] = field(default_factory=lambda: [4, 6, 8])
    output: str | None = None  # also write the plan as JSON here (URI)
    gpu: GpuSpec = field(default_factory=GpuSpec)
    dataset: DatasetSpec = field(default_factory=DatasetSpec)
    label: LabelThroughput = field(default_factory=LabelThroughput)

    def validate(self) -> None:
        if not 0.0 < self.mfu <= 1.0:
            raise UserError(f"mfu must lie in (0, 1] (got {self.mfu})")
        if not self.sim_layers or any(d < 1 for d in self.sim_layers):
            raise UserError(f"sim_layers must be one or more depths >= 1 (got {list(self.sim_layers)})")
        if len(set(self.sim_layers)) != len(self.sim_layers):
            raise UserError(f"sim_layers: the depths must differ (got {list(self.sim_layers)})")
        if self.gpu.memory_gib <= self.gpu.reserved_gib:
            raise UserError("gpu.memory_gib must exceed gpu.reserved_gib")
        if self.dataset.trajectories < 1 or self.dataset.mean_tokens < 1:
            raise UserError("dataset.trajectories and dataset.mean_tokens must be >= 1")
