"""Every stage refuses, before any work, an output that equals, contains or lies inside an input;
the input (and what lies beside it) stays byte-identical. Driven through the real ingest command."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from pipeline import fsys
from pipeline.cli import run_stage_cli
from pipeline.errors import UserError
from pipeline.guards import check_overlap
from pipeline.ingest.stage import STAGE as INGEST
from tests.conftest import REPO
from tests.safety.helpers import snapshot


@pytest.fixture
def data(tmp_path, shared_data):
    """A copy of the real SWE-agent trajectories, with an unrelated file beside it."""
    d = tmp_path / "data" / "traj"
    shutil.copytree(shared_data / "swe-agent", d)
    for f in d.iterdir():
        f.chmod(0o644)
    (tmp_path / "data" / "unrelated.txt").write_text("keep me")
    return d


def _refused(argv: list[str], match: str) -> None:
    with pytest.raises(UserError, match=match):
        run_stage_cli(INGEST, argv)


def test_cli_exits_2_and_leaves_the_input_alone(data):
    before = snapshot(str(data.parent))
    p = subprocess.run([sys.executable, "-m", "jobs.ingest", f"input={data}", f"output={data}"],
                       cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert p.returncode == 2, p.stderr
    assert f"output {data} is the same folder as input input={data}" in p.stderr
    assert "Traceback" not in p.stderr
    assert snapshot(str(data.parent)) == before


@pytest.mark.parametrize("case", ["equal", "parent", "inside", "alias", "alias_inside", "input_file_inside"])
def test_local_overlaps_refused(data, case):
    before = snapshot(str(data.parent.parent))
    alias = data.parent.parent / "alias"
    os.symlink(data, alias)
    inp, out, how = {
        "equal": (data, data, "is the same folder as"),
        "parent": (data, data.parent, "contains"),
        "inside": (data, data / "out", "lies inside"),
        "alias": (data, alias, "is the same folder as"),
        "alias_inside": (alias, data / "sub" / "out", "lies inside"),
        "input_file_inside": (data / "function_calling__simple_demo.traj", data, "contains"),
    }[case]
    _refused([f"input={inp}", f"output={out}"], f"output {out} {how} input input={inp}")
    os.unlink(alias)
    assert snapshot(str(data.parent.parent)) == before
    assert not (data / "out").exists() and not (data / "sub").exists()


@pytest.mark.parametrize("case", ["equal", "parent", "inside", "bucket"])
def test_s3_overlaps_refused(s3_bucket, shared_data, case):
    data = fsys.join(s3_bucket, "data", "traj")
    for f in sorted((shared_data / "swe-agent").iterdir())[:2]:
        fsys.write_bytes(fsys.join(data, f.name), f.read_bytes())
    fsys.write_bytes(fsys.join(s3_bucket, "data", "unrelated.txt"), b"keep me")
    before = snapshot(s3_bucket)
    out, how = {
        "equal": (data + "/", "is the same folder as"),
        "parent": (fsys.join(s3_bucket, "data"), "contains"),
        "inside": (fsys.join(data, "out"), "lies inside"),
        "bucket": (s3_bucket, "contains"),
    }[case]
    _refused([f"input={data}", f"output={out}"], f"{how} input input={data}")
    assert snapshot(s3_bucket) == before


def test_siblings_sharing_a_name_prefix_do_not_overlap(tmp_path):
    check_overlap(str(tmp_path / "data2"), {"input": str(tmp_path / "data")})
    check_overlap("s3://b/data2", {"input": "s3://b/data"})
    check_overlap("s3://b/data", {"input": "s3://other/data", "model": "hf://datasets/x", "unset": None})
    with pytest.raises(UserError):
        check_overlap("s3://b/data/", {"input": "s3://b/data"})
