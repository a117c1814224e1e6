"""URIs, listing (suffixes, symlinks, skipped files) and reading through commit records, locally
and on a real (moto) S3 endpoint."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pytest

from pipeline import commit, fsys, io, record
from pipeline.errors import UserError
from pipeline.schema import BUILD_ERROR

ROWS = pa.table({"traj_id": ["a", "b"], "reason": ["r", "r"], "detail": [None, None]}).cast(BUILD_ERROR)


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    return request.getfixturevalue("s3_bucket") if request.param == "s3" else str(tmp_path)


def _rel(files: list[str], folder: str = "/in/") -> list[str]:
    return [f.rsplit(folder, 1)[1] for f in files]


def test_list_files_folder_glob_suffix_case_and_missing(root):
    for name in ["a.jsonl", "B.JSONL", "sub/b.traj", "sub/c.txt", "_quarantine/d.jsonl", ".hidden/e.jsonl"]:
        fsys.write_bytes(fsys.join(root, "in", name), b"{}")
    found, skipped = io.list_files_with_skips(fsys.join(root, "in"), (".jsonl", ".traj"))
    assert _rel(found) == ["B.JSONL", "a.jsonl", "sub/b.traj"]
    reasons = {_rel([s["uri"]])[0]: s["reason"] for s in skipped}
    assert reasons == {"sub/c.txt": fsys.UNSUPPORTED_SUFFIX, "_quarantine": fsys.HIDDEN, ".hidden": fsys.HIDDEN}
    assert [f.rsplit("/", 1)[1] for f in io.list_files(fsys.join(root, "in", "sub", "*.traj"), ())] == ["b.traj"]
    assert io.list_files(fsys.join(root, "in", "a.jsonl"), ()) == [fsys.join(root, "in", "a.jsonl")]
    with pytest.raises(FileNotFoundError, match="nope"):
        io.list_files(fsys.join(root, "nope"), (".jsonl",))


def _commit(root: str, stage: str, tables: dict[str, pa.Table]) -> record.Commit:
    with commit.open_output(stage, root) as out:
        for name, t in tables.items():
            fsys.write_table(t, fsys.join(out.uri, name))
        out.commit("complete")
    return record.read_commit(root)


def test_readers_follow_the_commit_record(root):
    out = fsys.join(root, "out")
    first = _commit(out, "build", {"part-0.parquet": ROWS, "_errors/part-0.parquet": ROWS.slice(0, 1)})
    # A run killed before its commit leaves a version folder that no reader sees.
    fs, path = fsys.filesystem(out)
    fsys.write_table(ROWS, fsys.join(out, "_v-build-killed", "part-1.parquet"))
    assert io.read_table(out, BUILD_ERROR).num_rows == 2
    assert io.read_table(fsys.join(out, "_errors"), BUILD_ERROR).num_rows == 1
    assert io.exists(fsys.join(out, "_errors")) and not io.exists(fsys.join(out, "_excluded"))
    assert io.read_table(fsys.join(out, "_excluded"), BUILD_ERROR).num_rows == 0
    assert pads.dataset(path, filesystem=fs).count_rows() == 0  # plain readers see no half-written mix
    second = _commit(out, "build", {"part-0.parquet": ROWS.slice(0, 1), "part-1.parquet": ROWS})
    assert io.read_table(out, BUILD_ERROR).num_rows == 3
    assert not io.exists(fsys.join(out, "_errors"))  # the new version has no errors
    names = {os.path.basename(i.path) for i in fs.get_file_info(pafs.FileSelector(path))}
    assert first.version in names and second.version in names  # the previous version is kept...
    assert "_v-build-killed" not in names  # ...a killed run's is not
    third = _commit(out, "build", {"part-0.parquet": ROWS})
    names = {os.path.basename(i.path) for i in fs.get_file_info(pafs.FileSelector(path))}
    assert first.version not in names and {second.version, third.version} <= names


def test_plain_folder_is_read_as_it_is_and_uncommitted_output_refused(root):
    fsys.write_table(ROWS, fsys.join(root, "byhand", "rows.parquet"))
    assert io.read_table(fsys.join(root, "byhand"), BUILD_ERROR).num_rows == 2
    fsys.write_table(ROWS, fsys.join(root, "killed", "_v-label-20260101T000000-abc123", "part-0.parquet"))
    with pytest.raises(UserError, match="re-run label"):
        io.read_table(fsys.join(root, "killed"), BUILD_ERROR)


def test_publish_moves_files_and_deletes_nothing(root):
    out = fsys.join(root, "out")
    fsys.write_table(ROWS, fsys.join(out, "old.parquet"))
    staging = fsys.staging_uri(out, "r1")
    fsys.write_table(ROWS, fsys.join(staging, "new.parquet"))
    fsys.write_table(ROWS, fsys.join(staging, "_errors", "e.parquet"))
    moved = fsys.publish(staging, out)
    assert sorted(m.rsplit("/out/", 1)[1] for m in moved) == ["_errors/e.parquet", "new.parquet"]
    assert io.exists(fsys.join(out, "old.parquet")) and not io.exists(staging)


def test_symlinks_fifo_and_dangling_links_are_skipped_with_reasons(tmp_path):
    inp = tmp_path / "in"
    (inp / "sub").mkdir(parents=True)
    (inp / "a.jsonl").write_text("{}")
    (inp / "sub" / "b.JSONL").write_text("{}")
    os.symlink(inp, inp / "sub" / "loop")  # a loop back to the top
    os.symlink(inp / "sub", inp / "alias")  # a second name for a folder
    os.symlink(inp / "a.jsonl", inp / "link.jsonl")  # a second name for a file
    os.symlink(tmp_path / "gone.jsonl", inp / "dangling.jsonl")
    os.mkfifo(inp / "pipe.jsonl")
    os.symlink(inp / "self.jsonl", inp / "self.jsonl")
    found, skipped = io.list_files_with_skips(str(inp), (".jsonl",))
    assert [os.path.relpath(f, inp) for f in found] == ["a.jsonl", "sub/b.JSONL"]
    reasons = {os.path.relpath(s["uri"], inp): s["reason"].split(" (")[0] for s in skipped}
    assert reasons == {
        "alias": fsys.SYMLINK_LOOP,
        "sub/loop": fsys.SYMLINK_LOOP,
        "link.jsonl": fsys.DUPLICATE_LINK,
        "dangling.jsonl": fsys.DANGLING_LINK,
        "self.jsonl": fsys.DANGLING_LINK,
        "pipe.jsonl": fsys.NOT_REGULAR,
    }


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_unreadable_file_is_skipped_with_its_reason(tmp_path):
    (tmp_path / "a.jsonl").write_text("{}")
    (tmp_path / "b.jsonl").write_text("{}")
    os.chmod(tmp_path / "b.jsonl", 0)
    found, skipped = io.list_files_with_skips(str(tmp_path), (".jsonl",))
    assert [os.path.basename(f) for f in found] == ["a.jsonl"]
    assert skipped == [{"uri": str(tmp_path / "b.jsonl"), "reason": fsys.UNREADABLE}]


def test_unsupported_scheme():
    with pytest.raises(ValueError, match="gs://"):
        fsys.filesystem("gs://bucket/x")


def test_parquet_shards_checks_every_shard_and_names_the_key(tmp_path):
    from pipeline.schema import STEP_LABEL

    folder = tmp_path / "labels"
    folder.mkdir()
    with pytest.raises(UserError, match=r"^labels=.* holds no step-label \.parquet shards; run jobs.label"):
        io.parquet_shards(str(folder), STEP_LABEL, "labels", "step-label", "run jobs.label into it first")
    row = {"traj_id": "t", "step": 0, "label": "good", "confidence": 1.0, "reason": None, "critic_model": "m",
           "prompt_version": "p", "num_samples": 1, "run_id": "r", "prompt_tokens": 1, "completion_tokens": 1}
    fsys.write_table(pa.Table.from_pylist([row, row], schema=STEP_LABEL), str(folder / "a.parquet"))
    s = io.parquet_shards(str(folder), STEP_LABEL, "labels", "step-label", "hint")
    assert s.rows == 2 and s.columns == set(STEP_LABEL.names) and len(s.paths) == len(s.files) == 1
    fsys.write_table(pa.table({"traj_id": ["t"]}), str(folder / "b.parquet"))  # another table's shard
    with pytest.raises(UserError, match=r"b\.parquet: not a step-label shard \(missing columns"):
        io.parquet_shards(str(folder), STEP_LABEL, "labels", "step-label", "hint")
