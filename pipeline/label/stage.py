"""Label: trajectories -> per-step critic labels (STEP_LABEL shards) and an error table.

    python -m jobs.label input=URI output=URI [critic.model=PATH] [critic.backend=vllm|openai] [critic.*=...]

The whole stage, top to bottom: `select` picks the input rows to label (pipeline/label/select.py);
Ray Data reads exactly those rows on the workers, streams them through the pool of critic actors
(pipeline/label/actor.py) and writes each batch's label and error rows from the workers
(pipeline/label/store.py). The driver sees one small report per trajectory, counts it
(pipeline/label/tally.py) and commits: every `commit_every_trajectories` trajectories or
`commit_every_s` seconds (status ``partial``), so a killed run keeps what it labelled, and at the
end (`run_stage`). A commit takes only the files whose reports reached the driver.

Resumable and idempotent: the labels an earlier run committed are carried into this run's
commits (named, not copied) and their trajectories skipped, so a re-run labels only what is
missing and never writes a (traj_id, step) twice. A second run into an output in use is
refused by the output lock. Trajectories that *errored* before are retried by default
(`retry_errors=true`): most errors are transient (an HTTP failure, a sampling accident).

Nothing a trajectory or an answer does stops the run: every selected trajectory ends as labels
or as one error row with its reason. The run fails (StageFailed, exit 1, after committing what
it has) when more than `max_error_fraction` of the selected trajectories errored.

By default unresolved trajectories and those of unknown outcome (`unknown_outcome=unresolved`)
are labelled; `critic.label_resolved=true` labels all. See docs/label.md.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import pyarrow as pa
import pyarrow.compute as pc
import ray

from pipeline import fsys
from pipeline.commit import Output
from pipeline.config import redacted
from pipeline.errors import StageFailed, UserError
from pipeline.label.actor import CriticActor
from pipeline.label.autoscale import actor_bundles, holding_demand
from pipeline.label.config import LabelConfig, confidence_mode
from pipeline.label.prompt import PROMPT_VERSION
from pipeline.label.secrets import SecretRef, scrub, secret_env_names, secret_values
from pipeline.label.select import Selection, read_keys, read_rows, select
from pipeline.label.store import (
    ERRORS,
    error_record,
    existing_errors,
    existing_labels,
    previous_files,
    write_outcomes,
)
from pipeline.label.tally import LabelTally
from pipeline.manifest import Stage
from pipeline.progress import Progress
from pipeline.runtime import init_ray
from pipeline.schema import LABEL_ERROR


def critic_name(cfg: LabelConfig) -> str:
    return cfg.critic.model.rstrip("/")


@dataclasses.dataclass
class Previous:
    """What the output's last commit (whatever its status) holds for this run."""

    done: set[str]  # trajectories with labels: carried into this run's commits, not relabelled
    rows: int  # their label rows
    error_ids: set[str]  # trajectories with an error row
    error_files: dict[str, str]  # {logical: URI} of the error shards


def previous(cfg: LabelConfig, out, model_name: str) -> Previous:
    label_files, error_files = previous_files(None if cfg.replace else out.previous)
    labels = existing_labels(list(label_files.values()))
    others = {(m, v) for m, v in zip(labels["critic_model"].to_pylist(), labels["prompt_version"].to_pylist())}
    others -= {(model_name, PROMPT_VERSION)}
    if others:
        raise UserError(
            f"output={cfg.output} already holds labels from another critic/prompt {sorted(others)[:3]}; "
            f"this run is ({model_name}, {PROMPT_VERSION}). Use a new output or replace=true."
        )
    if label_files:
        out.carry(label_files)
    errors = existing_errors(list(error_files.values())).column("traj_id").to_pylist()
    return Previous(set(labels["traj_id"].to_pylist()), labels.num_rows, set(errors), error_files)


