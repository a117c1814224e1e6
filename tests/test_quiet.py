"""Quiet by default (issue 20, item 1): the terminal shows the pipeline's own lines, warnings and
errors; the INFO output of Ray, Ray Data, Ray Train and vLLM goes to the session's log files, and
`verbose=true` / SRFT_VERBOSE=1 brings it back.

The slow test runs, as a subprocess with its terminal output captured, what a demo run does with
those libraries at toy size: a local Ray through `init_ray`, a Ray Data pipeline, an actor that logs
through vLLM's own logger, a TorchTrainer reporting a step with the pipeline's progress line, and an
actor that fails on purpose. Once quiet, once verbose (which must show the lines quiet hides, so the
test can tell the two apart).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

PROBE = textwrap.dedent('''
    import logging, sys
    import pipeline  # noqa: F401  (the quiet defaults, before Ray is imported)
    import ray, ray.data, ray.train
    from ray.train.torch import TorchTrainer
    from pipeline.runtime import init_ray, verbose

    init_ray()
    print("[probe] rows", ray.data.range(8).map_batches(lambda b: b).count(), file=sys.stderr, flush=True)

    @ray.remote(num_cpus=0.1)
    class Chatty:
        def talk(self):
            from vllm.config.logging import LoggingConfig
            from vllm.logger import configure_logging, init_logger
            configure_logging(LoggingConfig())  # as vLLM's engine does; the level from VLLM_LOGGING_LEVEL
            log = init_logger("vllm.probe")
            log.info("VLLM-INFO-LINE from the vllm logger")
            log.warning("VLLM-WARNING-LINE from the vllm logger")
            logging.getLogger("probe").warning("WORKER-WARNING-LINE a real warning")
            print("Failed to query Ray Train Controller actor state. (a known harmless line)", file=sys.stderr)
            return 1

        def fail(self):
            raise RuntimeError("DELIBERATE-ACTOR-FAILURE in a critic")

    a = Chatty.remote()
    ray.get(a.talk.remote())

    def loop(config):
        from pipeline.progress import Progress
        p = Progress("probe-train", 1, "steps") if ray.train.get_context().get_world_rank() == 0 else None
        if p:
            p.update(1, loss=1.5)
        ray.train.report({"step": 1, "loss": 1.5})

    TorchTrainer(loop, scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": 0.2}),
                 run_config=ray.train.RunConfig(storage_path=sys.argv[1], name="probe",
                                                logging_config=ray.train.LoggingConfig(
                                                    log_level="INFO" if verbose() else "WARNING"))).fit()
    try:
        ray.get(a.fail.remote())
    except ray.exceptions.RayTaskError as e:
        print("[probe] actor failed:", str(e).strip().splitlines()[-1], file=sys.stderr)
    import time; time.sleep(2)  # let the last worker lines reach the driver
''')

INFO_LINE = re.compile(r"\bINFO\b")


def run_probe(tmp: Path, verbose: bool) -> str:
    tmp.mkdir(parents=True)
    ray_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths are limited to 107 bytes
    script = tmp / "probe.py"
    script.write_text(PROBE)
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "SRFT_VERBOSE", "VLLM_LOGGING_LEVEL", "RAY_DATA_LOGGING_CONFIG",
                        "RAY_DEDUP_LOGS_SKIP_REGEX", "PYTHONWARNINGS")}
    env.update(SRFT_RAY_TMPDIR=ray_dir, PYTHONPATH=str(REPO), **({"SRFT_VERBOSE": "1"} if verbose else {}))
    try:
        p = subprocess.run([sys.executable, str(script), str(tmp / "train")], check=False, cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=600)
    finally:
        shutil.rmtree(ray_dir, ignore_errors=True)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-4000:]
    return out


@pytest.mark.slow  # two local Rays with a Train run each: ~1 min on an idle 2-core machine
def test_quiet_terminal_and_verbose_restores(tmp_path):
    quiet = run_probe(tmp_path / "quiet", verbose=False)
    lines = quiet.splitlines()
    # the pipeline's own lines, real warnings and the failing actor's error still reach the terminal
    assert "[probe] rows 8" in quiet
    assert sum("[probe-train] 1/1 steps" in line for line in lines) == 1, quiet  # once, not twice
    assert "VLLM-WARNING-LINE" in quiet and "WORKER-WARNING-LINE" in quiet
    assert "DELIBERATE-ACTOR-FAILURE" in quiet
    # and none of the libraries' INFO output
    assert not [line for line in lines if INFO_LINE.search(line)], quiet
    assert "TrainingReport(" not in quiet and "VLLM-INFO-LINE" not in quiet
    assert "Starting execution of Dataset" not in quiet and "Failed to query Ray Train Controller" not in quiet

    loud = run_probe(tmp_path / "verbose", verbose=True)
    assert "VLLM-INFO-LINE" in loud and "TrainingReport(" in loud and "Starting execution of Dataset" in loud
    assert "Failed to query Ray Train Controller" in loud


def test_quiet_defaults_and_verbose_switch(monkeypatch):
    """The switches themselves, without Ray: what `import pipeline` sets, and that verbose sets none."""
    from pipeline import runtime

    quiet_keys = ("SRFT_VERBOSE", "VLLM_LOGGING_LEVEL", "RAY_DATA_LOGGING_CONFIG", "RAY_DEDUP_LOGS_SKIP_REGEX")
    monkeypatch.setattr(os, "environ", {k: v for k, v in os.environ.items() if k not in quiet_keys})
    runtime.quiet_by_default([])
    assert os.environ["VLLM_LOGGING_LEVEL"] == "WARNING"
    assert Path(os.environ["RAY_DATA_LOGGING_CONFIG"]).is_file()
    skip = re.compile(os.environ["RAY_DEDUP_LOGS_SKIP_REGEX"])
    assert skip.search("WARNING 12-06 [cpu_worker.py:114] libtcmalloc is not found in LD_PRELOAD. For best")
    assert not skip.search("WARNING a real problem: the KV cache is too small")

    monkeypatch.setattr(os, "environ", {k: v for k, v in os.environ.items() if k not in quiet_keys})
    runtime.quiet_by_default(["root=x", "verbose=true"])
    assert os.environ["SRFT_VERBOSE"] == "1" and "VLLM_LOGGING_LEVEL" not in os.environ
