"""Report: label / mask / training statistics as Markdown (+ HTML) with PNG plots.

    python -m jobs.report trajectories=URI labels=URI output=URI [train_rows=URI] [train_metrics=URI]
        [label_errors=URI] [mask.threshold=0.5] [tokens.tokenizer=PATH]

Output (published atomically under `output`): report.md, report.html, report.json (every number
in the report), plots/*.png and _summary.json. Plain Python: the inputs are read file by file
with only the columns the report needs, so it runs on the driver without Ray workers.
"""

from __future__ import annotations

import json

from pipeline import fsys
from pipeline.commit import Output
from pipeline.manifest import Stage
from pipeline.report.build import make_report
from pipeline.report.config import ReportConfig


def run(cfg: ReportConfig, out: Output) -> dict:
    run_id = out.run_id
    report, files = make_report(cfg, run_id, out.inputs)
    staging = out.uri  # this run's version folder; run_stage commits it
    files["report.json"] = json.dumps(report, indent=1, default=str).encode()
    for name, data in files.items():
        fsys.write_bytes(fsys.join(staging, name), data)
    d, h, s = report["label_distribution"], report["harmful"], report["sweep"]
    summary = {
        "rows_in": d["total_steps"],  # labelled steps read
        "rows_out": len(files) + 1,  # files written
        "trajectories": report["errors"]["coverage"]["trajectories"],
        "labelled_trajectories": report["errors"]["coverage"]["labelled"],
        "label_errors": report["errors"]["num_errors"],
        "harmful_share_failed_runs": h["groups"]["unresolved"]["harmful_share"],
        "fraction_masked_at_threshold": s["fraction_masked_at_current"].get("all"),
        "step_size_unit": s["unit"],
        "skipped_sections": report["skipped"],
        "notes": report["notes"],
        "output": cfg.output,
        "report": fsys.join(cfg.output, "report.md"),
        "files": sorted([*files, "_summary.json"]),
    }
    fsys.write_bytes(fsys.join(staging, "_summary.json"), json.dumps(summary, indent=2).encode())
    return summary


def inputs(cfg: ReportConfig) -> dict[str, str | None]:
    return {"trajectories": cfg.trajectories, "labels": cfg.labels,
            "label_errors": cfg.label_errors or fsys.join(cfg.labels, "_errors"),
            "train_rows": cfg.train_rows, "train_metrics": cfg.train_metrics,
            "reference_labels": cfg.reference.labels, "reference_train_rows": cfg.reference.train_rows}


STAGE = Stage(name="report", config=ReportConfig, run=run, inputs=inputs)
