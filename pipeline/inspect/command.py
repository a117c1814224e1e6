"""The mask inspector's command: render one built document's token roles as HTML or text.

    python -m jobs.inspect rows=URI [traj_id=ID] [output=FILE.html] [format=html|text]

Reads the build stage's output (`rows`), finds the document of `traj_id` (default: the first
document with a masked step), recovers every token's role by re-running the mask builder with what
the rows' summary names (see `pipeline.inspect.document`), and writes a self-contained HTML page
(default `inspect-<traj_id>.html`) or prints a terminal rendering. Open the page and hover a red
token for the critic's label, confidence and reason.
"""

from __future__ import annotations

import re
import sys

from pipeline import fsys
from pipeline.cli import pop_print_config, usage_line, wants_help
from pipeline.config import help_text, load_config, to_yaml
from pipeline.inspect.config import InspectConfig
from pipeline.inspect.document import inspect_document
from pipeline.inspect.render import to_html, to_text


def inspect_rows(cfg: InspectConfig) -> dict:
    insp = inspect_document(cfg)
    if cfg.format == "html":
        page = to_html(insp)
        output = cfg.output or f"inspect-{re.sub(r'[^A-Za-z0-9._-]+', '_', insp.traj_id)}.html"
        fsys.write_bytes(output, page.encode("utf-8"))
        print(f"[inspect] wrote {output}", file=sys.stderr)
    else:
        color = cfg.color if cfg.color is not None else sys.stdout.isatty()
        text = to_text(insp, color)
        output = cfg.output
        if output:
            fsys.write_bytes(output, text.encode("utf-8"))
        else:
            sys.stdout.write(text)
    return {
        "traj_id": insp.traj_id,
        "output": output,
        "verified": insp.verified,
        "note": insp.note,
        "tokens": insp.counts(),
        "steps": len(insp.steps),
        "masked_steps": [s.number for s in insp.steps if not s.trained],
    }


def main(argv: list[str]) -> dict | None:
    if wants_help(argv):
        doc = sys.modules[__name__].__doc__ or ""
        print(help_text(InspectConfig, "inspect", usage_line(doc, "inspect"), doc.split("\n", 1)[0]))
        return None
    argv, print_only = pop_print_config(argv)
    cfg = load_config(InspectConfig, "inspect", argv)
    if print_only:
        print(to_yaml(cfg), end="")
        return None
    return inspect_rows(cfg)
