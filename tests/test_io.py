"""URIs and atomic outputs, locally and on a real (moto) S3 endpoint."""

from __future__ import annotations

import pyarrow as pa
import pytest
import ray

from pipeline import io
from pipeline.schema import BUILD_ERROR

ROWS = pa.table({"traj_id": ["a", "b"], "reason": ["r", "r"], "detail": [None, None]}).cast(BUILD_ERROR)


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    return request.getfixturevalue("s3_bucket") if request.param == "s3" else str(tmp_path)


def test_list_files_folder_glob_and_missing(root):
    for name in ["a.jsonl", "sub/b.traj", "sub/c.txt", "_quarantine/d.jsonl", ".hidden/e.jsonl"]:
        io.write_bytes(io.join(root, "in", name), b"{}")
    found = [f.rsplit("/in/", 1)[1] for f in io.list_files(io.join(root, "in"), (".jsonl", ".traj"))]
    assert found == ["a.jsonl", "sub/b.traj"]
    assert [f.rsplit("/", 1)[1] for f in io.list_files(io.join(root, "in", "sub", "*.traj"), ())] == ["b.traj"]
    assert io.list_files(io.join(root, "in", "a.jsonl"), ()) == [io.join(root, "in", "a.jsonl")]
    with pytest.raises(FileNotFoundError, match="nope"):
        io.list_files(io.join(root, "nope"), (".jsonl",))


def test_interrupted_stage_output_is_invisible(root, ray_session):
    out = io.join(root, "out")
    io.write_table(ROWS, io.join(out, "part-0.parquet"))
    # A run killed mid-write leaves only its staging folder behind.
    io.write_table(ROWS, io.join(io.staging_uri(out, "killed"), "part-1.parquet"))
    assert io.read_table(out, BUILD_ERROR).num_rows == 2
    fs, path = io.filesystem(out)
    assert ray.data.read_parquet(path, filesystem=fs).count() == 2


def test_publish_replace_and_append(root):
    out = io.join(root, "out")
    io.write_table(ROWS, io.join(out, "old.parquet"))
    staging = io.staging_uri(out, "r1")
    io.write_table(ROWS, io.join(staging, "new.parquet"))
    io.write_table(ROWS, io.join(staging, "_errors", "e.parquet"))
    moved = io.publish(staging, out, replace=True)
    assert sorted(m.rsplit("/out/", 1)[1] for m in moved) == ["_errors/e.parquet", "new.parquet"]
    assert not io.exists(io.join(out, "old.parquet")) and not io.exists(staging)
    staging = io.staging_uri(out, "r2")
    io.write_table(ROWS, io.join(staging, "more.parquet"))
    io.publish(staging, out, replace=False)
    assert io.read_table(out, BUILD_ERROR).num_rows == 4


def test_unsupported_scheme():
    with pytest.raises(ValueError, match="gs://"):
        io.filesystem("gs://bucket/x")
