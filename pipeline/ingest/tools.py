"""Tool definitions: the OpenAI tool schemas a function-calling agent was given.

A function-calling model sees its tools as schemas that the chat template renders into the
prompt (``tools=``), not as text in the system message. To train on what the model saw at
inference, ingest keeps them in the TRAJECTORY ``tools`` column as JSON text of a list of
``{"type": "function", "function": {"name", "description", "parameters"}}`` objects.

Where they come from:
- a ``tools`` column or field (SWE-smith rows, the ``tool`` split), a list or its JSON text;
- a SWE-agent ``.traj``: a top-level ``tools`` list when an exporter kept one, else
  ``replay_config.agent.tools.command_docs``. SWE-agent builds each tool with
  ``Command.get_function_calling_tool()`` from the command's name, docstring and arguments, and
  writes the same commands into ``command_docs`` as text::

      find_file:
        docstring: finds all files with the given name in dir...
        signature: find_file <file_name> [<dir>]
        arguments:
          - file_name (string) [required]: the name of the file to search for

  so the schemas are rebuilt from that text. What the text does not carry (an argument's
  ``enum`` or array ``items``) is absent from the rebuilt schema, and descriptions carry the
  environment variables already substituted (``{WINDOW}`` -> ``100``).
Anything else has no tool schemas: the column is null and the summary counts function-calling
trajectories without them (``tools_missing``).
"""

from __future__ import annotations

import json
import re
from typing import Any

_COMMAND = re.compile(r"^(\S[^:\s]*):\s*$")
_ARGUMENT = re.compile(r"^    - (\S+) \(([^)]*)\) \[(required|optional)\]: ?(.*)$")


class BadTools(ValueError):
    """The source has a tools value, but it is not a list of tool schemas."""


def normalize_tools(value: Any, where: str) -> str | None:
    """A list of tool schemas (or its JSON text) as JSON text, keys in the source's order; null or [] -> None.

    A bare function schema (``{"name", "description", "parameters"}``) is wrapped in the
    OpenAI ``{"type": "function", "function": ...}`` form, which chat templates expect."""
    if value is None:
        return None
    if isinstance(value, str):
        if not value.strip():
            return None
        try:
            value = json.loads(value)
        except ValueError as e:  # JSONDecodeError, and ints beyond the digit limit
            raise BadTools(f"{where} is text but not valid JSON ({e})") from None
    if not isinstance(value, list):
        raise BadTools(f"{where} is {type(value).__name__}, expected a list of tool schemas")
    tools = []
    for i, tool in enumerate(value):
        if isinstance(tool, dict) and "function" not in tool and isinstance(tool.get("name"), str):
            tool = {"type": "function", "function": tool}
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise BadTools(f"{where}[{i}] is not a tool schema (expected an object with function.name)")
        tools.append(tool)
    # In the source's key order: the template renders the schemas as JSON text into the system
    # prompt, and inference renders them in the order the agent passed them, not sorted.
    return json.dumps(tools, ensure_ascii=False) if tools else None


def tools_from_command_docs(docs: str) -> list[dict]:
    """SWE-agent's ``command_docs`` text -> OpenAI tool schemas, as
    ``Command.get_function_calling_tool`` builds them. Lines that fit no part of the format
    are ignored; a text with no command in it gives []."""
    commands: list[dict] = []
    part = None  # the multi-line part being read: "docstring" or an argument
    lines = docs.splitlines()
    for i, line in enumerate(lines):
        following = lines[i + 1] if i + 1 < len(lines) else ""
        # A header is "name:" followed by its docstring or signature, so that a docstring line
        # such as "Example:" is not taken for a command.
        if (m := _COMMAND.match(line)) and following.startswith(("  docstring: ", "  signature: ")):
            commands.append({"name": m.group(1), "docstring": [], "arguments": []})
            part = None
        elif not commands:
            continue
        elif line.startswith("  docstring: "):
            commands[-1]["docstring"] = [line[len("  docstring: "):]]
            part = "docstring"
        elif line.startswith("  signature:") or line.strip() == "arguments:":
            part = None
        elif m := _ARGUMENT.match(line):
            name, typ, req, description = m.groups()
            commands[-1]["arguments"].append(
                {"name": name, "type": typ, "required": req == "required", "description": [description]}
            )
            part = "argument"
        elif part == "docstring":
            commands[-1]["docstring"].append(line)
        elif part == "argument":
            commands[-1]["arguments"][-1]["description"].append(line)
    return [_function_tool(c) for c in commands]


def _function_tool(command: dict) -> dict:
    properties, required = {}, []
    for arg in command["arguments"]:
        properties[arg["name"]] = {"type": arg["type"], "description": "\n".join(arg["description"]).strip()}
        if arg["required"]:
            required.append(arg["name"])
    parameters = {"type": "object", "properties": properties, "required": required} if properties else {
        "type": "object"}
    return {
        "type": "function",
        "function": {
            "name": command["name"],
            "description": "\n".join(command["docstring"]).strip(),
            "parameters": parameters,
        },
    }


def swe_agent_tools(traj: dict, replay: dict) -> str | None:
    """The tool schemas of a SWE-agent ``.traj`` (see the module docstring), or None."""
    if traj.get("tools") is not None:
        return normalize_tools(traj["tools"], "tools")
    agent = replay.get("agent")
    tool_config = agent.get("tools") if isinstance(agent, dict) else None
    docs = tool_config.get("command_docs") if isinstance(tool_config, dict) else None
    if docs is None:
        return None
    if not isinstance(docs, str):
        raise BadTools(f"replay_config.agent.tools.command_docs is {type(docs).__name__}, expected text")
    return normalize_tools(tools_from_command_docs(docs), "replay_config.agent.tools.command_docs")
