"""One built document and the role of each of its tokens, recovered and checked.

A TRAINING_ROW keeps ids and a 0/1 loss mask, not why a token is untrained. The rows' own
`_summary.json` names what built them (trajectories, labels, model, chat template, recipe, mask
settings, limits), so the inspector re-runs the stage's own steps for one trajectory: the label
selection (`labels.compact`, `index_from_compact`, `select` under the unknown-outcome policy) and
the `MaskBuilder`. It then checks that the rebuilt ids equal the stored ids and the rebuilt mask the
stored mask (the first token of a document is never a target, see `packing.pack_row`). When they
agree, every token's role is known exactly:

- ``prompt``: before the first step's assistant header (system prompt, tool schemas, task);
- ``trained``: a kept step's generated tokens (loss mask 1);
- ``masked``: the generated tokens of a step masked as a mistake (kept as context, loss mask 0);
- ``context``: everything else after the prompt: headers, observations, tool output.

When the trajectory or its labels cannot be found, or the rebuild disagrees (the inputs changed
since the build), the document is still shown from its stored mask alone (trained or not), and the
page says why the finer roles are missing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import fsys, io
from pipeline.build.builder import Built, Conversation, Failed, MaskBuilder
from pipeline.build.config import LABEL_RECIPES
from pipeline.build.labels import LABEL_COLUMNS, Rejection, compact, index_from_compact, select
from pipeline.build.packing import unpack_row
from pipeline.errors import UserError
from pipeline.inspect.config import InspectConfig
from pipeline.outcome import effective_resolved
from pipeline.schema import STEP_LABEL, TRAINING_ROW, TRAJECTORY

ROLES = ("prompt", "context", "trained", "masked")


@dataclass
class Step:
    number: int
    header: int  # token index of the step's assistant header
    start: int  # first token of its generated (trainable) span
    end: int  # one past the span's last token (the end-of-turn token)
    stop: int  # one past the step's last token (its observation included)
    trained: bool
    label: str | None = None
    confidence: float | None = None
    reason: str | None = None
    source: str | None = None  # who labelled it: the label row's critic_model (a model, or hand-made labels)

    def describe(self) -> str:
        state = "trained" if self.trained else "MASKED"
        if self.label is None:
            return f"step {self.number} · {state}"
        why = f": {self.reason}" if self.reason else ""
        by = f" [{self.source}]" if self.source else ""
        return f"step {self.number} · {state} · {self.label} (confidence {self.confidence:.2f}){why}{by}"


@dataclass
class Inspection:
    traj_id: str
    rows: str
    row: int  # index of the training row holding the document
    position: int  # the document's index inside that row
    recipe: str
    ids: np.ndarray
    loss_mask: np.ndarray
    tokens: list[str]  # the text of each token (a multi-byte character is shown at its first token)
    roles: list[str]
    steps: list[Step] = field(default_factory=list)
    verified: bool = False
    note: str = ""  # how the roles were obtained, or why only the stored mask is shown
    model: str = ""
    settings: dict = field(default_factory=dict)
    labels: str | None = None  # the STEP_LABEL folder the build read

    def counts(self) -> dict[str, int]:
        return {r: self.roles.count(r) for r in ROLES}


def read_summary(rows: str) -> dict:
    uri = fsys.join(rows, "_summary.json")
    if not io.exists(uri):
        raise UserError(f"rows={rows!r} has no _summary.json: pass the build stage's output folder")
    return json.loads(io.read_bytes(uri))


def _filtered(uri: str, schema: pa.Schema, traj_id: str, columns: list[str] | None = None) -> pa.Table:
    """The rows of `traj_id` in the Parquet shards under `uri` (row-group filtered, not a full read)."""
    parts = []
    for f in io.list_files(uri, (".parquet",)):
        fs, path = fsys.filesystem(f)
        t = pq.read_table(path, filesystem=fs, columns=columns, filters=[("traj_id", "=", traj_id)])
        if t.num_rows:
            parts.append(t)
    if not parts:
        return (schema.empty_table() if columns is None else schema.empty_table().select(columns))
    return pa.concat_tables(parts, promote_options="permissive")


def find_documents(rows: str) -> list[tuple[int, int, str, int]]:
    """(row index, position in row, traj_id, masked tokens in its row) of every document, in order."""
    out, r = [], 0
    for f in io.list_files(rows, (".parquet",)):
        fs, path = fsys.filesystem(f)
        t = pq.read_table(path, filesystem=fs, columns=["traj_ids", "num_masked_tokens"])
        for ids, masked in zip(t["traj_ids"].to_pylist(), t["num_masked_tokens"].to_pylist()):
            out += [(r, k, tid, masked) for k, tid in enumerate(ids)]
            r += 1
    return out


def stored_document(rows: str, row: int) -> dict:
    """Training row number `row` (counting across the shards in order)."""
    seen = 0
    for f in io.list_files(rows, (".parquet",)):
        fs, path = fsys.filesystem(f)
        n = pq.read_metadata(fs.open_input_file(path)).num_rows
        if row < seen + n:
            return pq.read_table(path, filesystem=fs, schema=TRAINING_ROW).slice(row - seen, 1).to_pylist()[0]
        seen += n
    raise IndexError(row)


def token_texts(tokenizer, ids: np.ndarray) -> list[str]:
    """Each token's text. A character split over several byte-level tokens decodes as U+FFFD one
    token at a time, so such tokens are joined and the text is shown at the first of them."""
    single = tokenizer.batch_decode([[int(i)] for i in ids], clean_up_tokenization_spaces=False)
    out, k = [], 0
    while k < len(single):
        if "\ufffd" not in single[k]:
            out.append(single[k])
            k += 1
            continue
        for n in range(2, 5):
            joined = tokenizer.decode([int(i) for i in ids[k:k + n]], clean_up_tokenization_spaces=False)
            if "\ufffd" not in joined or k + n >= len(ids):
                break
        n = min(n, len(ids) - k)
        out += [joined] + [""] * (n - 1)
        k += n
    return out


def _label_rows(labels: str | None, traj_id: str) -> dict[int, dict]:
    if not labels:
        return {}
    t = _filtered(labels, STEP_LABEL, traj_id,
                  ["traj_id", "step", "label", "confidence", "reason", "critic_model", "run_id"])
    newest: dict[int, dict] = {}
    for r in sorted(t.to_pylist(), key=lambda r: r["run_id"]):  # the newest run wins, as in the build
        newest[r["step"]] = r
    return newest


def _masked_steps(settings: dict, traj: dict, labels: str | None) -> tuple[frozenset[int] | None, str]:
    """The steps the build masked for this trajectory, as the build decided them (or None, why)."""
    recipe, mask = settings["recipe"], settings.get("mask", {})
    index = None
    if recipe in LABEL_RECIPES and labels:
        t = _filtered(labels, STEP_LABEL, traj["traj_id"], LABEL_COLUMNS)
        idx, _ = index_from_compact(compact(t, list(mask.get("labels", ["mistake"])), float(mask.get("threshold", 0.5))))
        index = idx.to_pylist()[0] if idx.num_rows else None
    resolved = effective_resolved(traj["resolved"], settings.get("unknown_outcome", "unresolved"))
    sel = select(recipe, resolved, traj["num_steps"], index, mask.get("unlabeled", "exclude"))
    if isinstance(sel, Rejection):
        return None, f"the build's selection now rejects it ({sel.reason}: {sel.detail})"
    return sel.masked_steps, ""


def _rebuild(settings: dict, model: str, traj: dict, masked: frozenset[int]) -> tuple[Built | Failed, MaskBuilder]:
    """The build stage's MaskBuilder with the rows' settings, on this one trajectory."""
    pack = settings.get("pack", {})
    max_len = settings.get("max_seq_len", 32768)
    if pack.get("enabled", True):
        max_len = min(max_len, pack.get("seq_len", max_len))
    builder = MaskBuilder(
        model,
        chat_template=settings.get("chat_template"),
        end_of_turn=settings.get("end_of_turn"),
        max_len=max_len,
        overlong=settings.get("overlong", "truncate"),
        parse_tool_arguments=settings.get("parse_tool_arguments", True),
    )
    conv = Conversation(traj["traj_id"], traj["messages"], masked, traj.get("tools"))
    return builder.build([conv])[0], builder


def inspect_document(cfg: InspectConfig) -> Inspection:
    summary = read_summary(cfg.rows)
    settings = dict(summary.get("config") or {})
    model = cfg.model or settings.get("model")
    trajectories = cfg.trajectories or settings.get("trajectories")
    labels = cfg.labels or settings.get("labels")
    if not model:
        raise UserError("the rows' summary names no model: pass model=PATH (the student's tokenizer)")
    docs = find_documents(cfg.rows)
    if not docs:
        raise UserError(f"rows={cfg.rows!r} holds no training rows")
    if cfg.traj_id is not None:
        matches = [d for d in docs if d[2] == cfg.traj_id]
        if not matches:
            some = ", ".join(d[2] for d in docs[:5])
            raise UserError(f"traj_id={cfg.traj_id!r} is not in rows={cfg.rows!r} ({len(docs)} documents, e.g. {some})")
        candidates = matches[:1]
    else:  # the first documents of rows with masked tokens, then the first document
        candidates = [d for d in docs if d[3] > 0][:8] or docs[:1]

    result = None
    for row, position, traj_id, _ in candidates:
        result = _inspect_one(cfg.rows, row, position, traj_id, settings, model, trajectories, labels, summary)
        if any(not s.trained for s in result.steps) or cfg.traj_id is not None:
            break
    return result  # type: ignore[return-value]


def _inspect_one(rows, row, position, traj_id, settings, model, trajectories, labels, summary) -> Inspection:
    stored = unpack_row(stored_document(rows, row))[position]
    ids = np.asarray(stored.input_ids, dtype=np.int64)
    mask = np.asarray(stored.loss_mask, dtype=np.int8)
    insp = Inspection(
        traj_id=traj_id, rows=rows, row=row, position=position, recipe=settings.get("recipe", "?"),
        ids=ids, loss_mask=mask, tokens=[], roles=["trained" if m else "context" for m in mask],
        model=model, settings=settings, labels=labels,
    )
    notes = []
    traj = None
    if trajectories:
        try:
            t = _filtered(trajectories, TRAJECTORY, traj_id)
            traj = t.to_pylist()[0] if t.num_rows else None
        except (FileNotFoundError, OSError) as e:
            notes.append(f"trajectories {trajectories!r} unreadable: {e}")
        if traj is None and not notes:
            notes.append(f"trajectory {traj_id} not found in {trajectories!r}")
    else:
        notes.append("the summary names no trajectories (pass trajectories=URI)")
    built, builder = None, None
    if traj is not None:
        masked, why = _masked_steps(settings, traj, labels)
        if masked is None:
            notes.append(why)
        else:
            built, builder = _rebuild(settings, model, traj, masked)
            if isinstance(built, Failed):
                notes.append(f"the rebuild failed ({built.reason}: {built.detail})")
                built = None
            elif not np.array_equal(built.input_ids, ids):
                notes.append("the rebuilt ids differ from the stored ids (the inputs or the model changed since the build)")
                built = None
            elif not np.array_equal(built.loss_mask[1:], mask[1:]):
                notes.append("the rebuilt loss mask differs from the stored one (the labels changed since the build)")
                built = None
    if builder is None:
        builder_tok = MaskBuilder(model, settings.get("chat_template"), settings.get("end_of_turn")).tokenizer
    else:
        builder_tok = builder.tokenizer
    insp.tokens = token_texts(builder_tok, ids)
    if built is None:
        insp.note = "roles from the stored loss mask only (trained / not trained): " + "; ".join(notes)
        return insp

    step_labels = _label_rows(labels, traj_id)
    roles = ["context"] * len(ids)
    headers = list(built.step_headers) + [len(ids)]
    for t in range(headers[0]):
        roles[t] = "prompt"
    for k, (t0, t1, trained) in enumerate(built.step_spans):
        lab = step_labels.get(k, {})
        insp.steps.append(Step(
            number=k, header=headers[k], start=t0, end=t1, stop=headers[k + 1], trained=trained,
            label=lab.get("label"), confidence=lab.get("confidence"), reason=lab.get("reason"),
            source=lab.get("critic_model"),
        ))
        for t in range(t0, t1):
            roles[t] = "trained" if trained else "masked"
    insp.roles = roles
    insp.verified = True
    insp.note = (f"roles recovered by re-running the mask builder ({model}) on trajectory {traj_id}; its ids and "
                 "loss mask equal the stored ones")
    assert all((r == "trained") == bool(m) for r, m in zip(roles[1:], mask[1:]))
    return insp
