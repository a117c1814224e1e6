"""Read one input file into records: each is either a trajectory or a quarantined row.

Plain Python, no Ray: the ingest job maps `read_file_batches` over the input file list.
Every input row yields exactly one record, so rows in = rows out + rows quarantined.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import io
from pipeline.ingest.normalize import BadRow, from_swe_agent, from_swe_smith
from pipeline.schema import QUARANTINE, TRAJECTORY

SUFFIXES = (".jsonl", ".parquet", ".traj")
EXCERPT_CHARS = 200

# A trajectory row plus the quarantine columns; `ordinal` orders rows within a file so that
# duplicate resolution is deterministic (the first occurrence wins).
RECORD = pa.schema(
    [f.with_nullable(True) for f in TRAJECTORY]
    + [
        pa.field("location", pa.string()),
        pa.field("ordinal", pa.int64()),
        pa.field("quarantine_reason", pa.string()),
        pa.field("quarantine_detail", pa.string()),
        pa.field("excerpt", pa.string()),
    ]
)


def _bad(source: str, location: str, ordinal: int, err: BadRow, excerpt: str) -> dict:
    return {
        "source": source,
        "location": location,
        "ordinal": ordinal,
        "quarantine_reason": err.reason,
        "quarantine_detail": f"{source} {location}: {err.detail}",
        "excerpt": excerpt[:EXCERPT_CHARS],
    }


def _jsonl(uri: str, resolution: dict[str, bool]) -> Iterator[dict]:
    fs, path = io.filesystem(uri)
    with fs.open_input_stream(path) as f:
        for n, raw in enumerate(_lines(f), start=1):
            if not raw.strip():
                continue
            location = f"line {n}"
            excerpt = raw[:EXCERPT_CHARS].decode("utf-8", "replace")
            try:
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise BadRow("invalid_utf8", f"byte {e.start} is not valid UTF-8") from None
                try:
                    row = json.loads(text)
                except json.JSONDecodeError as e:
                    raise BadRow("invalid_json", f"{e.msg} at column {e.colno}") from None
                yield {**from_swe_smith(row, uri, resolution), "location": location, "ordinal": n}
            except BadRow as e:
                yield _bad(uri, location, n, e, excerpt)


def _lines(stream, chunk_size: int = 1 << 20) -> Iterator[bytes]:
    """Split a binary stream on newlines without decoding (bad UTF-8 is judged per line)."""
    pending = b""
    while chunk := stream.read(chunk_size):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        yield from lines
    if pending:
        yield pending


def _parquet(uri: str, resolution: dict[str, bool]) -> Iterator[dict]:
    fs, path = io.filesystem(uri)
    n = 0
    for batch in pq.ParquetFile(fs.open_input_file(path)).iter_batches(batch_size=64):
        for row in batch.to_pylist():
            n += 1
            location = f"row {n - 1}"
            try:
                yield {**from_swe_smith(row, uri, resolution), "location": location, "ordinal": n}
            except BadRow as e:
                yield _bad(uri, location, n, e, json.dumps(row, default=str)[:EXCERPT_CHARS])


def _traj(uri: str, resolution: dict[str, bool]) -> Iterator[dict]:
    raw = io.read_bytes(uri)
    try:
        try:
            doc = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise BadRow("invalid_utf8", f"byte {e.start} is not valid UTF-8") from None
        except json.JSONDecodeError as e:
            raise BadRow("invalid_json", f"{e.msg} at line {e.lineno} column {e.colno}") from None
        yield {**from_swe_agent(doc, uri, resolution), "location": "file", "ordinal": 0}
    except BadRow as e:
        yield _bad(uri, "file", 0, e, raw[:EXCERPT_CHARS].decode("utf-8", "replace"))


def read_file(uri: str, resolution: dict[str, bool]) -> Iterator[dict]:
    if uri.endswith(".jsonl"):
        return _jsonl(uri, resolution)
    if uri.endswith(".parquet"):
        return _parquet(uri, resolution)
    if uri.endswith(".traj"):
        return _traj(uri, resolution)
    raise ValueError(f"{uri}: unsupported input file type (expected one of {', '.join(SUFFIXES)})")


def read_file_batches(uri: str, resolution: dict[str, bool], rows_per_batch: int = 32) -> Iterator[pa.Table]:
    """`read_file` as Arrow tables of RECORD, a few rows at a time to bound memory."""
    batch: list[dict] = []
    for record in read_file(uri, resolution):
        batch.append(record)
        if len(batch) == rows_per_batch:
            yield pa.Table.from_pylist(batch, schema=RECORD)
            batch = []
    if batch:
        yield pa.Table.from_pylist(batch, schema=RECORD)


def trajectories(records: pa.Table) -> pa.Table:
    """The good records as TRAJECTORY rows."""
    good = records.filter(records["quarantine_reason"].is_null())
    return good.select(TRAJECTORY.names).cast(TRAJECTORY)


def quarantined(records: pa.Table) -> pa.Table:
    """The bad records as QUARANTINE rows."""
    bad = records.filter(records["quarantine_reason"].is_valid())
    return pa.table(
        {
            "source": bad["source"],
            "location": bad["location"],
            "reason": bad["quarantine_reason"],
            "detail": bad["quarantine_detail"],
            "excerpt": bad["excerpt"],
        }
    ).cast(QUARANTINE)
