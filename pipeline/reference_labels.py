"""Hand-made step labels (JSONL) as a STEP_LABEL table, so the build stage can build with them.

The demo's critic (SmolLM2-135M) labels no step `mistake`, so its build masks nothing. The pipeline
driver therefore also builds with the sample's hand-made reference labels
(`conf/sample/reference_labels/`), and the report shows that build next to the critic's, named as
what it is: its `critic_model` column says "reference labels (hand-made)", and the inspector shows
that name beside each masked step. The critic is never faked: its own labels and build are untouched.

Input rows: `{"traj_id", "step", "label", "confidence", "reason"}` (confidence defaults to 1.0).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pyarrow as pa

from pipeline import fsys, io, record
from pipeline.commit import Output
from pipeline.errors import InputNotFound, UserError
from pipeline.manifest import Stage
from pipeline.schema import LABELS, STEP_LABEL

SOURCE = "reference labels (hand-made)"


@dataclass
class ReferenceLabelsConfig:
    input: str | None = None  # a JSONL file or a folder of them; None: no reference build
    output: str | None = None  # the STEP_LABEL folder written from it
    train_rows: str | None = None  # where the driver builds with them (the build stage's output)
    name: str = SOURCE  # written as `critic_model`: where the labels came from, in the report and inspector
    allow_empty: bool = False


def read_reference(source: str | record.Input, name: str) -> pa.Table:
    """The JSONL rows under `source` (a URI, or the input as run_stage located it) as STEP_LABEL;
    a bad row is a UserError naming its file and line."""
    uri = record.uri_of(source)
    try:
        files = io.list_files(source, (".jsonl",))
    except FileNotFoundError:  # InputNotFound included
        raise InputNotFound(f"reference_labels.input={uri}: no such file or folder") from None
    rows = []
    for f in files:
        for n, line in enumerate(io.read_bytes(f).decode().splitlines(), 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
                row = {"traj_id": str(r["traj_id"]), "step": int(r["step"]), "label": r["label"],
                       "confidence": float(r.get("confidence", 1.0)), "reason": r.get("reason")}
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise UserError(f"{f}: line {n} is not a reference label ({type(e).__name__}: {e})") from None
            if row["label"] not in LABELS or not 0.0 <= row["confidence"] <= 1.0:
                raise UserError(f"{f}: line {n}: label {row['label']!r} / confidence {row['confidence']} "
                                f"(labels are {', '.join(LABELS)}; confidence in [0, 1])")
            rows.append(row)
    n = len(rows)
    columns = {key: [r[key] for r in rows] for key in ("traj_id", "step", "label", "confidence", "reason")}
    columns.update(critic_model=[name] * n, prompt_version=["hand-made"] * n, num_samples=[1] * n,
                   run_id=["reference"] * n, prompt_tokens=[None] * n, completion_tokens=[None] * n)
    return pa.Table.from_pydict(columns, schema=STEP_LABEL)


def run(cfg: ReferenceLabelsConfig, out: Output) -> dict:
    table = read_reference(out.inputs["input"], cfg.name)
    fsys.write_table(table, fsys.join(out.uri, "part-0.parquet"))
    counts = {lab: table["label"].to_pylist().count(lab) for lab in LABELS}
    summary = {"rows_in": table.num_rows, "rows_out": table.num_rows, "source": cfg.name,
               "trajectories": len(set(table["traj_id"].to_pylist())), "labels": counts}
    fsys.write_bytes(fsys.join(out.uri, "_summary.json"), json.dumps(summary, indent=2).encode())
    return summary


STAGE = Stage(name="reference_labels", config=ReferenceLabelsConfig, run=run,
              inputs=lambda cfg: {"input": cfg.input})
