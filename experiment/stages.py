"""The real pipeline stages, called through their library functions: each setting as a dotlist parsed
by ``pipeline.config.load_config`` into the stage's config, then ``pipeline.manifest.run_direct`` (open,
run, commit, as ``python -m jobs.<stage>`` does, without its printing and exit codes).

Every setting a stage reads is passed explicitly (the stages' own defaults are production ones
and may change); only the keys below are relied on. Ray is started once per process by the first
stage (``pipeline.runtime.init_ray``) and reused by the others.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import load_config
from pipeline.manifest import Stage, run_direct
from pipeline.schema import STEP_LABEL


def _run(stage: Stage, dotlist: list[str]) -> dict:
    """The stage's summary after one forced run on the config `dotlist` gives."""
    return run_direct(stage, load_config(stage.config, stage.name, dotlist))


def write_rows(rows: list[dict], path: Path) -> Path:
    """SWE-smith-style rows as JSONL (the input format of the ingest stage)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    return path


def write_labels(rows: list[dict], folder: Path) -> Path:
    """STEP_LABEL rows as one Parquet shard in `folder`: what the build stage reads from the
    label stage's output."""
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=STEP_LABEL), folder / "part-00000.parquet")
    return folder


def ingest(rows_jsonl: Path, output: Path) -> dict:
    from pipeline.ingest.stage import STAGE

    return _run(STAGE, [f"input={rows_jsonl}", f"output={output}", "rows_per_shard=4096",
                        "max_quarantine_fraction=0.0"])


def build(trajectories: Path, labels: Path, output: Path, model: Path, recipe: str, threshold: float,
          seq_len: int) -> dict:
    from pipeline.build.stage import STAGE

    return _run(STAGE, [
        f"trajectories={trajectories}", f"labels={labels}", f"output={output}", f"model={model}",
        f"recipe={recipe}", "mask.labels=[mistake]", f"mask.threshold={threshold}", "mask.unlabeled=exclude",
        f"max_seq_len={seq_len}", "overlong=drop", "parse_tool_arguments=true",
        "pack.enabled=true", f"pack.seq_len={seq_len}", "pack.window=256", "pack.max_open_bins=64",
        "pack.target_fill=0.95", "batch_size=32", "num_workers=1", "worker_cpus=0.5", "rows_per_shard=4096",
    ])


def train(data: Path, model: Path, output: Path, steps: int, lr: float, seed: int, seq_len: int,
          workers: int, micro_batch_size: int = 1, threads: int = 0) -> dict:
    from pipeline.train.stage import STAGE

    return _run(STAGE, [
        f"data={data}", f"model={model}", f"output={output}", "run_name=experiment",
        f"train.lr={lr}", "train.weight_decay=0.0", f"train.warmup_steps={max(1, steps // 20)}",
        "train.min_lr_ratio=0.1", "train.max_grad_norm=1.0", "train.epochs=1000", f"train.max_steps={steps}",
        f"train.micro_batch_size={micro_batch_size}", "train.grad_accum=1", f"train.seq_len={seq_len}",
        "train.param_dtype=float32", "train.reduce_dtype=float32", "train.attn_implementation=auto",
        "train.activation_checkpointing=false", "train.cpu_offload=false", "train.compile=false",
        "train.ce_chunk_tokens=4096", f"train.seed={seed}", "train.shuffle=true", "train.shuffle_buffer_rows=64",
        "train.checkpoint_every_steps=0", "train.keep_checkpoints=1", "train.max_failures=0",
        "train.export=true", "train.export_dtype=float32", "train.log_every_steps=10",
        "train.peak_flops_per_device=1e11", f"train.cpu_threads={threads or 2 // workers}",
        f"scaling.num_workers={workers}", "scaling.use_gpu=false", "scaling.cpus_per_worker=0.5",
    ])
