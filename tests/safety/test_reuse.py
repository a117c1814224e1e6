"""An output folder is replaced only when it holds a committed output of the same stage; anything
else is refused and left as it was; nothing outside the output is touched. Real ingest runs on the
shared trajectories."""

from __future__ import annotations

import json
import os
import shutil
import time

import pytest

from pipeline import io, record, tables
from pipeline.cli import run_stage_cli
from pipeline.errors import UserError
from pipeline.ingest.stage import STAGE as INGEST
from pipeline.schema import TRAJECTORY
from tests.safety.helpers import snapshot


@pytest.fixture
def data(tmp_path, shared_data):
    d = tmp_path / "data"
    shutil.copytree(shared_data / "swe-agent", d)
    return d


def test_foreign_folders_are_refused_untouched(tmp_path, data):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    (mine / "results.parquet").write_bytes(b"PAR1")
    before = snapshot(str(tmp_path))
    with pytest.raises(UserError, match=r"not empty and holds no committed ingest output \(found results.parquet, thesis.tex\)"):
        run_stage_cli(INGEST, [f"input={data}", f"output={mine}"])
    other = tmp_path / "labels"
    other.mkdir()
    (other / "_manifest.json").write_text(json.dumps({"stage": "label", "status": "complete"}))
    with pytest.raises(UserError, match="holds the output of stage 'label'"):
        run_stage_cli(INGEST, [f"input={data}", f"output={other}"])
    (other / "_manifest.json").unlink()
    before.pop("/labels/_manifest.json", None)
    assert snapshot(str(tmp_path)) == before


def test_same_stage_output_is_replaced_and_only_pipeline_files_go(tmp_path, data, ray_session):
    out = tmp_path / "traj"
    (tmp_path / "beside.txt").write_text("not ours")
    first = run_stage_cli(INGEST, [f"input={data}", f"output={out}", "rows_per_shard=2"])
    c1 = record.read_commit(str(out))
    assert c1.status == "complete" and c1.stage == "ingest"
    rows = io.read_table(str(out), TRAJECTORY)
    assert rows.num_rows == first["rows_out"] > 0
    side = {"_quarantine"}  # a side table's folder (its files in its own version folders)
    assert set(os.listdir(out)) - side == {"_delta_log", "_manifest.json", c1.version}
    assert tables.read(str(out)).sort_by("traj_id").equals(rows.sort_by("traj_id"))

    (out / "NOTES.md").write_text("a user note beside a committed output")
    (out / "_staging-20250101T000000-dead00").mkdir()  # the old layout's leftover of a killed run
    (out / "_staging-20250101T000000-dead00" / "part-0.parquet").write_bytes(b"x")
    dead_heartbeat = out / "_lock.json.tmp-dead00"  # a killed run's heartbeat, hours old: collected
    dead_heartbeat.write_bytes(b"{}")
    os.utime(dead_heartbeat, (time.time() - 3600, time.time() - 3600))
    second = run_stage_cli(INGEST, [f"input={data}", f"output={out}", "rows_per_shard=3"])
    c2 = record.read_commit(str(out))
    assert c2.version != c1.version and second["rows_out"] == first["rows_out"]
    assert set(os.listdir(out)) - side == {"_delta_log", "_manifest.json", c1.version, c2.version, "NOTES.md"}
    assert io.read_table(str(out), TRAJECTORY).sort_by("traj_id").equals(rows.sort_by("traj_id"))
    assert len(io.list_files(str(out), (".parquet",))) < len(c1.uris())  # only the new shards are read
    assert (tmp_path / "beside.txt").read_text() == "not ours"
