"""The label stage through the openai backend against real HTTP peers on 127.0.0.1 (`fake_critic`):
a critic that misbehaves in every way we know, and a well-behaved one for the real shared
trajectories. Real Ray Data actor pool, real sockets, real commits.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from pipeline import fsys, io
from pipeline.errors import StageFailed, UserError
from pipeline.label import stage as label
from pipeline.label.config import CriticConfig, LabelConfig, OpenAIConfig
from pipeline.manifest import run_direct
from pipeline.record import read_commit
from pipeline.schema import LABEL_ERROR, LABELS, STEP_LABEL, TRAJECTORY
from tests.label.fake_critic import FakeCritic
from tests.label.helpers import KEY_ENV, http_critic, trajectory, write_trajectories

# trajectory-id prefix -> how it must end: labelled, or the error reason of its row
EXPECTED = {
    "good": "labelled", "usage_text": "labelled", "flaky": "labelled",
    "list_body": "bad_response", "null_choice": "bad_choice", "content_number": "bad_content",
    "conf_400_digits": "bad_confidence", "deep_json": "bad_response", "deep_content": "too_deep",
    "bad_utf8": "bad_response", "huge_body": "bad_response", "drip": "deadline", "http500": "http_500",
    "http429_hour": "deadline", "echo_key": "http_502",
}


def files_containing(root: str | Path, needle: bytes) -> list[str]:
    hits = []
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            try:
                if os.path.isfile(p) and needle in Path(p).read_bytes():
                    hits.append(p)
            except OSError:
                pass  # a socket or a file removed meanwhile
    return hits


def unique_pairs(t) -> bool:
    pairs = list(zip(t["traj_id"].to_pylist(), t["step"].to_pylist()))
    return len(pairs) == len(set(pairs))


def test_misbehaving_critic_never_kills_the_job(ray_session, qwen_tokenizer_path, critic_server, key, tmp_path):
    rows = [trajectory(f"{name}.{i}", 2 + i % 2) for name in EXPECTED for i in range(2 if name == "good" else 1)]
    inp = write_trajectories(rows, str(tmp_path / "trajectories"))
    out = str(tmp_path / "labels")
    cfg = LabelConfig(input=inp, output=out, max_error_fraction=1.0, commit_every_trajectories=4,
                      critic=http_critic(critic_server, qwen_tokenizer_path))
    started = time.monotonic()
    s = run_direct(label.STAGE, cfg)
    elapsed = time.monotonic() - started

    # every trajectory ends labelled or as exactly one error row with the expected reason
    assert s["trajectories_selected"] == len(rows)
    assert s["trajectories_labelled"] + s["trajectories_errored"] == len(rows)
    t = io.read_table(out, STEP_LABEL)
    errs = io.read_table(fsys.join(out, "_errors"), LABEL_ERROR)
    ended = {tid: "labelled" for tid in t["traj_id"].to_pylist()}
    for tid, reason in zip(errs["traj_id"].to_pylist(), errs["reason"].to_pylist()):
        assert tid not in ended, f"{tid} both labelled and errored"
        ended[tid] = reason
    assert {tid: ended.get(tid) for tid in (r["traj_id"] for r in rows)} == {
        r["traj_id"]: EXPECTED[r["traj_id"].split(".")[0]] for r in rows}
    assert unique_pairs(t) and set(t["label"].to_pylist()) <= set(LABELS)
    assert s["rows_out"] == t.num_rows == sum(r["num_steps"] for r in rows if ended[r["traj_id"]] == "labelled")

    # within the deadlines: 2 rounds of requests bounded by timeout_s=3 (plus Ray start-up),
    # not the hour a Retry-After asks for or the minutes of a drip at 0.4 s per byte
    assert elapsed < 150, elapsed
    assert critic_server.requests["flaky"] >= 2  # the 503 was retried

    # the key reached the actors (the server refuses requests without it) and nowhere else
    echoed = errs.filter(pq_eq(errs["traj_id"], "echo_key.0"))["detail"][0].as_py()
    assert "<redacted:" in echoed and key not in echoed
    assert files_containing(out, key.encode()) == []
    time.sleep(1)  # let Ray flush its logs
    assert files_containing(os.environ["SRFT_RAY_TMPDIR"], key.encode()) == []
    m = json.loads(Path(out, "_manifest.json").read_text())
    assert m["status"] == "complete" and m["summary"]["commits"] >= 1


def pq_eq(col, value):
    import pyarrow.compute as pc

    return pc.equal(col, value)


def test_deadline_bounds_every_request(critic_server, qwen_tokenizer_path, key):
    """Without Ray: each misbehaving request ends within timeout_s, with its reason."""
    from pipeline.label.backends.openai_http import OpenAIBackend
    from pipeline.label.labeler import Request
    from pipeline.label.output import json_schema
    from pipeline.label.prompt import BuiltPrompt

    c = http_critic(critic_server, qwen_tokenizer_path)
    c.openai.timeout_s = 2.0
    backend = OpenAIBackend(c, api_key=key)
    for name, reason in (("drip", "deadline"), ("http429_hour", "deadline"), ("http500", "http_500")):
        p = BuiltPrompt([{"role": "user", "content": f"Fix the bug in {name}.0."}], "", 10, 2, 100, 10)
        started = time.monotonic()
        [res] = backend.generate([Request(p, 1, 0.0, 1.0, 0, json_schema(2, 20))])
        took = time.monotonic() - started
        assert isinstance(res, Exception) and res.reason == reason, (name, res)
        assert took < 2.0 + 0.5, (name, took)


def test_too_many_errors_fail_the_run_after_committing(ray_session, qwen_tokenizer_path, critic_server, tmp_path):
    rows = [trajectory("good.0", 2)] + [trajectory(f"http500.{i}", 2) for i in range(3)]
    inp = write_trajectories(rows, str(tmp_path / "trajectories"))
    out = str(tmp_path / "labels")
    cfg = LabelConfig(input=inp, output=out, critic=http_critic(critic_server, qwen_tokenizer_path, max_retries=0))
    assert cfg.max_error_fraction == 0.1
    with pytest.raises(StageFailed, match="3 of 4 selected trajectories errored"):
        run_direct(label.STAGE, cfg)
    c = read_commit(out)
    assert c.status == "failed" and "max_error_fraction" in c.reason
    assert c.manifest["summary"]["trajectories_errored"] == 3
    # what the run did is committed: the good trajectory's labels and the three error rows
    t = io.read_table(out, STEP_LABEL)
    assert set(t["traj_id"].to_pylist()) == {"good.0"} and t.num_rows == 2
    assert io.read_table(fsys.join(out, "_errors"), LABEL_ERROR).num_rows == 3


def test_second_run_into_an_output_in_use_is_refused(ray_session, qwen_tokenizer_path, key, tmp_path):
    slow = FakeCritic(key=key, delay_s=1.5).start()
    try:
        rows = [trajectory(f"good.{i}", 2) for i in range(4)]
        inp = write_trajectories(rows, str(tmp_path / "trajectories"))
        out = str(tmp_path / "labels")

        def cfg() -> LabelConfig:
            return LabelConfig(input=inp, output=out, commit_every_trajectories=1,
                               critic=http_critic(slow, qwen_tokenizer_path, batch_size=1, num_samples=1))

        first: dict = {}
        worker = threading.Thread(target=lambda: first.update(run_direct(label.STAGE, cfg())))
        worker.start()
        deadline = time.monotonic() + 120
        lock = Path(out, "_lock.json")
        while not (lock.exists() and lock.stat().st_size > 0):  # taken and its record written
            assert worker.is_alive() and time.monotonic() < deadline, "the first run never took the lock"
            time.sleep(0.05)
        with pytest.raises(UserError, match=r"being written by run .* of stage label .*_lock\.json"):
            run_direct(label.STAGE, cfg())
        worker.join(timeout=300)
        assert first["trajectories_labelled"] == 4
        again = run_direct(label.STAGE, cfg())  # after the first: nothing left to label, nothing written twice
        assert again["trajectories_selected"] == 0 and again["skipped_already_labelled"] == 4
        t = io.read_table(out, STEP_LABEL)
        assert t.num_rows == 8 and unique_pairs(t)
    finally:
        slow.stop()


def test_real_trajectories_through_a_well_behaved_critic(ray_session, qwen_tokenizer_path, shared_data,
                                                         critic_server, tmp_path):
    """The real shared trajectories (ingested first), the stage's defaults otherwise."""
    from pipeline.ingest.config import IngestConfig
    from pipeline.ingest.stage import STAGE as INGEST
    from pipeline.manifest import run_direct

    traj = str(tmp_path / "trajectories")
    run_direct(INGEST, IngestConfig(input=str(shared_data), output=traj,
                                    resolution=str(shared_data / "swe-smith" / "run_evaluation")))
    keys = io.read_table(traj, TRAJECTORY).select(["traj_id", "resolved", "num_steps"])
    wanted = {t: n for t, r, n in zip(*(keys[c].to_pylist() for c in ("traj_id", "resolved", "num_steps")))
              if r is not True}
    assert any(r is None for r in keys["resolved"].to_pylist())  # .traj files without reports

    out = str(tmp_path / "labels")
    critic = CriticConfig(backend="openai", model="fake-critic", tokenizer=str(qwen_tokenizer_path),
                          openai=OpenAIConfig(base_url=critic_server.url, api_key_env=KEY_ENV))
    s = run_direct(label.STAGE, LabelConfig(input=traj, output=out, critic=critic))
    with_steps = {t for t, n in wanted.items() if n}
    assert s["trajectories_selected"] == len(wanted) and s["trajectories_labelled"] == len(with_steps)
    assert s["skipped_unknown_outcome"] == 0 and s["error_reasons"] == ({"no_steps": len(wanted) - len(with_steps)}
                                                                        if len(wanted) > len(with_steps) else {})
    t = io.read_table(out, STEP_LABEL)
    assert unique_pairs(t) and t.num_rows == sum(wanted[x] for x in with_steps) == s["rows_out"]
    assert s["prompt_to_trajectory_tokens"] and s["prompt_to_trajectory_tokens"] < 1.5

    # unknown_outcome=exclude: the .traj files without a report are skipped, counted
    excl = run_direct(label.STAGE, LabelConfig(input=traj, output=str(tmp_path / "labels-excl"), unknown_outcome="exclude",
                                 limit=0, allow_empty=True, critic=critic))
    unknown = sum(r is None for r in keys["resolved"].to_pylist())
    assert excl["skipped_unknown_outcome"] == unknown and excl["trajectories_selected"] == 0


