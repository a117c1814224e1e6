"""Build: trajectories + step labels -> token-level SRFT training rows (optionally packed).

    python -m jobs.build trajectories=URI labels=URI output=URI model=PATH_OR_URI \
        [recipe=srft_mix] [mask.labels=[mistake]] [mask.threshold=0.5] [mask.unlabeled=exclude] \
        [max_seq_len=32768] [overlong=truncate|drop] [pack.enabled=true] [pack.seq_len=32768] \
        [unknown_outcome=unresolved|exclude]

The join on traj_id never materialises the trajectories. Labels are small (one row per step, a few
fields); Ray Data streams them through `labels.compact` into a per-trajectory index (traj_id,
number of labelled steps, masked step numbers) that is put once in the object store and shared
zero-copy by the tokenizer actors. The trajectories then stream block by block through the actors,
which look their traj_ids up in the index, tokenise, and emit one record per trajectory. The records
go to a Ray Data datasink (pipeline/build/sink.py): each write task packs one unit of consecutive
records (at least 4 x pack.window) with the bounded best-fit-decreasing window, writes its rows and
side-table rows into the run's version folder, and returns a few counters, which the driver sums into
the summary. No token passes through the driver.

Why memory is bounded: the driver holds the label index and the units' counters (tens of bytes per
labelled trajectory, about a hundred per unit), nothing per token or per row. Ray Data's
backpressure bounds the records in flight between the actors and the write tasks; an actor holds one
batch of `batch_size` trajectories; a write task holds one unit's records (Ray Data keeps the blocks
of a write call alive until it returns), the packer's window and open rows (a subset of those
records) and at most `rows_per_shard` packed rows before it writes them. None of these grows with the
token volume or the number of output rows; only the label index grows, with the number of labelled
trajectories.
"""

from __future__ import annotations

import json
import sys

import pyarrow as pa
import ray

from pipeline import fsys, io, record
from pipeline.build.builder import MaskBuilder
from pipeline.build.config import LABEL_RECIPES, BuildConfig, token_limit
from pipeline.build.labels import LABEL_COLUMNS, compact, index_from_compact
from pipeline.build.records import OPTIONAL_TRAJ_COLUMNS, TRAJ_COLUMNS, build_records
from pipeline.build.sink import SIDE_FOLDERS, TrainingRowSink, combine
from pipeline.build.summary import summarize
from pipeline.commit import Output
from pipeline.manifest import Stage
from pipeline.progress import Progress
from pipeline.runtime import init_ray
from pipeline.schema import STEP_LABEL, TRAJECTORY


class BuildWorker:
    """A Ray Data actor: one tokenizer, the shared label index, TRAJECTORY batches -> records."""

    def __init__(self, cfg: BuildConfig, index_ref: list):
        self.cfg = cfg
        self.builder = MaskBuilder(
            cfg.model,
            chat_template=cfg.chat_template,
            end_of_turn=cfg.end_of_turn,
            max_len=token_limit(cfg),
            overlong=cfg.overlong,
            parse_tool_arguments=cfg.parse_tool_arguments,
        )
        self.index = ray.get(index_ref[0]) if index_ref else None

    def __call__(self, batch: pa.Table) -> pa.Table:
        return build_records(
            batch, self.builder, self.cfg.recipe, self.cfg.mask.unlabeled, self.index, self.cfg.unknown_outcome
        )


def _label_index(cfg: BuildConfig, labels: record.Input) -> tuple[pa.Table, dict]:
    shards = io.parquet_shards(labels, STEP_LABEL, "labels", "step-label", "run jobs.label into it first")
    ds = ray.data.read_parquet(shards.paths, filesystem=shards.fs).select_columns(LABEL_COLUMNS).map_batches(
        compact, batch_format="pyarrow", fn_kwargs={"labels": list(cfg.mask.labels), "threshold": cfg.mask.threshold}
    )
    parts = list(ds.iter_batches(batch_format="pyarrow", batch_size=None))
    table = pa.concat_tables(parts) if parts else pa.table({})
    index, duplicates = index_from_compact(table)
    masked = int(pa.compute.sum(pa.compute.list_value_length(index["masked_steps"])).as_py() or 0)
    return index, {
        "label_rows": table.num_rows if parts else 0,
        "duplicate_label_rows": duplicates,
        "labeled_trajectories": index.num_rows,
        "masked_steps": masked,
        "index_bytes": index.nbytes,
    }


def run(cfg: BuildConfig, out: Output) -> dict:
    shards = io.parquet_shards(out.inputs["trajectories"], TRAJECTORY, "trajectories", "trajectory",
                               "run jobs.ingest into it first")
    columns = TRAJ_COLUMNS + [c for c in OPTIONAL_TRAJ_COLUMNS if c in shards.columns]
    # Load the tokenizer and probe its template here first: a refused template fails before Ray starts.
    info = MaskBuilder(cfg.model, cfg.chat_template, cfg.end_of_turn).info
    if not info.renders_tool_calls:
        print(f"[build] warning: the chat template {cfg.chat_template or 'of ' + cfg.model} does not render "
              "tool_calls; trajectories with tool calls become error rows (tool_calls_not_rendered). Pass "
              "chat_template=FILE.jinja with a template that renders them.", file=sys.stderr, flush=True)
    init_ray()
    # Deterministic builds: Ray Data hands the records to the write operator in input order (files
    # sorted by io.list_files, rows in file order), whatever order the actors finish in, so the write
    # tasks get the same units, numbered alike, and the same inputs and config give byte-identical
    # rows (pipeline/build/sink.py). The cost is head-of-line waiting behind a slow batch, bounded
    # by Ray Data's backpressure.
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    run_id = out.run_id  # the version folder's run id (_v-build-<run_id>), as every stage names it
    index_ref, label_stats = [], {}
    if cfg.recipe in LABEL_RECIPES:
        index, label_stats = _label_index(cfg, out.inputs["labels"])
        index_ref = [ray.put(index)]
        del index

    records = ray.data.read_parquet(shards.paths, filesystem=shards.fs).select_columns(columns).map_batches(
        BuildWorker,
        fn_constructor_kwargs={"cfg": cfg, "index_ref": index_ref},
        batch_size=cfg.batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, cfg.num_workers)),
        num_cpus=cfg.worker_cpus,
    )

    # Packing and writing happen in Ray Data write tasks, one packing unit (a run of consecutive
    # records) per task (pipeline/build/sink.py); the driver gets each unit's counters back.
    # out.uri: this run's version folder; side tables in their own (Delta tables of their own); run_stage commits them
    sink = TrainingRowSink(cfg, out.uri, {sub: out.side_uri(sub) for sub in SIDE_FOLDERS.values()})
    records.write_datasink(sink)
    summary = summarize(cfg, combine(sink.units), run_id=run_id, info=info, label_stats=label_stats,
                        columns=columns)
    # Trajectories done of those in the input (from the Parquet footers); Ray Data's own progress
    # bars show the operators while the write runs.
    Progress("build", shards.rows, "trajectories").update(
        done=summary["rows_in"], errors=summary["rows_errored"], force=True,
        documents=summary["documents_out"], excluded=summary["rows_excluded"])
    fsys.write_bytes(fsys.join(out.uri, "_summary.json"), json.dumps(summary, indent=2).encode())
    return summary


def inputs(cfg: BuildConfig) -> dict[str, str | None]:
    return {"trajectories": cfg.trajectories, "labels": cfg.labels, "model": cfg.model,
            "chat_template": cfg.chat_template}


STAGE = Stage(name="build", config=BuildConfig, run=run, inputs=inputs)
