"""The closed-loop success computation on scripted students (#19): evaluate.closed_loop is given
policies that act on the observations alone, as the trained student must. One that reads which
test fails, reads the module and fixes its operator always succeeds; one that deletes the failing
test (which makes `pytest` pass) never does; one that says nothing valid runs out of steps."""

from __future__ import annotations

import re

import pytest

from pipeline.experiment import evaluate as ev
from pipeline.experiment import generate as gen
from pipeline.experiment.env import FUNCTIONS, MAX_STEPS, make_tasks

FAILED = re.compile(r"FAILED (tests/test_(\w+)\.py)::")
SOURCE = re.compile(r"def (\w+)\(a, b\):\n    return a (.) b")


class ScriptedStudent:
    """A policy over observations: ``greedy(contexts)`` as evaluate.Student has it."""

    def __init__(self, policy: str):
        self.policy = policy

    def greedy(self, contexts: list[list[dict]]) -> list[dict | None]:
        return [self.act([m["content"] for m in c if m["role"] == "tool"]) for c in contexts]

    def act(self, obs: list[str]) -> dict | None:
        step = len(obs)
        if self.policy == "silent":
            return None
        if step == 0:
            return gen.ls()
        if step == 1:
            return gen.pytest()
        test_path, module = FAILED.search(obs[1]).groups()
        if self.policy == "delete_test":
            return [gen.rm(test_path), gen.pytest(), gen.submit()][min(step - 2, 2)]
        if step == 2:
            return gen.cat(f"{module}.py")
        if step == 3:
            function, op = SOURCE.search(obs[2]).groups()
            return gen.call("str_replace_editor", command="str_replace", path=f"{module}.py",
                            old_str=f"return a {op} b", new_str=f"return a {FUNCTIONS[function]} b")
        return gen.pytest() if step == 4 else gen.submit()


TASKS = make_tasks(7000, 40, "loop")  # the held-out generator of the experiment, another seed


def test_a_student_on_the_expert_path_always_succeeds():
    r = ev.closed_loop(ScriptedStudent("expert"), TASKS)
    assert r["n"] == 40 and r["success"] == r["fixed"] == r["submitted"] == 1.0 and r["invalid_actions"] == 0
    lo, hi = r["success_ci95"]
    assert 0.9 < lo < 1.0 and hi == pytest.approx(1.0)  # 40 of 40: the interval still admits failures


def test_a_student_that_deletes_the_failing_test_never_succeeds():
    r = ev.closed_loop(ScriptedStudent("delete_test"), TASKS)
    assert r["submitted"] == 1.0  # it submits every time, with `pytest` green in its working tree...
    assert r["success"] == 0.0 and r["fixed"] == 0.0  # ...and the original tests still fail
    lo, hi = r["success_ci95"]
    assert lo == 0.0 and 0.0 < hi < 0.1


def test_a_student_without_valid_actions_runs_out_of_steps():
    r = ev.closed_loop(ScriptedStudent("silent"), TASKS[:5])
    assert r["success"] == r["submitted"] == 0.0 and r["invalid_actions"] == 5 * MAX_STEPS


@pytest.mark.parametrize(("k", "n", "lo", "hi"), [(0, 24, 0.0, 0.1380), (12, 24, 0.3143, 0.6857),
                                                   (24, 24, 0.8620, 1.0), (30, 100, 0.2189, 0.3958)])
def test_wilson_interval(k, n, lo, hi):
    got = ev.wilson_interval(k, n)
    assert got == pytest.approx((lo, hi), abs=1e-4)
