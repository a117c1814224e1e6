"""Small synthetic trajectories (TRAJECTORY rows) for the label tests."""

from __future__ import annotations

import pyarrow as pa

from pipeline import io
from pipeline.schema import TRAJECTORY


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
    io.write_table(pa.Table.from_pylist(rows, schema=TRAJECTORY), io.join(uri, name))
    return uri
