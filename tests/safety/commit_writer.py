"""A real writer for the kill loop: one run_stage of a stage that writes generation GEN of a
document set (FILES Parquet files of ROWS rows, doc ids "g<GEN>-<n>") into OUTPUT and commits.

    python -m tests.safety.commit_writer OUTPUT GEN [FILES] [ROWS]

Prints "started" once imported (the test times its kills from there). Exits 2 when refused
(the output is locked by a killed predecessor whose lock has not expired yet).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import pyarrow as pa

from pipeline import fsys
from pipeline.errors import UserError
from pipeline.manifest import run_stage

SCHEMA = pa.schema([("doc_id", pa.string()), ("payload", pa.string())])


@dataclass
class Cfg:
    output: str
    gen: int
    files: int
    rows: int


def write_generation(cfg: Cfg, out) -> dict:
    n = 0
    for f in range(cfg.files):
        ids = [f"g{cfg.gen}-{n + i}" for i in range(cfg.rows)]
        n += cfg.rows
        table = pa.table({"doc_id": ids, "payload": ["x" * 200] * cfg.rows}, schema=SCHEMA)
        fsys.write_table(table, fsys.join(out.uri, f"part-{f:05d}.parquet"))
    fsys.write_bytes(fsys.join(out.uri, "_summary.json"), b'{"gen": %d}' % cfg.gen)
    return {"rows_in": n, "rows_out": n, "gen": cfg.gen}


def main(output: str, gen: int, files: int = 6, rows: int = 100) -> None:
    print("started", flush=True)
    try:
        run_stage("build", Cfg(output, gen, files, rows), {}, output, write_generation, force=True)
    except UserError as e:
        print(f"refused: {e}", flush=True)
        sys.exit(2)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), *(int(a) for a in sys.argv[3:]))
