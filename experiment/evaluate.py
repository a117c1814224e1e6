"""Evaluate a trained student (the train stage's HF export) on held-out tasks.

Three measurements, all on tasks the student never trained on:

1. **Mistake rate** at the two decision points where training runs made their injected mistake:
   after the failing ``pytest`` (mistake: ``rm`` the failing test) and after ``cat`` of the buggy
   module (mistake: edit the test to expect the buggy value). The context is the expert's prefix.
   Reported as the probability that sampling at temperature 1 takes the mistake's branch: the
   probability of the mistake's tokens up to and including the first token where it leaves the
   right action (``rm`` where the right action says ``cat``; ``tests`` where it names the module).
   That is the rate at which the student commits to the mistake, measured without sampling noise,
   and it does not depend on how well the student copies file names. Greedy decoding picks the most
   likely action only, so a mistake made in 1/3 of the training runs shows in the probability, not
   in the greedy action; the greedy action's class is reported as well. `preference` is the
   mistake's share at the branch token alone, P(mistake token) / (P(mistake token) + P(right
   token)) given the shared prefix: it still compares recipes when the student has not yet learnt
   the call's format (then the prefix, and with it `p_branch`, is improbable for every recipe).
2. **Recovery rate**: the context already holds the mistake and its observation; how often the
   greedy action is the recovery (``git checkout`` of the deleted test, ``undo_edit`` of the edited
   test), and the probability of the recovery action.
3. **Closed-loop success**: the student acts in the environment with greedy decoding for at most
   the environment's step budget; success is the environment's own check (`Env.resolved`), and
   `fixed` counts runs whose sources pass the original tests at the end whether or not submitted.

Prompts are rendered with the student's own chat template exactly as the build stage rendered the
training rows, with the tool schemas when the build rendered them (`renders_tools`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

import numpy as np
import torch

from experiment import generate as gen
from experiment.env import TOOLS, Env, Task

# Tokens one generated turn may take. The longest action, the fix's str_replace call, is 72 tokens
# of the student's vocabulary; the earlier cap of 64 cut every fix off before `</tool_call>`, so no
# closed-loop run could ever edit a file (tests/experiment/test_student.py checks the fit).
MAX_ACTION_TOKENS = 128
TOOL_CALL = re.compile(r"<tool_call>\s*(\{.*?\})\s*</tool_call>", re.DOTALL)


@dataclass
class Student:
    model: object
    tokenizer: object
    tools: list | None  # the tool schemas, when training rendered them

    @classmethod
    def load(cls, hf_dir: str, train_rows: str) -> Student:
        """The exported student; prompts carry the tool schemas when its training rows did."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(hf_dir)
        model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
        return cls(model, tok, TOOLS if renders_tools(train_rows, tok) else None)

    def render(self, messages: list[dict], generation_prompt: bool) -> list[int]:
        return list(self.tokenizer.apply_chat_template(
            gen.chat(messages), tools=self.tools, add_generation_prompt=generation_prompt, tokenize=True, return_dict=True
        )["input_ids"])

    @property
    def end_of_turn(self) -> int:
        return self.tokenizer.convert_tokens_to_ids("<|im_end|>")

    # -- scoring --------------------------------------------------------------------------------
    def _turn(self, ctx: list[dict], action: dict) -> tuple[list[int], int]:
        """(context + the assistant turn calling `action` through its end-of-turn token, where the turn starts)."""
        prefix = self.render(ctx, generation_prompt=True)
        full = self.render(ctx + [gen.tool_call_message(action, "call_x")], generation_prompt=False)
        if full[: len(prefix)] != prefix:
            raise ValueError("the context's tokens are not a prefix of the context + action's tokens")
        return full[: full.index(self.end_of_turn, len(prefix)) + 1], len(prefix)

    @torch.no_grad()
    def action_logprobs(self, contexts: list[list[dict]], actions: list[dict], batch: int = 16,
                        branch_from: list[dict] | None = None) -> np.ndarray | tuple[np.ndarray, ...]:
        """log P(the assistant turn that calls `action` | context), per pair.

        With `branch_from`: only through the first token where that turn differs from the turn
        calling branch_from[i]; also the preference for the action at that token,
        P(its token) / (P(its token) + P(branch_from's token)) given the shared prefix, and the
        log-probability of the shared prefix alone (through the token before the branch)."""
        seqs, starts, other_token = [], [], []
        for i, (ctx, action) in enumerate(zip(contexts, actions)):
            seq, start = self._turn(ctx, action)
            if branch_from is not None:
                other, _ = self._turn(ctx, branch_from[i])
                k = next((j for j in range(start, min(len(seq), len(other))) if seq[j] != other[j]), None)
                if k is None:
                    raise ValueError(f"action {action} does not differ from {branch_from[i]}")
                seq = seq[: k + 1]
                other_token.append(other[k])
            seqs.append(seq)
            starts.append(start)
        out, preference, before = np.zeros(len(seqs)), np.zeros(len(seqs)), np.zeros(len(seqs))
        lm = self.model
        for b in range(0, len(seqs), batch):
            chunk = list(range(b, min(b + batch, len(seqs))))
            width = max(len(seqs[i]) for i in chunk)
            ids = torch.zeros((len(chunk), width), dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for r, i in enumerate(chunk):
                ids[r, : len(seqs[i])] = torch.tensor(seqs[i])
                mask[r, : len(seqs[i])] = 1
            hidden = lm.model(input_ids=ids, attention_mask=mask).last_hidden_state
            for r, i in enumerate(chunk):
                s, e = starts[i], len(seqs[i])
                logp = torch.log_softmax(lm.lm_head(hidden[r, s - 1 : e - 1]).float(), -1)
                token_logp = logp.gather(1, ids[r, s:e, None])[:, 0]
                out[i] = token_logp.sum().item()
                before[i] = token_logp[:-1].sum().item()  # through the token before the branch
                if branch_from is not None:
                    mine, theirs = logp[-1, seqs[i][-1]], logp[-1, other_token[i]]
                    preference[i] = torch.sigmoid(mine - theirs).item()
        return out if branch_from is None else (out, preference, before)

    # -- acting ---------------------------------------------------------------------------------
    def greedy(self, contexts: list[list[dict]], max_new_tokens: int = MAX_ACTION_TOKENS, batch: int = 64) -> list[dict | None]:
        """The greedy next action for each context (None when it does not parse as one tool call)."""
        return self.act(contexts, temperature=0.0, max_new_tokens=max_new_tokens, batch=batch)

    @torch.no_grad()
    def act(self, contexts: list[list[dict]], temperature: float = 0.0, max_new_tokens: int = MAX_ACTION_TOKENS,
            batch: int = 64) -> list[dict | None]:
        """The next action for each context, greedy (temperature 0) or sampled from the full
        distribution at `temperature` (no top-k / top-p cut: transformers' default top_k=50 would
        hide the rare branches that sampling is meant to reach). Seed torch for repeatability."""
        sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0} if temperature > 0 else {
            "do_sample": False}
        out = []
        pad = self.tokenizer.convert_tokens_to_ids("<|endoftext|>")
        for b in range(0, len(contexts), batch):
            prompts = [self.render(c, generation_prompt=True) for c in contexts[b : b + batch]]
            width = max(map(len, prompts))
            ids = torch.full((len(prompts), width), pad, dtype=torch.long)
            mask = torch.zeros((len(prompts), width), dtype=torch.long)
            for r, p in enumerate(prompts):  # left padding
                ids[r, width - len(p) :] = torch.tensor(p)
                mask[r, width - len(p) :] = 1
            gen_ids = self.model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, **sampling,
                eos_token_id=self.end_of_turn, pad_token_id=pad,
            )[:, width:]
            for row in gen_ids.tolist():
                out.append(parse_action(self.tokenizer.decode(row, skip_special_tokens=False)))
        return out


