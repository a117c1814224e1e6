"""The experiment's command line: a typo or a bad value is one line naming the key, exit 2, no
traceback, before any work starts (fast, default suite)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from experiment.run import load
from pipeline.errors import UserError


@pytest.mark.parametrize(("arg", "says"), [
    ("mix.unfixed_submit=bad", "mix.unfixed_submit must be 'mistake' or 'good'"),
    ("mix.wrong_fx=0.3", "mix: .*wrong_fx.*its keys are"),
    ("weak_tests=1.5", "weak_tests=1.5: a share of the tasks"),
    ("recipes=[rft,srft_mx]", r"recipes: unknown recipe\(s\) \['srft_mx'\]"),
    ("trained_tokns=5", "unknown key 'trained_tokns'"),
])
def test_bad_experiment_arguments_name_the_key(arg, says):
    with pytest.raises(UserError, match=says):
        load([arg])


def test_the_hidden_test_setting_loads():
    cfg = load(["weak_tests=1.0", "mix.wrong_fix=0.3", "mix.wander=0.1"])
    assert cfg.weak_tests == 1.0 and cfg.mix["wrong_fix"] == 0.3 and cfg.mix["expert"] == 0.4


@pytest.mark.parametrize("module", ["experiment.run", "experiment.parallel"])
def test_the_command_exits_2_without_a_traceback(module, tmp_path):
    p = subprocess.run([sys.executable, "-m", module, f"out={tmp_path / 'x'}", "mix.unfixed_submit=bad"],
                       check=False, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines()[-1].startswith("error: mix.unfixed_submit")
    assert not (tmp_path / "x").exists()  # refused before anything was written
