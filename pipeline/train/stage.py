"""Train: FSDP2 fine-tuning of the student on TRAINING_ROW rows, under Ray Train.

    python -m jobs.train data=URI model=URI output=URI [train.*=...] [scaling.*=...]

Outputs under `output`: hf/ (HF safetensors export with config + tokenizer), metrics.jsonl (one
line per step), _summary.json, and the DCP checkpoints of the Ray Train run under
`checkpoint_storage` (default <output>/_checkpoints/<run folder>/checkpoint-step*/).
The loop itself is `pipeline.train.loop` and also runs under torchrun without Ray.

Which run this is (`plan_resume`). The run's identity (`checkpoint.run_identity`: data, model,
the config fields that change training) names its folder `<run_name>-<identity[:16]>-<start>`.
resume=auto takes the newest folder of the same identity that holds a checkpoint and runs under
that name, so Ray Train resumes it from its latest checkpoint; with none, a new folder is started
and the folders of other identities (other data, model or config) are left as they are. never
always starts a new folder; must fails unless there is one to resume. resume_from=URI starts a new
folder whose first attempt loads that checkpoint (the summary says whether its identity differs,
and in what). A fresh run name per start is what stops Ray Train from resuming a same-named run
of other data.
"""

from __future__ import annotations

import dataclasses
import json
import posixpath

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray

from pipeline import io
from pipeline.commit import Output
from pipeline.config import redacted
from pipeline.errors import UserError
from pipeline.manifest import Stage, run_direct
from pipeline.runtime import init_ray, new_run_id, verbose
from pipeline.schema import TRAINING_ROW
from pipeline.train import checkpoint as ckpt
from pipeline.train import tracking
from pipeline.train.config import TrainConfig
from pipeline.train.data import COLUMNS, held_out, total_steps


def read_rows(uri: str) -> ray.data.Dataset:
    files = io.list_files(uri, (".parquet",))  # fails at once on a missing input
    if not files:
        raise FileNotFoundError(f"data {uri!r} holds no .parquet files")
    fs, _ = io.filesystem(uri)
    paths = [io.filesystem(f)[1] for f in files]
    return ray.data.read_parquet(paths, filesystem=fs, schema=TRAINING_ROW, columns=COLUMNS)


def storage(cfg: TrainConfig) -> tuple[str, object]:
    """RunConfig(storage_path, storage_filesystem): an explicit pyarrow filesystem, so a custom S3
    endpoint (AWS_ENDPOINT_URL) reaches Ray Train's checkpoint uploads too."""
    uri = cfg.checkpoint_storage or io.join(cfg.output, "_checkpoints")
    fs, path = io.filesystem(uri)
    fs.create_dir(path, recursive=True)
    return path, fs


def plan_resume(cfg: TrainConfig, storage_uri: str, identity: dict) -> dict:
    """Decide the run folder and what it starts from (see the module docstring). The returned
    dict goes into the summary and the manifest as `resume`."""
    ident = identity["identity"]
    fresh = ckpt.run_folder_name(cfg.run_name, ident, new_run_id())
    plan = {"mode": cfg.resume, "identity": ident, "run_name": fresh, "resumed": False, "from": None,
            "from_step": None}
    if cfg.resume_from:
        uri = io.absolute(cfg.resume_from)
        if not io.exists(io.join(uri, ckpt.STATE_FILE)):
            raise UserError(f"resume_from={cfg.resume_from}: no checkpoint there (no {ckpt.STATE_FILE}); "
                            "point it at a checkpoint-stepNNNNNNN folder")
        state = json.loads(io.read_bytes(io.join(uri, ckpt.STATE_FILE)))
        theirs = state.get("identity") or {}
        differs = [k for k in ("data", "model", "config") if theirs.get(k) != identity[k]]
        plan.update(mode="resume_from", resumed=True, resume_from=uri, **{"from": uri},
                    from_step=state.get("step"), identity_matches=not differs, identity_differs_in=differs)
        return plan
    if cfg.resume in ("auto", "must"):
        found = ckpt.find_run(storage_uri, ident)
        if found is not None:
            name, uri, step = found
            plan.update(run_name=name, resumed=True, from_step=step, identity_matches=True, **{"from": uri})
            return plan
        if cfg.resume == "must":
            raise UserError(f"resume=must: no run of this identity ({ident[:16]}: same data, model and training "
                            f"config) with a checkpoint under {storage_uri}; use resume=auto to start one")
    # Not resumed: say which runs of other identities were left alone.
    fs, path = io.filesystem(storage_uri)
    others = sorted(posixpath.basename(f.path) for f in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
                    if f.type == pafs.FileType.Directory and ident[:16] not in posixpath.basename(f.path)
                    and ckpt.checkpoints(io.join(storage_uri, posixpath.basename(f.path))))
    plan["other_runs_not_resumed"] = others[-10:]
    return plan