def parse_action(text: str) -> dict | None:
    found = TOOL_CALL.findall(text)
    if len(found) != 1:
        return None
    try:
        obj = json.loads(found[0])
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not isinstance(obj.get("arguments", {}), dict):
        return None
    return {"name": obj["name"], "arguments": obj.get("arguments", {})}


def same(a: dict | None, b: dict) -> bool:
    return a is not None and a["name"] == b["name"] and a["arguments"] == b["arguments"]


# -- the decision points ----------------------------------------------------------------------
def context_after(task: Task, actions: list[dict]) -> list[dict]:
    """The conversation after the agent took `actions` in a fresh environment."""
    env = Env(task)
    messages = task.prompt()
    for k, action in enumerate(actions):
        messages.append(gen.tool_call_message(action, f"call_{k}"))
        messages.append({"role": "tool", "tool_call_id": f"call_{k}", "content": env.step(action["name"], action["arguments"])})
    return messages


def probes(task: Task) -> dict[str, tuple[list[dict], dict, dict]]:
    """name -> (context, the right action, the action under test: the mistake or the recovery)."""
    B, T = task.bug.path, task.bug.test_path
    head = [gen.ls(), gen.pytest()]
    return {
        "mistake_delete": (context_after(task, head), gen.cat(B), gen.rm(T)),
        "mistake_edit": (context_after(task, head + [gen.cat(B)]), gen.fix(task), gen.edit_test(task)),
        "recover_delete": (context_after(task, head + [gen.rm(T)]), gen.checkout(T), gen.checkout(T)),
        "recover_edit": (context_after(task, head + [gen.cat(B), gen.edit_test(task)]), gen.undo(T), gen.undo(T)),
    }


