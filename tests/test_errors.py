"""Every command refuses bad input in one or two lines, exit 2, no traceback.

The commands are the modules of `jobs/` (pkgutil), so a new command is covered as soon as it exists.
Each declares `CONFIG`, the dataclass its command line is parsed into; the cases come from it:

- a missing input path: every required key given, input keys as paths that do not exist;
- a missing required key: the same, less the first required key;
- a bad value: the first number key given a word.

Each case runs the command as a subprocess (`python -m jobs.<name>`), as a user would. The refusals
happen before Ray starts, so each takes about as long as the command's imports.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import pkgutil
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from omegaconf import MISSING

import jobs

REPO = Path(__file__).resolve().parents[1]
COMMANDS = sorted(m.name for m in pkgutil.iter_modules(jobs.__path__))
NOWHERE = "/nonexistent/srft-test"
# Required keys that are not paths, with a good value (a new one fails test_required_keys_known).
NOT_PATHS = {"format": "trl"}


def leaves(cls: type, prefix: str = "") -> list[tuple[str, dataclasses.Field, object]]:
    """(dotted key, field, resolved type) of every non-dataclass field of the config `cls`."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            out += leaves(kind, f"{prefix}{f.name}.")
        else:
            out.append((f"{prefix}{f.name}", f, kind))
    return out


def required(cls: type) -> list[str]:
    return [key for key, f, _ in leaves(cls) if f.default is MISSING]


def is_output(key: str) -> bool:
    name = key.rsplit(".", 1)[-1]
    return name in ("output", "root")


def input_keys(cls: type) -> list[str]:
    """The required keys, and optional ones that another command requires by that name (build's
    `labels`, which its default recipe needs)."""
    names = {key.rsplit(".", 1)[-1] for name in COMMANDS for key in required(config_of(name))}
    optional = [key for key, f, kind in leaves(cls)
                if f.default is None and key.rsplit(".", 1)[-1] in names and str in typing.get_args(kind)]
    return required(cls) + optional


def input_args(cls: type, tmp: Path) -> list[str]:
    """Every input key given: outputs under `tmp`, inputs where nothing is, other keys a good value.
    A command without required keys gets its path-valued defaults (files that exist) moved away."""
    args = []
    for key in input_keys(cls):
        name = key.rsplit(".", 1)[-1]
        if name in NOT_PATHS:
            args.append(f"{key}={NOT_PATHS[name]}")
        elif is_output(key):
            args.append(f"{key}={tmp / key}")
        else:
            args.append(f"{key}={NOWHERE}/{key}")
    if not required(cls):
        args += [f"{key}={NOWHERE}/{key}" for key, f, kind in leaves(cls)
                 if kind is str and isinstance(f.default, str) and f.default and (REPO / f.default).is_file()]
    return args


def run(name: str, args: list[str], tmp: Path) -> subprocess.CompletedProcess:
    """`python -m jobs.<name> config=<an empty preset> *args`: the empty preset keeps the pipeline
    driver's demo defaults (conf/pipeline.yaml) out. A Ray started by mistake starts under `tmp`."""
    env = {k: v for k, v in os.environ.items() if k not in ("SRFT_DEBUG", "RAY_ADDRESS")}
    env["SRFT_RAY_TMPDIR"] = str(tmp)
    return subprocess.run([sys.executable, "-m", f"jobs.{name}", f"config={tmp / 'empty.yaml'}", *args], check=False, cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=180)


def assert_refused(p: subprocess.CompletedProcess, must_name: str) -> None:
    out = p.stdout + p.stderr
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert p.returncode == 2, f"exit {p.returncode}, expected 2:\n{out[-3000:]}"
    assert "Traceback" not in out, out[-3000:]
    assert 1 <= len(lines) <= 2, f"{len(lines)} lines on stderr, expected 1 or 2:\n{p.stderr[-3000:]}"
    assert must_name in p.stderr, f"the message does not name {must_name!r}:\n{p.stderr}"


def config_of(name: str) -> type:
    module = importlib.import_module(f"jobs.{name}")
    cls = getattr(module, "CONFIG", None)
    assert dataclasses.is_dataclass(cls), f"jobs/{name}.py declares no CONFIG (the config dataclass it parses)"
    return cls


def cases(tmp: Path) -> dict[tuple[str, str], tuple[list[str], str]]:
    """(command, case) -> (arguments, what the message must name); None where a case does not apply."""
    out = {}
    for name in COMMANDS:
        cls = config_of(name)
        base = input_args(cls, tmp / name)
        out[name, "missing_input_path"] = (base, NOWHERE)
        if required(cls):
            key = required(cls)[0]
            out[name, "missing_required_key"] = ([a for a in base if not a.startswith(f"{key}=")], key)
        # a word for a number, else for a flag (inspect has no number key)
        kinds = [k for k, _, kind in leaves(cls) if kind in (int, float)] or \
                [k for k, _, kind in leaves(cls) if bool in (kind, *typing.get_args(kind))]
        out[name, "bad_value"] = ([*base, f"{kinds[0]}=lots"], kinds[0])
    return out


@pytest.fixture(scope="module")
def refusals(tmp_path_factory) -> dict:
    """Every case's process, run 4 at a time: each is mostly interpreter start-up and imports."""
    from concurrent.futures import ThreadPoolExecutor

    tmp = tmp_path_factory.mktemp("errors")
    todo = cases(tmp)
    for name in COMMANDS:
        (tmp / name).mkdir()
        (tmp / name / "empty.yaml").write_text("{}\n")
    with ThreadPoolExecutor(4) as pool:
        done = {case: pool.submit(run, case[0], args, tmp / case[0]) for case, (args, _) in todo.items()}
    return {case: (future.result(), todo[case][1]) for case, future in done.items()}


def test_every_command_found():
    assert {"build", "ingest", "label", "pipeline", "plan", "report", "train"} <= set(COMMANDS)


@pytest.mark.parametrize("case", ["missing_input_path", "missing_required_key", "bad_value"])
@pytest.mark.parametrize("name", COMMANDS)
def test_refused_in_one_line(refusals, name, case):
    if (name, case) not in refusals:
        pytest.skip(f"jobs.{name} has no required key")
    process, must_name = refusals[name, case]
    assert_refused(process, must_name)
