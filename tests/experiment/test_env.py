"""The experiment's environment and trajectory generator: determinism, the success check, and the
counts of injected mistakes and recoveries (fast, default suite)."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from experiment import generate as gen
from experiment.env import FUNCTIONS, Env, make_tasks
from pipeline.schema import LABELS


def _play(task, actions):
    env = Env(task)
    observations = [env.step(a["name"], a["arguments"]) for a in actions]
    return env, observations


def test_tasks_are_deterministic_and_varied():
    a, b = make_tasks(3, 200, "t"), make_tasks(3, 200, "t")
    assert a == b
    assert make_tasks(4, 200, "t") != a
    # the student must read the context: the buggy module's name and position in `ls` vary
    assert len({t.bug.name for t in a}) >= 12
    assert len({t.buggy for t in a}) >= 3
    assert len({(t.bug.function, t.bug.op) for t in a}) >= 20


def test_expert_path_resolves_and_observations_reveal_the_bug():
    for task in make_tasks(0, 50, "t"):
        B = task.bug
        env, obs = _play(task, [gen.ls(), gen.pytest(), gen.cat(B.path), gen.fix(task), gen.pytest(), gen.submit()])
        assert B.path in obs[0].splitlines() and B.test_path in obs[0].splitlines()
        assert obs[1].startswith(f"FAILED {B.test_path}::test_{B.function}") and "1 failed" in obs[1]
        assert f"return a {B.op} b" in obs[2] and B.op != FUNCTIONS[B.function]
        assert obs[3] == f"The file {B.path} has been edited."
        assert "failed" not in obs[4]
        assert env.resolved()


@pytest.mark.parametrize("mistake", ["rm", "edit_test", "no_submit", "wrong_op"])
def test_success_check_uses_the_original_tests(mistake):
    task = make_tasks(1, 1, "t")[0]
    B = task.bug
    if mistake == "rm":  # deleting the failing test makes `pytest` pass, not the check
        actions = [gen.rm(B.test_path), gen.pytest(), gen.submit()]
    elif mistake == "edit_test":
        actions = [gen.edit_test(task), gen.pytest(), gen.submit()]
    elif mistake == "no_submit":
        actions = [gen.fix(task), gen.pytest()]
    else:
        wrong = next(o for o in "+-*" if o not in (B.op, FUNCTIONS[B.function]))
        actions = [gen.call("str_replace_editor", command="str_replace", path=B.path,
                            old_str=task.buggy_line, new_str=f"return a {wrong} b"), gen.submit()]
    env, obs = _play(task, actions)
    if mistake in ("rm", "edit_test"):
        assert "failed" not in obs[1]  # the working tree's tests pass...
    assert not env.resolved()  # ...but the environment's check does not


def test_recoveries_restore_the_test_and_budget_cuts_runs():
    task = make_tasks(2, 1, "t")[0]
    T = task.bug.test_path
    env, obs = _play(task, [gen.rm(T), gen.checkout(T)])
    assert env.files == task.files()
    env, obs = _play(task, [gen.edit_test(task), gen.undo(T)])
    assert env.files == task.files() and obs[1] == f"Last edit to {T} undone."
    env = Env(task)
    for _ in range(env.max_steps):
        env.step("bash", {"command": "ls"})
    assert env.done and not env.resolved()
    with pytest.raises(RuntimeError):
        env.step("bash", {"command": "ls"})


def test_generator_is_deterministic():
    tasks = make_tasks(0, 120, "t")
    a, b = gen.generate(tasks, gen.Mix(), seed=5), gen.generate(tasks, gen.Mix(), seed=5)
    assert [json.dumps(r.row) for r in a] == [json.dumps(r.row) for r in b]
    assert gen.label_rows(a, noise=0.2, seed=1) == gen.label_rows(b, noise=0.2, seed=1)
    c = gen.generate(tasks, gen.Mix(), seed=6)
    assert [r.kind for r in c] != [r.kind for r in a]


def test_generator_counts_outcomes_mistakes_and_recoveries():
    n = 2000
    runs = gen.generate(make_tasks(0, n, "t"), gen.Mix(), seed=0)
    kinds = Counter(r.kind for r in runs)
    for kind, weight in zip(gen.KINDS, gen.Mix().weights()):
        assert abs(kinds[kind] / n - weight) < 0.04, kinds
    # resolved is the environment's own check, and only the expert resolves
    assert all(r.resolved == (r.kind == "expert") for r in runs)
    assert all(r.row["resolved"] is r.resolved for r in runs)
    # every mistake run has exactly one injected mistake step, at its decision point
    for r in runs:
        if r.kind == "delete_test":
            assert r.labels[2] == "mistake" and json.loads(
                r.row["messages"][2 + 2 * 2]["tool_calls"][0]["function"]["arguments"])["command"].startswith("rm ")
        if r.kind == "edit_test":
            assert r.labels[3] == "mistake"
        if r.kind in ("expert", "wander"):
            assert "mistake" not in r.labels and "recover" not in r.labels
    mistakes = [r for r in runs if r.kind in ("delete_test", "edit_test")]
    recovered = [r for r in mistakes if r.recovered]
    assert abs(len(recovered) / len(mistakes) - gen.Mix().p_recover) < 0.05
    assert all(r.labels.count("recover") == 1 and r.fixed and not r.resolved for r in recovered)
    assert all("recover" not in r.labels and not r.fixed for r in mistakes if not r.recovered)
    # one label per step (assistant message), labels from the schema's set
    for r in runs:
        assert len(r.labels) == sum(m["role"] == "assistant" for m in r.row["messages"]) <= 7
        assert set(r.labels) <= set(LABELS)


def test_critic_noise_flips_the_asked_fraction_with_vote_share_confidences():
    runs = gen.generate(make_tasks(0, 1500, "t"), gen.Mix(), seed=0)
    truth = [lab for r in runs for lab in r.labels]
    clean = gen.label_rows(runs)
    assert [x["label"] for x in clean] == truth and {x["confidence"] for x in clean} == {1.0}
    noisy = gen.label_rows(runs, noise=0.2, seed=3)
    flipped = [x for x, t in zip(noisy, truth) if (x["label"] == "mistake") != (t == "mistake")]
    assert abs(len(flipped) / len(truth) - 0.2) < 0.02
    assert {round(x["confidence"] * 10) for x in noisy} <= set(range(5, 11))
    assert all(x["confidence"] <= 0.8 for x in flipped)


def test_unfixed_submit_label_changes_only_that_label():
    tasks = make_tasks(3, 400, "t")
    reference = gen.generate(tasks, gen.Mix(), seed=3)
    relabelled = gen.generate(tasks, gen.Mix(unfixed_submit="good"), seed=3)
    changed = 0
    for a, b in zip(reference, relabelled):
        assert a.row == b.row and a.kind == b.kind  # the same runs, step for step
        for step, (x, y) in enumerate(zip(a.labels, b.labels)):
            last_submit = step == len(a.labels) - 1 and a.kind in ("delete_test", "edit_test") and not a.recovered
            assert (x, y) == (("mistake", "good") if last_submit else (x, x))
            changed += last_submit
    assert changed > 30  # 400 x 0.4 mistake runs x 0.3 unrecovered: ~48

    def submit_labels(runs):  # the labels of the submit steps of unresolved runs
        return {lab for r in runs if not r.resolved
                for lab, m in zip(r.labels, [m for m in r.row["messages"] if m["role"] == "assistant"])
                if m["tool_calls"][0]["function"]["name"] == "submit"}

    # so with the reference labels no unresolved run has a submit that a mistake mask keeps trained
    assert submit_labels(reference) == {"mistake"} and submit_labels(relabelled) == {"good"}
    with pytest.raises(ValueError, match="unfixed_submit"):
        gen.generate(tasks[:1], gen.Mix(unfixed_submit="bad"), seed=0)


def test_an_unreadable_test_edit_fails_that_test_and_never_crashes():
    # found in the loop: a sampled student replaced a test's expected value by "in"
    task = make_tasks(0, 1, "t")[0]
    bug, test = task.bug, task.bug.test_path
    for broken in (" in", "", " == == x"):
        env = Env(task)
        want = str(bug.expected())
        out = env.step("str_replace_editor", {"command": "str_replace", "path": test, "old_str": f"== {want}",
                                              "new_str": f"=={broken}"})
        assert "has been edited" in out
        result = env.step("bash", {"command": "pytest"})
        assert f"FAILED {test}::test_{bug.function} - error" in result
        assert not env.fixed()  # the check reads the original tests, as always


# -- hidden tests: a wrong fix that passes pytest and fails the check ----------------------------
WEAK = make_tasks(11, 600, "w", weak_tests=1.0)


def test_without_weak_tests_no_task_has_a_hidden_test_and_the_tasks_are_unchanged():
    assert make_tasks(11, 600, "w", weak_tests=0.0) == make_tasks(11, 600, "w")
    assert all(m.hidden_args is None for t in make_tasks(11, 600, "w") for m in t.modules)


def test_weak_tasks_have_one_weak_test_on_the_bug_and_a_share_of_two_thirds():
    weak = [t for t in WEAK if t.bug.wrong_fix_op]
    # four of the six (right, bug) operator pairs allow a weak test, each pair equally likely
    assert abs(len(weak) / len(WEAK) - 2 / 3) < 0.06
    assert all(m.hidden_args is None for t in WEAK for m in t.modules if m is not t.bug)
    assert {(FUNCTIONS[t.bug.function], t.bug.op) for t in weak} == {("+", "-"), ("*", "-"), ("+", "*"), ("-", "*")}
    half = make_tasks(11, 600, "w", weak_tests=0.5)
    assert 0.25 < sum(t.bug.wrong_fix_op is not None for t in half) / len(half) < 0.42


@pytest.mark.parametrize("edit", ["right", "wrong_fix", "bug"])
def test_a_wrong_fix_passes_pytest_and_fails_the_hidden_test(edit):
    for task in [t for t in WEAK if t.bug.wrong_fix_op][:60]:
        B = task.bug
        op = {"right": FUNCTIONS[B.function], "wrong_fix": B.wrong_fix_op, "bug": B.op}[edit]
        actions = [gen.call("str_replace_editor", command="str_replace", path=B.path, old_str=task.buggy_line,
                            new_str=f"return a {op} b"), gen.pytest(), gen.submit()] if edit != "bug" else [
            gen.pytest(), gen.submit()]
        env, obs = _play(task, actions)
        pytest_out = obs[-2]
        assert ("failed" in pytest_out) == (edit == "bug")  # the visible test catches the bug, not the wrong fix
        assert "hidden" not in pytest_out  # the agent's pytest never runs the hidden test
        assert env.fixed(hidden=False) == (edit != "bug")
        assert env.resolved() == (edit == "right")


def test_wrong_fix_runs_submit_after_a_passing_pytest_on_weak_tasks_only():
    mix = gen.Mix(expert=0.4, wander=0.1, delete_test=0.15, edit_test=0.15, wrong_fix=0.3)
    runs = gen.generate(WEAK, mix, seed=2)
    wrong = [r for r in runs if r.kind == "wrong_fix"]
    assert len(wrong) > 100 and all(r.row["instance_id"] in {t.task_id for t in WEAK if t.bug.wrong_fix_op}
                                    for r in wrong)
    for r in wrong:
        assert r.labels == ["good", "good", "good", "mistake", "good", "good"]
        tool_out = [m["content"] for m in r.row["messages"] if m["role"] == "tool"]
        assert "failed" not in tool_out[4] and tool_out[5] == "Submitted."
        assert not r.resolved and not r.fixed and r.row["resolved"] is False
    assert all(r.resolved == (r.kind == "expert") for r in runs)
    # the default mix never draws the kind, so the token-level pool is what it was
    assert "wrong_fix" not in {r.kind for r in gen.generate(WEAK, gen.Mix(), seed=2)}
