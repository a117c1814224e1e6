"""A stage submitted as a Ray job to a real local head on 127.0.0.1."""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from pipeline import io
from pipeline.schema import TRAJECTORY
from tests.conftest import REPO, _free_port

RAY = str(Path(sys.executable).parent / "ray")


def _env() -> dict[str, str]:
    """Head and client share one token: Ray 2.60 enables token auth, and this must not depend on
    whatever ~/.ray/auth_token the machine happens to have."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=_TOKEN)
    # The job's `python` is this environment's, as with an activated venv.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


_TOKEN = uuid.uuid4().hex


@pytest.fixture
def local_head():
    """`ray start --head --block` in its own process group, stopped by signal: `ray stop` would
    also stop every other Ray on this machine."""
    tmp = tempfile.mkdtemp(prefix="rh", dir="/tmp")
    port, dashboard = _free_port(), _free_port()
    env = _env()
    head = subprocess.Popen(
        [RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--num-cpus=2",
         # Free ports for the agents: the test session's own local Ray (ray_session) holds the defaults,
         # and a job agent that cannot bind never registers ("No available agent to submit job").
         f"--dashboard-agent-listen-port={_free_port()}", f"--dashboard-agent-grpc-port={_free_port()}",
         f"--runtime-env-agent-port={_free_port()}", f"--metrics-export-port={_free_port()}",
         f"--temp-dir={tmp}", "--disable-usage-stats"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    address = f"http://127.0.0.1:{dashboard}"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(f"{address}/api/version", timeout=2)
            break
        except urllib.error.HTTPError:  # it answers (e.g. 401 before auth): it is up
            break
        except (OSError, http.client.HTTPException):  # refused, reset or half up: not up yet
            if time.time() > deadline or head.poll() is not None:
                os.killpg(head.pid, signal.SIGKILL)
                raise RuntimeError("the local Ray head did not come up")
            time.sleep(1)
    yield address
    os.killpg(head.pid, signal.SIGTERM)
    try:
        head.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)
    shutil.rmtree(tmp, ignore_errors=True)


def _submit(address: str, *entrypoint: str) -> subprocess.CompletedProcess:
    env = _env()
    deadline = time.time() + 300  # the dashboard answers before the job agent has registered (slow when busy)
    while True:
        job = subprocess.run(
            [RAY, "job", "submit", "--address", address, "--working-dir", ".",
             "--runtime-env", "cluster/runtime_env.yaml", "--", *entrypoint],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False,
        )
        if "No available agent" not in job.stdout + job.stderr or time.time() > deadline:
            return job
        time.sleep(5)


def test_relative_output_refused_in_a_ray_job(local_head):
    """Under --working-dir, `output=runs/x` would land in Ray's temporary copy of the repo and be
    lost: the stage refuses it before doing any work, in one line, and the job fails."""
    job = _submit(local_head, "python", "-m", "jobs.ingest", "input=conf/sample/trajectories",
                  "output=runs/relative-output-test")
    logs = job.stdout + job.stderr
    assert job.returncode != 0, logs[-3000:]
    assert "output=runs/relative-output-test is a relative path inside a Ray job" in logs, logs[-3000:]
    assert "SRFT_OUTPUT_ROOT" in logs and "Traceback" not in logs
    assert not (REPO / "runs" / "relative-output-test").exists()


@pytest.mark.slow
def test_ingest_submitted_as_ray_job(local_head, tmp_path):
    out = tmp_path / "trajectories"
    job = _submit(local_head, "python", "-m", "jobs.ingest", "input=conf/sample/trajectories", f"output={out}")
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    assert "succeeded" in (job.stdout + job.stderr).lower()
    assert io.read_table(str(out), TRAJECTORY).num_rows == 6
    assert (out / "_manifest.json").exists()
