"""Step labels -> a compact per-trajectory index, and which steps each recipe trains.

The label stage writes one STEP_LABEL row per (traj_id, step). The build stage only needs, per
trajectory, which steps are labelled and which of them are masked under `mask.labels` and
`mask.threshold`; the reasons, critic names and token counts are never read. `compact` runs per
block (in Ray), `index_from_compact` merges the compact blocks with vectorised Arrow kernels.
A duplicate (traj_id, step) - e.g. a re-run of the critic - resolves to the newest `run_id`.

The threshold is inclusive at the precision confidences are stored in. STEP_LABEL keeps
`confidence` as float32, while `mask.threshold` is a Python float (float64): float32(0.9) is
0.89999998, which is *below* float64 0.9, so a 9-of-10 vote would escape a threshold of 0.9.
`at_threshold` therefore rounds the threshold to float32 and compares there (a float64 column
is rounded to float32 as well): a confidence that reads as the number the user wrote is masked,
whatever the column's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.schema import LABELS

LABEL_COLUMNS = ["traj_id", "step", "label", "confidence", "run_id"]
COMPACT = pa.schema(
    [
        pa.field("traj_id", pa.string()),
        pa.field("step", pa.int32()),
        pa.field("masked", pa.bool_()),
        pa.field("bad", pa.bool_()),  # unknown label or confidence outside [0, 1]
        pa.field("run_id", pa.string()),
    ]
)
INDEX = pa.schema(
    [
        pa.field("traj_id", pa.string()),
        pa.field("num_labeled", pa.int32()),  # distinct steps with a label
        pa.field("max_step", pa.int32()),
        pa.field("num_bad", pa.int32()),
        pa.field("masked_steps", pa.list_(pa.int32())),
    ]
)


def at_threshold(confidence: pa.Array | pa.ChunkedArray, threshold: float) -> pa.Array | pa.ChunkedArray:
    """confidence >= threshold, both rounded to float32 (the storage precision; see above)."""
    return pc.greater_equal(confidence.cast(pa.float32()), pa.scalar(np.float32(threshold), pa.float32()))


def compact(batch: pa.Table, labels: list[str], threshold: float) -> pa.Table:
    conf = batch["confidence"]
    masked = pc.and_(pc.is_in(batch["label"], value_set=pa.array(labels, pa.string())), at_threshold(conf, threshold))
    bad = pc.or_(
        pc.invert(pc.is_in(batch["label"], value_set=pa.array(LABELS, pa.string()))),
        pc.or_(pc.less(conf, 0.0), pc.greater(conf, 1.0)),
    )
    return pa.table(
        {
            "traj_id": batch["traj_id"].cast(pa.string()),
            "step": batch["step"].cast(pa.int32()),
            "masked": pc.fill_null(masked, False),
            "bad": pc.fill_null(bad, True),
            "run_id": batch["run_id"].cast(pa.string()),
        },
        schema=COMPACT,
    )


def index_from_compact(table: pa.Table) -> tuple[pa.Table, int]:
    """(INDEX sorted by traj_id, number of duplicate label rows dropped)."""
    if table.num_rows == 0:
        return INDEX.empty_table(), 0
    table = table.sort_by([("traj_id", "ascending"), ("step", "ascending"), ("run_id", "descending")])
    tid, step = table["traj_id"].combine_chunks(), table["step"].combine_chunks()
    first = np.ones(table.num_rows, dtype=bool)
    if table.num_rows > 1:
        same = pc.and_(pc.equal(tid[1:], tid[:-1]), pc.equal(step[1:], step[:-1]))
        first[1:] = ~same.to_numpy(zero_copy_only=False)
    duplicates = int((~first).sum())
    table = table.filter(pa.array(first))
    stats = table.group_by("traj_id", use_threads=False).aggregate(
        [("step", "count"), ("step", "max"), ("bad", "sum")]
    )
    masked = table.filter(table["masked"]).group_by("traj_id", use_threads=False).aggregate([("step", "list")])
    stats = stats.sort_by("traj_id")
    pos = pc.index_in(masked["traj_id"], value_set=stats["traj_id"]).to_numpy(zero_copy_only=False)
    lists: list = [[] for _ in range(stats.num_rows)]
    for p, steps in zip(pos, masked["step_list"].to_pylist()):
        lists[int(p)] = sorted(steps)
    index = pa.table(
        {
            "traj_id": stats["traj_id"],
            "num_labeled": stats["step_count"].cast(pa.int32()),
            "max_step": stats["step_max"].cast(pa.int32()),
            "num_bad": stats["bad_sum"].cast(pa.int32()),
            "masked_steps": pa.array(lists, pa.list_(pa.int32())),
        },
        schema=INDEX,
    )
    return index, duplicates


def lookup(index: pa.Table, traj_ids: pa.Array) -> list[dict | None]:
    """The index row of each traj_id, or None."""
    if index.num_rows == 0:
        return [None] * len(traj_ids)
    pos = pc.index_in(traj_ids, value_set=index["traj_id"]).to_pylist()
    rows = index.take(pa.array([p for p in pos if p is not None], pa.int64())).to_pylist()
    it = iter(rows)
    return [next(it) if p is not None else None for p in pos]


@dataclass(frozen=True)
class Selection:
    kind: str  # resolved_all | unresolved_masked | unresolved_all
    masked_steps: frozenset[int]


@dataclass(frozen=True)
class Rejection:
    reason: str
    detail: str
    excluded: bool  # True: a recipe/policy exclusion; False: an error in the inputs


def select(recipe: str, resolved: bool | None, num_steps: int, labels: dict | None, unlabeled: str):
    """Which steps of one trajectory the recipe trains, or why the trajectory is left out.
    `resolved` is the outcome after the unknown-outcome policy (`pipeline.outcome.effective_resolved`):
    None only when that policy excludes trajectories of unknown outcome."""
    if resolved is None:
        return Rejection(
            "resolution_unknown", "no evaluation result says whether it was resolved (unknown_outcome=exclude)", True
        )
    if resolved:
        if recipe in ("rft", "mix_nomask", "srft_mix"):
            return Selection("resolved_all", frozenset())
        return Rejection("resolved_not_in_recipe", f"recipe {recipe} trains unresolved trajectories only", True)
    if recipe == "rft":
        return Rejection("unresolved_not_in_recipe", "recipe rft trains resolved trajectories only", True)
    if recipe in ("unresolved_nomask", "mix_nomask"):  # no labels read: every step trained
        return Selection("unresolved_all", frozenset())
    # srft_unresolved / srft_mix: unresolved minus the masked steps
    if labels is not None:
        if labels["num_bad"]:
            return Rejection("bad_label", f"{labels['num_bad']} label rows have an unknown label or confidence", False)
        if labels["max_step"] >= num_steps:
            return Rejection(
                "label_step_out_of_range",
                f"a label names step {labels['max_step']} but the trajectory has {num_steps} steps",
                False,
            )
    complete = labels is not None and labels["num_labeled"] == num_steps
    if complete:
        return Selection("unresolved_masked", frozenset(labels["masked_steps"]))
    if unlabeled == "train_all":
        masked = frozenset(labels["masked_steps"]) if labels is not None else frozenset()
        return Selection("unresolved_masked" if masked else "unresolved_all", masked)
    if labels is None:
        return Rejection("unlabeled", "unresolved and no step labels (mask.unlabeled=exclude)", True)
    return Rejection(
        "partially_labeled",
        f"labels for {labels['num_labeled']} of {num_steps} steps (mask.unlabeled=exclude)",
        True,
    )
