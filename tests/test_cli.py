"""Every stage's command line, as a user runs it: --help, print_config, short errors, exit codes."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest

from pipeline import driver
from pipeline.config import _describe
from tests.conftest import REPO, SAMPLE

COMMANDS = ("ingest", "label", "build", "train", "report", "pipeline", "eval_critic")


def _run(*args: str, env: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, check=False)


@pytest.mark.parametrize("command", COMMANDS)
def test_help_lists_every_key_with_type_default_and_description(command):
    r = _run(f"jobs.{command}", "--help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"usage: python -m jobs.{command}")
    if command == "pipeline":
        cls, collapse = driver.PipelineConfig, driver.STAGES
    elif command == "eval_critic":
        from pipeline.label.config import EvalCriticConfig

        cls, collapse = EvalCriticConfig, ()
    else:
        cls, collapse = driver.stages()[command].config, ()
    rows = list(_describe(cls, "", collapse))
    assert rows
    for key, typ, default, _ in rows:
        line = next((x for x in r.stdout.splitlines() if x.strip().startswith(key + " ")), None)
        assert line is not None, f"{key} missing from --help"
        assert typ in line and default in line
    described = [doc for *_, doc in rows if doc]
    assert len(described) >= len(rows) // 2, "most keys should carry a description"


def test_print_config_prints_the_resolved_config_and_runs_nothing(tmp_path):
    out = tmp_path / "never"
    r = _run("jobs.ingest", f"input={SAMPLE / 'trajectories'}", f"output={out}", "print_config=true",
             "rows_per_shard=7")
    assert r.returncode == 0, r.stderr
    assert "rows_per_shard: 7" in r.stdout and f"output: {out}" in r.stdout
    assert not out.exists()
    demo = _run("jobs.pipeline", "print_config=true", "root=/tmp/somewhere")
    assert demo.returncode == 0 and "output: /tmp/somewhere/labels" in demo.stdout


@pytest.mark.parametrize(("args", "expected"), [
    (("jobs.build", "mask.treshold=0.7"), "Did you mean: 'threshold'"),
    (("jobs.ingest", "output=/tmp/x"), "input is required"),
    (("jobs.train", "data=/tmp/d", "model=/tmp/m", "output=/tmp/o", "train.lr=fast"), "train.lr"),
    (("jobs.label", "input"), "not key=value"),
    (("jobs.pipeline", "config=/nonexistent/preset.yaml"), "no such preset"),
    (("jobs.ingest", "input=/nonexistent/trajectories", "output=/tmp/srft-never-written"), "/nonexistent/trajectories"),
])
def test_user_mistakes_get_a_short_message_and_exit_2(args, expected):
    r = _run(*args)
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    assert expected in r.stderr
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) <= 2, r.stderr


def test_debug_shows_the_traceback():
    r = _run("jobs.build", "mask.treshold=0.7", env={"SRFT_DEBUG": "1"})
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_stage_defaults_are_production_and_demo_settings_stay_in_the_demo():
    """A stage alone gets its dataclass defaults; the demo's toy values are only in conf/pipeline.yaml."""
    from pipeline.config import load_config

    build = load_config(driver.stages()["build"].config, "build", ["trajectories=t", "labels=l", "output=o", "model=m"])
    assert build.pack.seq_len == 32768
    demo = load_config(driver.PipelineConfig, "pipeline", [])
    assert demo.build.pack.seq_len == 1024 and demo.train.train.max_steps == 4
    prod = load_config(driver.PipelineConfig, "pipeline", [f"config={REPO / 'conf/prod/pipeline.yaml'}"])
    assert prod.build.pack.seq_len == 32768
    assert not dataclasses.asdict(prod)["demo_models"]["critic"]
    for name in ("ingest", "label", "build", "train", "report"):
        assert not (REPO / "conf" / f"{name}.yaml").exists(), f"conf/{name}.yaml would give {name} demo defaults"
