"""Token ids and loss masks for whole trajectories, from the student's own chat template.

How a row is built (one batch of conversations at a time):

1. ``input_ids`` *are* ``tokenizer.apply_chat_template(conversations, tools=tools, tokenize=True)``
   (one batched call per distinct tool set): the ids are the reference by construction, so no
   second tokenization is needed to verify them. The same template renders the text
   (``tokenize=False``, a cheap Jinja pass). The trajectory's tool schemas (TRAJECTORY.tools, when
   the source had them) are passed as ``tools=``, so training sees the system prompt that
   inference renders.
2. Each message's content is found, in order, in the rendered text. An assistant turn's trainable
   characters run from the end of the template's generation prompt (the assistant header, learnt
   by `template.probe_template`) through the end-of-turn token: its content, any rendered tool
   calls, and the end-of-turn token, i.e. exactly what the model generated at that step.
3. Character positions map to tokens through the tokenizer's offsets. Per row it is checked that
   the text and the ids agree (the last token ends at the end of the text), that every header falls
   on a token boundary, and that every trainable span ends with the end-of-turn token. When BPE
   merges the header's last character with the content's first ones (Qwen's "\n" + "\n\n"), that
   token is not trained: it holds text the model did not generate (counted as `straddled_steps`).
   Each tool call of an assistant message (its function name and every argument key and value)
   must be rendered inside that message's trainable span: a template that drops `tool_calls`
   (SmolLM2's own does) would otherwise give a conversation without its actions and a mask over
   it. A row failing any check is an error row with the reason; no mask is ever guessed.
4. Truncation keeps the prompt and whole steps (a cut falls just before an assistant header), and
   the kept ids are checked against ``apply_chat_template`` of the kept messages.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from pipeline.build.template import TemplateInfo, load_tokenizer, probe_template


class BadRow(ValueError):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class Conversation:
    traj_id: str
    messages: list[dict]  # TRAJECTORY messages: role, content, tool_calls (JSON text or null)
    masked_steps: frozenset[int] = frozenset()  # steps kept as context only; all others are trained
    tools: str | list | None = None  # TRAJECTORY.tools: JSON text (or list) of tool schemas, or None


@dataclass
class Built:
    traj_id: str
    input_ids: np.ndarray  # int32
    loss_mask: np.ndarray  # int8, 1 = trained
    num_masked_tokens: int  # tokens of masked steps' assistant turns (context only)
    step_spans: list[tuple[int, int, bool]]  # per kept step: token [start, end) of its trainable span, trained?
    step_headers: list[int] = field(default_factory=list)  # per kept step: token index of its assistant header
    truncated_tokens: int = 0
    truncated_steps: int = 0
    straddled_steps: int = 0  # steps whose first content token also held header text (not trained)

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def num_trained_tokens(self) -> int:
        return int(self.loss_mask.sum(dtype=np.int64))


@dataclass
class Failed:
    traj_id: str
    reason: str
    detail: str
    excluded: bool = False  # a policy exclusion (e.g. overlong=drop), not an error


def parse_tools(tools: str | list | None) -> list[dict] | None:
    """TRAJECTORY.tools (JSON text of a list of OpenAI tool schemas) -> the list, or None."""
    if tools is None or tools == "":
        return None
    parsed = json.loads(tools) if isinstance(tools, str) else tools
    if not isinstance(parsed, list) or not all(isinstance(t, dict) for t in parsed):
        raise TypeError("tools is not a JSON list of tool schemas")
    return parsed or None


def _value_forms(value) -> list[list[str]]:
    """The texts that must all appear where a tool-call argument value is rendered, each as a list
    of alternatives (as written, or JSON-escaped as `tojson` writes it). Nested values are checked
    leaf by leaf, since templates lay out objects differently; empty strings are not checked."""
    if isinstance(value, dict):
        return [f for k, v in value.items() for f in _value_forms(str(k)) + _value_forms(v)]
    if isinstance(value, list):
        return [f for v in value for f in _value_forms(v)]
    if isinstance(value, str):
        if not value:
            return []
        once = json.dumps(value, ensure_ascii=False)[1:-1]
        twice = json.dumps(once, ensure_ascii=False)[1:-1]  # arguments left as JSON text, then `tojson`
        return [list(dict.fromkeys([value, once, json.dumps(value)[1:-1], twice]))]
    if isinstance(value, bool):
        return [["true", "True"] if value else ["false", "False"]]
    if value is None:
        return [["null", "None"]]
    return [list(dict.fromkeys([json.dumps(value), str(value)]))]


def call_forms(call: dict) -> tuple[str, list[list[str]]]:
    """(function name, the texts that must appear where one tool call is rendered)."""
    f = call.get("function", call) if isinstance(call, dict) else {}
    f = f if isinstance(f, dict) else {}
    name = str(f.get("name") or "")
    args = f.get("arguments")
    forms = _value_forms(name)
    if isinstance(args, str):
        try:  # unparsed JSON text: its keys and values, wherever the template puts them
            forms += _value_forms(json.loads(args))
        except json.JSONDecodeError:
            forms += _value_forms(args)
    elif args is not None:
        forms += _value_forms(args)
    return name, forms


def to_chat(messages: list[dict], parse_tool_arguments: bool = True) -> list[dict]:
    """TRAJECTORY messages -> chat-template messages (tool_calls parsed back into a list of dicts;
    with `parse_tool_arguments`, a function's JSON-text arguments become an object, which is what
    chat templates render as the call the model emits)."""
    chat = []
    for m in messages:
        d = {"role": m["role"], "content": m["content"]}
        if m.get("tool_calls"):
            calls = json.loads(m["tool_calls"])
            if parse_tool_arguments:
                for c in calls:
                    f = c.get("function") if isinstance(c, dict) else None
                    if isinstance(f, dict) and isinstance(f.get("arguments"), str):
                        try:
                            args = json.loads(f["arguments"])
                        except json.JSONDecodeError:
                            continue
                        if isinstance(args, dict):
                            f["arguments"] = args
            d["tool_calls"] = calls
        chat.append(d)
    return chat


@dataclass
class MaskBuilder:
    model: str
    chat_template: str | None = None
    end_of_turn: str | None = None
    max_len: int = 32768
    overlong: str = "truncate"  # truncate | drop
    parse_tool_arguments: bool = True
    tokenizer: object = field(init=False, repr=False)
    info: TemplateInfo = field(init=False)

    def __post_init__(self):
        self.tokenizer = load_tokenizer(self.model, self.chat_template)
        self.info = probe_template(self.tokenizer, self.end_of_turn)

    @property
    def template_source(self) -> str:
        """Where the chat template came from, for messages."""
        return self.chat_template or f"of model {self.model}"

    # -- rendering ------------------------------------------------------------------------------
    def _render(self, chats: list[list[dict]], tools: list[dict] | None = None):
        tok = self.tokenizer
        texts = tok.apply_chat_template(chats, tools=tools, tokenize=False)
        enc = tok.apply_chat_template(chats, tools=tools, tokenize=True, return_dict=True)
        return texts, enc

    def build(self, convs: list[Conversation]) -> list[Built | Failed]:
        out: list[Built | Failed | None] = [None] * len(convs)
        groups: dict[str | None, list[tuple[int, list[dict], list[dict] | None]]] = {}
        for i, c in enumerate(convs):
            try:
                tools = parse_tools(c.tools)
            except (json.JSONDecodeError, TypeError) as e:
                out[i] = Failed(c.traj_id, "bad_tools", f"tools is not a JSON list of tool schemas: {e}"[:500])
                continue
            try:
                chat = to_chat(c.messages, self.parse_tool_arguments)
            except (json.JSONDecodeError, TypeError, AttributeError) as e:
                out[i] = Failed(c.traj_id, "bad_tool_calls", f"tool_calls is not a JSON list of calls: {e}")
                continue
            # One batched render per distinct tool set (a data set usually has one).
            key = json.dumps(tools) if tools else None  # key order too: it is rendered
            groups.setdefault(key, []).append((i, chat, tools))
        for members in groups.values():
            self._build_group(convs, members, out)
        return out  # type: ignore[return-value]

    def _build_group(self, convs: list[Conversation], members: list, out: list) -> None:
        tools = members[0][2]
        try:
            texts, enc = self._render([chat for _, chat, _ in members], tools)
        except Exception:  # noqa: BLE001 - isolate the row the template refuses
            if len(members) == 1:
                import traceback

                err = traceback.format_exc(limit=1).strip().splitlines()[-1]
                out[members[0][0]] = Failed(convs[members[0][0]].traj_id, "template_error", err[:500])
                return
            for m in members:
                self._build_group(convs, [m], out)
            return
        for b, (i, chat, _) in enumerate(members):
            try:
                out[i] = self._one(convs[i], chat, texts[b], enc, b, tools)
            except BadRow as e:
                out[i] = Failed(convs[i].traj_id, e.reason, e.detail)
            except Exception as e:  # noqa: BLE001 - one bad row must not stop the stage; counted by reason
                out[i] = Failed(convs[i].traj_id, "build_failed", f"{type(e).__name__}: {e}"[:500])

    # -- one row --------------------------------------------------------------------------------
    def _spans(self, chat: list[dict], text: str) -> list[tuple[int, int, int]]:
        """Per assistant message: (header char, trainable start char, trainable end char)."""
        g, eot = self.info.generation_prompt, self.info.end_of_turn
        cursor, spans = 0, []
        for j, m in enumerate(chat):
            content = m.get("content") or ""
            if m["role"] == "assistant":
                a = text.find(g, cursor)
                if a < 0:
                    raise BadRow("assistant_header_not_found", f"message {j}: no {g!r} after char {cursor}")
                start = end_content = a + len(g)
                if content:
                    p = text.find(content, start)
                    e = text.find(eot, start)
                    if p < 0 or (0 <= e < p):
                        raise BadRow(
                            "content_not_verbatim",
                            f"message {j} (assistant): its content is not rendered verbatim in its turn",
                        )
                    end_content = p + len(content)
                e = text.find(eot, end_content)
                if e < 0:
                    raise BadRow("end_of_turn_not_found", f"message {j}: no {eot!r} after its content")
                self._check_calls(j, m, text[start:e])
                spans.append((a, start, e + len(eot)))
                cursor = e + len(eot)
            elif content:
                p = text.find(content, cursor)
                if p < 0:
                    raise BadRow(
                        "content_not_verbatim",
                        f"message {j} ({m['role']}): its content is not rendered verbatim after char {cursor}",
                    )
                cursor = p + len(content)
        return spans

    def _check_calls(self, j: int, message: dict, turn: str) -> None:
        """Every tool call of assistant message `j` is rendered in its turn (the actions are data)."""
        for c, call in enumerate(message.get("tool_calls") or []):
            name, forms = call_forms(call)
            missing = next((alts[0] for alts in forms if not any(a in turn for a in alts)), None)
            if missing is not None:
                raise BadRow(
                    "tool_calls_not_rendered",
                    f"message {j}: tool call {c} ({name!r}) is not rendered in its turn ({missing[:60]!r} is "
                    f"missing); the chat template {self.template_source} drops tool_calls, which would train a "
                    "conversation without its actions. Pass chat_template=FILE.jinja with a template that renders "
                    "tool_calls (e.g. conf/chat_templates/qwen2_5.jinja)",
                )

    def _one(
        self, conv: Conversation, chat: list[dict], text: str, enc, b: int, tools: list[dict] | None = None
    ) -> Built | Failed:
        ids = enc["input_ids"][b]
        n = len(ids)
        encoding = enc.encodings[b]  # the Rust Encoding: offsets without Python wrappers
        if n == 0 or encoding.token_to_chars(n - 1)[1] != len(text):
            raise BadRow("render_mismatch", "the rendered text and the template's token ids disagree")
        spans = self._spans(chat, text)

        def token_at(char: int, what: str) -> int:
            t = encoding.char_to_token(char)
            if t is None or encoding.token_to_chars(t)[0] != char:
                raise BadRow(
                    "span_boundary_splits_token",
                    f"{what} at char {char} falls inside a token ({text[max(0, char - 10):char + 10]!r})",
                )
            return t

        headers, steps, straddled = [], [], 0
        eot_id = self.info.end_of_turn_id
        for k, (a, s, e) in enumerate(spans):
            headers.append(token_at(a, f"step {k} header"))
            # BPE may merge the template's last header character with the content's first ones
            # (Qwen: "assistant\n" + "\n\n<function=" gives one "\n\n\n" token). That token holds
            # text the model did not generate, so training starts at the next token.
            t0 = encoding.char_to_token(s) if s < len(text) else None
            if t0 is None:
                raise BadRow("span_boundary_splits_token", f"step {k} starts past the text")
            if encoding.token_to_chars(t0)[0] < s:
                t0 += 1
                straddled += 1
            t1 = encoding.char_to_token(e - 1)
            if t1 is None or ids[t1] != eot_id or encoding.token_to_chars(t1)[1] != e:
                raise BadRow("end_of_turn_not_a_token", f"step {k} does not end with the end-of-turn token")
            t1 += 1
            if t0 >= t1:
                raise BadRow("span_boundary_splits_token", f"step {k}: no whole token between header and end")
            steps.append((t0, t1, k not in conv.masked_steps))

        input_ids = np.asarray(ids, dtype=np.int32)
        truncated_tokens = truncated_steps = 0
        if n > self.max_len:
            if self.overlong == "drop":
                return Failed(conv.traj_id, "overlong", f"{n} tokens > max {self.max_len}", excluded=True)
            keep = max((k for k in range(1, len(headers)) if headers[k] <= self.max_len), default=None)
            if keep is None:
                return Failed(
                    conv.traj_id,
                    "overlong_no_whole_step",
                    f"{n} tokens; the prompt and first step alone exceed max {self.max_len}",
                    excluded=True,
                )
            cut = headers[keep]
            kept_messages = [i for i, m in enumerate(chat) if m["role"] == "assistant"][keep]
            reference = self.tokenizer.apply_chat_template(
                chat[:kept_messages], tools=tools, tokenize=True, return_dict=True
            )["input_ids"]
            if list(reference) != ids[:cut]:
                raise BadRow("truncation_mismatch", f"the ids kept up to step {keep} differ from the render of those messages")
            input_ids = input_ids[:cut]
            truncated_tokens, truncated_steps = n - cut, len(steps) - keep
            steps, headers = steps[:keep], headers[:keep]
        loss_mask = np.zeros(input_ids.shape[0], dtype=np.int8)
        masked = 0
        for t0, t1, trained in steps:
            if trained:
                loss_mask[t0:t1] = 1
            else:
                masked += t1 - t0
        return Built(
            traj_id=conv.traj_id,
            input_ids=input_ids,
            loss_mask=loss_mask,
            num_masked_tokens=masked,
            step_spans=steps,
            step_headers=headers,
            truncated_tokens=truncated_tokens,
            truncated_steps=truncated_steps,
            straddled_steps=straddled,
        )
