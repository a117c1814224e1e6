"""Reading the report's inputs through pipeline.io: only the columns it needs, file by file.

Trajectories are streamed (their messages are by far the largest column) and reduced at once
to per-step token counts; training rows are read without their token lists.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import fsys, io
from pipeline.record import Input, uri_of
from pipeline.schema import LABEL_ERROR, STEP_LABEL, TRAINING_ROW, TRAJECTORY, check_version
from pipeline.steps import split_steps

LABEL_COLUMNS = ["traj_id", "step", "label", "confidence", "critic_model", "run_id",
                 "prompt_tokens", "completion_tokens"]
ERROR_COLUMNS = ["traj_id", "reason", "attempts", "critic_model"]
TRAIN_ROW_COLUMNS = ["recipe", "num_tokens", "num_trained_tokens", "num_masked_tokens", "traj_ids"]
METRIC_SUFFIXES = (".jsonl", ".json", ".parquet")


def _open(file_uri: str) -> pq.ParquetFile:
    fs, path = fsys.filesystem(file_uri)
    return pq.ParquetFile(fs.open_input_file(path))


def read_columns(uri: str | Input, schema: pa.Schema, columns: list[str]) -> pa.Table:
    """Every Parquet file under `uri` (which must exist), projected to `columns` of `schema`."""
    target = pa.schema([schema.field(c) for c in columns])
    tables = []
    for f in io.list_files(uri, (".parquet",)):
        pf = _open(f)
        check_version(pf.schema_arrow, f)
        missing = [c for c in columns if c not in pf.schema_arrow.names]
        if missing:
            raise ValueError(f"{f}: not a {schema.metadata[b'srft.table'].decode()} table, "
                             f"columns {missing} are missing")
        tables.append(pf.read(columns=columns).select(columns).cast(target))
    return pa.concat_tables(tables) if tables else target.empty_table()


@dataclass
class StepTokens:
    """Per trajectory: resolution and the size of each step's assistant message."""
    method: str  # "tokenizer" or "chars"
    unit: str  # "tokens" or "characters"
    description: str
    resolved: dict[str, bool | None] = field(default_factory=dict)
    step_sizes: dict[str, list[int]] = field(default_factory=dict)
    num_steps: dict[str, int] = field(default_factory=dict)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
                   "added_tokens.json", "tokenizer.model", "chat_template.jinja", "config.json")


def tokenizer_dir(uri: str) -> str:
    """A local folder with the tokenizer of `uri`: a local path as-is; for s3:// (a whole model
    folder, e.g. the 32B student) only the tokenizer files are fetched, once, into ~/.cache."""
    if "://" not in uri or uri.startswith("file://"):
        return uri.removeprefix("file://")
    import hashlib
    import os
    import posixpath

    import pyarrow.fs as pafs

    dest = os.path.join(os.path.expanduser("~/.cache/srft/tokenizers"), hashlib.sha1(uri.encode()).hexdigest()[:16])
    if not os.path.exists(os.path.join(dest, ".complete")):
        fs, path = fsys.filesystem(uri)
        os.makedirs(dest, exist_ok=True)
        for f in fs.get_file_info(pafs.FileSelector(path)):
            name = posixpath.basename(f.path)
            if f.type == pafs.FileType.File and name in TOKENIZER_FILES:
                fsys.write_bytes(os.path.join(dest, name), io.read_bytes(fsys.join(uri, name)))
        open(os.path.join(dest, ".complete"), "w").close()
    return dest


def _load_tokenizer(cfg):
    """(tokenizer or None, note). `method=tokenizer` fails loudly; `auto` falls back to chars."""
    method = cfg.method
    if method not in ("auto", "tokenizer", "chars"):
        raise ValueError(f"tokens.method must be auto, tokenizer or chars, not {method!r}")
    if method == "chars" or (method == "auto" and not cfg.tokenizer):
        return None, "tokens.tokenizer is not set" if method == "auto" else "tokens.method=chars"
    if not cfg.tokenizer:
        raise ValueError("tokens.method=tokenizer needs tokens.tokenizer (the student's tokenizer folder)")
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(tokenizer_dir(cfg.tokenizer)), ""
    except Exception as e:
        if method == "tokenizer":
            raise ValueError(f"tokens.tokenizer {cfg.tokenizer!r} does not load: {e}") from e
        return None, f"the tokenizer at {cfg.tokenizer!r} did not load ({type(e).__name__})"


def _assistant_text(message: dict) -> str:
    return (message.get("content") or "") + (message.get("tool_calls") or "")


def step_tokens(uri: str | Input, cfg) -> StepTokens:
    """Stream the trajectories and measure each step's assistant message (the step's trained part;
    the observations after it are context)."""
    tok, why_not = _load_tokenizer(cfg)
    if tok is not None:
        out = StepTokens("tokenizer", "tokens",
                         f"student tokenizer `{cfg.tokenizer}` on each assistant message's content + "
                         "tool_calls text (chat-template tokens not counted)")
    else:
        out = StepTokens("chars", "characters",
                         f"characters of each assistant message's content + tool_calls text ({why_not}); "
                         "a proxy for tokens, roughly 3-4 characters per token for code")
    for f in io.list_files(uri, (".parquet",)):
        pf = _open(f)
        check_version(pf.schema_arrow, f)
        for batch in pf.iter_batches(columns=["traj_id", "resolved", "messages"], batch_size=cfg.batch_size):
            rows = batch.to_pylist()
            texts, owners = [], []
            for row in rows:
                _, steps = split_steps(row["messages"])
                tid = row["traj_id"]
                out.resolved[tid] = row["resolved"]
                out.num_steps[tid] = len(steps)
                out.step_sizes[tid] = [0] * len(steps)
                for s in steps:
                    texts.append(_assistant_text(row["messages"][s.assistant]))
                    owners.append((tid, s.index))
            if tok is not None and texts:
                sizes = [len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"]]
            else:
                sizes = [len(t) for t in texts]
            for (tid, k), n in zip(owners, sizes):
                out.step_sizes[tid][k] = n
    return out


def read_metrics(uri: str | Input) -> list[dict]:
    """Per-step training metrics from JSONL / JSON lines / Parquet files under `uri`.
    Rows need `step` and `loss`; other numeric columns are kept."""
    rows: list[dict] = []
    for f in io.list_files(uri, METRIC_SUFFIXES):
        if f.endswith(".parquet"):
            rows.extend(_open(f).read().to_pylist())
            continue
        for n, line in enumerate(io.read_bytes(f).decode().splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{f}: line {n} is not JSON ({e.msg})") from e
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or "step" not in r or "loss" not in r:
            raise ValueError(f"{uri_of(uri)}: metrics row {i} has no `step` and `loss`: {str(r)[:200]}")
    return rows


__all__ = [
    "LABEL_ERROR",
    "STEP_LABEL",
    "TRAINING_ROW",
    "TRAJECTORY",
    "StepTokens",
    "read_columns",
    "read_metrics",
    "step_tokens",
]
