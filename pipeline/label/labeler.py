"""Label a batch of trajectories with any backend: prompt -> generate -> parse -> retry -> vote.

A backend is anything with ``generate(requests) -> list[list[Completion] | Exception]``: one
entry per request, either its ``n`` completions or the exception that prevented them. Both
backends (vLLM engine, OpenAI HTTP) share everything in this module.

Attempts. Round 0 asks for ``num_samples`` labelings (one call with ``n=k``; greedy when k == 1).
Each later round (at most ``max_retries``) asks again for the labelings still missing, sampled
at ``temperature`` with a new seed (a greedy retry would repeat the same bad answer). A
trajectory is labelled when at least ``min_valid_samples`` labelings were valid; otherwise it
becomes an error row with the reasons of every failed labeling. Nothing is ever defaulted to
``good``.

Total: `label_batch` returns one Outcome per row whatever happens. A backend that raises, returns
the wrong number of results or results of the wrong type, an answer of any shape, a row that
cannot be prompted: each ends as a failure of the trajectories it touched (retried while rounds
remain), never as an exception out of this function.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field

from pipeline.label.config import CriticConfig, confidence_mode, resolve_min_valid
from pipeline.label.output import AnswerError, Verdict, json_schema, parse_answer
from pipeline.label.prompt import BuiltPrompt, PromptBuilder, PromptTooLong


@dataclass
class Request:
    prompt: BuiltPrompt
    n: int
    temperature: float
    top_p: float
    seed: int
    schema: dict


@dataclass
class Completion:
    text: str | None
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    error: str | None = None  # set by a backend whose reply for this sample was unusable (reason: detail)


@dataclass
class Outcome:
    traj_id: str
    verdicts: list[Verdict] | None = None
    num_samples: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    attempts: int = 0
    error_reason: str | None = None
    error_detail: str | None = None
    calls: int = 0
    trajectory_tokens: int = 0
    critic_prompt_tokens: int = 0  # of one call (the compacted prompt), for the budget ratio


@dataclass
class _State:
    traj_id: str
    prompt: BuiltPrompt
    seed: int
    valid: list[list[Verdict]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    outcome: Outcome | None = None


def _seed(traj_id: str, base: int) -> int:
    return (int.from_bytes(hashlib.sha256(traj_id.encode()).digest()[:4], "little") + base) % (2**31)


def _error(traj_id: str, reason: str, detail: str, attempts: int = 0) -> Outcome:
    return Outcome(traj_id, error_reason=reason, error_detail=detail[:2000], attempts=attempts)


def label_batch(rows: list[dict], builder: PromptBuilder, backend, c: CriticConfig) -> list[Outcome]:
    """`rows`: dicts with traj_id, messages, resolved, num_steps. One Outcome per row, in order."""
    mode = confidence_mode(c)
    need = resolve_min_valid(c)
    states: list[_State | Outcome] = []
    for row in rows:
        tid = row["traj_id"]
        try:
            if not row.get("num_steps"):
                states.append(_error(tid, "no_steps", "the trajectory has no assistant step to label"))
                continue
            p = builder.build(list(row["messages"]), row.get("resolved"), row.get("num_steps"))
            states.append(_State(tid, p, _seed(tid, c.seed)))
        except PromptTooLong as e:
            states.append(_error(tid, "prompt_too_long", str(e)))
        except Exception as e:  # noqa: BLE001 - a malformed row must not kill the batch
            states.append(_error(tid, "bad_trajectory", f"{type(e).__name__}: {e}"))

    live = [s for s in states if isinstance(s, _State)]
    totals = {id(s): [0, 0, 0, 0] for s in live}  # prompt tok, completion tok, calls, attempts
    for rnd in range(c.max_retries + 1):
        todo = [s for s in live if len(s.valid) < c.num_samples]
        if not todo:
            break
        if rnd > 0:  # retries only for those still short of the minimum
            todo = [s for s in todo if len(s.valid) < need]
            if not todo:
                break
        greedy = rnd == 0 and c.num_samples == 1
        reqs = [
            Request(
                s.prompt,
                n=c.num_samples - len(s.valid),
                temperature=0.0 if greedy else c.temperature,
                top_p=1.0 if greedy else c.top_p,
                seed=s.seed + 7919 * rnd,
                schema=json_schema(s.prompt.num_steps, c.reason_max_chars),
            )
            for s in todo
        ]
        try:
            results = list(backend.generate(reqs))
        except Exception as e:  # noqa: BLE001 - a failed call fails its requests, not the batch
            results = [e] * len(reqs)
        if len(results) != len(reqs):
            err = RuntimeError(f"backend returned {len(results)} results for {len(reqs)} requests")
            results = [err] * len(reqs)
        for s, req, res in zip(todo, reqs, results):
            t = totals[id(s)]
            t[2] += 1
            try:
                _take(s, t, req, res)
            except Exception as e:  # noqa: BLE001 - e.g. a result of the wrong type
                s.failures.append(f"backend_error: {type(e).__name__}: {str(e)[:300]}")

    out = []
    for s in states:
        if isinstance(s, Outcome):
            out.append(s)
            continue
        ptok, ctok, calls, attempts = totals[id(s)]
        valid = s.valid[: c.num_samples]
        verdicts = None
        if len(valid) >= need:
            try:
                verdicts = aggregate_verdicts(valid, mode)
            except Exception as e:  # noqa: BLE001 - samples of mismatched length, say
                s.failures.append(f"aggregate_error: {type(e).__name__}: {str(e)[:300]}")
        if verdicts is not None:
            o = Outcome(s.traj_id, verdicts, len(valid), ptok, ctok, attempts)
        else:
            reasons = Counter(f.split(":", 1)[0] for f in s.failures)
            top = reasons.most_common(1)[0][0] if reasons else "no_valid_answer"
            detail = (f"{len(valid)} valid of {attempts} labelings (need {need}); failures: "
                      + "; ".join(s.failures[-5:]))
            o = _error(s.traj_id, top, detail, attempts)
            o.prompt_tokens, o.completion_tokens = ptok, ctok
        o.calls = calls
        o.trajectory_tokens = s.prompt.trajectory_tokens
        o.critic_prompt_tokens = s.prompt.prompt_tokens
        out.append(o)
    return out


def _take(s: _State, t: list[int], req: Request, res) -> None:
    """Fold one request's result into its trajectory's state and token counts."""
    if isinstance(res, BaseException):  # an exception may carry its own reason code
        t[3] += req.n
        reason = getattr(res, "reason", None)
        reason = reason if isinstance(reason, str) and reason.isidentifier() else "backend_error"
        s.failures.append(f"{reason}: {type(res).__name__}: {str(res)[:300]}")
        return
    if not isinstance(res, list) or not all(isinstance(c, Completion) for c in res):
        raise TypeError(f"backend result is {type(res).__name__}, not a list of Completion")
    for comp in res[: req.n]:  # a backend answering more than asked gets no extra votes
        t[0] += max(0, int(comp.prompt_tokens or 0))
        t[1] += max(0, int(comp.completion_tokens or 0))
        t[3] += 1
        if comp.error:
            s.failures.append(comp.error[:400])
            continue
        try:
            s.valid.append(parse_answer(comp.text, s.prompt.num_steps, comp.finish_reason == "length"))
        except AnswerError as e:
            s.failures.append(f"{e.reason}: {e.detail[:300]}")
    # n completions of one call share a prompt: count it once per call
    if len(res[: req.n]) > 1:
        t[0] -= max(0, int(res[0].prompt_tokens or 0)) * (len(res[: req.n]) - 1)
    if not res:
        t[3] += req.n
        s.failures.append("empty_response: the backend returned no completion")


def aggregate_verdicts(valid: list[list[Verdict]], mode: str) -> list[Verdict]:
    from pipeline.label.vote import aggregate

    return aggregate(valid, mode)