def keep_previous_errors(out, prev: Previous, relabelled: set[str]) -> list[dict]:
    """Earlier error rows of trajectories this run neither labels nor already has labels for stay:
    a shard none of whose rows is affected is carried as it is; the rest of a shard are returned,
    for the driver to write into this run's version."""
    rows = []
    for logical, uri in prev.error_files.items():
        shard = existing_errors([uri])
        drop = pc.is_in(shard["traj_id"], pa.array(sorted(relabelled | prev.done), pa.string()))
        if not pc.any(drop).as_py():
            out.carry([logical])
        else:
            rows += shard.filter(pc.invert(drop)).to_pylist()
    return rows


def write_driver_errors(out, name: str, rows: list[dict], claimed: set[str]) -> None:
    """The error rows the driver makes (earlier ones kept, ``run_aborted``): one file, claimed."""
    if rows:
        file = f"part-{out.run_id}-{name}.parquet"
        fsys.write_table(pa.Table.from_pylist(rows, schema=LABEL_ERROR), fsys.join(out.side_uri(ERRORS), file))
        claimed.add(f"{ERRORS}/{file}")


def critic_reports(cfg: LabelConfig, out, chosen: Selection, model_name: str):
    """The Ray Data pipeline: read the chosen rows, label them in the actor pool, write each batch's
    rows on the workers; yields the workers' REPORT batches to the driver."""
    c = cfg.critic
    init_ray()
    ds = ray.data.from_items(chosen.reads)
    ds = ds.map_batches(read_rows, batch_size=1, batch_format="pyarrow")  # one (file, row group) a task
    # One block per actor batch (a streaming split, no all-to-all), so that each batch's rows are
    # written, and can be committed, as soon as the critic answered it.
    ds = ds.repartition(target_num_rows_per_block=c.batch_size)
    remote = c.actor_resources()  # GPUs/CPUs from tensor_parallel_size and the device
    if c.env:  # plain settings only (validate refuses secret-looking names): Ray logs runtime_env
        remote["runtime_env"] = {"env_vars": {k: str(v) for k, v in c.env.items()}}
    # The key travels through the object store, never through runtime_env or the actor's
    # constructor arguments (Ray logs and exposes both); see pipeline/label/secrets.py.
    key_env = c.openai.api_key_env
    key_ref = (SecretRef(key_env, os.environ[key_env])
               if c.backend == "openai" and key_env and os.environ.get(key_env) else None)
    ds = ds.map_batches(
        CriticActor,
        fn_constructor_kwargs={"critic": dataclasses.asdict(c), "api_key": key_ref},
        compute=ray.data.ActorPoolStrategy(min_size=c.pool.min, max_size=c.pool.max),
        batch_size=c.batch_size, batch_format="pyarrow", **remote,
    )
    ds = ds.map_batches(write_outcomes, batch_size=None, batch_format="pyarrow", fn_kwargs={
        "labels_uri": out.uri, "errors_uri": out.side_uri(ERRORS), "run_id": out.run_id,
        "critic_model": model_name, "prompt_version": PROMPT_VERSION})
    # The autoscaler is asked for the full pool while it runs (Ray Data alone does not grow it:
    # pipeline/label/autoscale.py); withdrawn when the batches end or fail.
    bundles = actor_bundles(c.pool.max, remote.get("num_gpus", 0), remote.get("num_cpus", 0))
    yield from holding_demand(ds.iter_batches(batch_format="pyarrow", batch_size=None), bundles)


class Committer:
    """Commits every N trajectories or T seconds (one call: `due`)."""

    def __init__(self, out, every_n: int, every_s: float) -> None:
        self.out, self.every_n, self.every_s = out, every_n, every_s
        self.since, self.last, self.commits = 0, time.monotonic(), 0

    def due(self, finished: int, summary_fn) -> None:
        self.since += finished
        if self.since >= self.every_n or time.monotonic() - self.last >= self.every_s:
            s = summary_fn()
            self.out.commit("partial", rows_in=s["rows_in"], rows_out=s["rows_out"], summary=s)
            self.since, self.last, self.commits = 0, time.monotonic(), self.commits + 1


