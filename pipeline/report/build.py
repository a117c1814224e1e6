"""Gather the inputs, compute the numbers, draw the plots: everything but writing the files."""

from __future__ import annotations

import time

from pipeline import fsys, io
from pipeline.config import redacted
from pipeline.errors import InputNotFound, UserError
from pipeline.record import Input
from pipeline.report import load, plots, render, stats
from pipeline.report.config import ReportConfig
from pipeline.schema import LABEL_ERROR, STEP_LABEL, TRAINING_ROW


def _optional(src: Input, what: str) -> tuple[bool, str]:
    if not src.uri:
        return False, f"no `{what}` URI was given"
    if not io.exists(src):
        return False, f"`{what}` = `{src.uri}` does not exist (has that stage run?)"
    return True, ""


def _inspector_page(train_rows: str, notes: dict) -> tuple[bytes | None, dict | None]:
    """The mask inspector's page for the first built document with a masked step, so a reader of
    the report sees the masks token by token (`python -m jobs.inspect` renders any other one).
    An appendix: when the rows cannot be re-derived (the model moved, say), the report says why."""
    from pipeline.inspect.config import InspectConfig
    from pipeline.inspect.document import inspect_document
    from pipeline.inspect.render import to_html

    try:
        insp = inspect_document(InspectConfig(rows=train_rows))
    except (UserError, OSError, ValueError) as e:
        notes["inspector"] = f"mask inspector page not written: {e}"
        return None, None
    masked = [s.number for s in insp.steps if not s.trained]
    return to_html(insp).encode("utf-8"), {"traj_id": insp.traj_id, "masked_steps": masked,
                                           "steps": len(insp.steps), "verified": insp.verified}


def _reference_build(cfg: ReportConfig, src: dict[str, Input], inputs: dict, notes: dict) -> dict | None:
    """The build made with `cfg.reference` labels: its label counts and tokens per recipe."""
    ref = cfg.reference
    if not ref.train_rows:
        return None
    for key in ("labels", "train_rows"):
        uri = getattr(ref, key)
        ok = bool(uri) and io.exists(src[f"reference_{key}"])
        inputs[f"reference_{key}"] = {"uri": uri, "status": f"read ({ref.name})" if ok else "missing"}
        if not ok:
            notes["reference"] = f"`reference.{key}` = `{uri}` does not exist: no build with {ref.name}"
            return None
    labels = load.read_columns(src["reference_labels"], STEP_LABEL, load.LABEL_COLUMNS)["label"].to_pylist()
    return {"name": ref.name, "labels": ref.labels, "train_rows": ref.train_rows,
            "label_counts": {lab: labels.count(lab) for lab in stats.LABELS},
            "recipes": stats.recipe_tokens(load.read_columns(src["reference_train_rows"], TRAINING_ROW,
                                                             load.TRAIN_ROW_COLUMNS))}


