"""Label-set and threshold semantics, unlabeled policy, and every recipe's selection."""

from __future__ import annotations

import pyarrow as pa
import pytest

from pipeline.build.config import RECIPES
from pipeline.build.labels import Rejection, Selection, compact, index_from_compact, select
from pipeline.build.records import build_records
from pipeline.schema import TRAJECTORY

from .conftest import labels_table


def index_for(table: pa.Table, labels=("mistake",), threshold=0.5):
    return index_from_compact(compact(table, list(labels), threshold))


def test_threshold_is_inclusive_and_label_set_counts():
    t = pa.table({
        "traj_id": ["a"] * 5, "step": [0, 1, 2, 3, 4],
        "label": ["mistake", "mistake", "mistake", "unnecessary", "good"],
        "confidence": pa.array([0.5, 0.49, 1.0, 0.99, 1.0], pa.float32()),
        "run_id": ["r"] * 5,
    })
    (row,), _ = index_for(t)[0].to_pylist(), None
    assert row["masked_steps"] == [0, 2] and row["num_labeled"] == 5
    assert index_for(t, ("mistake", "unnecessary"))[0].to_pylist()[0]["masked_steps"] == [0, 2, 3]
    assert index_for(t, ("mistake",), 0.0)[0].to_pylist()[0]["masked_steps"] == [0, 1, 2]
    assert index_for(t, ("mistake",), 1.0)[0].to_pylist()[0]["masked_steps"] == [2]
    assert index_for(t, ("recover",))[0].to_pylist()[0]["masked_steps"] == []


@pytest.mark.parametrize("threshold,share", [(0.7, (7, 10)), (0.9, (9, 10)), (0.3, (3, 10)), (0.5, (1, 2))])
@pytest.mark.parametrize("dtype", [pa.float32(), pa.float64()])
def test_threshold_is_inclusive_where_float32_is_inexact(threshold, share, dtype):
    """A vote share equal to the threshold the user wrote is masked, though float32(0.7) < 0.7
    and float32(0.9) < 0.9; a share one vote lower is not."""
    votes, k = share
    at = votes / k
    below = (votes - 1) / k
    assert dtype != pa.float32() or threshold == 0.5 or float(pa.scalar(at, pa.float32()).as_py()) != threshold
    t = pa.table({
        "traj_id": ["a"] * 3, "step": [0, 1, 2], "label": ["mistake"] * 3,
        "confidence": pa.array([at, below, 1.0], dtype), "run_id": ["r"] * 3,
    })
    assert index_for(t, ("mistake",), threshold)[0].to_pylist()[0]["masked_steps"] == [0, 2]


def test_duplicates_newest_run_wins_and_bad_labels():
    t = pa.table({
        "traj_id": ["a", "a", "b"], "step": [0, 0, 0], "label": ["mistake", "good", "oops"],
        "confidence": pa.array([0.9, 0.9, 0.9], pa.float32()), "run_id": ["2026-01", "2026-02", "r"],
    })
    index, dups = index_for(t)
    rows = {r["traj_id"]: r for r in index.to_pylist()}
    assert dups == 1 and rows["a"]["masked_steps"] == [] and rows["b"]["num_bad"] == 1
    assert isinstance(select("srft_mix", False, 1, rows["b"], "exclude"), Rejection)


FULL = {"num_labeled": 4, "max_step": 3, "num_bad": 0, "masked_steps": [1]}
PART = {"num_labeled": 2, "max_step": 1, "num_bad": 0, "masked_steps": [1]}


@pytest.mark.parametrize(
    "recipe,resolved,labels,unlabeled,expect",
    [
        ("rft", True, None, "exclude", ("resolved_all", set())),
        ("rft", False, FULL, "exclude", "unresolved_not_in_recipe"),
        ("unresolved_nomask", False, FULL, "exclude", ("unresolved_all", set())),
        ("unresolved_nomask", True, None, "exclude", "resolved_not_in_recipe"),
        ("srft_unresolved", False, FULL, "exclude", ("unresolved_masked", {1})),
        ("srft_unresolved", True, FULL, "exclude", "resolved_not_in_recipe"),
        ("srft_unresolved", False, None, "exclude", "unlabeled"),
        ("srft_unresolved", False, PART, "exclude", "partially_labeled"),
        ("mix_nomask", True, None, "exclude", ("resolved_all", set())),  # the naive mix: both kinds,
        ("mix_nomask", False, FULL, "exclude", ("unresolved_all", set())),  # labels never read
        ("mix_nomask", False, None, "exclude", ("unresolved_all", set())),
        ("srft_mix", True, FULL, "exclude", ("resolved_all", set())),  # resolved: every step trained
        ("srft_mix", False, FULL, "exclude", ("unresolved_masked", {1})),
        ("srft_mix", False, None, "exclude", "unlabeled"),
        ("srft_mix", False, None, "train_all", ("unresolved_all", set())),
        ("srft_mix", False, PART, "train_all", ("unresolved_masked", {1})),
        ("srft_mix", None, FULL, "exclude", "resolution_unknown"),
        ("srft_mix", False, {**FULL, "max_step": 9}, "exclude", "label_step_out_of_range"),
    ],
)
def test_recipe_selection(recipe, resolved, labels, unlabeled, expect):
    got = select(recipe, resolved, 4, labels, unlabeled)
    if isinstance(expect, str):
        assert isinstance(got, Rejection) and got.reason == expect
        assert got.excluded == (expect not in ("label_step_out_of_range", "bad_label"))
    else:
        assert isinstance(got, Selection) and (got.kind, set(got.masked_steps)) == expect


