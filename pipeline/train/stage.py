"""Train: FSDP2 fine-tuning of the student on TRAINING_ROW rows, under Ray Train.

    python -m jobs.train data=URI model=URI output=URI [train.*=...] [scaling.*=...]

Outputs under `output`: hf/ (HF safetensors export with config + tokenizer), metrics.jsonl (one
line per step), _summary.json, and the DCP checkpoints of the Ray Train run under
`checkpoint_storage` (default <output>/_checkpoints/<run folder>/checkpoint-step*/).
The loop itself is `pipeline.train.loop` and also runs under torchrun without Ray
(`pipeline.train.torchrun`).

Which run this is (which run folder, resumed from which checkpoint) is `pipeline.train.resume`;
the loop of each rank is `pipeline.train.loop`, started here by `ray_train_loop` on every worker.
"""

from __future__ import annotations

import dataclasses
import json
import logging

import pyarrow.parquet as pq
import ray
import ray.train
import ray.train.torch
from omegaconf import OmegaConf

from pipeline import fsys, io, record
from pipeline.commit import Output
from pipeline.config import redacted
from pipeline.errors import UserError
from pipeline.manifest import Stage
from pipeline.runtime import init_ray, verbose
from pipeline.schema import TRAINING_ROW
from pipeline.train import checkpoint as ckpt
from pipeline.train import loop, tracking
from pipeline.train.config import TrainConfig
from pipeline.train.data import COLUMNS, held_out, ray_source, total_steps
from pipeline.train.resume import plan_resume, run_identity


def read_rows(source: record.Input, key: str = "data") -> tuple[ray.data.Dataset, io.Shards]:
    """The training rows of one input as run_stage located it, and its checked shards."""
    shards = io.parquet_shards(source, TRAINING_ROW, key, "training-row", "run jobs.build into it first")
    return ray.data.read_parquet(shards.paths, filesystem=shards.fs, schema=TRAINING_ROW, columns=COLUMNS), shards


def storage(cfg: TrainConfig) -> tuple[str, object]:
    """RunConfig(storage_path, storage_filesystem): an explicit pyarrow filesystem, so a custom S3
    endpoint (AWS_ENDPOINT_URL) reaches Ray Train's checkpoint uploads too."""
    uri = cfg.checkpoint_storage or fsys.join(cfg.output, "_checkpoints")
    fs, path = fsys.filesystem(uri)
    fs.create_dir(path, recursive=True)
    return path, fs


def eval_rows(cfg: TrainConfig, out: Output) -> tuple[ray.data.Dataset, ray.data.Dataset | None, int]:
    """(train rows, eval rows or None, eval row count). eval_fraction holds rows out by a hash of
    their trajectory ids (`data.held_out`); eval_data reads a separate set."""
    t = cfg.train
    ds, shards = read_rows(out.inputs["data"])
    if t.eval_fraction > 0:
        fraction = t.eval_fraction
        n_eval = sum(held_out(ids, fraction) for path in shards.paths
                     for ids in pq.read_table(path, filesystem=shards.fs, columns=["traj_ids"])
                     .column("traj_ids").to_pylist())
        train = ds.filter(lambda row: not held_out(list(row["traj_ids"]), fraction))
        held = ds.filter(lambda row: held_out(list(row["traj_ids"]), fraction))
    elif cfg.eval_data:
        held, _ = read_rows(out.inputs["eval_data"], "eval_data")
        train, n_eval = ds, held.count()
    else:
        return ds, None, 0
    if n_eval < cfg.scaling.num_workers:
        key = "train.eval_fraction" if t.eval_fraction > 0 else "eval_data"
        raise UserError(f"{key}: {n_eval} eval rows for scaling.num_workers={cfg.scaling.num_workers} workers; "
                        "every worker needs at least one (raise train.eval_fraction or add eval rows)")
    return train, held, n_eval


