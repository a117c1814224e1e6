"""The command line of every stage and of the pipeline driver.

    python -m jobs.<stage> [config=PRESET.yaml] [key=value ...] [print_config=true] [--help]

An explicit stage run always runs (the pipeline driver is what skips complete stages) and leaves
a manifest. `--help` is generated from the stage's config dataclass, so it cannot drift from it.

Exit codes: 0 done; 1 the stage ran but its result is not usable (`StageFailed`: most
trajectories errored, non-empty input gave no output), and it says why; 2 a mistake in what the
user asked for (`UserError`: an unknown key, a bad value, a missing input, a refused output),
printed as one or two lines. ``SRFT_DEBUG=1`` shows the traceback of those two; any other
exception is a bug or an infrastructure failure and always keeps its traceback.
"""

from __future__ import annotations

import inspect
import json
import os
import sys
from collections.abc import Callable

from pipeline.config import help_text, load_config, resolve_outputs_for_ray_job, to_yaml
from pipeline.errors import StageFailed, UserError
from pipeline.manifest import Stage, run_stage

EXIT_FAILED = 1
EXIT_USAGE = 2


def run_stage_cli(stage: Stage, argv: list[str]) -> dict | None:
    """Parse `argv` into the stage's config, run the stage, print its summary; returns it
    (None for --help and print_config=true, which run nothing)."""
    if wants_help(argv):
        print(stage_help(stage))
        return None
    argv, print_only = pop_print_config(argv)
    cfg = resolve_outputs_for_ray_job(load_config(stage.config, stage.name, argv))
    if print_only:
        print(to_yaml(cfg), end="")
        return None
    manifest = run_stage(stage.name, cfg, stage.inputs(cfg), cfg.output, stage.run, force=True)
    print(json.dumps(manifest["summary"], indent=2, default=str))
    print(f"[{stage.name}] output: {cfg.output} (committed files: {committed_folder(cfg.output)})")
    return manifest["summary"]


def committed_folder(output: str) -> str:
    """Where the committed files of `output` are, for people: pipeline code follows the commit record
    (`_manifest.json`) by itself, a browser or `from_pretrained` needs the version folder it names."""
    from pipeline import fsys
    from pipeline.record import read_commit

    commit = read_commit(output)
    if commit is None:
        return output
    if all(path.startswith(commit.version + "/") for path in commit.files.values()):
        return fsys.join(output, commit.version)
    return f"listed in {fsys.join(output, '_manifest.json')}"  # carried over from earlier runs (label resume)


def wants_help(argv: list[str]) -> bool:
    return any(a in ("--help", "-h", "help") for a in argv)


def stage_help(stage: Stage) -> str:
    """The stage module's title and usage line, then every key (see `config.help_text`)."""
    doc = inspect.getdoc(sys.modules[stage.run.__module__]) or ""
    title = doc.split("\n", 1)[0]
    about = f"{title}\nDetails: the docstring of {stage.run.__module__} and docs/."
    return help_text(stage.config, stage.name, usage_line(doc, stage.name), about)


def usage_line(doc: str, name: str) -> str:
    """The ``python -m jobs.<name> ...`` line of a module docstring, continuation lines joined."""
    lines = doc.replace("\\\n", " ").split("\n")
    for line in lines:
        if line.strip().startswith("python -m"):
            return " ".join(line.split())
    return f"python -m jobs.{name} [key=value ...]"


def pop_print_config(argv: list[str]) -> tuple[list[str], bool]:
    rest = [a for a in argv if not a.startswith("print_config=")]
    flags = [a.split("=", 1)[1].lower() for a in argv if a.startswith("print_config=")]
    return rest, any(f in ("true", "1", "yes") for f in flags)


def main(fn: Callable[[list[str]], object], argv: list[str]) -> None:
    """Run `fn(argv)` as a command: short messages for user errors, honest exit codes."""
    debug = os.environ.get("SRFT_DEBUG") == "1"
    argv = [a for a in argv if not a.lower().startswith("verbose=")]  # read on import (pipeline.runtime)
    try:
        fn(argv)
    except UserError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    except StageFailed as e:
        if debug:
            raise
        print(f"failed: {e}", file=sys.stderr)
        sys.exit(EXIT_FAILED)
