"""Turn one raw trajectory (a SWE-smith row or a SWE-agent ``.traj``) into a TRAJECTORY row.

Plain Python, no Ray. Anything unusable raises `BadRow` with a short reason that the stage
groups by, and a detail naming what is wrong. Every text that reaches a TRAJECTORY row is
checked to be encodable as UTF-8 (JSON may carry a lone surrogate such as ``"\\ud800"``, which
Arrow cannot store), and every field of an unexpected type is refused with its name, so that
nothing past this module can fail on the shape of one row.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pipeline.ingest.tools import BadTools, normalize_tools, swe_agent_tools
from pipeline.steps import count_steps

ROLES = ("system", "user", "assistant", "tool")


class BadRow(ValueError):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def parse_json(text: str, what: str) -> Any:
    """`json.loads` whose every failure is a `BadRow`: bad syntax, an integer beyond Python's
    digit limit (a ValueError), nesting deeper than the parser's recursion limit."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise BadRow("invalid_json", f"{what} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except RecursionError:
        raise BadRow("too_deeply_nested", f"{what} is JSON nested too deeply to parse") from None
    except ValueError as e:
        raise BadRow("invalid_json", f"{what} is not usable JSON: {str(e)[:160]}") from None


def checked_text(value: str, where: str) -> str:
    """`value` unchanged if it can be stored as UTF-8; a lone surrogate cannot."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise BadRow("invalid_unicode", f"{where}: character {e.start} is a lone surrogate "
                                        f"({value[e.start]!a}), not valid Unicode text") from None
    return value


def _text(content: Any, where: str) -> str:
    """Message content as text: a string, null, or a list of ``{type, text}`` blocks."""
    if content is None:
        return ""
    if isinstance(content, str):
        return checked_text(content, where)
    if isinstance(content, list):
        parts = []
        for i, block in enumerate(content):
            if isinstance(block, str):
                parts.append(block)
            elif isinstance(block, dict) and isinstance(block.get("text"), str):
                parts.append(block["text"])
            else:
                raise BadRow("bad_message", f"{where}: content block {i} ({type(block).__name__}) has no text")
        return checked_text("\n".join(parts), where)
    raise BadRow("bad_message", f"{where}: content is {type(content).__name__}, expected text or blocks")


def _tool_calls(calls: Any, where: str) -> str | None:
    if calls in (None, [], ""):
        return None
    if isinstance(calls, str):
        calls = parse_json(calls, f"{where}: tool_calls")
    if not isinstance(calls, list):
        raise BadRow("bad_message", f"{where}: tool_calls is {type(calls).__name__}, expected a list")
    # The source's key order is kept: the chat template renders dict arguments in it (`tojson`),
    # and the model was trained or prompted with that order, not a sorted one.
    return checked_text(json.dumps(calls, ensure_ascii=False), f"{where}: tool_calls")


def normalize_messages(raw: Any) -> list[dict]:
    """Validate and normalise a message list; `raw` may be a list or its JSON text."""
    if isinstance(raw, str):
        raw = parse_json(raw, "messages (a string)")
    if not isinstance(raw, list):
        raise BadRow("bad_messages_type", f"messages is {type(raw).__name__}, expected a list")
    messages = []
    for i, m in enumerate(raw):
        where = f"message {i}"
        if not isinstance(m, dict):
            raise BadRow("bad_message", f"{where} is {type(m).__name__}, expected an object")
        role = m.get("role")
        if role not in ROLES:
            raise BadRow("unknown_role", f"{where} has role {_short(role)}; expected one of {', '.join(ROLES)}")
        messages.append(
            {
                "role": role,
                "content": _text(m.get("content"), where),
                "tool_calls": _tool_calls(m.get("tool_calls"), where) if role == "assistant" else None,
            }
        )
    if not any(m["role"] == "assistant" for m in messages):
        raise BadRow("no_assistant_message", f"none of the {len(messages)} messages is from the assistant")
    if not any(m["content"].strip() or m["tool_calls"] for m in messages):
        raise BadRow("empty_content", f"all {len(messages)} messages have empty content")
    return messages


def detect_swe_smith_format(messages: list[dict]) -> str:
    """SWE-smith split style: tool-calling, XML function tags, or fenced (ticks) commands."""
    assistant = [m for m in messages if m["role"] == "assistant"]
    if any(m["tool_calls"] for m in assistant) or any(m["role"] == "tool" for m in messages):
        return "tool"
    if any("<function=" in m["content"] for m in assistant):
        return "xml"
    return "ticks"


def content_traj_id(instance_id: str | None, messages: list[dict]) -> str:
    """Stable id from content: the same trajectory always gets the same id."""
    h = hashlib.sha256(json.dumps([instance_id, messages], sort_keys=True, ensure_ascii=False).encode())
    return h.hexdigest()[:24]


def _resolved(value: Any) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise BadRow("bad_resolved", f"resolved is {_short(value)}, expected a bool or 'True'/'False'")


def _short(value: Any) -> str:
    """A value for an error message: the type and, for scalars, a bounded repr."""
    if isinstance(value, (bool, float, type(None))) or (isinstance(value, int) and value.bit_length() < 64):
        return repr(value)
    if isinstance(value, str):
        return ascii(value[:40]) + ("..." if len(value) > 40 else "")
    return f"a {type(value).__name__}"


def _optional_str(row: dict, key: str) -> str | None:
    value = row.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRow("bad_field_type", f"{key} is {type(value).__name__}, expected text")
    return checked_text(value, key)


def _optional(value: Any, kind: type, where: str) -> Any:
    """`value` if it is None or a `kind`, else a `BadRow` naming the field."""
    if value is None or isinstance(value, kind):
        return checked_text(value, where) if isinstance(value, str) else value
    raise BadRow("bad_field_type", f"{where} is {type(value).__name__}, expected {_KIND[kind]}")


_KIND = {str: "text", dict: "an object", list: "a list"}


def _tools(value: Any, where: str) -> str | None:
    try:
        tools = normalize_tools(value, where)
    except BadTools as e:
        raise BadRow("bad_tools", str(e)) from None
    return checked_text(tools, where) if tools else None


def _row(messages: list[dict], **fields: Any) -> dict:
    return {
        **fields,
        "messages": messages,
        "num_steps": count_steps(messages),
        "num_messages": len(messages),
    }


def from_swe_smith(row: Any, source: str, resolution: dict[str, bool]) -> dict:
    """A SWE-smith row (any split style) -> TRAJECTORY row."""
    if not isinstance(row, dict):
        raise BadRow("bad_row_type", f"row is {type(row).__name__}, expected an object")
    if "messages" not in row:
        raise BadRow("missing_messages", f"row has no 'messages' (keys: {sorted(map(str, row))[:8]!a})")
    messages = normalize_messages(row["messages"])
    instance_id = _optional_str(row, "instance_id")
    resolved = _resolved(row.get("resolved"))
    if resolved is None and instance_id is not None:
        resolved = resolution.get(instance_id)
    return _row(
        messages,
        traj_id=_optional_str(row, "traj_id") or content_traj_id(instance_id, messages),
        instance_id=instance_id,
        resolved=resolved,
        source=source,
        source_format=detect_swe_smith_format(messages),
        model=_optional_str(row, "model"),
        patch=_optional_str(row, "patch"),
        unrecorded_final_action=None,
        tools=_tools(row.get("tools"), "tools"),
    )


def from_swe_agent(traj: Any, source: str, resolution: dict[str, bool]) -> dict:
    """A SWE-agent ``.traj`` document -> TRAJECTORY row.

    Steps come from ``history``, the messages the model actually saw. Demonstration messages
    (``is_demo``) are part of the prompt: they are kept as user turns, so a demo never counts
    as a step. An action in ``trajectory`` beyond the last one in ``history`` (SWE-agent's
    closing ``submit``) was never a message, so it is kept in ``unrecorded_final_action``
    rather than invented as a step.
    """
    if not isinstance(traj, dict) or not isinstance(traj.get("history"), list):
        raise BadRow("bad_traj", "a .traj file must be an object with a 'history' list")
    history = [
        {**m, "role": "user"} if isinstance(m, dict) and m.get("is_demo") else m for m in traj["history"]
    ]
    messages = normalize_messages(history)
    replay = traj.get("replay_config")
    if isinstance(replay, str):  # SWE-agent writes the run config as JSON text
        replay = parse_json(replay, "replay_config")
    replay = _optional(replay, dict, "replay_config") or {}
    problem = _optional(replay.get("problem_statement"), dict, "replay_config.problem_statement") or {}
    instance_id = _optional(problem.get("id"), str, "replay_config.problem_statement.id") or _stem(source)
    agent = _optional(replay.get("agent"), dict, "replay_config.agent") or {}
    model = _optional(agent.get("model"), dict, "replay_config.agent.model") or {}
    model_name = _optional(model.get("name"), str, "replay_config.agent.model.name")
    info = _optional(traj.get("info"), dict, "info") or {}
    patch = _optional(info.get("submission"), str, "info.submission")
    steps = _optional(traj.get("trajectory"), list, "trajectory") or []
    num_steps = count_steps(messages)
    actions = [s.get("action") for s in steps if isinstance(s, dict)]
    extra = [checked_text(a, "trajectory action") for a in actions[num_steps:] if isinstance(a, str)]
    function_calling = any(m["tool_calls"] for m in messages) or any(m["role"] == "tool" for m in messages)
    try:
        # A text-format agent reads its commands in the system prompt: no schemas to render.
        tools = swe_agent_tools(traj, replay) if function_calling else None
    except BadTools as e:
        raise BadRow("bad_tools", str(e)) from None
    return _row(
        messages,
        traj_id=content_traj_id(instance_id, messages),
        instance_id=instance_id,
        resolved=resolution.get(instance_id),
        source=source,
        source_format="swe_agent_fc" if function_calling else "swe_agent_text",
        model=model_name,
        patch=patch,
        unrecorded_final_action="\n".join(extra) if extra else None,
        tools=checked_text(tools, "tools") if tools else None,
    )


def _stem(source: str) -> str:
    name = source.rstrip("/").rsplit("/", 1)[-1]
    return name.removesuffix(".traj")