@pytest.mark.slow  # a second driver process and a slow critic: about a minute idle, four on a loaded box
def test_killed_run_keeps_its_commits_and_the_rerun_labels_only_the_rest(
        ray_session, qwen_tokenizer_path, key, tmp_path, monkeypatch):
    """SIGKILL the driver of a label run (a real `python -m jobs.label` process joined to the test's
    Ray cluster) once it has committed some trajectories; the re-run labels exactly the rest."""
    import signal
    import subprocess
    import sys

    import ray

    slow = FakeCritic(key=key, delay_s=1.0).start()
    try:
        rows = [trajectory(f"good.{i}", 2) for i in range(8)]
        inp = write_trajectories(rows, str(tmp_path / "trajectories"))
        out = str(tmp_path / "labels")
        settings = {"critic.backend": "openai", "critic.model": "fake-critic", "critic.tokenizer": str(qwen_tokenizer_path),
                    "critic.openai.base_url": slow.url, "critic.openai.api_key_env": KEY_ENV, "critic.num_samples": 1,
                    "critic.batch_size": 1, "critic.max_model_len": 4096, "critic.num_cpus_per_actor": 0.5,
                    "commit_every_trajectories": 1}
        env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address, "SRFT_LOCK_TTL_S": "3"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "jobs.label", f"input={inp}", f"output={out}", *(f"{k}={v}" for k, v in settings.items())],
            cwd=Path(__file__).resolve().parents[2], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 300
            while True:
                c = read_commit(out) if Path(out, "_manifest.json").exists() else None
                if c is not None and c.manifest.get("summary", {}).get("trajectories_labelled", 0) >= 2:
                    break
                assert proc.poll() is None and time.monotonic() < deadline, "the run never committed progress"
                time.sleep(0.2)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait(timeout=60)
        c = read_commit(out)
        assert c.status == "partial"  # killed mid-run: its last periodic commit is what readers see
        kept = set(io.read_table(out, STEP_LABEL)["traj_id"].to_pylist())
        assert 2 <= len(kept) < len(rows)

        time.sleep(3.5)  # the killed run's lock expires (SRFT_LOCK_TTL_S=3)
        cfg = LabelConfig(input=inp, output=out, commit_every_trajectories=1, critic=http_critic(
            slow, qwen_tokenizer_path, num_samples=1, batch_size=1))
        s = run_direct(label.STAGE, cfg)
        assert s["skipped_already_labelled"] == len(kept) and s["trajectories_labelled"] == len(rows) - len(kept)
        t = io.read_table(out, STEP_LABEL)
        assert t.num_rows == 2 * len(rows) and unique_pairs(t) and read_commit(out).status == "complete"
    finally:
        slow.stop()