def run(cfg: TrainConfig, out: Output) -> dict:
    # Train workers do not run in this working directory.
    # Workers write metrics, the export and _summary.json into this run's version folder (out.uri,
    # absolute; run_stage commits it). Checkpoints live beside the versions, across runs.
    cfg = dataclasses.replace(cfg, data=fsys.absolute(cfg.data), model=fsys.absolute(cfg.model),
                              output=out.uri,
                              checkpoint_storage=fsys.absolute(cfg.checkpoint_storage or fsys.join(cfg.output, "_checkpoints")))
    cfg = dataclasses.replace(cfg, resume_from=cfg.resume_from and fsys.absolute(cfg.resume_from),
                              eval_data=cfg.eval_data and fsys.absolute(cfg.eval_data))
    tracking.check(cfg, cfg.checkpoint_storage)
    cfg = dataclasses.replace(cfg, tracking_uri=tracking.default_uri(cfg, cfg.checkpoint_storage))
    run_id = out.run_id  # the version folder's run id (_v-train-<run_id>), as every stage names it
    identity = run_identity(cfg, out.inputs["data"])
    storage_path, storage_fs = storage(cfg)
    plan = plan_resume(cfg, cfg.checkpoint_storage, identity)
    init_ray()
    ds, held, n_eval = eval_rows(cfg, out)
    total_rows = ds.count()
    s, t = cfg.scaling, cfg.train
    try:
        _, steps = total_steps(total_rows, s.num_workers, t.micro_batch_size, t.grad_accum, t.epochs, t.max_steps)
    except ValueError as e:
        raise UserError(f"data={cfg.data}: {e} (train.micro_batch_size, train.grad_accum, scaling.num_workers)") \
            from None
    resources = {"CPU": s.cpus_per_worker}
    if s.use_gpu:
        resources["GPU"] = s.gpus_per_worker
    exec_options = ray.train.DataConfig.default_ingest_options()
    exec_options.preserve_order = True  # deterministic split: resume skips exactly what was trained
    trainer = ray.train.torch.TorchTrainer(
        train_loop_per_worker=ray_train_loop,
        train_loop_config={"cfg": dataclasses.asdict(cfg), "total_rows": total_rows, "run_id": run_id,
                           "identity": identity, "run_name": plan["run_name"],
                           "resume_from": plan.get("resume_from"), "eval_rows": n_eval},
        torch_config=ray.train.torch.TorchConfig(backend="nccl" if s.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=s.num_workers, use_gpu=s.use_gpu, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=plan["run_name"],  # an existing name only when plan_resume chose to resume it
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            failure_config=ray.train.FailureConfig(max_failures=t.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=t.keep_checkpoints),
            # Ray Train's INFO (worker group start, every `TrainingReport(...)`) to its log files
            logging_config=ray.train.LoggingConfig(log_level="INFO" if verbose() else "WARNING"),
        ),
        datasets={"train": ds, **({"eval": held} if held is not None else {})},
        dataset_config=ray.train.DataConfig(execution_options=exec_options),
    )
    result = trainer.fit()
    summary = json.loads(io.read_bytes(fsys.join(cfg.output, "_summary.json")))
    summary.update({
        "rows_out": summary["rows_per_rank"] * s.num_workers,  # rows used per epoch (equal split)
        "planned_steps": steps,
        "checkpoint": result.checkpoint.path if result.checkpoint else None,
        "checkpoint_storage": cfg.checkpoint_storage,
        "resume": plan,
        "identity_parts": identity,
        "config": redacted(cfg),
    })
    return summary


# --------------------------------------------------------------------------------------------
# On every Ray Train worker
# --------------------------------------------------------------------------------------------

def ray_train_loop(loop_config: dict) -> None:
    """`train_loop_per_worker` of the TorchTrainer: this worker's rank of `loop.run`."""
    cfg: TrainConfig = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TrainConfig), loop_config["cfg"]))
    logging.basicConfig(level=logging.INFO)
    t = cfg.train
    ctx = loop.dist_context(ray.train.torch.get_device())
    source = ray_source(t.seq_len, t.micro_batch_size, t.shuffle, t.shuffle_buffer_rows, t.seed)
    eval_source = None
    if loop_config.get("eval_rows"):
        batches = ray_source(t.seq_len, t.micro_batch_size, False, 0, t.seed, name="eval", drop_last=False)
        eval_source = lambda: batches(0, 0)
    loop.run(cfg, source, loop_config["total_rows"], RayReporter(), ctx, loop_config["run_id"],
             identity=loop_config.get("identity"), run_name=loop_config.get("run_name", "train"),
             resume_from=loop_config.get("resume_from"), eval_source=eval_source,
             eval_rows=loop_config.get("eval_rows", 0))


def _present(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if v is not None}


class RayReporter(loop.Reporter):
    """Metrics to `ray.train.report`; each rank's checkpoint shards into a local folder that Ray
    Train uploads and merges into one checkpoint under RunConfig(storage_path)."""

    def latest_checkpoint(self):
        c = ray.train.get_checkpoint()
        return None if c is None else (c.as_directory(), c.path)

    def report(self, metrics, model=None, optimizer=None, train_state=None, step=0):
        if model is None:
            ray.train.report(_present(metrics))
            return
        directory = ckpt.save(ckpt.new_local_dir(), model, optimizer, train_state)
        ray.train.report(
            _present(metrics),
            checkpoint=ray.train.Checkpoint.from_directory(directory),
            checkpoint_dir_name=f"checkpoint-step{step:07d}",
            delete_local_checkpoint_after_upload=True,
        )


def inputs(cfg: TrainConfig) -> dict[str, str | None]:
    return {"data": cfg.data, "model": cfg.model, "eval_data": cfg.eval_data}


STAGE = Stage(name="train", config=TrainConfig, run=run, inputs=inputs)
