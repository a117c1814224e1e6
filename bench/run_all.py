"""`make bench`: run every benchmark, each writing bench/results/<name>.md, then assemble
BENCHMARKS.md from those sections."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
HEADER = """# Benchmarks

Produced by `make bench` (each section names its own command). Machines here are noisy, so the
figures that matter are ratios measured side by side in one run. Each section is written by its
benchmark into `bench/results/<name>.md`; this file is assembled from them.
"""


def _demote(markdown: str) -> str:
    """Each section's headings one level down, under this file's title."""
    return "\n".join("#" + line if line.startswith("#") else line for line in markdown.splitlines())


def assemble() -> None:
    sections = [_demote(p.read_text().strip()) for p in sorted((BENCH / "results").glob("*.md"))]
    (BENCH.parent / "BENCHMARKS.md").write_text(HEADER + "\n\n" + "\n\n".join(sections) + "\n")


def main() -> None:
    for name in ("build", "label", "train"):
        print(f"== bench.{name}", flush=True)
        subprocess.run([sys.executable, "-m", f"bench.{name}"], cwd=BENCH.parent, check=True)
    assemble()


if __name__ == "__main__":
    main()
