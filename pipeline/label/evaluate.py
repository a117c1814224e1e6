"""Critic quality: predicted step labels against a reference labelling of the same steps.

Both sides are STEP_LABEL-shaped: Parquet shards (or a folder of them) or JSON Lines files with
at least ``traj_id``, ``step`` and ``label`` per line. Steps are matched on (traj_id, step).
A reference step the critic did not label counts as a miss for its true label (predicted
``<none>``), so an errored trajectory lowers recall instead of vanishing from the score.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import fsys, io
from pipeline.schema import LABELS, check_version

NONE = "<none>"


def read_labels(uri: str) -> dict[tuple[str, int], tuple[str, float | None]]:
    """(traj_id, step) -> (label, confidence) from Parquet or JSONL (a file or a folder)."""
    files = io.list_files(uri, (".parquet", ".jsonl", ".json"))
    out: dict[tuple[str, int], tuple[str, float | None]] = {}
    for f in files:
        if f.endswith(".parquet"):
            fs, path = fsys.filesystem(f)
            pf = pq.ParquetFile(path, filesystem=fs)
            check_version(pf.schema_arrow, f)
            cols = [c for c in ("traj_id", "step", "label", "confidence") if c in pf.schema_arrow.names]
            rows = pf.read(columns=cols).to_pylist()
        else:
            rows = []
            for n, line in enumerate(io.read_bytes(f).decode().splitlines(), 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except ValueError as e:
                        raise ValueError(f"{f} line {n}: not JSON ({e})") from None
        for n, r in enumerate(rows, 1):
            missing = [k for k in ("traj_id", "step", "label") if r.get(k) is None]
            if missing:
                raise ValueError(f"{f} row {n}: missing {missing}")
            if r["label"] not in LABELS:
                raise ValueError(f"{f} row {n}: label {r['label']!r} is not one of {', '.join(LABELS)}")
            key = (str(r["traj_id"]), int(r["step"]))
            if key in out:
                raise ValueError(f"{f} row {n}: ({key[0]}, step {key[1]}) labelled twice")
            out[key] = (r["label"], r.get("confidence"))
    return out


def evaluate(pred: dict, ref: dict, min_confidence: float = 0.0) -> dict:
    """Per-label P/R/F1, mistake-F1 headline, accuracy and the confusion matrix
    (rows: reference label, columns: predicted label, plus `<none>` for unlabelled steps).
    With `min_confidence`, a prediction under it counts as `<none>` (what training would trust)."""
    cols = list(LABELS) + [NONE]
    confusion = {r: {c: 0 for c in cols} for r in LABELS}
    ref_trajs = {t for t, _ in ref}
    for key, (true, _) in ref.items():
        p = pred.get(key)
        label = NONE if p is None or (p[1] is not None and p[1] < min_confidence) else p[0]
        confusion[true][label] += 1
    per_label = {}
    for lab in LABELS:
        tp = confusion[lab][lab]
        predicted = sum(confusion[r][lab] for r in LABELS)
        actual = sum(confusion[lab].values())
        p = tp / predicted if predicted else 0.0
        r = tp / actual if actual else 0.0
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        per_label[lab] = {"precision": round(p, 4), "recall": round(r, 4), "f1": round(f1, 4),
                          "support": actual, "predicted": predicted}
    total = len(ref)
    correct = sum(confusion[lab][lab] for lab in LABELS)
    present = [lab for lab in LABELS if per_label[lab]["support"]]
    return {
        "mistake_f1": per_label["mistake"]["f1"],
        "accuracy": round(correct / total, 4) if total else None,
        "macro_f1": round(sum(per_label[lab]["f1"] for lab in present) / len(present), 4) if present else None,
        "reference_steps": total,
        "reference_trajectories": len(ref_trajs),
        "unlabelled_reference_steps": sum(confusion[r][NONE] for r in LABELS),
        "predicted_steps_outside_reference": sum(1 for k in pred if k[0] in ref_trajs and k not in ref),
        "min_confidence": min_confidence,
        "per_label": per_label,
        "confusion": confusion,
    }


def format_report(m: dict) -> str:
    lines = [(f"mistake-F1 {m['mistake_f1']:.3f}  (paper's critic: 0.737)   accuracy {m['accuracy']}  "
              f"macro-F1 {m['macro_f1']}  steps {m['reference_steps']} in {m['reference_trajectories']} trajectories")]
    lines.append(f"{'label':<12}{'P':>8}{'R':>8}{'F1':>8}{'support':>9}")
    for lab, v in m["per_label"].items():
        lines.append(f"{lab:<12}{v['precision']:>8.3f}{v['recall']:>8.3f}{v['f1']:>8.3f}{v['support']:>9}")
    cols = list(LABELS) + [NONE]
    lines.append("confusion (rows: reference, columns: critic)")
    lines.append(" " * 12 + "".join(f"{c:>12}" for c in cols))
    for r in LABELS:
        lines.append(f"{r:<12}" + "".join(f"{m['confusion'][r][c]:>12}" for c in cols))
    return "\n".join(lines)


def as_table(m: dict) -> pa.Table:  # for users who want the numbers as Parquet
    return pa.Table.from_pylist([{"label": k, **v} for k, v in m["per_label"].items()])
