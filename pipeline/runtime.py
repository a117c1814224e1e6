"""Ray start-up shared by every stage: join a cluster when there is one, else start locally.

Quiet by default: a stage's terminal shows its own progress lines, warnings and errors, and where
its outputs are. The INFO output of Ray, Ray Data, Ray Train and vLLM goes to the Ray session's log
files (`<ray temp dir>/session_*/logs/`), through each library's own switch (`quiet_by_default`,
`init_ray`); their warnings and errors still reach the terminal. `verbose=true` on any command, or
`SRFT_VERBOSE=1`, restores all of it.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
import uuid
from pathlib import Path

VERBOSE_ENV = "SRFT_VERBOSE"

# Lines from Ray workers that are known consequences of running the demo's setup (local Ray without
# a dashboard, vLLM on CPU with enforce_eager and its engine in-process), not something to act on.
# Ray drops worker lines matching RAY_DEDUP_LOGS_SKIP_REGEX before printing them on the driver;
# they stay in the workers' log files. Anything not listed here is printed.
KNOWN_HARMLESS_WORKER_LINES = (
    # Ray Train's placement-group cleaner polls the state API, which needs the dashboard a local
    # run does not start: a warning every second of training.
    "Failed to query Ray Train Controller actor state",
    # Ray Train logs each report at INFO through a logger named by its file path, which
    # RunConfig(logging_config=...) does not reach (it filters loggers named ray.train.*).
    "TrainingReport(",
    # Ray Train's own preemption watcher: Ray core's caution about restarting an actor whose
    # constructor arguments live in the object store. Nothing a user can change.
    "Actor with class name: 'PreemptionWatcher'",
    # Ray Data's notice, in Ray Train's dataset coordinator, that bars are off: configure_progress
    # turned them off there on purpose (the driver still says it once).
    "Progress bars disabled. To enable, set",
    # vLLM's CPU backend: no Triton, no tcmalloc/iomp preload, its own thread binding.
    "Triton is installed, but doesn't include CPU backend",
    "Triton is not installed. triton-cpu",
    "Model Runner V2 requires Triton",
    "is not found in LD_PRELOAD",
    "CPU backend doesn't allow to use `torch.set_num_threads`",
    "NUMA binding: Using MEMBIND policy",
    # vLLM restating the critic settings it was given (critic.enforce_eager, the in-process engine).
    "Enforce eager set, disabling torch.compile",
    "Inductor compilation was disabled by user settings",
    "does not officially support disabling chunked prefill",
    "The global random seed is set to 0",
)


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV) == "1"


def quiet_by_default(argv: list[str] | None = None) -> None:
    """Set the libraries' logging switches in this process's environment, before Ray is imported
    (Ray reads its log filter at import) and before a local Ray starts (its workers inherit them).
    Called on `import pipeline`. A setting already in the environment is left as the user set it.
    `verbose=true` among `argv` (default: this command's arguments) sets SRFT_VERBOSE=1 instead,
    which workers inherit, so they stay verbose as well."""
    argv = sys.argv[1:] if argv is None else argv
    if any(a.lower() in ("verbose=true", "verbose=1", "verbose=yes") for a in argv):
        os.environ[VERBOSE_ENV] = "1"
    if verbose():
        return
    quiet = {
        "VLLM_LOGGING_LEVEL": "WARNING",  # vLLM's own logger (engine start-up: ~40 INFO lines)
        "RAY_DATA_LOGGING_CONFIG": str(Path(__file__).with_name("ray_data_logging.yaml")),  # console at WARNING
        "RAY_DEDUP_LOGS_SKIP_REGEX": "|".join(map(re.escape, KNOWN_HARMLESS_WORKER_LINES)),
        # torch's deprecation of `reduce_op`, touched by vLLM's Triton shim at import: not ours to fix
        "PYTHONWARNINGS": "ignore::FutureWarning:vllm.triton_utils.dispatcher",
    }
    for key, value in quiet.items():
        os.environ.setdefault(key, value)


def init_ray() -> None:
    """Connect to ``RAY_ADDRESS`` (set by ``ray job submit`` or the user), else start a local Ray.

    ``SRFT_RAY_TMPDIR`` puts a local Ray's session files somewhere else (tests use their temp dir).
    """
    import ray

    if ray.is_initialized():
        return
    # the driver's "ray" logger: "Started a local Ray instance" and the like are INFO
    level = {"logging_level": logging.INFO if verbose() else logging.WARNING}
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=True, **level)
        configure_progress()
        return
    kwargs = {"include_dashboard": False, **level}
    if os.environ.get("SRFT_RAY_TMPDIR"):
        kwargs["_temp_dir"] = os.environ["SRFT_RAY_TMPDIR"]
    _init_local(ray, kwargs)
    configure_progress()


def _init_local(ray, kwargs: dict, attempts: int = 3) -> None:
    """Start a local Ray. Ray gives its raylet a hard-coded 30 s to register with the GCS, which a
    busy machine (CI, a laptop running the tests) can miss; that start-up failure alone is retried."""
    for attempt in range(1, attempts + 1):
        try:
            ray.init(**kwargs)
            return
        except Exception as e:  # Ray raises a bare Exception for this one
            if "timed out during startup" not in str(e) or attempt == attempts:
                raise
            print(f"[ray] local start timed out (attempt {attempt}/{attempts}); retrying", file=sys.stderr)
            ray.shutdown()
            time.sleep(5)


def configure_progress() -> None:
    """Ray Data's own progress bars (rows done per operator, rate, ETA) where a person watches a
    terminal; in logs and CI, where bars are noise, the stages' own `pipeline.progress` lines.
    Quiet: no "Starting execution ... Execution plan ..." per dataset."""
    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = sys.stderr.isatty()
    ctx.enable_operator_progress_bars = sys.stderr.isatty()
    ctx.print_on_execution_start = verbose()


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