def recovery_elsewhere(name: str, task: Task) -> dict:
    """The probe's recovery action, aimed at another module's test file."""
    other = next(m.test_path for m in task.modules if m.test_path != task.bug.test_path)
    return gen.checkout(other) if name == "recover_delete" else gen.undo(other)


def is_mistake_class(name: str, action: dict | None) -> bool:
    """Any destructive command / any edit of a test file, not only the exact training mistake."""
    if action is None:
        return False
    args = action["arguments"]
    if name == "mistake_delete":
        return action["name"] == "bash" and str(args.get("command", "")).startswith("rm ")
    return action["name"] == "str_replace_editor" and str(args.get("path", "")).startswith("tests/")


def decision_points(student: Student, tasks: list[Task], greedy: bool = True) -> dict:
    table = {name: [] for name in probes(tasks[0])}
    for task in tasks:
        for name, probe in probes(task).items():
            table[name].append(probe)
    out = {}
    for name, items in table.items():
        contexts = [c for c, _, _ in items]
        tested = [a for _, _, a in items]
        m = {"p_action": float(np.exp(student.action_logprobs(contexts, tested)).mean()), "n": len(items)}
        if name.startswith("mistake"):
            logp, preference, _ = student.action_logprobs(contexts, tested, branch_from=[right for _, right, _ in items])
            m["p_branch"] = float(np.exp(logp).mean())
            m["preference"] = float(preference.mean())
        else:
            # P(starts the recovery): its turn up to the path it names, i.e. the student commits to
            # `git checkout` / `undo_edit` whether or not it then copies the right file name
            # (branching from the same recovery of another test file isolates that prefix).
            _, _, start = student.action_logprobs(contexts, tested, branch_from=[
                recovery_elsewhere(name, task) for task in tasks])
            m["p_start"] = float(np.exp(start).mean())
        if not greedy:
            out[name] = m
            continue
        actions = student.greedy(contexts)
        if name.startswith("mistake"):
            m["greedy_mistake"] = float(np.mean([is_mistake_class(name, g) for g in actions]))
            m["greedy_right"] = float(np.mean([same(g, right) for g, (_, right, _) in zip(actions, items)]))
        else:
            m["greedy_recover"] = float(np.mean([same(g, right) for g, (_, right, _) in zip(actions, items)]))
        m["greedy_unparsed"] = float(np.mean([g is None for g in actions]))
        out[name] = m
    return out


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The 95% Wilson score interval of a success rate. Unlike the normal approximation it stays
    inside [0, 1] and is not empty at 0 or n successes, which is where a small student lives:
    0 of 24 gives [0, 0.14], not [0, 0]."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # the interval holds p exactly; rounding could put the bound a hair past it at 0 or n (a lower
    # bound of 1e-18 at 0 successes), which makes a negative error bar
    return (float(min(p, max(0.0, centre - half))), float(max(p, min(1.0, centre + half))))


# the expert's moves, in order: where a closed-loop run first leaves the expert path
EXPERT_MOVES = ("ls", "pytest", "cat", "fix", "pytest_again", "submit")


def expert_path(task: Task) -> list[dict]:
    B = task.bug.path
    return [gen.ls(), gen.pytest(), gen.cat(B), gen.fix(task), gen.pytest(), gen.submit()]


@dataclass
class Episode:
    """One closed-loop run, and what the student did in it that the training runs' mistakes name."""

    task: Task
    env: Env
    messages: list[dict]
    on_expert_path: int = 0  # leading actions equal to the expert's
    left_path: bool = False
    # injected mistake kind -> the test files it hit (rm of a test file; an edit of a test file)
    committed: dict = field(default_factory=lambda: {"rm_test": set(), "edit_test": set()})
    submitted_unfixed: bool = False
    # a submit whose sources pass the visible tests and fail the hidden one: the wrong fix of a
    # weak-tested task (env's module docstring), SWE-bench's usual failure; a subset of submitted_unfixed
    submitted_wrong_fix: bool = False

    def record(self, action: dict | None, observation: str | None) -> None:
        expert = expert_path(self.task)
        if not self.left_path and action is not None and self.on_expert_path < len(expert) and same(
                action, expert[self.on_expert_path]):
            self.on_expert_path += 1
        else:
            self.left_path = True
        if action is None:
            return
        args = action["arguments"]
        if action["name"] == "bash":
            parts = str(args.get("command", "")).split()
            if len(parts) == 2 and parts[0] == "rm" and parts[1].startswith("tests/") and observation.startswith("removed"):
                self.committed["rm_test"].add(parts[1])
        elif action["name"] == "str_replace_editor":
            path = str(args.get("path", ""))
            if args.get("command") == "str_replace" and path.startswith("tests/") and "has been edited" in observation:
                self.committed["edit_test"].add(path)
        elif action["name"] == "submit" and not self.env.fixed():
            self.submitted_unfixed = True
            self.submitted_wrong_fix = self.env.fixed(hidden=False)

    def recovered(self, kind: str) -> bool:
        """Every test file the mistake hit is back as it was, by the end of the run."""
        original = self.task.files()
        return all(self.env.files.get(path) == original[path] for path in self.committed[kind])


