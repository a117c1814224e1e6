"""The student's tokenizer and chat template, and what the mask builder needs to know about them.

`load_tokenizer` reads the tokenizer (and its chat template) from the model folder or URI.
`probe_template` renders a few small conversations to learn the template's generation prompt
(the assistant header) and end-of-turn token, and refuses templates that re-render earlier turns
differently once the conversation goes on (Qwen3-style templates drop the reasoning of earlier
turns): SRFT trains every step of a trajectory in one sequence, which is only what the model saw
at each step when the render of a prefix is a prefix of the render of the whole.

The probe also records whether the template renders an assistant message's `tool_calls` and the
`tools=` schemas. A template that drops tool calls (SmolLM2's own) is not refused outright, since
plain-text trajectories (SWE-smith's xml style) build fine under it; the mask builder then turns
every row whose calls are not rendered into an error row (`tool_calls_not_rendered`).
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import tempfile
from dataclasses import dataclass
from urllib.parse import urlparse

from pipeline import fsys, io

TOKENIZER_SUFFIXES = (".json", ".jinja", ".txt", ".model", ".tiktoken", ".vocab", ".merges")


class ChatTemplateError(ValueError):
    """The chat template cannot give exact per-step loss masks."""


def local_model_dir(model: str) -> str:
    """A local folder holding the model's tokenizer files: the folder itself, or a cached copy of
    the tokenizer files (never the weights) of an s3:// or hf:// model."""
    if urlparse(model).scheme in ("", "file"):
        path = fsys.filesystem(model)[1]
        if not os.path.isdir(path):
            raise FileNotFoundError(f"model {model!r} is not a folder (expected the student's model folder)")
        return path
    dest = os.path.join(tempfile.gettempdir(), "srft-tokenizers", hashlib.sha256(model.encode()).hexdigest()[:16])
    if os.path.exists(os.path.join(dest, ".complete")):
        return dest
    files = [f for f in io.list_files(model, TOKENIZER_SUFFIXES) if posixpath.dirname(f) == model.rstrip("/")]
    if not files:
        raise FileNotFoundError(f"model {model!r} holds no tokenizer files")
    os.makedirs(dest, exist_ok=True)
    for f in files:
        with open(os.path.join(dest, posixpath.basename(f)), "wb") as out:
            out.write(io.read_bytes(f))
    open(os.path.join(dest, ".complete"), "w").close()
    return dest


def load_tokenizer(model: str, chat_template: str | None = None):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(local_model_dir(model))
    if chat_template:
        tok.chat_template = io.read_bytes(chat_template).decode("utf-8")
    if not tok.chat_template:
        raise ChatTemplateError(f"model {model!r} has no chat template; pass chat_template=FILE.jinja")
    if not getattr(tok, "is_fast", False):
        raise ChatTemplateError(f"model {model!r}: the mask builder needs a fast (Rust) tokenizer for offsets")
    return tok


@dataclass(frozen=True)
class TemplateInfo:
    generation_prompt: str  # text the template puts before every assistant turn, e.g. "<|im_start|>assistant\n"
    end_of_turn: str  # the token that closes an assistant turn, e.g. "<|im_end|>"
    end_of_turn_id: int
    renders_tool_calls: bool = True  # an assistant message's tool_calls appear in the render
    renders_tools: bool = False  # the `tools=` schemas appear in the render (in the system prompt)


def _probes() -> list[list[dict]]:
    call = [{"type": "function", "function": {"name": "bash", "arguments": {"command": "ls probe-dir"}}}]
    return [
        [
            {"role": "system", "content": "probe-system"},
            {"role": "user", "content": "probe-task"},
            {"role": "assistant", "content": "probe-answer-one"},
            {"role": "user", "content": "OBSERVATION: probe-obs-one"},
            {"role": "assistant", "content": "probe-answer-two"},
            {"role": "user", "content": "OBSERVATION: probe-obs-two"},
            {"role": "assistant", "content": "probe-answer-three"},
        ],
        [
            {"role": "user", "content": "probe-task"},
            {"role": "assistant", "content": "<think>\nprobe-reasoning-one\n</think>\n\nprobe-answer-one"},
            {"role": "user", "content": "probe-obs-one"},
            {"role": "assistant", "content": "<think>\nprobe-reasoning-two\n</think>\n\nprobe-answer-two"},
            {"role": "user", "content": "probe-obs-two"},
            {"role": "assistant", "content": "probe-answer-three"},
        ],
        [
            {"role": "system", "content": "probe-system"},
            {"role": "user", "content": "probe-task"},
            {"role": "assistant", "content": "probe-thought", "tool_calls": call},
            {"role": "tool", "content": "probe-tool-output"},
            {"role": "assistant", "content": "", "tool_calls": call},
            {"role": "tool", "content": "probe-tool-output-two"},
            {"role": "assistant", "content": "probe-done"},
        ],
    ]


