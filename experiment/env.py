"""A small deterministic agent environment in the shape of a SWE agent's sandbox.

A *task* is a tiny repository: a few one-function modules and one test file per module. Exactly one
function has the wrong operator; its test fails. The agent acts through the three tools that
SWE-agent / SWE-smith tool-calling runs use (OpenAI function calling):

- ``bash(command)``: ``ls``, ``cat PATH``, ``pytest``, ``rm PATH``, ``git checkout PATH``;
- ``str_replace_editor(command, path, old_str, new_str)``: ``str_replace`` or ``undo_edit``;
- ``submit()``.

Success is checked by the environment itself, the way SWE-bench does: the run must have
submitted, and the task's *original* tests (not whatever is left in the working tree) must pass
against the submitted source files. Deleting or editing a test therefore never helps.

**Hidden tests** (`make_tasks(weak_tests=p)`). On SWE-bench a failed run usually submits a patch
that passed the agent's own checks and fails the hidden tests. To have such runs, a share `p` of
the tasks whose operators allow it get a *weak* visible test for the buggy function: inputs on
which the right operator and the one wrong operator the code does not use give the same value,
while the bug's operator does not (``scale(2, 2) == 4``: ``*`` and ``+`` pass, ``-`` fails;
``offset(5, 0) == 5``: ``+`` and ``-`` pass, ``*`` fails). That task also has a hidden test, on the
inputs the visible test would otherwise have had (all three operators apart). `pytest` runs only
the visible tests; the check runs the visible and the hidden ones, so the *wrong fix* (the third
operator) passes `pytest` and fails the check. Of the six (right, bug) operator pairs four allow
a weak test: (+, -), (*, -) on (2, 2) and (+, *), (-, *) on (a, 0). With ``p = 0`` (the default)
no extra random number is drawn, so the tasks are exactly those of the experiment before hidden
tests.

The agent cannot solve a task from memory: the module names, their order in ``ls``, which module
holds the bug, the function's name and the wrong operator are all drawn per task, and only
``pytest`` (which test fails) and ``cat`` (which operator is there) reveal them. The right
operator follows from the function's name (``scale`` multiplies, ``offset`` adds, ...).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field

MODULES = (
    "billing", "cart", "geo", "units", "stats", "ledger", "pricing", "metrics",
    "inventory", "payroll", "shipping", "tax", "scores", "timing", "budget", "grid",
)
# function name -> the operator it must use
FUNCTIONS = {
    "total": "+", "offset": "+", "combine": "+", "extend": "+",
    "margin": "-", "shrink": "-", "remaining": "-", "delta": "-",
    "scale": "*", "area": "*", "product": "*", "repeat": "*",
}
OPERATORS = ("+", "-", "*")
MAX_STEPS = 7  # the step budget of one run; a run that has not submitted by then is cut

TOOLS = [
    {"type": "function", "function": {
        "name": "bash", "description": "Run a command in the repository: ls, cat, pytest, rm, git checkout.",
        "parameters": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}}},
    {"type": "function", "function": {
        "name": "str_replace_editor", "description": "str_replace old_str by new_str in path, or undo_edit path.",
        "parameters": {"type": "object", "properties": {
            "command": {"type": "string", "enum": ["str_replace", "undo_edit"]},
            "path": {"type": "string"}, "old_str": {"type": "string"}, "new_str": {"type": "string"}},
            "required": ["command", "path"]}}},
    {"type": "function", "function": {
        "name": "submit", "description": "Submit the repository as it is.",
        "parameters": {"type": "object", "properties": {}}}},
]
SYSTEM_PROMPT = "You are an agent that fixes bugs in a repository using tools."


def apply_op(op: str, a: int, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


@dataclass(frozen=True)
class Module:
    name: str  # module file stem
    function: str
    op: str  # the operator the code uses (wrong for the buggy module)
    args: tuple[int, int]  # the visible test's inputs
    hidden_args: tuple[int, int] | None = None  # the hidden test's inputs; only a weak-tested bug has one

    @property
    def path(self) -> str:
        return f"{self.name}.py"

    @property
    def test_path(self) -> str:
        return f"tests/test_{self.name}.py"

    def source(self, op: str | None = None) -> str:
        return f"def {self.function}(a, b):\n    return a {op or self.op} b\n"

    def expected(self, args: tuple[int, int] | None = None) -> int:
        return apply_op(FUNCTIONS[self.function], *(args or self.args))

    @property
    def wrong_fix_op(self) -> str | None:
        """The operator that passes the weak visible test and fails the hidden one (None: no weak test)."""
        if self.hidden_args is None:
            return None
        return next(o for o in OPERATORS if o not in (self.op, FUNCTIONS[self.function]))

    def test_source(self) -> str:
        a, b = self.args
        return (f"from {self.name} import {self.function}\n\n\ndef test_{self.function}():\n"
                f"    assert {self.function}({a}, {b}) == {self.expected()}\n")


@dataclass(frozen=True)
class Task:
    task_id: str
    modules: tuple[Module, ...]  # in the order `ls` lists them
    buggy: int  # index into modules

    @property
    def bug(self) -> Module:
        return self.modules[self.buggy]

    @property
    def fixed_line(self) -> str:
        return f"return a {FUNCTIONS[self.bug.function]} b"

    @property
    def buggy_line(self) -> str:
        return f"return a {self.bug.op} b"

    def files(self) -> dict[str, str]:
        out = {}
        for m in self.modules:
            out[m.path] = m.source()
            out[m.test_path] = m.test_source()
        return out

    def prompt(self) -> list[dict]:
        # The task id (`train0-0555`, `loop0-0003`) stays out of the prompt: it names the split,
        # so every held-out prompt would carry words that no training row has.
        return [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": "The tests of this repository fail. Fix the bug in the source, "
                                        "not in the tests, then submit."},
        ]


# (right operator, bug operator) -> the weak visible test's inputs (see the module docstring)
WEAK_INPUTS = {("+", "-"): lambda rng: (2, 2), ("*", "-"): lambda rng: (2, 2),
               ("+", "*"): lambda rng: (rng.randint(2, 9), 0), ("-", "*"): lambda rng: (rng.randint(2, 9), 0)}


def make_task(rng: random.Random, task_id: str, weak_tests: float = 0.0) -> Task:
    n = rng.randint(3, 5)
    names = rng.sample(MODULES, n)
    functions = rng.sample(sorted(FUNCTIONS), n)
    buggy = rng.randrange(n)
    modules = []
    for i, (name, fn) in enumerate(zip(names, functions)):
        right = FUNCTIONS[fn]
        # inputs on which the wrong operators give a different value than the right one
        while True:
            args = (rng.randint(2, 9), rng.randint(2, 9))
            if len({apply_op(o, *args) for o in OPERATORS}) == 3:
                break
        op = rng.choice([o for o in OPERATORS if o != right]) if i == buggy else right
        hidden = None
        if i == buggy and weak_tests > 0 and (right, op) in WEAK_INPUTS and rng.random() < weak_tests:
            hidden, args = args, WEAK_INPUTS[(right, op)](rng)
        modules.append(Module(name, fn, op, args, hidden))
    modules.sort(key=lambda m: m.name)  # `ls` order, so the bug's position in it varies
    return Task(task_id, tuple(modules), next(i for i, m in enumerate(modules) if m.name == names[buggy]))


def make_tasks(seed: int, n: int, prefix: str, weak_tests: float = 0.0) -> list[Task]:
    rng = random.Random(seed)
    return [make_task(rng, f"{prefix}-{i:04d}", weak_tests) for i in range(n)]


def _expected(test: str) -> int | None:
    """The right side of a test file's one `==` assertion; None when an edit left it unreadable
    (a student's `new_str` is any text: pytest would fail such a test with an error)."""
    try:
        return int(test.rsplit("== ", 1)[1])
    except (IndexError, ValueError):
        return None


def run_tests(task: Task, files: dict[str, str], hidden: bool = False) -> tuple[list[str], int]:
    """(failure lines, passed count) of the test files present in `files`, and with `hidden` the
    hidden tests too (they are not files: the agent's `pytest` never runs them)."""
    failures, passed = [], 0
    for m in task.modules:
        test = files.get(m.test_path)
        if test is None:
            continue
        source = files.get(m.path, "")
        # evaluate the one-line function and the one assertion of the test file, no exec()
        op = source.split("return a ", 1)[1][:1] if "return a " in source else None
        want = _expected(test)
        a, b = m.args
        got = apply_op(op, a, b) if op in OPERATORS else None
        if want is None:
            failures.append(f"FAILED {m.test_path}::test_{m.function} - error: the test's assertion does not parse")
        elif got is not None and got == want:
            passed += 1
        else:
            shown = "error" if got is None else str(got)
            failures.append(f"FAILED {m.test_path}::test_{m.function} - assert {m.function}({a}, {b}) == {want} (got {shown})")
        if hidden and m.hidden_args is not None:
            got, want = (apply_op(op, *m.hidden_args) if op in OPERATORS else None), m.expected(m.hidden_args)
            if got == want:
                passed += 1
            else:
                failures.append(f"FAILED hidden::test_{m.function} - assert {m.function}{m.hidden_args} == {want}")
    return failures, passed


@dataclass
class Env:
    """One episode on one task. `step(name, arguments)` returns the observation text."""

    task: Task
    max_steps: int = MAX_STEPS
    files: dict[str, str] = field(init=False)
    history: dict[str, list[str]] = field(init=False)  # path -> previous contents, for undo_edit
    steps: int = field(init=False, default=0)
    submitted: bool = field(init=False, default=False)

    def __post_init__(self):
        self.files = self.task.files()
        self.history = {}

    @property
    def done(self) -> bool:
        return self.submitted or self.steps >= self.max_steps

    def step(self, name: str, arguments: dict) -> str:
        if self.done:
            raise RuntimeError("episode is over")
        self.steps += 1
        if name == "bash":
            return self._bash(str(arguments.get("command", "")).strip())
        if name == "str_replace_editor":
            return self._editor(arguments)
        if name == "submit":
            self.submitted = True
            return "Submitted."
        return f"Error: unknown tool {name!r}."

    def _bash(self, command: str) -> str:
        parts = command.split()
        if command == "ls":
            return "\n".join(sorted(self.files))
        if command == "pytest":
            failures, passed = run_tests(self.task, self.files)
            summary = f"{len(failures)} failed, {passed} passed" if failures else f"{passed} passed"
            return "\n".join(failures + [summary])
        if len(parts) == 2 and parts[0] == "cat":
            return self.files.get(parts[1], f"cat: {parts[1]}: No such file or directory")
        if len(parts) == 2 and parts[0] == "rm":
            if self.files.pop(parts[1], None) is None:
                return f"rm: cannot remove '{parts[1]}': No such file or directory"
            return f"removed '{parts[1]}'"
        if len(parts) == 3 and parts[:2] == ["git", "checkout"]:
            original = self.task.files().get(parts[2])
            if original is None:
                return f"error: pathspec '{parts[2]}' did not match any file(s) known to git"
            self.files[parts[2]] = original
            self.history.pop(parts[2], None)
            return "Updated 1 path from the index"
        return f"bash: {parts[0] if parts else command}: command not found"

    def _editor(self, args: dict) -> str:
        command, path = args.get("command"), str(args.get("path", ""))
        if path not in self.files:
            return f"Error: the path {path} does not exist."
        if command == "undo_edit":
            if not self.history.get(path):
                return f"Error: no edit to undo in {path}."
            self.files[path] = self.history[path].pop()
            return f"Last edit to {path} undone."
        if command == "str_replace":
            old, new = str(args.get("old_str", "")), str(args.get("new_str", ""))
            count = self.files[path].count(old) if old else 0
            if count != 1:
                return f"Error: old_str occurs {count} times in {path}; it must occur exactly once."
            self.history.setdefault(path, []).append(self.files[path])
            self.files[path] = self.files[path].replace(old, new)
            return f"The file {path} has been edited."
        return f"Error: unknown command {command!r}."

    def fixed(self, hidden: bool = True) -> bool:
        """The task's original tests, and its hidden ones unless `hidden` is False, pass on the
        current sources (whatever happened to the test files)."""
        sources = {m.path: self.files.get(m.path, "") for m in self.task.modules}
        failures, _ = run_tests(self.task, {**self.task.files(), **sources}, hidden=hidden)
        return not failures

    def resolved(self) -> bool:
        """SWE-bench's check: submitted, and the original and hidden tests pass on the submitted sources."""
        return self.submitted and self.fixed()


def call(name: str, **arguments) -> dict:
    """One action as (tool name, arguments)."""
    return {"name": name, "arguments": arguments}


def action_json(action: dict) -> str:
    return json.dumps(action["arguments"], sort_keys=True)