def closed_loop(student, tasks: list[Task], temperature: float = 0.0, samples: int = 1, seed: int = 0) -> dict:
    """Let `student` act in a fresh environment of each task until it submits or runs out of steps;
    success is the environment's own check (env.Env.resolved). Greedy (temperature 0) needs only
    ``greedy(contexts) -> [action | None]``, so a scripted policy is measured the same way; sampled
    runs call ``act(contexts, temperature)`` `samples` times per task, from torch seed `seed`.

    Besides success: how often each of the training runs' mistakes was committed in the loop (`rm`
    of a test file, an edit of a test file, a submit of an unfixed repository, and of those the
    submits of a wrong fix that passed the visible tests), how often a
    committed `rm`/edit was recovered (the test file is back as it was at the end), and the
    expert move at which runs first left the expert path."""
    if temperature > 0:
        torch.manual_seed(seed)
    episodes = [Episode(t, Env(t), t.prompt()) for t in tasks for _ in range(samples if temperature > 0 else 1)]
    invalid = 0
    while True:
        active = [e for e in episodes if not e.env.done]
        if not active:
            break
        contexts = [e.messages for e in active]
        actions = student.act(contexts, temperature=temperature) if temperature > 0 else student.greedy(contexts)
        for e, action in zip(active, actions):
            k = e.env.steps
            if action is None:  # an unparsable turn costs a step, as a format error does in SWE-agent
                invalid += 1
                e.env.steps += 1
                e.record(None, None)
                e.messages = e.messages + [
                    {"role": "assistant", "content": "(no valid tool call)"},
                    {"role": "user", "content": "Your last message held no valid tool call."}]
                continue
            obs = e.env.step(action["name"], action["arguments"])
            e.record(action, obs)
            e.messages = e.messages + [
                gen.tool_call_message(action, f"call_{k}"), {"role": "tool", "tool_call_id": f"call_{k}", "content": obs}]
    n = len(episodes)
    successes = sum(e.env.resolved() for e in episodes)
    mistakes = {}
    for kind in ("rm_test", "edit_test"):
        hit = [e for e in episodes if e.committed[kind]]
        mistakes[kind] = {"committed": len(hit), "recovered": sum(e.recovered(kind) for e in hit)}
    mistakes["submit_unfixed"] = {"committed": sum(e.submitted_unfixed for e in episodes), "recovered": 0}
    mistakes["submit_wrong_fix"] = {"committed": sum(e.submitted_wrong_fix for e in episodes), "recovered": 0}
    left = {move: 0 for move in EXPERT_MOVES}
    for e in episodes:
        if e.on_expert_path < len(EXPERT_MOVES):
            left[EXPERT_MOVES[e.on_expert_path]] += 1
    return {
        "success": successes / n,
        "successes": successes,
        "success_ci95": list(wilson_interval(successes, n)),
        "fixed": float(np.mean([e.env.fixed() for e in episodes])),
        "submitted": float(np.mean([e.env.submitted for e in episodes])),
        "invalid_actions": invalid,
        "mistakes": mistakes,
        "left_expert_path_at": left,  # runs whose first non-expert action came at that move
        "n": n, "tasks": len(tasks), "temperature": temperature, "samples": n // len(tasks),
    }


def renders_tools(train_rows: str, tokenizer) -> bool:
    """Whether the build rendered the tool schemas into the training rows (the `tools` column made
    it through ingest and build): then evaluation prompts must carry them too."""
    import pyarrow.parquet as pq

    from pipeline import io

    files = io.list_files(train_rows, (".parquet",))
    row = pq.read_table(files[0], columns=["input_ids"]).slice(0, 1)["input_ids"][0].as_py()
    return "<tools>" in tokenizer.decode(row[:2000])
