"""Renderings of an `Inspection`: a self-contained HTML page and a terminal view.

HTML: one span per token, coloured by role, with the token's index, id and role in its tooltip; a
masked step's tokens also carry the critic's label, confidence and reason. Every step is its own
block with a numbered heading, and a step map at the top shows every step's state at a glance and
links to it. No script, no external file: the page opens anywhere, offline.

Terminal: ANSI colours (the same roles), or, without colours, a marker before each run of tokens of
one role: ``[prompt]``, ``[context]``, ``[trained]``, ``[MASKED]``.
"""

from __future__ import annotations

import html

from pipeline.inspect.document import ROLES, Inspection

# Background colours by role. MASKED_RGB is also what the screenshot test looks for.
COLOURS = {"prompt": "#cfe0ff", "context": "#e9e9e9", "trained": "#b5ecc2", "masked": "#ff9c9c"}
MASKED_RGB = (0xFF, 0x9C, 0x9C)
LEGEND = {
    "prompt": "prompt (system, tool schemas, task): context, never trained",
    "context": "context: role headers, observations, tool output; never trained",
    "trained": "trained: what the model generated at a kept step (loss mask 1)",
    "masked": "masked mistake step: kept as context, loss mask 0 (hover for label, confidence, reason)",
}

_CSS = """
body { font-family: system-ui, sans-serif; margin: 16px 20px; color: #111; background: #fff; }
h1 { font-size: 18px; margin: 0 0 6px; }
.meta { font-size: 12px; color: #444; margin: 2px 0; }
.note { font-size: 12px; margin: 6px 0; padding: 4px 8px; border-left: 4px solid #999; background: #f6f6f6; }
.note.unverified { border-color: #d08000; background: #fff4e0; }
.legend span, .map a { display: inline-block; margin: 2px 4px 2px 0; padding: 2px 8px; font-size: 12px;
  border-radius: 3px; color: #111; text-decoration: none; }
.map { margin: 8px 0; line-height: 1.9; }
.map a.masked { font-weight: 600; }
table.counts { border-collapse: collapse; font-size: 12px; margin: 6px 0; }
table.counts td, table.counts th { border: 1px solid #ccc; padding: 2px 8px; text-align: right; }
.doc { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 12px; line-height: 1.55;
  white-space: pre-wrap; word-break: break-word; }
.step { border-top: 2px solid #777; margin: 10px 0 0; padding-top: 2px; }
.step > .head { display: block; font-family: system-ui, sans-serif; font-size: 12px; font-weight: 600;
  white-space: normal; margin-bottom: 2px; color: #333; }
.step.is-masked { border-top-color: #c00000; }
.step.is-masked > .head { color: #a00000; }
.t { border-right: 1px solid rgba(0, 0, 0, 0.10); }
""" + "".join(f".{r} {{ background: {c}; }}\n" for r, c in COLOURS.items())


def _span(insp: Inspection, t: int, extra: str) -> str:
    text = insp.tokens[t]
    if not text:
        return ""
    role = insp.roles[t]
    tip = f"token {t} · id {int(insp.ids[t])} · {role}" + (f" · {extra}" if extra else "")
    return f'<span class="t {role}" title="{html.escape(tip)}">{html.escape(text)}</span>'


def _sources(insp: Inspection) -> str:
    """Who labelled the steps (the label rows' critic_model): a critic model or hand-made labels."""
    names = sorted({st.source for st in insp.steps if st.source})
    return f" ({html.escape(', '.join(names))})" if names else ""


