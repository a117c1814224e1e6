"""Train stage configuration: `python -m jobs.train data=URI model=URI output=URI [train.*] [scaling.*]`.

The dataclass defaults are a production recipe, not a demo. Source: SWE-smith (Yang et al., 2025,
arXiv:2504.21798) fine-tuned Qwen2.5-Coder-32B-Instruct with full-parameter SFT at lr 5e-5, cosine
decay, 3 epochs and a 32k (32,768-token) context. Weight decay 0.01, 5 warmup steps and gradient
clipping at 1.0 are this project's choices, not the paper's. Compute is bf16 on GPU with fp32
master weights, optimizer state and gradient reduction; on CPU it is fp32 (`param_dtype=auto`):
CPUs without bf16 matrix units run bf16 slower than fp32, and CPU runs (tests, demos) compare
losses exactly. The demo's toy settings live in conf/pipeline.yaml only.

A run's *identity* (`pipeline.train.resume.run_identity`) is a hash of its data, its model and the fields
below that change what is trained; the fields marked "not in the identity" only change how the
run is logged, checkpointed or exported.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING

from pipeline.errors import UserError

DTYPE_NAMES = ("bfloat16", "bf16", "float16", "fp16", "float32", "fp32")
LR_SCHEDULES = ("cosine", "linear", "constant")
TRACKING = ("none", "mlflow", "tensorboard", "wandb")
RESUME = ("auto", "never", "must")
# Fields that do not change what a run trains: changing them keeps the run's identity, so a run
# that ran out of memory can be resumed with activation checkpointing or CPU offload switched on.
NOT_IN_IDENTITY = {
    "": ("data", "model", "output", "allow_empty", "eval_data", "checkpoint_storage", "run_name", "resume",
         "resume_from", "tracking", "tracking_uri", "tracking_project"),
    "train": ("attn_implementation", "activation_checkpointing", "cpu_offload", "compile", "ce_chunk_tokens",
              "eval_every", "checkpoint_every_steps", "keep_checkpoints", "max_failures", "export",
              "export_dtype", "export_shard_bytes", "log_every_steps", "peak_flops_per_device", "cpu_threads"),
    "scaling": ("use_gpu", "cpus_per_worker", "gpus_per_worker"),  # the device enters through param_dtype
}


@dataclass
class TrainParams:
    # Optimiser: AdamW, linear warmup then `lr_schedule` decay to min_lr_ratio * lr, gradient clipping.
    lr: float = 5e-5
    lr_schedule: str = "cosine"  # cosine | linear | constant (after the warmup)
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    warmup_steps: int = 5
    min_lr_ratio: float = 0.0
    max_grad_norm: float = 1.0
    epochs: int = 3
    max_steps: int = -1  # > 0 caps the optimizer steps (the schedule then spans max_steps)
    # One optimizer step = micro_batch_size rows x grad_accum micro-batches x every data-parallel rank.
    micro_batch_size: int = 1
    grad_accum: int = 1
    seq_len: int = 32768  # longest row accepted; a longer row is an error naming its trajectories
    # Precision: parameters are kept (and optimised) in fp32, shards all-gathered in param_dtype for
    # compute, gradients reduced in reduce_dtype (FSDP2 MixedPrecisionPolicy).
    # auto = bfloat16 on GPU, float32 on CPU.
    param_dtype: str = "auto"
    reduce_dtype: str = "float32"
    seed: int = 0
    shuffle: bool = True  # per-epoch local shuffle of each rank's rows (seeded, reproducible)
    shuffle_buffer_rows: int = 64
    # Held-out rows for an eval loss: a row is held out when a hash of its trajectory ids falls
    # below eval_fraction (deterministic, and stable when rows are added). Or eval_data=URI.
    eval_fraction: float = 0.0
    # --- not in the identity: performance, logging, checkpointing and export knobs (NOT_IN_IDENTITY) ---
    # auto = packed attention without a T x T mask (pipeline/train/attention.py).
    attn_implementation: str = "auto"
    activation_checkpointing: bool = True  # per decoder layer
    cpu_offload: bool = False  # FSDP2 CPUOffloadPolicy (params, grads and optimizer state on CPU)
    compile: bool = False  # torch.compile each decoder layer
    ce_chunk_tokens: int = 4096  # lm_head + cross-entropy in checkpointed chunks of this many targets
    eval_every: int = 0  # steps between eval losses; 0 = only at the end (when there is eval data)
    checkpoint_every_steps: int = 100  # 0: only the final checkpoint
    keep_checkpoints: int = 2
    max_failures: int = 3  # worker-group restarts (resume from the latest checkpoint)
    export: bool = True  # HF safetensors export to <output>/hf at the end
    export_dtype: str = "auto"  # auto = the input model's dtype (config.json), else bfloat16
    export_shard_bytes: int = 5_000_000_000
    log_every_steps: int = 1
    # Dense peak FLOP/s of one device for the MFU; None = look the GPU up by name
    # (pipeline.train.metrics.PEAK_BF16_FLOPS). MFU is null on CPU and on GPUs not in the table.
    peak_flops_per_device: float | None = None
    cpu_threads: int = 0  # torch threads per worker on CPU; 0 = cores / local workers


@dataclass
class ScalingParams:
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 0.5  # fractional on CPU, or Ray Data's read tasks starve
    gpus_per_worker: float = 1.0


@dataclass
class TrainConfig:
    data: str = MISSING  # TRAINING_ROW Parquet: file or folder, local or s3://
    model: str = MISSING  # HF model folder (config, safetensors, tokenizer), local or s3://
    output: str = MISSING  # <output>/hf (export), metrics.jsonl, _summary.json
    allow_empty: bool = False  # accept a run that read rows and wrote none (run_stage fails it otherwise)
    eval_data: str | None = None  # TRAINING_ROW rows for the eval loss (instead of train.eval_fraction)
    checkpoint_storage: str | None = None  # where run folders live; default <output>/_checkpoints
    # Run folders are <checkpoint_storage>/<run_name>-<identity[:16]>-<start time>; run_name is a label.
    run_name: str = "srft"
    # auto: resume the newest run of the same identity (data, model, training config), else start
    # a new run; never: always start a new run; must: fail unless there is a run to resume.
    resume: str = "auto"
    resume_from: str | None = None  # a checkpoint folder to resume explicitly (whatever its identity)
    tracking: str = "none"  # none | mlflow | tensorboard | wandb (rank 0 logs metrics + config)
    # mlflow: tracking URI (default $MLFLOW_TRACKING_URI, else a file store <output>/mlruns);
    # tensorboard: log folder (default <output>/tensorboard); wandb: its folder (offline mode via WANDB_MODE).
    tracking_uri: str | None = None
    tracking_project: str = "srft"  # mlflow experiment / wandb project
    train: TrainParams = field(default_factory=TrainParams)
    scaling: ScalingParams = field(default_factory=ScalingParams)

    def validate(self) -> None:
        """Bad values fail here, before any work, naming the key."""
        t, s = self.train, self.scaling

        def need(ok: bool, key: str, what: str, got) -> None:
            if not ok:
                raise UserError(f"{key} {what} (got {got!r})")

        need(t.lr > 0, "train.lr", "must be > 0", t.lr)
        need(t.lr_schedule in LR_SCHEDULES, "train.lr_schedule", f"must be one of {', '.join(LR_SCHEDULES)}",
             t.lr_schedule)
        need(t.weight_decay >= 0, "train.weight_decay", "must be >= 0", t.weight_decay)
        for key, v in (("adam_beta1", t.adam_beta1), ("adam_beta2", t.adam_beta2)):
            need(0 <= v < 1, f"train.{key}", "must be in [0, 1)", v)
        need(t.adam_eps > 0, "train.adam_eps", "must be > 0", t.adam_eps)
        need(t.warmup_steps >= 0, "train.warmup_steps", "must be >= 0", t.warmup_steps)
        need(0 <= t.min_lr_ratio <= 1, "train.min_lr_ratio", "must be in [0, 1]", t.min_lr_ratio)
        need(t.max_grad_norm > 0, "train.max_grad_norm", "must be > 0", t.max_grad_norm)
        need(t.epochs >= 1, "train.epochs", "must be >= 1", t.epochs)
        need(t.max_steps == -1 or t.max_steps > 0, "train.max_steps", "must be > 0, or -1 for no cap", t.max_steps)
        for key in ("micro_batch_size", "grad_accum", "seq_len", "ce_chunk_tokens", "shuffle_buffer_rows",
                    "keep_checkpoints", "log_every_steps", "export_shard_bytes"):
            need(getattr(t, key) >= 1, f"train.{key}", "must be >= 1", getattr(t, key))
        need(t.param_dtype == "auto" or t.param_dtype in DTYPE_NAMES, "train.param_dtype",
             f"must be auto or one of {', '.join(DTYPE_NAMES)}", t.param_dtype)
        need(t.reduce_dtype in DTYPE_NAMES, "train.reduce_dtype", f"must be one of {', '.join(DTYPE_NAMES)}",
             t.reduce_dtype)
        need(t.export_dtype == "auto" or t.export_dtype in DTYPE_NAMES, "train.export_dtype",
             f"must be auto or one of {', '.join(DTYPE_NAMES)}", t.export_dtype)
        need(0 <= t.eval_fraction < 1, "train.eval_fraction", "must be in [0, 1)", t.eval_fraction)
        need(not (t.eval_fraction > 0 and self.eval_data), "train.eval_fraction",
             "and eval_data are alternatives: set one of them", t.eval_fraction)
        for key in ("eval_every", "checkpoint_every_steps", "max_failures", "cpu_threads"):
            need(getattr(t, key) >= 0, f"train.{key}", "must be >= 0", getattr(t, key))
        need(t.peak_flops_per_device is None or t.peak_flops_per_device > 0, "train.peak_flops_per_device",
             "must be > 0, or null to look the GPU up by name", t.peak_flops_per_device)
        need(s.num_workers >= 1, "scaling.num_workers", "must be >= 1", s.num_workers)
        need(s.cpus_per_worker > 0, "scaling.cpus_per_worker", "must be > 0", s.cpus_per_worker)
        need(s.gpus_per_worker > 0, "scaling.gpus_per_worker", "must be > 0", s.gpus_per_worker)
        need(self.resume in RESUME, "resume", f"must be one of {', '.join(RESUME)}", self.resume)
        need(not (self.resume == "never" and self.resume_from), "resume",
             "=never contradicts resume_from: drop one of them", self.resume)
        need(self.tracking in TRACKING, "tracking", f"must be one of {', '.join(TRACKING)}", self.tracking)
        need(bool(self.run_name) and "/" not in self.run_name, "run_name", "must be a non-empty name without '/'",
             self.run_name)
