"""The cluster configs and production presets validate: every YAML parses, the presets load
through the stage config dataclasses (so key drift fails here), and the resource arithmetic
holds (the critic's TP fits a critic node, the pool fits the critic group, the train world size
is the train group's GPUs)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from pipeline.config import load_config

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
PROD = REPO / "conf" / "prod"
STAGES = ("ingest", "label", "build", "train", "report")
RAYJOBS = (*STAGES, "pipeline")
# Keys whose values are data/model locations: in production they must live on S3.
URI_KEYS = {"input", "output", "errors", "resolution", "quarantine", "trajectories", "labels", "data",
            "model", "checkpoint_storage", "label_errors", "train_rows", "train_metrics", "root"}
HUB_MODEL_KEYS = {("critic", "model"), ("critic", "tokenizer")}  # vLLM loads these by hub id
NOT_DATA = {("openai", "base_url")}  # the critic's HTTP endpoint (backend=openai only), not data


def _yaml(path: Path):
    docs = list(yaml.safe_load_all(path.read_text()))
    assert len(docs) == 1 and docs[0] is not None, f"{path}: expected one YAML document"
    return docs[0]


def _configs() -> dict:
    """Each stage preset loaded as the stage would load it: dataclass <- conf/<stage>.yaml <- preset."""
    from pipeline.build.config import BuildConfig
    from pipeline.ingest.config import IngestConfig
    from pipeline.label.config import LabelConfig
    from pipeline.report.config import ReportConfig
    from pipeline.train.config import TrainConfig

    classes = {"ingest": IngestConfig, "label": LabelConfig, "build": BuildConfig, "train": TrainConfig,
               "report": ReportConfig}
    return {s: load_config(classes[s], s, [f"config={PROD / f'{s}.yaml'}"]) for s in STAGES}


@pytest.fixture(scope="module")
def prod() -> dict:
    return _configs()


@pytest.fixture(scope="module")
def aws() -> dict:
    return _yaml(CLUSTER / "aws.yaml")


@pytest.fixture(scope="module")
def raycluster() -> dict:
    return _yaml(CLUSTER / "kuberay" / "raycluster.yaml")


def _aws_group(aws: dict, name: str) -> tuple[int, int, int]:
    """(min_workers, max_workers, GPUs per node) of a launcher node type."""
    t = aws["available_node_types"][name]
    return t["min_workers"], t["max_workers"], int(t["resources"].get("GPU", 0))


def _kuberay_group(rc: dict, name: str) -> tuple[int, int, int]:
    (g,) = [g for g in rc["spec"]["workerGroupSpecs"] if g["groupName"] == name]
    (c,) = g["template"]["spec"]["containers"]
    gpus = int(c["resources"]["limits"].get("nvidia.com/gpu", 0))
    assert int(c["resources"]["requests"].get("nvidia.com/gpu", 0)) == gpus
    return g["minReplicas"], g["maxReplicas"], gpus


def test_every_yaml_parses():
    files = sorted([*CLUSTER.rglob("*.yaml"), *PROD.glob("*.yaml")])
    assert len(files) >= 10
    for f in files:
        _yaml(f)
    for job in RAYJOBS:
        assert (CLUSTER / "kuberay" / f"rayjob-{job}.yaml").exists()
    for stage in STAGES:
        assert (PROD / f"{stage}.yaml").exists()


def test_aws_launcher_groups(aws):
    head = aws["available_node_types"][aws["head_node_type"]]
    assert head["resources"] == {"CPU": 0} and "--num-cpus=0" in " ".join(aws["head_start_ray_commands"])
    assert not head["node_config"]["InstanceType"].startswith(("p", "g"))  # a CPU head
    lo, hi, gpus = _aws_group(aws, "critic")
    assert (lo, gpus) == (0, 8) and hi >= 1
    assert aws["available_node_types"]["critic"]["node_config"]["InstanceType"] == "p5.48xlarge"
    lo, hi, gpus = _aws_group(aws, "train")
    assert gpus == 8 and 2 <= hi <= 4
    assert aws["available_node_types"]["train"]["node_config"]["InstanceType"] == "p5.48xlarge"
    total = sum(t["max_workers"] for n, t in aws["available_node_types"].items() if n != aws["head_node_type"])
    assert aws["max_workers"] >= total
    assert aws["idle_timeout_minutes"] > 0


def test_kuberay_cluster_autoscales(raycluster, aws):
    spec = raycluster["spec"]
    assert raycluster["kind"] == "RayCluster" and spec["enableInTreeAutoscaling"] is True
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert "nvidia.com/gpu" not in spec["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    # the same shape as the launcher's groups
    for group in ("critic", "train"):
        assert _kuberay_group(raycluster, group) == _aws_group(aws, group)
    assert _kuberay_group(raycluster, "critic")[0] == 0
    assert spec["rayVersion"].startswith("2.60")


def test_rayjobs_name_existing_stage_modules(raycluster):
    name = raycluster["metadata"]["name"]
    for job in RAYJOBS:
        rj = _yaml(CLUSTER / "kuberay" / f"rayjob-{job}.yaml")
        assert rj["kind"] == "RayJob" and rj["spec"]["clusterSelector"] == {"ray.io/cluster": name}
        m = re.fullmatch(r"python -m jobs\.(\w+)( .*)?", rj["spec"]["entrypoint"])
        assert m and m.group(1) == job, rj["spec"]["entrypoint"]
        assert (REPO / "jobs" / f"{job}.py").exists(), f"rayjob-{job}.yaml runs jobs.{job}, which does not exist"
        for preset in re.findall(r"config=(\S+)", rj["spec"]["entrypoint"]):
            assert (REPO / preset).exists(), preset
        env = yaml.safe_load(rj["spec"]["runtimeEnvYAML"])
        assert env["working_dir"]


def test_runtime_env_is_working_dir_compatible():
    env = _yaml(CLUSTER / "runtime_env.yaml")
    assert env["working_dir"] == "."
    assert set(env) <= {"working_dir", "excludes", "env_vars", "pip", "py_modules", "container", "image_uri"}
    assert {".git", ".venv", "runs", ".cache"} <= set(env["excludes"])
    assert all(isinstance(v, str) for v in env["env_vars"].values())  # Ray requires string values


def test_image_runtime_env_is_the_working_dir_one_without_the_upload():
    image, uploaded = _yaml(CLUSTER / "runtime_env_image.yaml"), _yaml(CLUSTER / "runtime_env.yaml")
    assert "working_dir" not in image and image["env_vars"] == uploaded["env_vars"]


def test_no_credentials_in_any_config():
    secret_names = re.compile(r"AWS_(SECRET_ACCESS_KEY|ACCESS_KEY_ID|SESSION_TOKEN)|HF_TOKEN|aws_secret", re.IGNORECASE)
    for f in [*CLUSTER.rglob("*"), *PROD.glob("*")]:
        if f.is_file():
            text = f.read_text()
            assert not re.search(r"AKIA[0-9A-Z]{16}", text), f
            for line in text.splitlines():
                if not line.lstrip().startswith("#"):
                    assert not secret_names.search(line), f"{f}: {line}"


def test_critic_fits_the_critic_group(prod, aws, raycluster):
    c = prod["label"].critic
    prod["label"].validate()
    assert c.backend == "vllm" and "32B" in c.model
    assert c.tensor_parallel_size in (4, 8)
    assert c.num_gpus_per_actor == c.tensor_parallel_size  # one actor = one TP engine
    assert c.max_model_len == 32768 and c.dtype in ("auto", "bfloat16") and not c.enforce_eager
    for group in (_aws_group(aws, "critic"), _kuberay_group(raycluster, "critic")):
        _, max_nodes, gpus_per_node = group
        assert c.num_gpus_per_actor <= gpus_per_node and gpus_per_node % c.num_gpus_per_actor == 0
        assert c.pool.max * c.num_gpus_per_actor <= max_nodes * gpus_per_node
        assert 1 <= c.pool.min <= c.pool.max


def test_train_world_size_is_the_train_group(prod, aws, raycluster):
    t = prod["train"]
    s = t.scaling
    assert s.use_gpu and s.gpus_per_worker == 1
    world = s.num_workers * s.gpus_per_worker
    assert 16 <= world <= 32
    for group in (_aws_group(aws, "train"), _kuberay_group(raycluster, "train")):
        _, max_nodes, gpus_per_node = group
        assert world == max_nodes * gpus_per_node
        assert s.cpus_per_worker * (gpus_per_node // s.gpus_per_worker) <= aws["available_node_types"]["train"][
            "resources"]["CPU"]
    p = t.train
    assert (p.lr, p.weight_decay, p.warmup_steps, p.epochs, p.max_steps) == (5e-5, 0.01, 5, 3, -1)
    assert p.seq_len == 32768 and p.param_dtype == "bfloat16" and p.export_dtype == "bfloat16"
    assert p.peak_flops_per_device == 989e12
    assert "32B" in t.model


def test_build_matches_train(prod):
    from pipeline.build.config import token_limit

    b, t = prod["build"], prod["train"]
    b.validate()
    assert b.model == t.model  # the masks are built with the student's own tokenizer
    assert token_limit(b) <= t.train.seq_len and b.max_seq_len == 32768
    assert b.recipe in ("srft_mix", "srft_unresolved")
    assert prod["report"].mask.threshold == b.mask.threshold and prod["report"].mask.labels == b.mask.labels


def test_stage_outputs_chain(prod):
    i, lab, b, t, r = (prod[s] for s in STAGES)
    assert lab.input == i.output and b.trajectories == i.output and b.labels == lab.output
    assert t.data == b.output and r.trajectories == i.output and r.labels == lab.output
    assert r.train_rows == b.output and r.train_metrics.startswith(t.output)


def _walk(node, path=()):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, (*path, k))
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v, (*path, "[]"))
    else:
        yield path, node


def test_every_preset_uri_is_s3(prod):
    import dataclasses

    for stage, cfg in prod.items():
        for path, value in _walk(dataclasses.asdict(cfg)):
            if not isinstance(value, str):
                continue
            where = f"conf/prod/{stage}.yaml: {'.'.join(path)} = {value!r}"
            assert not value.startswith(("runs/", ".cache", "conf/sample")), f"demo value leaks into {where}"
            if tuple(path[-2:]) in NOT_DATA:
                continue
            if tuple(path[-2:]) in HUB_MODEL_KEYS:
                assert "://" not in value and not value.startswith(("/", ".")), where
            elif path[-1] in URI_KEYS or "://" in value:
                assert value.startswith("s3://"), where


def test_pipeline_preset_equals_the_stage_presets(prod):
    from pipeline.driver import STAGES as PIPELINE_STAGES
    from pipeline.driver import PipelineConfig

    cfg = load_config(PipelineConfig, "pipeline", [f"config={PROD / 'pipeline.yaml'}"])
    assert cfg.root.startswith("s3://") and cfg.demo_models.critic is None and cfg.demo_models.student is None
    assert list(cfg.stages) == list(PIPELINE_STAGES)
    for stage in STAGES:
        assert getattr(cfg, stage) == prod[stage], f"conf/prod/pipeline.yaml `{stage}` differs from conf/prod/{stage}.yaml"
