"""A real reader for the kill loop: read OUTPUT until STOP_FILE exists, in turn through
`io.read_table` (which follows the commit record) and as a Delta table (its latest version, as any
outside tool reads it); one JSON line per read: the reader, the generations seen and the row count.

    python -m tests.safety.commit_reader OUTPUT LOG STOP_FILE
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections import Counter

from pipeline import io, tables
from tests.safety.commit_writer import SCHEMA


def read_delta(output: str) -> list[str]:
    for attempt in range(3):
        try:
            return tables.read(output)["doc_id"].to_pylist()
        except Exception as e:  # the snapshot's files were collected meanwhile: read again
            if attempt == 2 or "not found" not in str(e).lower():
                raise
    raise AssertionError("unreachable")


def main(output: str, log: str, stop: str) -> None:
    with open(log, "w") as f:
        n = 0
        while not os.path.exists(stop):
            n += 1
            via = "delta" if n % 2 else "pipeline"
            try:
                ids = read_delta(output) if via == "delta" else io.read_table(output, SCHEMA)["doc_id"].to_pylist()
                gens = Counter(i.split("-")[0] for i in ids)
                rec = {"via": via, "gens": dict(gens), "rows": len(ids), "distinct": len(set(ids))}
            except Exception as e:  # noqa: BLE001 -- every failed read is reported to the test
                rec = {"via": via, "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-800:]}
            f.write(json.dumps(rec) + "\n")
            f.flush()


if __name__ == "__main__":
    main(*sys.argv[1:4])
