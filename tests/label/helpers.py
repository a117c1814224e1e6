"""Small synthetic trajectories (TRAJECTORY rows) for the label tests."""

from __future__ import annotations

import pyarrow as pa

from pipeline import fsys
from pipeline.label.config import CriticConfig, OpenAIConfig, PoolConfig
from pipeline.schema import TRAJECTORY

KEY_ENV = "SRFT_LABEL_TEST_KEY"  # the test critic's API key (tests/label/conftest.py sets it)


def trajectory(traj_id: str, num_steps: int, resolved: bool | None = False, obs: str = "foo.py bar.py") -> dict:
    msgs = [
        {"role": "system", "content": "You are a coding agent.", "tool_calls": None},
        {"role": "user", "content": f"Fix the bug in {traj_id}.", "tool_calls": None},
    ]
    for k in range(num_steps):
        msgs.append({"role": "assistant", "content": f"Step {k}: run ls", "tool_calls": None})
        msgs.append({"role": "user", "content": f"OBSERVATION:\n{obs}", "tool_calls": None})
    return {
        "traj_id": traj_id, "instance_id": traj_id, "resolved": resolved, "source": "synthetic",
        "source_format": "xml", "model": None, "patch": None, "messages": msgs,
        "num_steps": num_steps, "num_messages": len(msgs), "unrecorded_final_action": None,
    }


def write_trajectories(rows: list[dict], uri: str, name: str = "part-0.parquet") -> str:
    fsys.write_table(pa.Table.from_pylist(rows, schema=TRAJECTORY), fsys.join(uri, name))
    return uri


def http_critic(server, tokenizer, **kw) -> CriticConfig:
    openai = OpenAIConfig(base_url=server.url, api_key_env=KEY_ENV, concurrency=16, max_attempts=3,
                          backoff_s=0.1, timeout_s=3.0, max_response_bytes=1024 * 1024)
    base = {"backend": "openai", "model": "fake-critic", "tokenizer": str(tokenizer), "max_model_len": 4096,
            "num_samples": 2, "max_retries": 1, "batch_size": 32, "num_cpus_per_actor": 0.5,
            "pool": PoolConfig(min=1, max=1), "openai": openai}
    base.update(kw)
    return CriticConfig(**base)
