"""Label: trajectories -> per-step critic labels (STEP_LABEL shards) and an error table.

    python -m jobs.label input=URI output=URI [critic.model=PATH] [critic.backend=vllm|openai] [critic.*=...]

The output is committed (pipeline.commit): this run writes its shards into its own version folder,
and a commit record names the files readers see. Besides the final commit made by `run_stage`,
the stage commits its finished work every `commit_every_trajectories` trajectories or
`commit_every_s` seconds (status ``partial``), so a killed run keeps what it labelled.

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
from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc
import ray

from pipeline import io
from pipeline.config import redacted
from pipeline.errors import StageFailed, UserError
from pipeline.label.actor import CriticActor
from pipeline.label.autoscale import actor_bundles, holding_demand
from pipeline.label.config import LabelConfig, confidence_mode
from pipeline.label.prompt import PROMPT_VERSION
from pipeline.label.secrets import SecretRef, scrub, secret_env_names, secret_values
from pipeline.label.store import ERRORS, ShardWriter, existing_errors, existing_labels, previous_files
from pipeline.manifest import Stage
from pipeline.outcome import effective_resolved
from pipeline.progress import Progress
from pipeline.runtime import init_ray
from pipeline.schema import LABEL_ERROR, STEP_LABEL, TRAJECTORY

_INPUT_COLUMNS = ["traj_id", "messages", "resolved", "num_steps"]
_SKIPS = ("skipped_resolved", "skipped_unknown_outcome", "skipped_no_steps", "skipped_already_labelled",
          "skipped_previous_error", "skipped_limit", "duplicate_in_input")


def critic_name(cfg: LabelConfig) -> str:
    return cfg.critic.model.rstrip("/")


def _select(batch: pa.Table, ids: set[str]) -> pa.Table:
    return batch.filter(pc.is_in(batch["traj_id"], pa.array(sorted(ids), pa.string())))


def _read_keys(cfg: LabelConfig) -> tuple[pa.Table, list[str]]:
    import pyarrow.parquet as pq

    from pipeline.schema import check_version

    fs, _ = io.filesystem(cfg.input)
    files = io.list_files(cfg.input, (".parquet",))
    if not files:
        raise UserError(f"input={cfg.input} holds no trajectory .parquet shards; run jobs.ingest into it first")
    tables = []
    for f in files:
        pf = pq.ParquetFile(io.filesystem(f)[1], filesystem=fs)
        check_version(pf.schema_arrow, f)
        missing = [c for c in _INPUT_COLUMNS if c not in pf.schema_arrow.names]
        if missing:
            raise UserError(f"{f}: not a trajectory shard (missing columns {missing}); run jobs.ingest first")
        tables.append(pf.read(columns=["traj_id", "resolved", "num_steps"]))
    return pa.concat_tables(tables), files


class _Committer:
    """Flushes the shard writers and commits, every N trajectories or T seconds (one call: `due`)."""

    def __init__(self, out, writers: list[ShardWriter], every_n: int, every_s: float) -> None:
        self.out, self.writers, self.every_n, self.every_s = out, writers, every_n, every_s
        self.since, self.last, self.commits = 0, time.monotonic(), 0

    def due(self, finished: int, fields_fn) -> None:
        self.since += finished
        if self.since >= self.every_n or time.monotonic() - self.last >= self.every_s:
            self.commit(fields_fn())

    def commit(self, fields: dict) -> None:
        for w in self.writers:
            w.flush()
        self.out.commit("partial", **fields)
        self.since, self.last, self.commits = 0, time.monotonic(), self.commits + 1


def run(cfg: LabelConfig, out=None) -> dict:
    """The stage. `out` is the opened output (pipeline.commit.Output) that `run_stage` passes;
    called without one (tests, notebooks), it runs through `run_stage` like the command does."""
    if out is None:
        from pipeline.manifest import run_direct

        return run_direct(STAGE, cfg)
    cfg.validate()
    c = cfg.critic
    t0 = time.time()
    if cfg.errors and cfg.errors.rstrip("/") != io.join(cfg.output, ERRORS):
        raise UserError(f"errors={cfg.errors}: error rows are committed with the labels in <output>/{ERRORS}; "
                        "unset errors")
    secrets = secret_values(secret_env_names(c))
    keys, files = _read_keys(cfg)  # fails at once on a missing or foreign input
    run_id = out.run_id
    model_name = critic_name(cfg)

    # What the output already holds (its last commit, whatever its status): labels are kept
    # (carried into this run's commits), errors are re-written below without the retried ones.
    done: set[str] = set()
    prev_label_files, prev_error_files = previous_files(None if cfg.replace else out.previous)
    prev_errors = existing_errors(prev_error_files)
    prev = existing_labels(list(prev_label_files.values()))
    others = {
        (m, v) for m, v in zip(prev["critic_model"].to_pylist(), prev["prompt_version"].to_pylist())
    } - {(model_name, PROMPT_VERSION)}
    if others:
        raise UserError(
            f"output={cfg.output} already holds labels from another critic/prompt {sorted(others)[:3]}; "
            f"this run is ({model_name}, {PROMPT_VERSION}). Use a new output or replace=true."
        )
    done = set(prev["traj_id"].to_pylist())
    carried_rows = prev.num_rows
    if prev_label_files:
        out.carry(prev_label_files)
    prev_error_ids = set(prev_errors["traj_id"].to_pylist())

    # Which trajectories this run labels.
    counts = Counter()
    selected: list[str] = []
    seen: set[str] = set()
    columns = (keys[k].to_pylist() for k in ("traj_id", "resolved", "num_steps"))
    for tid, resolved, num_steps in zip(*columns):
        if tid in seen:
            counts["duplicate_in_input"] += 1
            continue
        seen.add(tid)
        outcome = effective_resolved(resolved, cfg.unknown_outcome)
        if outcome is None:
            counts["skipped_unknown_outcome"] += 1
        elif outcome is True and not c.label_resolved:
            counts["skipped_resolved"] += 1
        elif not num_steps:  # no assistant step: nothing to label (not an error of the critic)
            counts["skipped_no_steps"] += 1
        elif tid in done:
            counts["skipped_already_labelled"] += 1
        elif tid in prev_error_ids and not cfg.retry_errors:
            counts["skipped_previous_error"] += 1
        elif cfg.limit is not None and len(selected) >= cfg.limit:
            counts["skipped_limit"] += 1
        else:
            selected.append(tid)

    labels = ShardWriter(out.uri, run_id, STEP_LABEL, cfg.rows_per_shard)
    errors = ShardWriter(out.side_uri(ERRORS), run_id, LABEL_ERROR, max(1, cfg.rows_per_shard // 10))
    # Earlier error rows of trajectories this run does not retry stay, in this run's version.
    selected_set = set(selected)
    kept_errors = prev_errors.filter(pc.invert(pc.is_in(
        prev_errors["traj_id"], pa.array(sorted(selected_set | done), pa.string()))))
    errors.add(kept_errors.to_pylist())
    errors.flush()

    dist, reasons, stats = Counter(), Counter(), Counter()
    conf_sum = 0.0
    written: set[str] = set()
    progress = Progress("label", len(selected), "trajectories")
    committer = _Committer(out, [labels, errors], cfg.commit_every_trajectories, cfg.commit_every_s)

    def error_row(tid: str, reason: str, detail: str | None, attempts: int = 0) -> None:
        reasons[reason] += 1
        errors.add([{
            "traj_id": tid, "reason": reason, "detail": scrub(detail, secrets), "attempts": attempts,
            "critic_model": model_name, "prompt_version": PROMPT_VERSION, "run_id": run_id,
        }])

    def take(o: dict) -> None:
        nonlocal conf_sum
        tid = o["traj_id"]
        stats["calls"] += o["calls"] or 0
        stats["prompt_tokens"] += o["prompt_tokens"] or 0
        stats["completion_tokens"] += o["completion_tokens"] or 0
        if o["trajectory_tokens"]:
            stats["trajectory_tokens"] += o["trajectory_tokens"]
            stats["critic_prompt_tokens"] += o["critic_prompt_tokens"] or 0
        if o["verdicts"] is None:
            error_row(tid, o["error_reason"] or "unknown_error", o["error_detail"], o["attempts"] or 0)
            return
        stats["labelled"] += 1
        rows = []
        for v in o["verdicts"]:
            dist[v["label"]] += 1
            conf_sum += v["confidence"]
            rows.append({
                "traj_id": tid, "step": v["step"], "label": v["label"],
                "confidence": v["confidence"], "reason": scrub(v["reason"], secrets),
                "critic_model": model_name, "prompt_version": PROMPT_VERSION,
                "num_samples": o["num_samples"], "run_id": run_id,
                "prompt_tokens": o["prompt_tokens"], "completion_tokens": o["completion_tokens"],
            })
        labels.add(rows)

    def summarize(final: bool) -> dict:
        labelled, errored = stats["labelled"], sum(reasons.values())
        rows_new = sum(dist.values())
        elapsed = time.time() - t0
        s = {
            "run_id": run_id,
            "critic_model": model_name,
            "prompt_version": PROMPT_VERSION,
            "backend": c.backend,
            "num_samples": c.num_samples,
            "confidence_mode": confidence_mode(c),
            "unknown_outcome": cfg.unknown_outcome,
            "rows_in": keys.num_rows,  # input trajectories
            "trajectories_selected": len(selected),
            "trajectories_labelled": labelled,
            "trajectories_errored": errored,
            **{k: counts[k] for k in _SKIPS},
            "rows_out": carried_rows + rows_new,  # step-label rows in the committed output
            "rows_written": rows_new,  # step-label rows this run wrote
            "rows_carried": carried_rows,  # kept from earlier runs
            "label_distribution": {k: dist[k] for k in ("good", "unnecessary", "mistake", "recover")},
            "mean_confidence": round(conf_sum / rows_new, 4) if rows_new else None,
            "error_reasons": dict(sorted(reasons.items())),
            "error_fraction": round(errored / len(selected), 4) if selected else 0.0,
            "max_error_fraction": cfg.max_error_fraction,
            "calls": stats["calls"],
            "calls_per_trajectory": round(stats["calls"] / max(1, labelled + errored), 3),
            "prompt_tokens": stats["prompt_tokens"],
            "completion_tokens": stats["completion_tokens"],
            "prompt_to_trajectory_tokens": (
                round(stats["critic_prompt_tokens"] / stats["trajectory_tokens"], 4)
                if stats["trajectory_tokens"] else None
            ),
            "label_shards": list(labels.written),
            "error_shards": list(errors.written),
            "commits": committer.commits,
            "elapsed_s": round(elapsed, 2),
            "trajectories_per_minute": round(60 * (labelled + errored) / elapsed, 2) if selected else None,
            "config": redacted(cfg),
        }
        if not final:
            s["in_progress"] = True
        return s

    def partial_fields() -> dict:
        s = summarize(final=False)
        return {"rows_in": s["rows_in"], "rows_out": s["rows_out"], "summary": s}

    aborted = None  # why the actor pool failed, if it did
    if selected:
        init_ray()
        fs, _ = io.filesystem(cfg.input)
        ds = ray.data.read_parquet(
            [io.filesystem(f)[1] for f in files], filesystem=fs, columns=_INPUT_COLUMNS,
            schema=pa.schema([TRAJECTORY.field(n) for n in _INPUT_COLUMNS]),
        )
        ds = ds.map_batches(_select, batch_format="pyarrow", fn_kwargs={"ids": selected_set})
        # One block per actor batch (a streaming split, no all-to-all): a map task buffers its
        # outputs into blocks of up to 128 MiB, so without this a whole input file's labels
        # would reach the driver, and its periodic commits, only when the file is done.
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
            batch_size=c.batch_size,
            batch_format="pyarrow",
            **remote,
        )
        try:
            # The autoscaler is asked for the full pool while it runs (Ray Data alone does not grow it:
            # pipeline/label/autoscale.py); withdrawn when the batches end or fail.
            bundles = actor_bundles(c.pool.max, remote.get("num_gpus", 0), remote.get("num_cpus", 0))
            for batch in holding_demand(ds.iter_batches(batch_format="pyarrow", batch_size=None), bundles):
                n, bad = 0, 0
                for o in batch.to_pylist():
                    if o["traj_id"] in written or o["traj_id"] not in selected_set:
                        continue  # a duplicate row in the input (labelled once), or not ours
                    written.add(o["traj_id"])
                    before = sum(reasons.values())
                    try:
                        take(o)
                    except Exception as e:  # noqa: BLE001 - e.g. a verdict that does not fit the schema
                        error_row(o["traj_id"], "unwritable", f"{type(e).__name__}: {e}")
                    n += 1
                    bad += sum(reasons.values()) - before
                progress.update(done=n, errors=bad, labelled=stats["labelled"])
                committer.due(n, partial_fields)
        except Exception as e:  # noqa: BLE001 - Ray itself failed: keep what is done, account for the rest
            aborted = scrub(f"{type(e).__name__}: {e}", secrets)[:2000]
            print(f"[label] the actor pool failed: {aborted[:300]}", flush=True)
            for tid in selected:
                if tid not in written:
                    written.add(tid)
                    error_row(tid, "run_aborted", f"the run stopped before this trajectory came back: {aborted}")
    labels.flush()
    errors.flush()

    summary = summarize(final=True)
    missing = len(selected) - summary["trajectories_labelled"] - summary["trajectories_errored"]
    if missing:  # every selected trajectory must come back as labels or an error
        summary["trajectories_lost"] = missing
    accounted = summary["trajectories_labelled"] + summary["trajectories_errored"] + sum(summary[k] for k in _SKIPS)
    if accounted + missing != summary["rows_in"]:
        raise RuntimeError(f"label counts do not add up: {accounted} accounted != {summary['rows_in']} in")
    io.write_bytes(io.join(out.uri, "_summary.json"), json.dumps(summary, indent=2).encode())

    errored = summary["trajectories_errored"] + missing
    if selected and errored / len(selected) > cfg.max_error_fraction:
        top = ", ".join(f"{k} {v}" for k, v in Counter(summary["error_reasons"]).most_common(3))
        cause = f"; Ray stopped the run: {aborted[:300]}" if aborted else ""
        reason = (f"{errored} of {len(selected)} selected trajectories errored ({top}{cause}), more than "
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