def eval_rows(cfg: TrainConfig, ds: ray.data.Dataset) -> tuple[ray.data.Dataset, ray.data.Dataset | None, int]:
    """(train rows, eval rows or None, eval row count). eval_fraction holds rows out by a hash of
    their trajectory ids (`data.held_out`); eval_data reads a separate set."""
    t = cfg.train
    if t.eval_fraction > 0:
        fraction = t.eval_fraction
        fs, _ = io.filesystem(cfg.data)
        n_eval = sum(held_out(ids, fraction) for f in io.list_files(cfg.data, (".parquet",))
                     for ids in pq.read_table(io.filesystem(f)[1], filesystem=fs, columns=["traj_ids"])
                     .column("traj_ids").to_pylist())
        train = ds.filter(lambda row: not held_out(list(row["traj_ids"]), fraction))
        held = ds.filter(lambda row: held_out(list(row["traj_ids"]), fraction))
    elif cfg.eval_data:
        held = read_rows(cfg.eval_data)
        train, n_eval = ds, held.count()
    else:
        return ds, None, 0
    if n_eval < cfg.scaling.num_workers:
        key = "train.eval_fraction" if t.eval_fraction > 0 else "eval_data"
        raise UserError(f"{key}: {n_eval} eval rows for scaling.num_workers={cfg.scaling.num_workers} workers; "
                        "every worker needs at least one (raise train.eval_fraction or add eval rows)")
    return train, held, n_eval


def run(cfg: TrainConfig, out: Output | None = None) -> dict:
    if out is None:  # called directly: open, run and commit as the command does
        return run_direct(STAGE, cfg)
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    # Train workers do not run in this working directory.
    # Workers write metrics, the export and _summary.json into this run's version folder (out.uri,
    # absolute; run_stage commits it). Checkpoints live beside the versions, across runs.
    cfg = dataclasses.replace(cfg, data=io.absolute(cfg.data), model=io.absolute(cfg.model),
                              output=out.uri,
                              checkpoint_storage=io.absolute(cfg.checkpoint_storage or io.join(cfg.output, "_checkpoints")))
    cfg.validate()
    cfg = dataclasses.replace(cfg, resume_from=cfg.resume_from and io.absolute(cfg.resume_from),
                              eval_data=cfg.eval_data and io.absolute(cfg.eval_data))
    tracking.check(cfg, cfg.checkpoint_storage)
    cfg = dataclasses.replace(cfg, tracking_uri=tracking.default_uri(cfg, cfg.checkpoint_storage))
    run_id = new_run_id()
    identity = ckpt.run_identity(cfg)  # fails at once on a missing input
    storage_path, storage_fs = storage(cfg)
    plan = plan_resume(cfg, cfg.checkpoint_storage, identity)
    init_ray()
    ds, held, n_eval = eval_rows(cfg, read_rows(cfg.data))
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
    trainer = TorchTrainer(
        train_loop_per_worker=_loop,
        train_loop_config={"cfg": dataclasses.asdict(cfg), "total_rows": total_rows, "run_id": run_id,
                           "identity": identity, "run_name": plan["run_name"],
                           "resume_from": plan.get("resume_from"), "eval_rows": n_eval},
        torch_config=TorchConfig(backend="nccl" if s.use_gpu else "gloo"),
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
    summary = json.loads(io.read_bytes(io.join(cfg.output, "_summary.json")))
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


def _loop(loop_config: dict) -> None:
    from pipeline.train.loop import ray_train_loop

    ray_train_loop(loop_config)


def inputs(cfg: TrainConfig) -> dict[str, str | None]:
    return {"data": cfg.data, "model": cfg.model}


STAGE = Stage(name="train", config=TrainConfig, run=run, inputs=inputs)
