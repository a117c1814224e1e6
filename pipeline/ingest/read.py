"""Read one input file into records: each is either a trajectory or a quarantined row.

Plain Python, no Ray: the ingest job maps `read_file_batches` over the input file list.

The reader never raises. Every input row yields exactly one record, so rows in = rows out +
rows quarantined, and each quarantined record names its file, its place in it and a reason:

- a row that cannot be decoded, parsed or normalised: one record at ``line N`` (JSONL,
  1-based) or ``row N`` (Parquet, 0-based), whatever the failure (`BadRow` reasons, or
  ``too_deeply_nested`` / ``normalize_failed`` for anything the normaliser did not foresee);
- a file that cannot be read at all (corrupt, truncated or empty Parquet, an unreadable file,
  a name that is not valid Unicode): one record at ``file``;
- a Parquet row group that does not decode: each of its rows not yet read, at ``row N``;
- a file that fails part-way otherwise (an I/O error): the rows read so far are kept and one
  record ``after line N`` / ``after row N`` stands for the rest.

Parquet files are read only in the columns a trajectory uses, so an unrelated column of a type
Python cannot represent (an out-of-range timestamp) does not cost the file; a batch that does not
convert is retried row by row so that only the rows that fail are quarantined.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import fsys, io
from pipeline.ingest.normalize import BadRow, from_swe_agent, from_swe_smith, parse_json
from pipeline.schema import QUARANTINE, TRAJECTORY

SUFFIXES = (".jsonl", ".parquet", ".traj")
EXCERPT_CHARS = 200
DETAIL_CHARS = 500
# The columns of a SWE-smith row that ingest reads; others are never decoded.
ROW_COLUMNS = ("messages", "instance_id", "resolved", "model", "traj_id", "patch", "tools")

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

# A record stands for (the rest of) a file, not for one row, when it is at one of these locations
# for one of these reasons (a .traj document is one row at "file": its bad JSON is a row's failure).
FILE_LOCATIONS = ("file", "after ")
FILE_REASONS = ("unreadable_file", "unreadable_parquet", "read_failed", "undecodable_file_name", "unsupported_suffix")


def _storable(text: str) -> str:
    """`text` with anything UTF-8 cannot hold (lone surrogates) replaced: for details and excerpts."""
    return text.encode("utf-8", "replace").decode("utf-8")


def _bad(source: str, location: str, ordinal: int, err: BadRow, excerpt: str) -> dict:
    source = _storable(source)
    return {
        "source": source,
        "location": location,
        "ordinal": ordinal,
        "quarantine_reason": err.reason,
        "quarantine_detail": _storable(f"{source} {location}: {err.detail}")[:DETAIL_CHARS],
        "excerpt": _storable(excerpt[:EXCERPT_CHARS]),
    }


def _unforeseen(e: Exception) -> BadRow:
    """Any other failure while normalising one row, as a `BadRow`."""
    if isinstance(e, RecursionError):
        return BadRow("too_deeply_nested", "nested too deeply to process")
    return BadRow("normalize_failed", f"{type(e).__name__}: {str(e)[:200]}")


def _record(source: str, location: str, ordinal: int, convert: Callable[[], dict], excerpt: Callable[[], str]):
    """`convert()` as a good record, or a quarantine record if it fails in any way."""
    try:
        return {**convert(), "location": location, "ordinal": ordinal}
    except BadRow as e:
        err = e
    except Exception as e:  # noqa: BLE001 - the shape of one row must never end the file, let alone the stage
        err = _unforeseen(e)
    try:
        text = excerpt()
    except Exception:  # noqa: BLE001 - never let one row or file end the stage
        text = ""
    return _bad(source, location, ordinal, err, text)


def _jsonl(uri: str, resolution: dict[str, bool]) -> Iterator[dict]:
    fs, path = fsys.filesystem(uri)
    with fs.open_input_stream(path) as f:
        for n, raw in enumerate(_lines(f), start=1):
            if not raw.strip():
                continue
            yield _record(
                uri, f"line {n}", n,
                lambda raw=raw: from_swe_smith(parse_json(_decode(raw), "the line"), uri, resolution),
                lambda raw=raw: raw[:EXCERPT_CHARS].decode("utf-8", "replace"),
            )


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadRow("invalid_utf8", f"byte {e.start} is not valid UTF-8") from None


def _lines(stream, chunk_size: int = 1 << 20) -> Iterator[bytes]:
    """Split a binary stream on newlines without decoding (bad UTF-8 is judged per line)."""
    pending = b""
    while chunk := stream.read(chunk_size):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        yield from lines
    if pending:
        yield pending


class _Unreadable:
    """A Parquet row that Arrow could not turn into Python values."""

    def __init__(self, error: Exception):
        self.error = error


def _parquet_rows(batch: pa.RecordBatch) -> list[dict | _Unreadable]:
    try:
        return batch.to_pylist()
    except Exception:  # noqa: BLE001 - never let one row or file end the stage
        rows: list[dict | _Unreadable] = []
        for i in range(batch.num_rows):
            try:
                rows.append(batch.slice(i, 1).to_pylist()[0])
            except Exception as e:  # noqa: BLE001 - never let one row or file end the stage
                rows.append(_Unreadable(e))
        return rows


def _parquet_row(row: dict | _Unreadable, uri: str, resolution: dict[str, bool]) -> dict:
    if isinstance(row, _Unreadable):
        e = row.error
        raise BadRow("unreadable_row", f"a value does not convert ({type(e).__name__}: {str(e)[:160]})")
    return from_swe_smith(row, uri, resolution)


def _parquet(uri: str, resolution: dict[str, bool]) -> Iterator[dict]:
    """Row group by row group: a group that does not decode costs its own rows (each quarantined
    at its place, the count known from the footer), not the rest of the file."""
    fs, path = fsys.filesystem(uri)
    with fs.open_input_file(path) as f:
        parquet = pq.ParquetFile(f)
        columns = [c for c in parquet.schema_arrow.names if c in ROW_COLUMNS]
        n = 0
        for group in range(parquet.num_row_groups):
            end = n + parquet.metadata.row_group(group).num_rows
            try:
                for batch in parquet.iter_batches(batch_size=64, row_groups=[group], columns=columns):
                    for row in _parquet_rows(batch):
                        n += 1
                        yield _record(
                            uri, f"row {n - 1}", n,
                            lambda row=row: _parquet_row(row, uri, resolution),
                            lambda row=row: json.dumps(row, default=str, ensure_ascii=True)[:EXCERPT_CHARS],
                        )
            except Exception as e:  # noqa: BLE001 - never let one row or file end the stage
                err = BadRow("unreadable_parquet", f"row group {group} does not decode "
                                                   f"({type(e).__name__}: {str(e)[:200]})")
                for ordinal in range(n + 1, end + 1):
                    yield _bad(uri, f"row {ordinal - 1}", ordinal, err, "")
            n = end


def _traj(uri: str, resolution: dict[str, bool]) -> Iterator[dict]:
    raw = io.read_bytes(uri)
    yield _record(
        uri, "file", 0,
        lambda: from_swe_agent(parse_json(_decode(raw), "the file"), uri, resolution),
        lambda: raw[:EXCERPT_CHARS].decode("utf-8", "replace"),
    )


_READERS = {".jsonl": _jsonl, ".parquet": _parquet, ".traj": _traj}


def _file_reason(e: Exception, uri: str) -> str:
    if isinstance(e, OSError):
        return "unreadable_file"
    if uri.lower().endswith(".parquet") and isinstance(e, pa.ArrowException):
        return "unreadable_parquet"
    return "read_failed"


def read_file(uri: str, resolution: dict[str, bool]) -> Iterator[dict]:
    """Every record of the file at `uri` (see the module docstring); never raises."""
    suffix = next((s for s in SUFFIXES if uri.lower().endswith(s)), None)
    if _storable(uri) != uri:
        yield _bad(uri, "file", 0, BadRow("undecodable_file_name", "the file name is not valid Unicode"), "")
        return
    if suffix is None:
        yield _bad(uri, "file", 0, BadRow("unsupported_suffix", f"expected one of {', '.join(SUFFIXES)}"), "")
        return
    last: dict[str, Any] | None = None
    try:
        for record in _READERS[suffix](uri, resolution):
            last = record
            yield record
    except Exception as e:  # noqa: BLE001 - the file itself failed: keep what was read, quarantine the rest
        location = "file" if last is None else f"after {last['location']}"
        ordinal = 0 if last is None else last["ordinal"] + 1
        detail = f"{type(e).__name__}: {str(e)[:300]}"
        yield _bad(uri, location, ordinal, BadRow(_file_reason(e, uri), detail), "")


def read_file_batches(uri: str, resolution: dict[str, bool], rows_per_batch: int = 32) -> Iterator[pa.Table]:
    """`read_file` as Arrow tables of RECORD, a few rows at a time to bound memory."""
    batch: list[dict] = []
    for record in read_file(uri, resolution):
        batch.append(record)
        if len(batch) == rows_per_batch:
            yield _to_table(batch)
            batch = []
    if batch:
        yield _to_table(batch)


def _to_table(records: list[dict]) -> pa.Table:
    """RECORD rows; a record Arrow refuses (which normalisation should have caught) is
    quarantined on its own rather than failing the batch."""
    try:
        return pa.Table.from_pylist(records, schema=RECORD)
    except Exception:  # noqa: BLE001 - never let one row or file end the stage
        kept = []
        for r in records:
            try:
                pa.Table.from_pylist([r], schema=RECORD)
                kept.append(r)
            except Exception as e:  # noqa: BLE001 - never let one row or file end the stage
                err = BadRow("unstorable_row", f"{type(e).__name__}: {str(e)[:200]}")
                kept.append(_bad(str(r.get("source")), str(r.get("location")), int(r.get("ordinal") or 0), err, ""))
        return pa.Table.from_pylist(kept, schema=RECORD)


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