def to_html(insp: Inspection) -> str:
    c = insp.counts()
    total = len(insp.ids)
    s = insp.settings
    mask = s.get("mask", {})
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>SRFT mask · {html.escape(insp.traj_id)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>SRFT loss mask of trajectory {html.escape(insp.traj_id)}</h1>",
        (f'<p class="meta">rows {html.escape(insp.rows)} · training row {insp.row}, document {insp.position} · '
         f"recipe {html.escape(str(insp.recipe))} · mask.labels {html.escape(str(mask.get('labels', '?')))} · "
         f"mask.threshold {html.escape(str(mask.get('threshold', '?')))} · model {html.escape(str(insp.model))} · "
         f"labels {html.escape(str(insp.labels))}{_sources(insp)}</p>"),
        f'<p class="note{"" if insp.verified else " unverified"}">{html.escape(insp.note)}</p>',
        '<div class="legend">' + "".join(f'<span class="{r}">{html.escape(LEGEND[r])}</span>' for r in ROLES) + "</div>",
        '<table class="counts"><tr><th></th>' + "".join(f"<th>{r}</th>" for r in ROLES) + "<th>all</th></tr>",
        "<tr><td>tokens</td>" + "".join(f"<td>{c[r]}</td>" for r in ROLES) + f"<td>{total}</td></tr></table>",
    ]
    if insp.steps:
        masked_steps = [st.number for st in insp.steps if not st.trained]
        parts.append(f'<p class="meta">{len(insp.steps)} steps, {len(masked_steps)} masked'
                     + (f" ({', '.join(map(str, masked_steps))})" if masked_steps else "") + "</p>")
        parts.append('<div class="map">' + "".join(
            f'<a class="{"trained" if st.trained else "masked"}" href="#step-{st.number}" '
            f'title="{html.escape(st.describe())}">{st.number}{"" if st.trained else " masked"}</a>'
            for st in insp.steps) + "</div>")
    parts.append('<div class="doc">')
    if insp.steps:
        first = insp.steps[0].header
        parts.append('<div class="step" id="prompt"><span class="head">prompt</span>')
        parts += [_span(insp, t, "") for t in range(first)]
        parts.append("</div>")
        for st in insp.steps:
            cls = "step" + ("" if st.trained else " is-masked")
            parts.append(f'<div class="{cls}" id="step-{st.number}"><span class="head">{html.escape(st.describe())}</span>')
            info = "" if st.trained else st.describe()
            parts += [_span(insp, t, info if st.start <= t < st.end else f"step {st.number}")
                      for t in range(st.header, st.stop)]
            parts.append("</div>")
    else:
        parts.append('<div class="step"><span class="head">document (stored mask only)</span>')
        parts += [_span(insp, t, "") for t in range(len(insp.ids))]
        parts.append("</div>")
    parts.append("</div></body></html>\n")
    return "".join(parts)


_ANSI = {"prompt": "\033[34m", "context": "\033[2m", "trained": "\033[32m", "masked": "\033[97;41m"}
_RESET = "\033[0m"
_MARK = {"prompt": "[prompt]", "context": "[context]", "trained": "[trained]", "masked": "[MASKED]"}


def to_text(insp: Inspection, color: bool) -> str:
    c = insp.counts()
    lines = [
        f"trajectory {insp.traj_id} · row {insp.row} doc {insp.position} · recipe {insp.recipe} · "
        f"{len(insp.ids)} tokens: " + ", ".join(f"{r} {c[r]}" for r in ROLES),
        insp.note,
    ]
    if color:
        lines.append("legend: " + " ".join(f"{_ANSI[r]}{r}{_RESET}" for r in ROLES))
    out = ["\n".join(lines), "\n"]
    sections = [("prompt", 0, insp.steps[0].header if insp.steps else len(insp.ids), None)]
    if insp.steps:
        sections += [(st.describe(), st.header, st.stop, st) for st in insp.steps]
    for title, a, b, _ in sections:
        bar = f"━━ {title} "
        out.append("\n" + (f"\033[1m{bar}{_RESET}" if color else bar) + "\n")
        run_role, run = None, []
        for t in range(a, b):
            role = insp.roles[t]
            if role != run_role and run:
                out.append(_run(run_role, "".join(run), color))
                run = []
            run_role = role
            run.append(insp.tokens[t])
        if run:
            out.append(_run(run_role, "".join(run), color))
    out.append("\n")
    return "".join(out)


def _run(role: str, text: str, color: bool) -> str:
    if color:
        # colour each line separately so that a reset falls before every newline
        return "\n".join(f"{_ANSI[role]}{line}{_RESET}" if line else "" for line in text.split("\n"))
    return f"{_MARK[role]}{text}"
