"""Trajectories of a scripted agent in `env`, with a reference step labelling.

Every run is produced by stepping the real environment, so each observation is what the tool
printed and each run's `resolved` is the environment's own check. The runs are perturbations of
the expert path ``ls, pytest, cat BUG, edit BUG, pytest, submit`` (6 steps, within the 7-step
budget):

=============  ======================================================================  ==========
kind           steps (label)                                                           resolved
=============  ======================================================================  ==========
expert         ls, pytest, cat B, edit B, pytest, submit (all good)                    yes
wander         ls, pytest, cat B, edit B, pytest, cat O1, cat O2 (unnecessary x2)      no (budget)
delete_test    ls, pytest, rm T (mistake), then                                        no
               recovered: git checkout T (recover), cat B, edit B, pytest              (budget)
               else:      pytest, submit (mistake: submits an unfixed repository)      (check)
edit_test      ls, pytest, cat B, edit T to expect the buggy value (mistake), then     no
               recovered: undo_edit T (recover), edit B, pytest                        (budget)
               else:      pytest, submit (mistake)                                     (check)
wrong_fix      ls, pytest, cat B, edit B to the wrong operator (mistake), pytest       no
               (passes: the visible test is weak), submit (good)                       (hidden test)
=============  ======================================================================  ==========

``wrong_fix`` is SWE-bench's usual failure: a patch that passes the agent's own checks and fails
the hidden tests (env's module docstring). It can only happen on a task with a weak visible test,
so its weight applies to those tasks alone (0 by default: the pool of the token-level
experiment). Its submit is labelled ``good``: after a ``pytest`` that passed, submitting is what
the agent should do; the edit is what went wrong. These are the only failed runs that submit
after a passing ``pytest``, so they are where ``srft_unresolved`` learns to submit at all.

(B: the buggy module, T: its test file, O: other modules.) The failure kinds share the expert's
prefix up to their decision point, so each injected mistake has a well-defined training
frequency among unresolved runs at that exact context: ``rm T`` after the failing ``pytest``
(delete_test vs. wander/edit_test: 1/3 with equal weights) and ``edit T`` after ``cat B``
(edit_test vs. wander: 1/2). Resolved runs never contain a mistake, so `rft` never sees one.

Critic noise (`noisy_labels`): each step's label is flipped with probability `noise`: a true
mistake becomes "good" (a missed mistake), any other step becomes "mistake" (a false alarm).
Confidences are vote shares k/10 of a 10-sample critic: a kept label gets k in 6..10, a flipped
one k in 5..8, so a strict `mask.threshold` drops true mistakes with low vote shares (they leak
into training) and a lenient one masks false alarms (good steps lost).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

from experiment.env import TOOLS, Env, Task, apply_op, call

KINDS = ("expert", "wander", "delete_test", "edit_test", "wrong_fix")
CRITIC = "reference"
PROMPT_VERSION = "experiment-v1"


@dataclass(frozen=True)
class Mix:
    """Run kinds of the training pool, how often a mistake is followed by its recovery, and the
    reference label of the submit that ends an unrecovered mistake run."""

    expert: float = 0.4
    wander: float = 0.2
    delete_test: float = 0.2
    edit_test: float = 0.2
    wrong_fix: float = 0.0  # weight on the tasks with a weak visible test only (see the docstring)
    p_recover: float = 0.7
    # "mistake": the submit of an unfixed repository is a mistake of its own (the reference
    # labelling). "good": only the step that broke the repository is; the submit, after a pytest
    # that passed, is what the agent should do there. It decides whether any trained step of an
    # unresolved run is a submit: with "mistake", srft_unresolved never trains one (docs/experiment.md)
    unfixed_submit: str = "mistake"

    def __post_init__(self):
        if self.unfixed_submit not in ("mistake", "good"):
            raise ValueError(f"mix.unfixed_submit must be 'mistake' or 'good', not {self.unfixed_submit!r}")

    def weights(self, task: Task | None = None) -> list[float]:
        """The kinds' weights for `task`: no wrong fix passes the visible test of a task without a weak one."""
        wrong_fix = self.wrong_fix if task is None or task.bug.wrong_fix_op else 0.0
        # a zero last weight leaves random.choices' draw as it was with four kinds
        return [self.expert, self.wander, self.delete_test, self.edit_test, wrong_fix]


# -- the actions ---------------------------------------------------------------------------------
def ls():
    return call("bash", command="ls")


def pytest():
    return call("bash", command="pytest")


def cat(path: str):
    return call("bash", command=f"cat {path}")


def rm(path: str):
    return call("bash", command=f"rm {path}")


def checkout(path: str):
    return call("bash", command=f"git checkout {path}")


def fix(task: Task):
    return call("str_replace_editor", command="str_replace", path=task.bug.path,
                old_str=task.buggy_line, new_str=task.fixed_line)


def wrong_fix(task: Task):
    """The mistake of a weak-tested task: the operator that passes the visible test, not the right one."""
    return call("str_replace_editor", command="str_replace", path=task.bug.path,
                old_str=task.buggy_line, new_str=f"return a {task.bug.wrong_fix_op} b")


def edit_test(task: Task):
    """The mistake: make the test expect what the buggy code returns."""
    bug = task.bug
    return call("str_replace_editor", command="str_replace", path=bug.test_path,
                old_str=f"== {bug.expected()}", new_str=f"== {apply_op(bug.op, *bug.args)}")


