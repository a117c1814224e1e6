"""A real writer for the lock tests: run a stage into OUTPUT through run_stage, say "held", and
finish (commit) when a line arrives on stdin (or after SECONDS).

    python -m tests.safety.hold_output OUTPUT SECONDS
"""

from __future__ import annotations

import select
import sys
import time
from dataclasses import dataclass

from pipeline import fsys
from pipeline.errors import UserError
from pipeline.manifest import run_stage


@dataclass
class Cfg:
    output: str


def main(output: str, seconds: float) -> None:
    def fn(cfg, out):
        fsys.write_bytes(fsys.join(out.uri, "part-0.txt"), b"written while holding the lock")
        print("held", flush=True)
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:  # a line on stdin ends the hold; EOF does not
            if select.select([sys.stdin], [], [], left)[0]:
                if sys.stdin.readline():
                    break
                time.sleep(max(0.0, deadline - time.monotonic()))
        return {"rows_in": 1, "rows_out": 1}

    try:
        run_stage("hold", Cfg(output), {}, output, fn, force=True)
    except UserError as e:
        print(f"refused: {e}", flush=True)
        sys.exit(2)
    print("committed", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]))