def run(cfg: LabelConfig, out: Output) -> dict:
    """The stage, writing under the opened output `out` that `run_stage` passes (tests and
    notebooks call ``run_direct(STAGE, cfg)``, which opens, runs and commits as the command does)."""
    if cfg.errors and cfg.errors.rstrip("/") != fsys.join(cfg.output, ERRORS):
        raise UserError(f"errors={cfg.errors}: error rows are committed with the labels in <output>/{ERRORS}; "
                        "unset errors")
    c, model_name, run_id = cfg.critic, critic_name(cfg), out.run_id
    secrets = secret_values(secret_env_names(c))
    keys, files = read_keys(out.inputs["input"])
    prev = previous(cfg, out, model_name)
    chosen = select(keys, files, done=prev.done, previous_errors=prev.error_ids, unknown_outcome=cfg.unknown_outcome,
                    label_resolved=c.label_resolved, retry_errors=cfg.retry_errors, limit=cfg.limit)
    header = {"run_id": run_id, "critic_model": model_name, "prompt_version": PROMPT_VERSION,
              "backend": c.backend, "num_samples": c.num_samples, "confidence_mode": confidence_mode(c),
              "unknown_outcome": cfg.unknown_outcome, "max_error_fraction": cfg.max_error_fraction,
              "config": redacted(cfg)}
    tally = LabelTally(header, keys.num_rows, chosen.ids, chosen.skipped, prev.rows)

    # A commit takes the files of reports that reached the driver, and the driver's own.
    claimed: set[str] = set()
    out.admit = lambda logical: not logical.endswith(".parquet") or logical in claimed
    write_driver_errors(out, "kept", keep_previous_errors(out, prev, set(chosen.ids)), claimed)
    progress = Progress("label", len(chosen.ids), "trajectories")
    committer = Committer(out, cfg.commit_every_trajectories, cfg.commit_every_s)
    aborted = None  # why Ray stopped the run, if it did
    try:
        for batch in (critic_reports(cfg, out, chosen, model_name) if chosen.ids else ()):
            reports = [r for r in batch.to_pylist() if tally.add(r)]
            claimed.update(r["file"] for r in reports)
            progress.update(done=len(reports), errors=sum(r["error_reason"] is not None for r in reports),
                            labelled=tally.labelled)
            committer.due(len(reports), lambda: tally.summary(committer.commits, final=False))
    except Exception as e:  # noqa: BLE001 - Ray itself failed: keep what is done, account for the rest
        aborted = scrub(f"{type(e).__name__}: {e}", secrets)[:2000]
        print(f"[label] the actor pool failed: {aborted[:300]}", flush=True)
        lost = [tid for tid in chosen.ids if tid not in tally.returned]
        for tid in lost:
            tally.error(tid, "run_aborted")
        write_driver_errors(out, "aborted", [
            error_record(tid, "run_aborted", f"the run stopped before this trajectory came back: {aborted}", 0,
                         model_name, PROMPT_VERSION, run_id) for tid in lost], claimed)

    summary = tally.summary(committer.commits, final=True)
    fsys.write_bytes(fsys.join(out.uri, "_summary.json"), json.dumps(summary, indent=2).encode())
    errored = summary["trajectories_errored"] + summary.get("trajectories_lost", 0)
    if chosen.ids and errored / len(chosen.ids) > cfg.max_error_fraction:
        top = ", ".join(f"{k} {v}" for k, v in tally.reasons.most_common(3))
        cause = f"; Ray stopped the run: {aborted[:300]}" if aborted else ""
        reason = (f"{errored} of {len(chosen.ids)} selected trajectories errored ({top}{cause}), more than "
                  f"max_error_fraction={cfg.max_error_fraction}; labels and error rows are committed in "
                  f"{cfg.output} (see {ERRORS}); fix the cause and re-run (only the rest is labelled)")
        summary["failed"] = reason
        err = StageFailed(reason)
        err.summary = summary
        raise err
    return summary


def inputs(cfg: LabelConfig) -> dict[str, str | None]:
    return {"input": cfg.input, "critic_model": cfg.critic.model}


STAGE = Stage(name="label", config=LabelConfig, run=run, inputs=inputs)
