"""Stages submitted with `ray job submit` to the local autoscaling cluster (cluster/local/), outputs on
a moto S3 server, as docs/cluster.md's walk-through "Submitting stages as Ray jobs, outputs on S3"
does it (#17 item 5).

The S3 credentials and the critic's API key are in the environment of the shell that starts the
cluster and submits the jobs, as a user's would be. They must reach the stages (S3 is read and
written, the critic, which refuses requests without its key, answers) without being written into
anything Ray keeps: the jobs' records (`ray job list`: entrypoint, runtime_env, metadata), the
jobs' logs (`ray job logs`), the commit records on S3, or any file of the cluster's Ray session
(its logs include runtime_env_agent.log, where a runtime_env's env_vars would land).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import REPO, SAMPLE, start_moto_server

RAY = str(Path(sys.executable).parent / "ray")


@pytest.fixture
def secrets() -> dict[str, str]:
    """Values that appear nowhere else, so that finding one anywhere is a leak."""
    return {"AWS_SECRET_ACCESS_KEY": f"s3-secret-{uuid.uuid4().hex}", "OPENAI_API_KEY": f"critic-key-{uuid.uuid4().hex}"}


@pytest.fixture
def s3(secrets, monkeypatch):
    """A moto S3 server with the sample uploaded; the AWS environment set in this process (the
    cluster started below inherits it, as from a user's shell)."""
    proc, endpoint = start_moto_server()
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "job-submit-test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secrets["AWS_SECRET_ACCESS_KEY"])
    import pyarrow.fs as pafs

    fs = pafs.S3FileSystem(endpoint_override=endpoint.removeprefix("http://"), scheme="http", region="us-east-1",
                           access_key="job-submit-test", secret_key=secrets["AWS_SECRET_ACCESS_KEY"],
                           allow_bucket_creation=True)
    fs.create_dir("srft-jobs")
    pafs.copy_files(str(SAMPLE), "srft-jobs/raw/sample", source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=fs)
    yield "s3://srft-jobs"
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture
def critic(secrets, monkeypatch):
    """The real fake_critic HTTP server, answering only requests that carry the key."""
    from tests.label.fake_critic import FakeCritic

    monkeypatch.setenv("OPENAI_API_KEY", secrets["OPENAI_API_KEY"])
    server = FakeCritic(key=secrets["OPENAI_API_KEY"]).start()
    yield server
    server.stop()


def _start(config: str, monkeypatch):
    from cluster.local import autoscaling_cluster

    # The jobs' `python` is this environment's, as with an activated venv (the head passes PATH on).
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    return autoscaling_cluster.start(REPO / "cluster" / "local" / config)


def _stop(c) -> None:
    c.stop(keep_dir=True)  # the session's files are read after the test: stop() keeps them
    import shutil

    shutil.rmtree(c.dir, ignore_errors=True)


@pytest.fixture
def cluster(s3, critic, monkeypatch):
    """The local cluster (head_only.yaml: the autoscaler runs, no node to launch), started after the
    credentials are in the environment."""
    c = _start("head_only.yaml", monkeypatch)
    yield c
    _stop(c)


@pytest.fixture
def autoscaling(s3, critic, monkeypatch):
    """The local autoscaling cluster (autoscaling.yaml: `critic` nodes of 1 fake GPU, 0 to 3)."""
    c = _start("autoscaling.yaml", monkeypatch)
    yield c
    _stop(c)


def _ray(c, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """The `ray` CLI as a user's shell runs it: this environment (credentials included) plus the
    cluster's token settings."""
    env = {**os.environ, **c.env()}
    return subprocess.run([RAY, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)


def _submit(c, *entrypoint: str, upload: bool = True) -> subprocess.CompletedProcess:
    """`ray job submit`, with the repository uploaded as the job's working_dir (`upload`) or with
    the code the nodes already have (cluster/runtime_env_image.yaml, as from a cluster image)."""
    how = (["--working-dir", ".", "--runtime-env", "cluster/runtime_env.yaml"] if upload
           else ["--runtime-env", "cluster/runtime_env_image.yaml"])
    deadline = time.time() + 300  # the dashboard answers before its job agent has registered
    while True:
        job = _ray(c, "job", "submit", "--address", c.dashboard_url, *how, "--", *entrypoint)
        if "No available agent" not in job.stdout + job.stderr or time.time() > deadline:
            assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
            return job
        time.sleep(5)


def _summary(job: subprocess.CompletedProcess) -> dict:
    """The stage's JSON summary, the last JSON object the job printed."""
    text = job.stdout
    start = text.rindex("\n{") + 1
    return json.loads(text[start:text.index("\n}", start) + 2])


@pytest.mark.slow
def test_ingest_and_label_as_ray_jobs_on_s3_keep_the_credentials_out(cluster, s3, critic, secrets,
                                                                     qwen_tokenizer_path):
    from pipeline import io
    from pipeline.schema import STEP_LABEL, TRAJECTORY

    out = f"{s3}/runs/jobs"
    ingest = _submit(cluster, "python", "-m", "jobs.ingest", f"input={s3}/raw/sample/trajectories",
                     f"resolution={s3}/raw/sample/reports", f"output={out}/trajectories")
    label_args = ["python", "-m", "jobs.label", f"input={out}/trajectories", f"output={out}/labels",
                  "critic.backend=openai", "critic.model=fake-critic", f"critic.tokenizer={qwen_tokenizer_path}",
                  f"critic.openai.base_url={critic.url}", "critic.num_samples=3"]
    # Everything runs on the head: on this one-machine cluster a launched node would set the job's
    # working_dir up again in the head's session dir, under the running job (head_only.yaml says why).
    label = _submit(cluster, *label_args)
    again = _submit(cluster, *label_args)  # the same stage re-run on the S3 data

    # Ingest: the sample's 6 trajectories on S3, every input row accounted for.
    trajectories = io.read_table(f"{out}/trajectories", TRAJECTORY)
    s = _summary(ingest)
    assert trajectories.num_rows == s["rows_out"] == 6 and s["rows_in"] == s["rows_out"] + s["rows_quarantined"]
    # Label: every step of the 4 unresolved trajectories exactly once, on S3.
    unresolved = {t: n for t, n, r in zip(*(trajectories[k].to_pylist() for k in ("traj_id", "num_steps", "resolved")))
                  if r is not True}
    labels = io.read_table(f"{out}/labels", STEP_LABEL)
    pairs = sorted(zip(labels["traj_id"].to_pylist(), labels["step"].to_pylist()))
    assert len(unresolved) == 4 and pairs == sorted((t, k) for t, n in unresolved.items() for k in range(n))
    s = _summary(label)
    assert s["trajectories_labelled"] == 4 and s["trajectories_errored"] == 0 and s["rows_out"] == len(pairs)
    assert s["rows_in"] == 6 == s["trajectories_labelled"] + s["skipped_resolved"] + s["skipped_unknown_outcome"]
    # The re-run labels nothing again: the committed labels are carried, none written twice.
    s = _summary(again)
    assert s["trajectories_selected"] == 0 and s["skipped_already_labelled"] == 4
    assert s["rows_carried"] == s["rows_out"] == len(pairs) and s["rows_written"] == 0
    assert io.read_table(f"{out}/labels", STEP_LABEL).num_rows == len(pairs)

    _assert_no_secret_kept(cluster, secrets, [f"{out}/{stage}" for stage in ("trajectories", "labels")], jobs=3)
    assert sum(critic.requests.values()) > 0  # the key worked


def _assert_no_secret_kept(cluster, secrets: dict[str, str], outputs: list[str], jobs: int) -> None:
    """The credentials stayed out of everything Ray and the pipeline keep: the job records, every
    job's log, the outputs' commit records and every file of the cluster's Ray session."""
    from pipeline import io

    records = _ray(cluster, "job", "list", "--address", cluster.dashboard_url)
    assert records.returncode == 0 and records.stdout.count("raysubmit_") >= jobs, records.stdout[-2000:]
    kept = {"job records": records.stdout}
    for job_id in sorted({word.strip("',") for word in records.stdout.split() if word.strip("',").startswith("raysubmit_")}):
        kept[f"log of {job_id}"] = _ray(cluster, "job", "logs", "--address", cluster.dashboard_url, job_id).stdout
    for output in outputs:
        kept[f"{output}/_manifest.json"] = io.read_bytes(f"{output}/_manifest.json").decode()
    for path in Path(cluster.dir).rglob("*"):
        if path.is_file():
            kept[str(path)] = path.read_bytes().decode(errors="replace")
    leaks = [(name, where) for name, value in secrets.items() for where, text in kept.items() if value in text]
    assert leaks == []
    assert len(kept) > 10  # the search saw the session's files


def _critic_nodes(cluster, stop: threading.Event, seen: list[int]) -> None:
    """Poll the cluster's alive critic nodes (those advertising a GPU) until `stop`."""
    import ray

    with cluster.connected(logging_level="ERROR", log_to_driver=False):
        while not stop.is_set():
            seen.append(sum(1 for n in ray.nodes() if n["Alive"] and n["Resources"].get("GPU", 0) > 0))
            stop.wait(1.0)


@pytest.mark.slow
def test_every_stage_as_a_ray_job_on_the_autoscaling_cluster(autoscaling, s3, critic, secrets, tiny_qwen2_path):
    """Ingest, label, build and train submitted with `ray job submit` to the autoscaling head, each
    reading the previous stage's output on S3, and build re-run on the S3 data: its rows come out
    identical. The critic actors ask for a GPU, which the head has not, so the autoscaler must
    launch critic nodes and the label job's actors run there; they are removed after it.

    The code comes from the nodes (cluster/runtime_env_image.yaml, as from a cluster image), not
    from an uploaded working_dir: on this one-machine cluster a launched node would set a
    working_dir up again in the head's session dir, under the running job (head_only.yaml)."""
    from pipeline import io
    from pipeline.schema import STEP_LABEL, TRAINING_ROW, TRAJECTORY

    out = f"{s3}/runs/autoscaling"
    model = str(tiny_qwen2_path)  # the student (tokenizer and weights), on the nodes like the code
    jobs: dict[str, dict] = {}

    def submit(stage: str, *args: str) -> dict:
        t = time.monotonic()
        job = _submit(autoscaling, "python", "-m", f"jobs.{stage}", *args, upload=False)
        print(f"[jobs] jobs.{stage}: {time.monotonic() - t:.1f} s, submit to succeeded", flush=True)
        return _summary(job)

    jobs["ingest"] = submit("ingest", f"input={s3}/raw/sample/trajectories", f"resolution={s3}/raw/sample/reports",
                            f"output={out}/trajectories")
    stop, seen = threading.Event(), []
    poller = threading.Thread(target=_critic_nodes, args=(autoscaling, stop, seen), daemon=True)
    poller.start()
    try:
        jobs["label"] = submit("label", f"input={out}/trajectories", f"output={out}/labels", "critic.backend=openai",
                               "critic.model=fake-critic", f"critic.tokenizer={model}",
                               f"critic.openai.base_url={critic.url}", "critic.num_samples=3",
                               "critic.num_gpus_per_actor=1", "critic.pool.min=1", "critic.pool.max=2",
                               "critic.batch_size=1")
        during_label = max(seen, default=0)
        build_args = [f"trajectories={out}/trajectories", f"labels={out}/labels", f"model={model}",
                      "recipe=srft_mix", "pack.seq_len=4096"]
        jobs["build"] = submit("build", *build_args, f"output={out}/rows")
        jobs["train"] = submit("train", f"data={out}/rows", f"model={model}", f"output={out}/train",
                               "train.max_steps=2", "train.micro_batch_size=1", "train.grad_accum=1",
                               "train.checkpoint_every_steps=2", "train.warmup_steps=1", "train.param_dtype=float32",
                               "train.export_dtype=float32", "scaling.num_workers=1", "scaling.cpus_per_worker=1",
                               "scaling.use_gpu=false")
        jobs["build again"] = submit("build", *build_args, f"output={out}/rows_again")
        deadline = time.time() + 180  # idle_timeout_minutes 0.1: the nodes go once nothing runs there
        while time.time() < deadline and (not seen or seen[-1] > 0):
            time.sleep(2)
    finally:
        stop.set()
        poller.join(timeout=30)

    # The autoscaler launched critic nodes for the label job, and removed them after.
    assert during_label >= 1 and seen[-1] == 0, seen
    # Every stage's counts, each from the previous stage's output on S3.
    s = jobs["ingest"]
    assert s["rows_out"] == io.read_table(f"{out}/trajectories", TRAJECTORY).num_rows == 6
    s = jobs["label"]
    labels = io.read_table(f"{out}/labels", STEP_LABEL)
    assert s["trajectories_labelled"] == 4 and s["trajectories_errored"] == 0 and s["rows_out"] == labels.num_rows > 0
    s = jobs["build"]
    rows = io.read_table(f"{out}/rows", TRAINING_ROW)
    assert s["rows_out"] == rows.num_rows > 0 and s["rows_in"] == 6 == s["documents_out"] + s["rows_excluded"]
    s = jobs["train"]
    assert s["steps"] == 2 and io.exists(f"{out}/train/hf")
    # The re-run on the S3 data gives the same rows.
    assert io.read_table(f"{out}/rows_again", TRAINING_ROW).equals(rows)
    _assert_no_secret_kept(autoscaling, secrets, [f"{out}/{o}" for o in ("trajectories", "labels", "rows", "train")],
                           jobs=len(jobs))
