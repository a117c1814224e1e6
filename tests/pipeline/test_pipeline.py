"""The pipeline driver: stage skipping by manifest, force, and whole runs (slow suite)."""

from __future__ import annotations

import json

import pyarrow.fs as pafs
import pytest

from jobs import pipeline
from pipeline import driver, fsys, io
from pipeline.errors import UserError
from pipeline.schema import STEP_LABEL, TRAINING_ROW, TRAJECTORY
from tests.conftest import SAMPLE


def test_complete_stage_is_skipped_and_force_reruns(ray_session, tmp_path):
    argv = [f"root={tmp_path}", "stages=[ingest]", "demo_models.critic=null", "demo_models.student=null"]
    first = pipeline.main(argv)["ingest"]
    assert not first["skipped"] and first["rows_out"] == 6
    again = pipeline.main(argv)["ingest"]
    assert again["skipped"] and again["finished_at"] == first["finished_at"]
    forced = pipeline.main(argv + ["force=true"])["ingest"]
    assert not forced["skipped"]
    changed = pipeline.main(argv + ["ingest.rows_per_shard=2"])["ingest"]  # another config: runs
    assert not changed["skipped"]
    assert io.read_table(str(tmp_path / "trajectories"), TRAJECTORY).num_rows == 6


def test_unknown_stage_and_split_outcome_policy_are_refused(tmp_path):
    with pytest.raises(UserError, match="unknown"):
        pipeline.main([f"root={tmp_path}", "stages=[ingset]"])
    with pytest.raises(UserError, match="label.unknown_outcome=unresolved but build.unknown_outcome=exclude"):
        pipeline.main([f"root={tmp_path}", "stages=[ingest]", "build.unknown_outcome=exclude"])
    assert not (tmp_path / "trajectories").exists()


def test_a_bad_value_in_a_stage_names_the_key_as_typed(tmp_path):
    """Stage configs name their keys from the stage root; in the driver they sit under the stage."""
    with pytest.raises(UserError, match=r"^label\.critic\.pool: need 1 <= min <= max"):
        pipeline.main([f"root={tmp_path}", "label.critic.pool.min=0"])
    with pytest.raises(UserError, match=r"^build\.mask\.threshold=2\.0 is outside"):
        pipeline.main([f"root={tmp_path}", "build.mask.threshold=2"])
    assert not (tmp_path / "trajectories").exists()


def _check_run(root: str) -> None:
    manifests = {s: json.loads(io.read_bytes(fsys.join(root, d, "_manifest.json"))) for s, d in [
        ("ingest", "trajectories"), ("label", "labels"), ("build", "train_rows"), ("train", "train"),
        ("report", "report")]}
    assert all(m["status"] == "complete" for m in manifests.values())
    traj = io.read_table(fsys.join(root, "trajectories"), TRAJECTORY)
    labels = io.read_table(fsys.join(root, "labels"), STEP_LABEL)
    rows = io.read_table(fsys.join(root, "train_rows"), TRAINING_ROW)
    assert traj.num_rows == 6 and rows.num_rows > 0
    unresolved = {r["traj_id"]: r["num_steps"] for r in traj.to_pylist() if r["resolved"] is False}
    labelled = set(labels["traj_id"].to_pylist())
    assert labelled <= set(unresolved)
    assert io.exists(fsys.join(root, "train", "hf", "config.json"))
    assert io.exists(fsys.join(root, "report", "report.md"))
    # The report links the mask inspector's page of a built document.
    assert "[inspect.html](inspect.html)" in io.read_bytes(fsys.join(root, "report", "report.md")).decode()
    assert b"masked" in io.read_bytes(fsys.join(root, "report", "inspect.html"))
    for m in manifests.values():
        assert "testing-secret" not in json.dumps(m)


@pytest.mark.slow
def test_whole_pipeline_on_s3(ray_session, s3_bucket, tiny_qwen2_path):
    """Input, every intermediate and the checkpoints on a real (moto) S3 endpoint."""
    for f in sorted(SAMPLE.rglob("*")):
        if f.is_file() and ("trajectories" in f.parts or "reports" in f.parts):
            fsys.write_bytes(fsys.join(s3_bucket, "sample", str(f.relative_to(SAMPLE))), f.read_bytes())
    root = fsys.join(s3_bucket, "run")
    pipeline.main([
        f"root={root}",
        f"ingest.input={s3_bucket}/sample/trajectories", f"ingest.resolution={s3_bucket}/sample/reports",
        "demo_models.critic=null", "demo_models.student=null",
        f"label.critic.model={tiny_qwen2_path}", f"train.model={tiny_qwen2_path}",
    ])
    _check_run(root)
    # DCP shards on S3. They live beside the committed versions, not in one (docs/train.md), so they
    # are listed on the filesystem itself and not through the commit record.
    fs, path = fsys.filesystem(fsys.join(root, "train", "_checkpoints"))
    shards = [f.path for f in fs.get_file_info(pafs.FileSelector(path, recursive=True)) if f.path.endswith(".distcp")]
    assert shards, path


@pytest.mark.slow
def test_demo_end_to_end(ray_session, tmp_path):
    """`make demo`'s embedded default, into a temp root."""
    manifests = pipeline.main([f"root={tmp_path}"])
    # Every stage, and the demo's second build with its hand-made reference labels.
    assert set(manifests) == {*driver.STAGES, "ref_labels", "ref_build"}
    assert manifests["ref_build"]["rows_out"] > 0
    _check_run(str(tmp_path))
