"""What a step is: the numbering contract that the critic and the loss masks share.

A step is one assistant message together with the messages that follow it up to the next
assistant message (its observation: ``tool`` messages, or ``user`` messages carrying the
tool output). Everything before the first assistant message is the prompt (system prompt,
task, demonstrations). Steps are numbered 0..num_steps-1 in message order.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Step:
    index: int
    assistant: int  # index of the assistant message in `messages`
    observations: tuple[int, ...]  # indices of the messages that follow it, before the next step


def split_steps(messages: list[dict]) -> tuple[list[int], list[Step]]:
    """Return (prompt message indices, steps)."""
    assistant = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if not assistant:
        return list(range(len(messages))), []
    bounds = assistant + [len(messages)]
    steps = [
        Step(index=k, assistant=a, observations=tuple(range(a + 1, bounds[k + 1])))
        for k, a in enumerate(assistant)
    ]
    return list(range(assistant[0])), steps


def count_steps(messages: list[dict]) -> int:
    return sum(1 for m in messages if m["role"] == "assistant")
