"""Lost nodes: a real multi-node Ray cluster on this machine (`ray.cluster_utils.Cluster`: a head
and worker raylets, each a node to the scheduler), one of whose nodes is removed mid-run
(`remove_node` kills its raylet, object store and workers, as a lost machine would).

Each scenario runs in its own process (`python tests/cluster/test_node_loss.py SCENARIO DIR`), with
RAY_TMPDIR pointing to a private dir: the Cluster writes its address file there, not in
/tmp/ray where other Ray users on this machine would find it, and the process's exit ends every
raylet it started (and only those). The test asserts on what the scenario leaves in DIR.

- Label: critic actors (openai backend against the real fake_critic HTTP server, one fake GPU per
  critic node so that each actor sits on its own node) label while the node of one of them is
  removed. Ray Data restarts the actor (max_restarts=-1) on a free node and retries its batches;
  the stage must still write every (traj_id, step) exactly once and no error rows.
- The same with pool.min=2 on exactly two critic nodes: the restarted actor can never be placed.
  Measured: Ray Data goes on with the actor left (all labelled); the test asserts the run ends,
  labelled or failed with a reason, within its bound.
- Build: the node of a tokenizer actor (BuildWorker) is removed mid-build; the shard files must be
  byte-identical to an undisturbed build of the same input on the same cluster.
- Train: the node of one Ray Train worker is removed after the step-2 checkpoint is registered;
  Ray Train restarts the group (train.max_failures) from that checkpoint and the per-step losses
  must equal an uninterrupted run's.
All are slow (minutes: a 4-raylet cluster per scenario on a 2-core machine).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from pipeline.manifest import run_direct

REPO = Path(__file__).resolve().parents[2]


def _scenario(name: str, work: Path, timeout: float, **args) -> dict:
    """Run a scenario in its own process; returns the JSON it writes to work/result.json."""
    tmp = tempfile.mkdtemp(prefix="rnl", dir="/tmp")  # short: unix socket paths <= 107 chars
    env = {**os.environ, "RAY_TMPDIR": tmp, "PYTHONPATH": str(REPO)}
    for k in ("RAY_ADDRESS", "SRFT_RAY_TMPDIR"):
        env.pop(k, None)
    (work / "args.json").write_text(json.dumps(args))
    try:
        r = subprocess.run([sys.executable, __file__, name, str(work)], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=timeout, check=False)
    finally:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    return json.loads((work / "result.json").read_text())


# --------------------------------------------------------------------------------------------
# scenarios (run in the child process)


def _retry_startup(start, attempts: int = 3):
    """Ray gives a raylet a hard-coded 30 s to register (pipeline.runtime retries the same): a busy
    machine misses it. What a failed start left running ends with this process (Ray's reaper)."""
    for attempt in range(1, attempts + 1):
        try:
            return start()
        except Exception as e:  # Ray raises a bare Exception for this one
            if "timed out during startup" not in str(e) or attempt == attempts:
                raise
            print(f"[node-loss] a node start timed out (attempt {attempt}/{attempts}); retrying", file=sys.stderr)
            time.sleep(5)


def _start_cluster(head_cpus: float, workers: list[dict]):
    from ray.cluster_utils import Cluster

    cluster = _retry_startup(lambda: Cluster(
        initialize_head=True, head_node_args={"num_cpus": head_cpus, "include_dashboard": False}))
    nodes = [_retry_startup(lambda w=w: cluster.add_node(**w)) for w in workers]
    cluster.wait_for_nodes(timeout=120)
    return cluster, nodes


def _busy_gpu_nodes() -> set[str]:
    """Node ids whose (fake) GPU is taken, i.e. that host a critic actor."""
    import ray

    total = {n["NodeID"]: n["Resources"].get("GPU", 0) for n in ray.nodes() if n["Alive"]}
    free = ray._private.state.available_resources_per_node()
    return {nid for nid, gpus in total.items() if gpus and free.get(nid, {}).get("GPU", 0) < gpus}


def scenario_label(work: Path, args: dict) -> dict:
    """Label with a pool of `pool_min`..`pool_max` actors on `critic_nodes` one-GPU nodes; remove the
    node of one actor once `remove_after` requests were answered."""
    import ray

    sys.path.insert(0, str(REPO))
    from pipeline.label import stage as label
    from pipeline.label.config import CriticConfig, LabelConfig, OpenAIConfig, PoolConfig
    from tests.label.fake_critic import FakeCritic
    from tests.label.helpers import trajectory, write_trajectories

    server = FakeCritic(delay_s=args["delay_s"]).start()
    rows = [trajectory(f"t{i:03d}", 1 + i % 4) for i in range(args["trajectories"])]
    src = write_trajectories(rows, str(work / "trajectories"))
    cluster, nodes = _start_cluster(2, [{"num_cpus": 1, "num_gpus": 1}] * args["critic_nodes"])
    os.environ["RAY_ADDRESS"] = cluster.address
    ray.init(address=cluster.address)
    critic = CriticConfig(
        backend="openai", model="fake-critic", tokenizer=args["tokenizer"], max_model_len=4096, num_samples=1,
        batch_size=2, num_cpus_per_actor=0.5, num_gpus_per_actor=1, max_retries=0,
        pool=PoolConfig(min=args["pool_min"], max=args["pool_max"]),
        openai=OpenAIConfig(base_url=server.url, concurrency=4, max_attempts=2, backoff_s=0.1, timeout_s=30))
    cfg = LabelConfig(input=src, output=str(work / "labels"), critic=critic, commit_every_trajectories=8)
    result: dict = {}

    t0 = time.monotonic()
    driver = _start_driver(lambda: run_direct(label.STAGE, cfg), result)
    while sum(server.requests.values()) < args["remove_after"] and driver.is_alive():
        time.sleep(0.2)
    busy = _busy_gpu_nodes()
    victims = [n for n in nodes if n.node_id in busy]
    result["requests_before_loss"] = sum(server.requests.values())
    result["busy_nodes_before_loss"] = len(busy)
    if victims:
        cluster.remove_node(victims[0])
        result["removed_at_s"] = round(time.monotonic() - t0, 1)
    driver.join(timeout=args["run_timeout_s"])
    result["hung"] = driver.is_alive()
    result["elapsed_s"] = round(time.monotonic() - t0, 1)
    result["requests"] = sum(server.requests.values())
    result["steps_expected"] = {r["traj_id"]: r["num_steps"] for r in rows}
    server.stop()
    if not result["hung"]:
        ray.shutdown()
        cluster.shutdown()  # its own raylets only (a hung run's go with this process's exit)
    return result


def _start_driver(stage, into: dict) -> threading.Thread:
    """Run `stage()` (a stage's driver) in a daemon thread; its summary, or the error it raised,
    lands in `into` ("summary" / "error") for the test to report."""

    def run() -> None:
        try:
            into["summary"] = stage()
        except BaseException as e:  # noqa: BLE001 - reported to the test
            into["error"] = f"{type(e).__name__}: {e}"

    driver = threading.Thread(target=run, daemon=True)
    driver.start()
    return driver


def _actor_nodes(class_part: str) -> set[str]:
    """Node ids of the live actors whose class name contains `class_part` (from the GCS actor table:
    no dashboard needed)."""
    import ray

    actors = ray._private.state.actors().values()
    SEEN_CLASSES.update(a["ActorClassName"] for a in actors)
    return {a["Address"]["NodeID"] for a in actors if class_part in a["ActorClassName"] and a["State"] == "ALIVE"}


SEEN_CLASSES: set[str] = set()  # actor classes the scenario saw (in its result, to debug a missed loss)


def scenario_build(work: Path, args: dict) -> dict:
    """Build the same input twice on one cluster: undisturbed, then losing the node of a tokenizer
    actor (BuildWorker, in Ray Data's _MapWorker) once the pool is up; the rows of both, file by file."""
    import ray

    sys.path.insert(0, str(REPO))
    import pyarrow as pa

    from pipeline import fsys, io
    from pipeline.build.config import BuildConfig, MaskConfig, PackConfig
    from pipeline.build.stage import STAGE as BUILD
    from pipeline.schema import TRAJECTORY
    from tests.build.conftest import labels_table
    from tests.label.helpers import trajectory

    docs = [trajectory(f"b{i:03d}", 1 + i % 5, resolved=i % 3 == 0, obs=f"out {i} " * (20 + i % 17))
            for i in range(args["trajectories"])]
    per_file = args["per_file"]  # enough records that the actors work for many seconds
    for i in range(0, len(docs), per_file):
        fsys.write_table(pa.Table.from_pylist(docs[i:i + per_file], schema=TRAJECTORY),
                         str(work / "traj" / f"{i // per_file:03d}.parquet"))
    fsys.write_table(labels_table({d["traj_id"]: d["num_steps"] for d in docs if not d["resolved"]}),
                     str(work / "labels" / "part-0.parquet"))
    # Tokenizer actors of 2 CPUs on 2-CPU worker nodes and a 1-CPU head: no actor can sit on the
    # head (the node that must survive), while the local-path write tasks, which Ray Data runs on
    # the head, still fit there.
    cluster, nodes = _start_cluster(1, [{"num_cpus": 2}] * args["workers"])
    os.environ["RAY_ADDRESS"] = cluster.address
    ray.init(address=cluster.address)

    def config(n: int) -> BuildConfig:
        return BuildConfig(
            trajectories=str(work / "traj"), labels=str(work / "labels"), output=str(work / f"out{n}"),
            model=args["tokenizer"], recipe="srft_mix", max_seq_len=4096,
            mask=MaskConfig(labels=["mistake"], threshold=0.5),
            pack=PackConfig(enabled=True, seq_len=4096, window=3, max_open_bins=2),
            batch_size=1, num_workers=2, worker_cpus=2, rows_per_shard=4)

    result: dict = {"runs": []}
    for n, lose in ((0, False), (1, True)):
        done: dict = {}
        t0 = time.monotonic()
        driver = _start_driver(lambda n=n: run_direct(BUILD, config(n)), done)
        if lose:
            victims: list = []
            while driver.is_alive() and not victims:
                busy = _actor_nodes("MapWorker")
                victims = [nd for nd in nodes if nd.node_id in busy]
                time.sleep(0.1)
            time.sleep(args["lose_after_s"])
            result["running_at_loss"] = driver.is_alive()
            if victims:
                cluster.remove_node(victims[0])
                result["removed_at_s"] = round(time.monotonic() - t0, 1)
        driver.join(timeout=args["run_timeout_s"])
        out = str(work / f"out{n}")
        files = [fsys.read_bytes(f).hex() for f in io.list_files(out, (".parquet",))] if "summary" in done else []
        summary = {k: v for k, v in done.get("summary", {}).items() if k not in ("run_id", "config", "elapsed_s")}
        result["runs"].append({"hung": driver.is_alive(), "error": done.get("error"), "summary": summary,
                               "files": files, "elapsed_s": round(time.monotonic() - t0, 1)})
    result["actor_classes"] = sorted(SEEN_CLASSES)
    ray.shutdown()
    cluster.shutdown()
    return result


TRAIN_STEPS = ["train.max_steps=6", "train.epochs=2", "train.micro_batch_size=2", "train.grad_accum=2",
               "train.checkpoint_every_steps=2", "train.warmup_steps=1", "train.lr=3e-3", "train.shuffle=true",
               "train.eval_fraction=0.2", "train.param_dtype=float32", "train.export_dtype=float32",
               "train.ce_chunk_tokens=1024", "scaling.num_workers=2", "scaling.cpus_per_worker=1",
               "scaling.use_gpu=false", "train.max_failures=2", "train.export=false"]


def scenario_train(work: Path, args: dict) -> dict:
    """Train twice on one cluster (head + 3 one-CPU worker nodes, 2 Train workers of 1 CPU): an
    uninterrupted reference, then a run that loses the node of one Train worker after its
    step-2 checkpoint is registered; both runs' per-step losses."""
    import ray

    sys.path.insert(0, str(REPO))
    from jobs.train import main as train
    from pipeline import fsys, io
    from tests.train.helpers import make_rows, small_qwen2, write_rows

    model = small_qwen2(work / "model", args["tokenizer"])
    rows = write_rows(work / "rows", make_rows(30, seed=12), files=5)
    cluster, nodes = _start_cluster(1, [{"num_cpus": 1}] * 3)
    os.environ["RAY_ADDRESS"] = cluster.address
    ray.init(address=cluster.address)
    result: dict = {"runs": []}
    for n, lose in ((0, False), (1, True)):
        storage, out = work / f"ckpt{n}", str(work / f"out{n}")
        done: dict = {}
        t0 = time.monotonic()
        driver = _start_driver(lambda storage=storage, out=out: train(
            [f"data={rows}", f"model={model}", f"output={out}", f"checkpoint_storage={storage}", *TRAIN_STEPS]), done)
        if lose:
            while driver.is_alive():
                saved = [p for p in storage.glob("*/checkpoint_manager_snapshot.json")
                         if "checkpoint-step0000002" in p.read_text(errors="replace")]
                busy = _actor_nodes("TrainWorker")
                victims = [nd for nd in nodes if nd.node_id in busy]
                if saved and victims:
                    cluster.remove_node(victims[0])
                    result["removed_at_s"] = round(time.monotonic() - t0, 1)
                    break
                time.sleep(0.1)
        driver.join(timeout=args["run_timeout_s"])
        s = done.get("summary") or {}
        losses = ([json.loads(x)["loss"] for x in io.read_bytes(fsys.join(out, "metrics.jsonl")).decode().splitlines()]
                  if s else [])
        result["runs"].append({"hung": driver.is_alive(), "error": done.get("error"), "losses": losses,
                               "restored_step": s.get("restored_step"), "steps": s.get("steps"),
                               "elapsed_s": round(time.monotonic() - t0, 1)})
    result["actor_classes"] = sorted(SEEN_CLASSES)
    ray.shutdown()
    cluster.shutdown()
    return result


SCENARIOS = {"label": scenario_label, "build": scenario_build, "train": scenario_train}


# --------------------------------------------------------------------------------------------
# tests


@pytest.mark.slow
def test_label_survives_losing_a_critic_node(qwen_tokenizer_path, tmp_path):
    from pipeline import io
    from pipeline.schema import STEP_LABEL

    res = _scenario("label", tmp_path, timeout=600, tokenizer=str(qwen_tokenizer_path), trajectories=48,
                    delay_s=0.5, critic_nodes=3, pool_min=2, pool_max=2, remove_after=12, run_timeout_s=300)
    assert "removed_at_s" in res and res["busy_nodes_before_loss"] == 2, res  # a node with an actor went
    assert not res["hung"] and "error" not in res, res
    s = res["summary"]
    out = str(tmp_path / "labels")
    t = io.read_table(out, STEP_LABEL)
    pairs = sorted(zip(t["traj_id"].to_pylist(), t["step"].to_pylist()))
    expected = sorted((tid, k) for tid, n in res["steps_expected"].items() for k in range(n))
    assert pairs == expected  # every (traj_id, step) exactly once
    assert s["trajectories_errored"] == 0 and s["trajectories_labelled"] == len(res["steps_expected"])
    assert s["error_shards"] == [] and s["error_reasons"] == {}  # no error rows written at all
    print(json.dumps({k: v for k, v in res.items() if k not in ("summary", "steps_expected")}))


@pytest.mark.slow
def test_label_pool_whose_min_no_longer_fits_does_not_hang(qwen_tokenizer_path, tmp_path):
    """pool.min=2 on exactly two critic nodes; one goes: the restarted actor can never be placed.
    The run must end in bounded time, either labelling everything with the one actor left or
    failing with a reason that says so, never waiting forever."""
    res = _scenario("label", tmp_path, timeout=600, tokenizer=str(qwen_tokenizer_path), trajectories=32,
                    delay_s=0.5, critic_nodes=2, pool_min=2, pool_max=2, remove_after=8, run_timeout_s=240)
    assert "removed_at_s" in res, res
    print(json.dumps({k: v for k, v in res.items() if k not in ("summary", "steps_expected")}))
    assert not res["hung"], res
    if "error" in res:
        assert "node" in res["error"] or "actor" in res["error"], res["error"]
    else:
        s = res["summary"]
        assert s["trajectories_labelled"] == len(res["steps_expected"]) and s["trajectories_errored"] == 0, s


@pytest.mark.slow
def test_build_rows_identical_after_losing_a_tokenizer_node(qwen_tokenizer_path, tmp_path):
    # 160 trajectories were too few: the tokenizer actors reached the actor table about 1 s before
    # the build ended, and the node went after it (4 runs). 2,400 in files of 50 keep them busy for
    # many seconds. (They are still one packing unit: Ray Data reads these small files as one block.)
    res = _scenario("build", tmp_path, timeout=900, tokenizer=str(qwen_tokenizer_path), trajectories=2400,
                    per_file=50, workers=3, lose_after_s=2.0, run_timeout_s=400)
    calm, lost = res["runs"]
    assert "removed_at_s" in res and res["running_at_loss"], res  # the node went while the build ran
    for r in (calm, lost):
        assert not r["hung"] and r["error"] is None, r
    assert calm["summary"]["rows_out"] > 0 and len(calm["files"]) >= 2
    assert lost["summary"] == calm["summary"]
    assert lost["files"] == calm["files"]  # byte-identical shard files
    print(json.dumps({"removed_at_s": res["removed_at_s"], "elapsed_s": [calm["elapsed_s"], lost["elapsed_s"]],
                      "rows_out": calm["summary"]["rows_out"], "files": len(calm["files"])}))


@pytest.mark.slow
def test_train_resumes_after_losing_a_worker_node(qwen_tokenizer_path, tmp_path):
    res = _scenario("train", tmp_path, timeout=900, tokenizer=str(qwen_tokenizer_path), run_timeout_s=400)
    calm, lost = res["runs"]
    assert "removed_at_s" in res, res  # a Train worker's node went after the step-2 checkpoint
    for r in (calm, lost):
        assert not r["hung"] and r["error"] is None, r
    assert calm["steps"] == lost["steps"] == 6 and lost["restored_step"] in (2, 4), lost
    assert lost["losses"] == pytest.approx(calm["losses"], rel=1e-5, abs=1e-6)  # as if uninterrupted
    print(json.dumps({"removed_at_s": res["removed_at_s"], "restored_step": lost["restored_step"],
                      "elapsed_s": [calm["elapsed_s"], lost["elapsed_s"]]}))


if __name__ == "__main__":
    name, work = sys.argv[1], Path(sys.argv[2])
    out = SCENARIOS[name](work, json.loads((work / "args.json").read_text()))
    (work / "result.json").write_text(json.dumps(out, default=str))
    sys.stdout.flush()
    os._exit(0)  # do not wait on a hung driver thread; Ray's reaper ends what this process started