def trajectories(n_steps: dict[str, tuple[int, bool | None]]) -> pa.Table:
    rows = []
    for tid, (n, resolved) in n_steps.items():
        msgs = [{"role": "system", "content": "sys", "tool_calls": None},
                {"role": "user", "content": f"task {tid}", "tool_calls": None}]
        for s in range(n):
            msgs += [{"role": "assistant", "content": f"{tid} step {s} action", "tool_calls": None},
                     {"role": "user", "content": f"OBSERVATION: {tid} result {s}", "tool_calls": None}]
        rows.append({"traj_id": tid, "instance_id": tid, "resolved": resolved, "source": "mem",
                     "source_format": "xml", "messages": msgs, "num_steps": n, "num_messages": len(msgs)})
    return pa.Table.from_pylist(rows, schema=TRAJECTORY)


@pytest.mark.parametrize("recipe", RECIPES)
def test_records_per_recipe(builder, recipe):
    trajs = trajectories({"res": (6, True), "unres": (6, False), "nolab": (3, False), "unk": (2, None)})
    index, _ = index_for(labels_table({"res": 6, "unres": 6}))  # mistake >= 0.5 at steps 1 (0.9)
    out = {r["traj_id"]: r for r in build_records(trajs, builder, recipe, "exclude", index, "exclude").to_pylist()}
    assert out["unk"]["reason"] == "resolution_unknown"
    docs = {t for t, r in out.items() if r["status"] == "doc"}
    expected = {"rft": {"res"}, "unresolved_nomask": {"unres", "nolab"}, "srft_unresolved": {"unres"},
                "mix_nomask": {"res", "unres", "nolab"}, "srft_mix": {"res", "unres"}}[recipe]
    assert docs == expected
    tok = builder.tokenizer
    for tid in docs:
        r = out[tid]
        trained = tok.decode([i for i, m in zip(r["input_ids"], r["loss_mask"]) if m])
        masked_step = f"{tid} step 1 action<|im_end|>"
        steps = 6 if tid != "nolab" else 3
        if r["kind"] == "unresolved_masked":
            assert masked_step not in trained and masked_step in tok.decode(r["input_ids"])
            assert r["num_masked_tokens"] == len(tok(masked_step)["input_ids"])
            assert trained == "".join(f"{tid} step {s} action<|im_end|>" for s in range(steps) if s != 1)
        else:
            assert r["num_masked_tokens"] == 0
            assert trained == "".join(f"{tid} step {s} action<|im_end|>" for s in range(steps))
        assert "OBSERVATION" not in trained and "task" not in trained and "sys" not in trained


@pytest.mark.parametrize("recipe", RECIPES)
def test_unknown_outcome_unresolved_trains_them_like_failed_runs(builder, recipe):
    """unknown_outcome=unresolved (the default): resolved=null trajectories go where unresolved ones
    go, masked from their labels under srft_* and needing labels like them."""
    trajs = trajectories({"unres": (6, False), "unk": (6, None), "unk_nolab": (3, None)})
    index, _ = index_for(labels_table({"unres": 6, "unk": 6}))  # mistake >= 0.5 at step 1
    out = {r["traj_id"]: r for r in build_records(trajs, builder, recipe, "exclude", index).to_pylist()}
    assert out["unk"]["status"] == out["unres"]["status"] and out["unk"]["kind"] == out["unres"]["kind"]
    assert out["unk"]["outcome_unknown"] == (recipe != "rft") and not out["unres"]["outcome_unknown"]
    if recipe == "rft":
        assert out["unk"]["reason"] == "unresolved_not_in_recipe"
    elif recipe in ("unresolved_nomask", "mix_nomask"):
        assert out["unk_nolab"]["status"] == "doc" and out["unk"]["num_masked_tokens"] == 0
    else:
        assert out["unk"]["kind"] == "unresolved_masked" and out["unk"]["num_masked_tokens"] > 0
        masked_step = "unk step 1 action<|im_end|>"
        assert out["unk"]["num_masked_tokens"] == len(builder.tokenizer(masked_step)["input_ids"])
        assert out["unk_nolab"]["reason"] == "unlabeled"  # it needs labels like an unresolved one
    excluded = {r["traj_id"]: r for r in build_records(trajs, builder, recipe, "exclude", index, "exclude").to_pylist()}
    assert excluded["unk"]["reason"] == excluded["unk_nolab"]["reason"] == "resolution_unknown"
    assert excluded["unk"]["status"] == "excluded"
