"""Critic quality against a hand-labelled reference.

    python -m jobs.eval_critic labels=URI reference=URI [output=URI] [min_confidence=0.0]

Prints per-label precision/recall/F1, mistake-F1 (the headline; the SRFT paper's critic gets
0.737) and the confusion matrix; with `output`, also writes them as JSON.
"""

from __future__ import annotations

import json

from pipeline import fsys
from pipeline.config import load_config
from pipeline.label.config import EvalCriticConfig
from pipeline.label.evaluate import evaluate, format_report, read_labels


def run(cfg: EvalCriticConfig) -> dict:
    ref = read_labels(cfg.reference)
    if not ref:
        raise ValueError(f"reference {cfg.reference!r} holds no labels")
    pred = read_labels(cfg.labels)
    metrics = evaluate(pred, ref, cfg.min_confidence)
    metrics["labels"] = cfg.labels
    metrics["reference"] = cfg.reference
    metrics["rows_in"] = len(pred)
    if cfg.output:
        fsys.write_bytes(cfg.output, json.dumps(metrics, indent=2).encode())
    return metrics


def main(argv: list[str]) -> dict:
    cfg = load_config(EvalCriticConfig, "eval_critic", argv)
    metrics = run(cfg)
    print(format_report(metrics))
    return metrics
