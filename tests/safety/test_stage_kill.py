"""Whole-stage kills: SIGKILL the driver of real `jobs.build` runs (Ray, the Qwen tokenizer, the
shared trajectories) at random instants while a reader process reads the output; every read sees
one complete committed document set. Two inputs with disjoint trajectories (each one real
SWE-agent file, ingested by the real ingest command) alternate into the same output, so a mix
would show."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from pipeline import io, record
from pipeline.schema import TRAINING_ROW
from tests.conftest import REPO

TTL_S = 2.0


def _build(traj: str, out: str, tokenizer, recipe: str = "unresolved_nomask") -> subprocess.Popen:
    env = {**os.environ, "SRFT_LOCK_TTL_S": str(TTL_S)}
    env.pop("RAY_ADDRESS", None)
    args = [f"trajectories={traj}", f"output={out}", f"model={tokenizer}", f"recipe={recipe}",
            "pack.enabled=false", "num_workers=1", "rows_per_shard=2"]
    return subprocess.Popen([sys.executable, "-m", "jobs.build", *args], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


def _finish(p: subprocess.Popen) -> str:
    out = p.communicate(timeout=600)[0]
    assert p.returncode == 0, out[-3000:]
    return out


def _docs(out: str) -> frozenset[str]:
    return frozenset(t for ids in io.read_table(out, TRAINING_ROW)["traj_ids"].to_pylist() for t in ids)


def _kill_group(p: subprocess.Popen) -> None:
    """SIGKILL the driver (the test), then its process group (Ray's local processes it started)."""
    os.kill(p.pid, signal.SIGKILL)
    p.wait(60)
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.mark.slow
def test_build_driver_killed_at_random_instants(tmp_path, shared_data, qwen_tokenizer_path):
    inputs = {}
    for name in ("function_calling__simple_demo", "function_calling__sweagenttestrepo-1c2844"):
        inputs[name] = str(tmp_path / "traj" / name)
        p = subprocess.run([sys.executable, "-m", "jobs.ingest", f"input={shared_data / 'swe-agent' / name}.traj",
                            f"output={inputs[name]}"], cwd=REPO, capture_output=True, text=True, timeout=600,
                           check=False)
        assert p.returncode == 0, p.stderr[-3000:]
    a, b = inputs.values()
    out = str(tmp_path / "rows")
    sets = {}
    t0 = time.monotonic()
    for traj in (a, b):
        _finish(_build(traj, out, qwen_tokenizer_path))
        sets[traj] = _docs(out)
    run_s = (time.monotonic() - t0) / 2
    assert sets[a] and sets[b] and not sets[a] & sets[b]

    log, stop = tmp_path / "reads.jsonl", tmp_path / "stop"
    reader = subprocess.Popen([sys.executable, "-c", f"""
import json, os
from pipeline import io
from pipeline.schema import TRAINING_ROW
with open({str(log)!r}, "w") as f:
    while not os.path.exists({str(stop)!r}):
        try:
            ids = [t for x in io.read_table({out!r}, TRAINING_ROW)["traj_ids"].to_pylist() for t in x]
            f.write(json.dumps({{"ids": sorted(ids)}}) + "\\n")
        except Exception as e:
            f.write(json.dumps({{"error": repr(e)}}) + "\\n")
        f.flush()
"""], cwd=REPO)
    rng = random.Random(3)
    kills = []
    try:
        for k in range(3):
            delay = rng.uniform(0.3, 1.0) * run_s
            w = _build((a, b)[k % 2], out, qwen_tokenizer_path)
            try:
                w.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                _kill_group(w)
                kills.append(round(delay, 1))
            time.sleep(TTL_S + 0.5)  # the killed driver's lock expires
        final = _finish(_build(a, out, qwen_tokenizer_path))
    finally:
        stop.write_text("stop")
        reader.wait(120)
    reads = [json.loads(line) for line in log.read_text().splitlines()]
    assert not [r for r in reads if "error" in r], reads[:3]
    seen = [frozenset(r["ids"]) for r in reads]
    assert all(len(r["ids"]) == len(set(r["ids"])) for r in reads)
    assert set(seen) <= set(sets.values()), "a read saw a mix or a partial set"
    assert len(kills) >= 2 and len(reads) > 10, (kills, len(reads), final[-500:])
    assert _docs(out) == sets[a] and record.read_commit(out).status == "complete"
    names = os.listdir(out)
    assert len([n for n in names if n.startswith("_v-")]) <= 2 and "_lock.json" not in names, names