PROBE_TOOL = {
    "type": "function",
    "function": {
        "name": "probe_tool_name",
        "description": "probe-tool-description",
        "parameters": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]},
    },
}


def _render(tok, messages: list[dict], add_generation_prompt: bool = False, tools: list | None = None) -> str:
    return tok.apply_chat_template(
        messages, tools=tools, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def _renders(tok, probe: list[dict], needle: str, tools: list | None = None) -> bool:
    try:
        return needle in _render(tok, probe, tools=tools)
    except Exception:  # noqa: BLE001 - a template that raises on the shape does not render it
        return False


def _first_difference(a: str, b: str) -> int:
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


def probe_template(tok, end_of_turn: str | None = None) -> TemplateInfo:
    """Learn the generation prompt and end-of-turn token; raise ChatTemplateError for a template
    whose render of a conversation's prefix (with the generation prompt) is not a prefix of the
    render of the whole conversation."""
    prompts: set[str] = set()
    eot_ids: set[int] = set()
    for n, probe in enumerate(_probes()):
        try:
            full = _render(tok, probe)
        except Exception as e:  # a template may refuse a shape (tools); such data then errors per row
            if n == 0:
                raise ChatTemplateError(f"the chat template cannot render a plain conversation: {e}") from e
            continue
        for i, m in enumerate(probe):
            if m["role"] != "assistant":
                continue
            before = _render(tok, probe[:i])
            prefix = _render(tok, probe[:i], add_generation_prompt=True)
            # The context before step i, and step i as generated (the turn rendered as the last
            # message), must both read the same once the conversation goes on.
            as_generated = _render(tok, probe[: i + 1])
            for text in (prefix, as_generated):
                if full.startswith(text):
                    continue
                k = _first_difference(text, full)
                raise ChatTemplateError(
                    "the chat template re-renders earlier turns differently once the conversation goes on "
                    f"(probe {n}, assistant message {i}: the render up to it reads {text[k:k + 60]!r} at "
                    f"char {k}, the full render reads {full[k:k + 60]!r}). Qwen3-style templates that drop "
                    "earlier reasoning do this. SRFT trains every step of a trajectory in one sequence, so it "
                    "needs a template under which each step's context is a prefix of the whole; pass "
                    "chat_template=FILE.jinja with one that keeps history verbatim"
                )
            if not prefix.startswith(before) or len(prefix) == len(before):
                raise ChatTemplateError(f"probe {n}: add_generation_prompt does not append an assistant header")
            prompts.add(prefix[len(before):])
            # The end-of-turn token: the first token after the assistant's content.
            if m["content"] and not m.get("tool_calls") and "<think>" not in m["content"]:
                pos = full.find(m["content"], len(prefix)) + len(m["content"])
                enc = tok(full, add_special_tokens=False)
                t = enc.char_to_token(pos)
                if t is not None and enc.token_to_chars(t).start == pos:
                    eot_ids.add(enc["input_ids"][t])
    if len(prompts) != 1:
        raise ChatTemplateError(f"the chat template's assistant header is not one fixed text: {sorted(prompts)}")
    special = set(tok.all_special_ids) | set(tok.added_tokens_decoder)
    if end_of_turn is not None:
        eot_id = tok.convert_tokens_to_ids(end_of_turn)
        if eot_id is None or eot_id == tok.unk_token_id or eot_id not in special:
            raise ChatTemplateError(f"end_of_turn={end_of_turn!r} is not a special token of this tokenizer")
    else:
        if len(eot_ids) != 1 or not eot_ids <= special:
            found = [tok.convert_ids_to_tokens(i) for i in eot_ids]
            raise ChatTemplateError(
                f"could not find one special end-of-turn token after assistant turns (found {found}); "
                "pass end_of_turn=TOKEN"
            )
        eot_id = eot_ids.pop()
    tool_probe = _probes()[2]
    return TemplateInfo(
        generation_prompt=prompts.pop(),
        end_of_turn=tok.convert_ids_to_tokens(eot_id),
        end_of_turn_id=eot_id,
        renders_tool_calls=_renders(tok, tool_probe, "ls probe-dir"),
        renders_tools=_renders(tok, _probes()[0], "probe_tool_name", tools=[PROBE_TOOL]),
    )
