"""Critic pool autoscaling, measured on a local Ray autoscaling cluster (cluster/local/).

    .venv/bin/python -m bench.autoscale [--trajectories 30] [--delay-s 2.0]

Starts the local autoscaling cluster (Ray's autoscaler, fake multi-node provider: `critic` nodes
of {CPU: 1, GPU: 1}, 0..3, idle timeout 6 s), a slow real OpenAI-compatible critic on 127.0.0.1
(tests/label/fake_critic.py, `delay_s` per request), and runs the label stage as a user does,
`python -m jobs.label ... critic.backend=openai critic.pool.min=1 critic.pool.max=3
critic.num_gpus_per_actor=1`, joined to the cluster. While it runs, a second driver polls
every 0.5 s:

- critic nodes alive (`ray.nodes()`, nodes advertising a GPU),
- critic actors alive (`ray.util.state.list_actors`: Ray Data's map workers on critic nodes),
- trajectories done (the stage's own periodic commits, `commit_every_trajectories=1`).

It keeps polling after the stage exits until the critic nodes are gone. Writes the timeline
(bench/results/autoscale.json), a plot (bench/results/autoscale.png) and bench/results/autoscale.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
KEY_ENV = "SRFT_AUTOSCALE_CRITIC_KEY"


def label_command(inp: str, out: str, critic_url: str, tokenizer: str, pool_max: int = 3) -> list[str]:
    settings = {
        "critic.backend": "openai", "critic.model": "fake-critic", "critic.tokenizer": tokenizer,
        "critic.openai.base_url": critic_url, "critic.openai.api_key_env": KEY_ENV,
        "critic.num_samples": 1, "critic.batch_size": 1, "critic.max_model_len": 4096,
        "critic.pool.min": 1, "critic.pool.max": pool_max, "critic.num_gpus_per_actor": 1,
        "critic.num_cpus_per_actor": 0.5, "commit_every_trajectories": 1,
    }
    return [sys.executable, "-m", "jobs.label", f"input={inp}", f"output={out}",
            *(f"{k}={v}" for k, v in settings.items())]


def _sample(out: str) -> dict:
    """One poll: critic nodes, critic actors (and the nodes they sit on), trajectories committed."""
    import ray
    from ray.util.state import list_actors

    from pipeline.record import read_commit

    critic_nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("GPU", 0) > 0}
    actors = [a for a in list_actors(filters=[("state", "=", "ALIVE")], limit=1000, raise_on_missing_output=False)
              if a.node_id in critic_nodes and "MapWorker" in (a.class_name or "")]
    done = 0
    if Path(out, "_manifest.json").exists():
        try:
            done = read_commit(out).manifest.get("summary", {}).get("trajectories_labelled", 0)
        except Exception:  # noqa: BLE001 - a commit being replaced under us: next poll
            done = None
    return {"critic_nodes": len(critic_nodes), "actors": len(actors),
            "actor_nodes": len({a.node_id for a in actors}), "done": done}


def measure(cluster, work: Path, trajectories: int = 30, delay_s: float = 2.0, pool_max: int = 3,
            scale_down_timeout_s: float = 120.0, run_timeout_s: float = 600.0) -> dict:
    """Run the label stage on `cluster` (a cluster.local.autoscaling_cluster.LocalCluster) and
    return the timeline and its numbers. Seconds are from the label command's start."""
    from pipeline import io
    from pipeline.models import qwen_tokenizer
    from pipeline.record import read_commit
    from pipeline.schema import STEP_LABEL
    from tests.label.fake_critic import FakeCritic
    from tests.label.helpers import trajectory, write_trajectories

    key = f"sk-autoscale-{uuid.uuid4().hex}"
    critic = FakeCritic(key=key, delay_s=delay_s).start()
    tokenizer = str(qwen_tokenizer(work / "tokenizer"))
    inp = write_trajectories([trajectory(f"good.{i}", 2) for i in range(trajectories)], str(work / "trajectories"))
    out = str(work / "labels")
    env = {**os.environ, **cluster.env(), KEY_ENV: key}
    timeline: list[dict] = []
    try:
        with cluster.connected(logging_level="ERROR", log_to_driver=False):
            t0 = time.monotonic()
            with open(work / "label.log", "w") as log:
                proc = subprocess.Popen(label_command(inp, out, critic.url, tokenizer, pool_max), cwd=REPO, env=env,
                                        stdout=log, stderr=subprocess.STDOUT)
            end = None
            while True:
                sample = {"t": round(time.monotonic() - t0, 2), **_sample(out)}
                timeline.append(sample)
                if end is None and proc.poll() is not None:
                    end = sample["t"]
                if end is not None and (sample["critic_nodes"] == 0 or sample["t"] - end > scale_down_timeout_s):
                    break
                if end is None and sample["t"] > run_timeout_s:
                    proc.kill()
                    proc.wait()
                    raise RuntimeError(f"the label run took over {run_timeout_s} s; log: {work / 'label.log'}")
                time.sleep(0.5)
            summary = read_commit(out).manifest.get("summary", {}) if proc.returncode == 0 else {}
            labelled = io.read_table(out, STEP_LABEL) if proc.returncode == 0 else None
    finally:
        critic.stop()

    def first(pred) -> float | None:
        return next((s["t"] for s in timeline if pred(s)), None)

    full = first(lambda s: s["actors"] >= pool_max)
    gone = first(lambda s: end is not None and s["t"] >= end and s["critic_nodes"] == 0)
    return {
        "trajectories": trajectories, "delay_s": delay_s, "pool_max": pool_max,
        "returncode": proc.returncode,
        "trajectories_labelled": summary.get("trajectories_labelled"),
        "label_rows": labelled.num_rows if labelled is not None else None,
        "distinct_steps": len(set(zip(labelled["traj_id"].to_pylist(), labelled["step"].to_pylist())))
        if labelled is not None else None,
        "max_critic_nodes": max(s["critic_nodes"] for s in timeline),
        "max_actors": max(s["actors"] for s in timeline),
        "max_actor_nodes": max(s["actor_nodes"] for s in timeline),
        "first_critic_node_s": first(lambda s: s["critic_nodes"] >= 1),
        "full_pool_s": full,
        "label_end_s": end,
        "scale_down_s": gone,  # all critic nodes gone
        "scale_down_after_end_s": round(gone - end, 2) if gone is not None and end is not None else None,
        "full_pool_floor_s": round(trajectories * delay_s / pool_max, 1),  # the critic's own limit
        "timeline": timeline,
    }


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tl = result["timeline"]
    t = [s["t"] for s in tl]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.step(t, [s["critic_nodes"] for s in tl], where="post", label="critic nodes alive")
    ax.step(t, [s["actors"] for s in tl], where="post", label="critic actors alive", linestyle="--")
    ax.set_xlabel("seconds since `python -m jobs.label` started")
    ax.set_ylabel("nodes / actors")
    ax.set_ylim(0, result["pool_max"] + 0.5)
    ax2 = ax.twinx()
    done = [s["done"] if s["done"] is not None else float("nan") for s in tl]
    ax2.plot(t, done, color="grey", label="trajectories done")
    ax2.set_ylabel("trajectories done")
    ax2.set_ylim(0, result["trajectories"] * 1.05)
    for x, name in ((result["label_end_s"], "label run ends"), (result["scale_down_s"], "nodes gone")):
        if x is not None:
            ax.axvline(x, color="black", linewidth=0.6, linestyle=":")
            ax.text(x, 0.2, name, fontsize=8, ha="right", rotation=90)
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="center right", fontsize=8)
    ax.set_title(f"critic pool min 1 max {result['pool_max']}, {result['trajectories']} trajectories "
                 f"x {result['delay_s']} s critic")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    from cluster.local import autoscaling_cluster

    p = argparse.ArgumentParser(prog="python -m bench.autoscale", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trajectories", type=int, default=30)
    p.add_argument("--delay-s", type=float, default=2.0, help="the critic's seconds per request")
    p.add_argument("--name", default="autoscale", help="file stem of the results")
    p.add_argument("--dir", default=None, help="join a cluster that `python -m cluster.local.autoscaling_cluster "
                   "start` started (its --dir) instead of starting and stopping one")
    p.add_argument("--results", default=str(RESULTS), help="where the results go (default: %(default)s)")
    a = p.parse_args(argv)
    results = Path(a.results)
    work = Path(tempfile.mkdtemp(prefix="srft-bench-autoscale-"))
    if a.dir:
        result = measure(autoscaling_cluster.load(a.dir), work, a.trajectories, a.delay_s)
    else:
        cluster = autoscaling_cluster.start(attempts=5)
        try:
            result = measure(cluster, work, a.trajectories, a.delay_s)
        finally:
            stopped = cluster.stop()
        # The cluster's own processes are gone (and only they were signalled).
        result["stopped_processes"] = len(stopped)
        result["processes_left"] = len(autoscaling_cluster.own_pids(cluster.dir))
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{a.name}.json").write_text(json.dumps(result, indent=1))
    plot(result, results / f"{a.name}.png")
    numbers = {k: v for k, v in result.items() if k != "timeline"}
    cmd = " ".join(["python -m bench.autoscale", *(argv if argv is not None else sys.argv[1:])])
    title = (f"# Critic pool autoscaling ({time.strftime('%Y-%m-%d %H:%M')}, {platform.node()}, "
             f"{os.cpu_count()} CPUs)")
    md = [title, "", f"`{cmd}`", "", "| | |", "| --- | --- |",
          *(f"| {k} | {v} |" for k, v in numbers.items()), "", f"![timeline]({a.name}.png)", ""]
    (results / f"{a.name}.md").write_text("\n".join(md))
    print(json.dumps(numbers, indent=1))
    return 0 if result["returncode"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