def make_report(cfg: ReportConfig, run_id: str, src: dict[str, Input]) -> tuple[dict, dict[str, bytes]]:
    """Return (the report's numbers, {relative file name: bytes}) for `cfg`, reading the inputs
    `src` that run_stage located and fingerprinted (`inputs` in stage.py names them). The mask
    inspector's appendix page is the exception: it re-derives one document from `train_rows` by
    URI, as `jobs.inspect` does."""
    for name in ("trajectories", "labels"):  # required: fail at once, naming the input
        uri = getattr(cfg, name)
        if not io.exists(src[name]):
            raise InputNotFound(f"{name}={uri}: no such input (has that stage run?)")
    unknown = set(cfg.mask.labels) - set(stats.LABELS)
    if unknown:
        raise UserError(f"mask.labels={sorted(unknown)} are not labels (labels are {', '.join(stats.LABELS)})")
    errors_uri = cfg.label_errors or fsys.join(cfg.labels, "_errors")
    inputs = {"trajectories": {"uri": cfg.trajectories, "status": "read"},
              "labels": {"uri": cfg.labels, "status": "read"}}
    notes: dict[str, str] = {}
    skipped: list[str] = []

    tokens = load.step_tokens(src["trajectories"], cfg.tokens)
    label_rows, duplicates = stats.dedupe_labels(
        load.read_columns(src["labels"], STEP_LABEL, load.LABEL_COLUMNS))
    if io.exists(src["label_errors"]):
        errors = load.read_columns(src["label_errors"], LABEL_ERROR, load.ERROR_COLUMNS)
        inputs["label_errors"] = {"uri": errors_uri, "status": f"read ({errors.num_rows} rows)"}
    else:
        errors = LABEL_ERROR.empty_table().select(load.ERROR_COLUMNS)
        inputs["label_errors"] = {"uri": errors_uri, "status": "absent (no critic errors recorded)"}
        notes["errors"] = f"No critic error table at `{errors_uri}`: no critic errors were recorded."

    report: dict = {
        "run_id": run_id,
        "generated_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "config": redacted(cfg),
        "inputs": inputs,
        "notes": notes,
        "skipped": skipped,
        "duplicate_labels": duplicates,
    }
    report["label_distribution"] = stats.label_distribution(
        label_rows, tokens.resolved, cfg.max_trajectories_plotted)
    report["harmful"] = stats.harmful_share(
        label_rows, tokens.resolved, list(cfg.harmful_labels), cfg.mask.threshold, cfg.paper_harmful_share)
    report["confidence"] = stats.confidence_histogram(label_rows)
    report["sweep"] = stats.threshold_sweep(
        label_rows, tokens, sorted(cfg.mask.sweep), list(cfg.mask.labels), cfg.mask.threshold)
    labelled = {r["traj_id"] for r in label_rows}
    report["errors"] = stats.critic_errors(errors, labelled, set(tokens.step_sizes))
    report["critic_usage"] = stats.critic_usage(label_rows)

    ok, why = _optional(src["train_rows"], "train_rows")
    inputs["train_rows"] = {"uri": cfg.train_rows, "status": "read" if ok else "missing"}
    report["recipes"] = None
    if ok:
        report["recipes"] = stats.recipe_tokens(
            load.read_columns(src["train_rows"], TRAINING_ROW, load.TRAIN_ROW_COLUMNS))
    else:
        notes["recipes"], _ = why, skipped.append("tokens per recipe")

    ok, why = _optional(src["train_metrics"], "train_metrics")
    inputs["train_metrics"] = {"uri": cfg.train_metrics, "status": "read" if ok else "missing"}
    report["loss"] = None
    if ok:
        metrics = load.read_metrics(src["train_metrics"])
        if metrics:
            report["loss"] = stats.loss_curve(metrics)
        else:
            notes["loss"] = f"`train_metrics` = `{cfg.train_metrics}` holds no metric rows"
    else:
        notes["loss"] = why
    if report["loss"] is None:
        skipped.append("training loss")

    files = {
        "plots/label_distribution.png": plots.label_distribution(report["label_distribution"]),
        "plots/harmful_share.png": plots.harmful_share(report["harmful"]),
        "plots/confidence_histogram.png": plots.confidence_histogram(report["confidence"], cfg.mask.threshold),
        "plots/threshold_sweep.png": plots.threshold_sweep(report["sweep"], report["recipes"]),
    }
    report["reference"] = _reference_build(cfg, src, inputs, notes)
    report["inspector"] = None
    if report["recipes"] and cfg.inspect:
        page, report["inspector"] = _inspector_page(cfg.train_rows, notes)
        if report["inspector"]:
            report["inspector"]["labels_from"] = "the critic"
        if report["reference"] and (page is None or not report["inspector"]["masked_steps"]):
            # the critic's build masks nothing (the demo's tiny critic): show the reference build's masks
            ref_page, ref_insp = _inspector_page(cfg.reference.train_rows, notes)
            if ref_insp and ref_insp["masked_steps"]:
                critic_masked = report["inspector"]["masked_steps"] if report["inspector"] else None
                page, report["inspector"] = ref_page, {**ref_insp, "labels_from": cfg.reference.name,
                                                       "critic_build_masked_steps": critic_masked}
        if page:
            files["inspect.html"] = page
    if report["recipes"]:
        files["plots/recipe_tokens.png"] = plots.recipe_tokens(report["recipes"])
    if report["loss"]:
        files["plots/loss_curve.png"] = plots.loss_curve(report["loss"])
    if report["errors"]["num_errors"]:
        files["plots/critic_errors.png"] = plots.critic_errors(report["errors"])
    md = render.markdown(report)
    files["report.md"] = md.encode()
    if cfg.html:
        page = render.html(md, cfg.title)
        if page is None:
            notes["html"] = "report.html not written: markdown-it-py is not installed"
        else:
            files["report.html"] = page.encode()
    return report, files