def undo(path: str):
    return call("str_replace_editor", command="undo_edit", path=path)


def submit():
    return call("submit")


def script(task: Task, kind: str, recovered: bool, rng: random.Random,
           unfixed_submit: str = "mistake") -> list[tuple[dict, str]]:
    """The (action, reference label) list of one run."""
    B, T = task.bug.path, task.bug.test_path
    others = [m.path for m in task.modules if m.path != B]
    head = [(ls(), "good"), (pytest(), "good")]
    if kind == "expert":
        return head + [(cat(B), "good"), (fix(task), "good"), (pytest(), "good"), (submit(), "good")]
    if kind == "wander":
        o1, o2 = rng.sample(others, 2)
        return head + [(cat(B), "good"), (fix(task), "good"), (pytest(), "good"),
                       (cat(o1), "unnecessary"), (cat(o2), "unnecessary")]
    if kind == "delete_test":
        steps = head + [(rm(T), "mistake")]
        if recovered:
            return steps + [(checkout(T), "recover"), (cat(B), "good"), (fix(task), "good"), (pytest(), "good")]
        return steps + [(pytest(), "good"), (submit(), unfixed_submit)]
    if kind == "edit_test":
        steps = head + [(cat(B), "good"), (edit_test(task), "mistake")]
        if recovered:
            return steps + [(undo(T), "recover"), (fix(task), "good"), (pytest(), "good")]
        return steps + [(pytest(), "good"), (submit(), unfixed_submit)]
    if kind == "wrong_fix":
        return head + [(cat(B), "good"), (wrong_fix(task), "mistake"), (pytest(), "good"), (submit(), "good")]
    raise ValueError(f"unknown run kind {kind!r}")


# -- rollouts into SWE-smith tool-style rows ------------------------------------------------------
def chat(messages: list[dict]) -> list[dict]:
    """OpenAI-style messages (as the rows carry them) -> the chat the build stage renders
    (`pipeline.build.builder.to_chat` over TRAJECTORY-style messages, tool calls as JSON text)."""
    from pipeline.build.builder import to_chat

    return to_chat([{"role": m["role"], "content": m.get("content") or "",
                     "tool_calls": json.dumps(m["tool_calls"]) if m.get("tool_calls") else None}
                    for m in messages])


def tool_call_message(action: dict, call_id: str) -> dict:
    return {"role": "assistant", "content": "", "tool_calls": [{
        "id": call_id, "type": "function",
        "function": {"name": action["name"], "arguments": json.dumps(action["arguments"])}}]}


@dataclass
class Run:
    row: dict  # the SWE-smith-style row (JSON-serialisable)
    labels: list[str]  # reference label per step
    kind: str
    recovered: bool
    resolved: bool
    fixed: bool  # the original tests pass on the sources at the end (whether or not submitted)
    weak_test: bool = False  # the task's visible test is weak: a wrong fix passes it (env docstring)


def rollout(task: Task, kind: str, recovered: bool, rng: random.Random, traj_id: str,
            unfixed_submit: str = "mistake") -> Run:
    env = Env(task)
    messages = task.prompt()
    labels = []
    for k, (action, label) in enumerate(script(task, kind, recovered, rng, unfixed_submit)):
        if env.done:
            break
        call_id = f"call_{k}"
        messages.append(tool_call_message(action, call_id))
        messages.append({"role": "tool", "tool_call_id": call_id, "content": env.step(action["name"], action["arguments"])})
        labels.append(label)
    resolved = env.resolved()
    row = {
        "traj_id": traj_id,
        "instance_id": task.task_id,
        "messages": messages,
        "tools": TOOLS,
        "resolved": resolved,
        "model": f"scripted-{kind}",
        "patch": None,
    }
    return Run(row, labels, kind, recovered, resolved, env.fixed(), task.bug.wrong_fix_op is not None)


def generate(tasks: list[Task], mix: Mix, seed: int) -> list[Run]:
    """One run per task, its kind drawn from `mix`."""
    rng = random.Random(seed)
    runs = []
    for i, task in enumerate(tasks):
        kind = rng.choices(KINDS, weights=mix.weights(task))[0]
        recovered = kind in ("delete_test", "edit_test") and rng.random() < mix.p_recover
        runs.append(rollout(task, kind, recovered, rng, f"{task.task_id}-{kind}", mix.unfixed_submit))
    return runs


# -- reference labels in the STEP_LABEL schema ----------------------------------------------------
def label_rows(runs: list[Run], noise: float = 0.0, seed: int = 0, run_id: str = "reference") -> list[dict]:
    """STEP_LABEL rows: the reference labels, or with critic noise (see the module docstring)."""
    rng = random.Random(seed)
    rows = []
    for run in runs:
        for step, true in enumerate(run.labels):
            label, votes = true, rng.randint(6, 10) if noise else 10
            if noise and rng.random() < noise:
                label = "good" if true == "mistake" else "mistake"
                votes = rng.randint(5, 8)
            rows.append({
                "traj_id": run.row["traj_id"], "step": step, "label": label, "confidence": votes / 10,
                "reason": f"reference: {true}", "critic_model": CRITIC, "prompt_version": PROMPT_VERSION,
                "num_samples": 10, "run_id": run_id, "prompt_tokens": None, "completion_tokens": None,
            })
    return rows
