"""The report as Markdown (and HTML via markdown-it-py when it is installed)."""

from __future__ import annotations

import html as _html


def pct(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None else f"{x * 100:.{digits}f}%"


def _table(header: list[str], rows: list[list]) -> list[str]:
    def cell(v):
        return str(v).replace("|", "\\|").replace("\n", " ")
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    out += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return out + [""]


def _img(name: str, alt: str) -> list[str]:
    return [f"![{alt}](plots/{name})", ""]


def _skipped(note: str) -> list[str]:
    return [f"> **Section skipped:** {note}", ""]


def markdown(r: dict) -> str:
    cfg = r["config"]
    L: list[str] = [f"# {cfg['title']}", "", f"Generated {r['generated_at']} (run `{r['run_id']}`).", ""]
    L += ["## Inputs", ""]
    L += _table(["input", "URI", "status"], [[k, f"`{v['uri']}`" if v["uri"] else "—", v["status"]]
                                             for k, v in r["inputs"].items()])

    d, h, s = r["label_distribution"], r["harmful"], r["sweep"]
    fail = h["groups"]["unresolved"]
    L += ["## Summary", ""]
    L += [f"- {d['total_steps']} labelled steps in {d['num_trajectories']} trajectories; "
          + ", ".join(f"{lab} {pct(d['shares'][lab])}" for lab in d["labels"]) + "."]
    if fail["steps"]:
        verdict = "within" if h["failed_runs_within_paper_bound"] else "above"
        L += [(f"- Failed runs: {pct(fail['harmful_share'])} of steps harmful, {pct(fail['fine_share'])} fine "
              f"({verdict} the paper's ≤{pct(h['paper_harmful_share'], 0)} harmful / "
              f"{pct(1 - h['paper_harmful_share'], 0)} fine).")]
    else:
        L += ["- No failed (unresolved) runs among the labelled trajectories."]
    if s["fraction_masked_at_current"].get("all") is not None:
        L += [(f"- At mask.threshold = {s['current_threshold']:g}, {pct(s['fraction_masked_at_current']['all'])} "
              f"of trainable {s['unit']} are masked.")]
    L += [f"- Skipped sections: {', '.join(r['skipped']) if r['skipped'] else 'none'}.", ""]

    # 1. labels
    L += ["## Label distribution", ""]
    L += _table(["label", "steps", "share"], [[lab, d["counts"][lab], pct(d["shares"][lab])] for lab in d["labels"]]
                + [["**total**", d["total_steps"], pct(1.0 if d["total_steps"] else None)]])
    L += _img("label_distribution.png", "label distribution overall and per trajectory")
    L += [f"Per trajectory ({d['trajectories_shown']} of {d['num_trajectories']}, most steps first):", ""]
    L += _table(["traj_id", "resolved", "steps", *d["labels"]],
                [[f"`{t['traj_id']}`", {True: "yes", False: "no", None: "unknown"}[t["resolved"]], t["steps"],
                  *[t[lab] for lab in d["labels"]]] for t in d["trajectories"]])

    # 2. harmful share
    L += ["## Harmful steps in failed runs", ""]
    L += [(f"Harmful = label in {{{', '.join(h['harmful_labels'])}}}; fine = every other label. The SRFT paper "
          f"found at most {pct(h['paper_harmful_share'], 0)} of the steps of failed runs harmful and "
          f"{pct(1 - h['paper_harmful_share'], 0)} fine: most of a failed trajectory is still worth training on."), ""]
    names = {"unresolved": "failed (unresolved)", "resolved": "resolved", "unknown": "resolution unknown",
             "all": "all"}
    L += _table(["runs", "trajectories", "steps", "harmful", "harmful share", "fine share",
                 f"harmful with confidence ≥ {h['threshold']:g}", "mean per-trajectory harmful share"],
                [[names[g], v["trajectories"], v["steps"], v["harmful_steps"], pct(v["harmful_share"]),
                  pct(v["fine_share"]), pct(v["harmful_share_above_threshold"]),
                  pct(v["mean_trajectory_harmful_share"])] for g, v in h["groups"].items() if v["steps"]])
    if fail["steps"]:
        L += [(f"**Failed runs: {pct(fail['harmful_share'])} harmful vs the paper's ≤{pct(h['paper_harmful_share'], 0)}"
              f" — {'within' if h['failed_runs_within_paper_bound'] else 'above'} the paper's bound.**"), ""]
    L += _img("harmful_share.png", "harmful share of steps in failed runs vs the paper")

    # 3. confidence
    c = r["confidence"]
    L += ["## Critic confidence", ""]
    L += _table(["label", "steps", "mean confidence", "median confidence"],
                [[lab, sum(c["counts"][lab]), "n/a" if c["mean"][lab] is None else f"{c['mean'][lab]:.3f}",
                  "n/a" if c["median"][lab] is None else f"{c['median'][lab]:.3f}"] for lab in c["counts"]])
    L += _img("confidence_histogram.png", "confidence histogram by label")

    # 4. sweep
    L += ["## Threshold sweep", ""]
    L += [(f"As in the build stage, a step of a failed (unresolved) run is masked (loss mask 0, kept as "
          f"context) when its label is in {{{', '.join(s['mask_labels'])}}} and its confidence ≥ `mask.threshold`; "
          "such a run is trained only if every step has a label, and resolved runs are trained whole. "
          f"The fraction is of the trainable {s['unit']} (the assistant messages): **all runs** = resolved + "
          "labelled failed runs (recipe `srft_mix`), **unresolved runs** = labelled failed runs only "
          "(`srft_unresolved`). Runs of unknown outcome are left out, as the build stage leaves them out."), "",
          f"**Step size is counted in {s['unit']}:** {s['counting']}.", ""]
    ex = s["excluded_not_fully_labelled"]
    if ex or s["labels_beyond_last_step"] or s["labelled_trajectories_not_in_trajectories"]:
        L += [(f"Left out, as the build stage leaves them out: {ex.get('resolution_unknown', 0)} runs of unknown "
              f"outcome, {ex.get('unlabelled', 0)} unlabelled and {ex.get('partly_labelled', 0)} partly labelled "
              "failed runs. Join caveats: "
              f"{s['labels_beyond_last_step']} labels name a step the trajectory does not have; "
              f"{s['labelled_trajectories_not_in_trajectories']} labelled trajectories are not in the "
              "trajectory table (left out)."), ""]
    groups = list(s["fraction_masked"])
    L += _table(["mask.threshold", *[f"{g} runs" for g in groups]],
                [[f"{t:g}" + (" (current)" if abs(t - s["current_threshold"]) < 1e-12 else ""),
                  *[pct(s["fraction_masked"][g][i], 2) for g in groups]] for i, t in enumerate(s["thresholds"])])
    L += _img("threshold_sweep.png", "fraction of trained tokens masked vs mask.threshold")

    # 5. recipes
    L += ["## Tokens per recipe", ""]
    if r.get("recipes") is None:
        L += _skipped(r["notes"]["recipes"])
    else:
        L += _table(["recipe", "rows", "documents", "tokens", "trained", "masked", "other context",
                     "trained share", "masked / (trained + masked)"],
                    [[k, v["rows"], v["documents"], f"{v['num_tokens']:,}", f"{v['num_trained_tokens']:,}",
                      f"{v['num_masked_tokens']:,}", f"{v['num_context_tokens']:,}", pct(v["trained_share"]),
                      pct(v["masked_share_of_trainable"])] for k, v in r["recipes"].items()])
        L += _img("recipe_tokens.png", "tokens per recipe")
    ref = r.get("reference")
    if ref:
        L += [f"### The same build with {ref['name']}", ""]
        counts = ", ".join(f"{k} {v}" for k, v in ref["label_counts"].items())
        L += [(f"Built from the same trajectories, model and settings, with the labels in `{ref['labels']}` "
               f"instead of the critic's ({counts}). Not the critic's judgement: a fixed labelling that shows "
               f"what masking does. Rows: `{ref['train_rows']}`."), ""]
        L += _table(["recipe", "rows", "documents", "tokens", "trained", "masked", "masked / (trained + masked)"],
                    [[k, v["rows"], v["documents"], f"{v['num_tokens']:,}", f"{v['num_trained_tokens']:,}",
                      f"{v['num_masked_tokens']:,}", pct(v["masked_share_of_trainable"])]
                     for k, v in ref["recipes"].items()])
    elif r["notes"].get("reference"):
        L += _skipped(r["notes"]["reference"])
    insp = r.get("inspector")
    if insp:
        masked = ", ".join(str(n) for n in insp["masked_steps"]) or "none"
        source = insp.get("labels_from", "the critic")
        L += [(f"**Masks token by token:** [inspect.html](inspect.html) shows every token of the built document "
               f"`{insp['traj_id']}` coloured by role (prompt, context, trained, masked mistake step with its "
               f"label, confidence and reason on hover), labels from **{source}**; masked steps: {masked} of "
               f"{insp['steps']}. Any other document: `python -m jobs.inspect rows=<build output> traj_id=<id>`."), ""]
        if source != "the critic":
            L += [("The critic's own build masks no step of its documents (no step labelled "
                   f"{{{', '.join(s['mask_labels'])}}} at confidence ≥ {s['current_threshold']:g}), so the page "
                   f"shows the build with {source}."), ""]
    elif r["notes"].get("inspector"):
        L += _skipped(r["notes"]["inspector"])

    # 6. loss
    L += ["## Training loss", ""]
    if r.get("loss") is None:
        L += _skipped(r["notes"]["loss"])
    else:
        lc = r["loss"]
        L += [(f"{lc['num_steps']} steps; loss first {lc['first_loss']}, last {lc['last_loss']}, "
              f"min {lc['min_loss']} (columns: {', '.join(lc['columns'])}; rows of one step are averaged)."), ""]
        L += _img("loss_curve.png", "training loss curve")
        if lc.get("other_metrics"):
            L += ["Other training metrics (over all steps):", ""]
            L += _table(["metric", "mean", "last"], [[k, f"{v['mean']:.6g}", f"{v['last']:.6g}"]
                                                    for k, v in lc["other_metrics"].items()])

    # 7. errors
    e, u = r["errors"], r["critic_usage"]
    L += ["## Critic errors", ""]
    cov = e["coverage"]
    L += _table(["trajectories", "labelled", "critic error", "labelled and error", "neither"],
                [[cov["trajectories"], cov["labelled"], cov["errored"], cov["labelled_and_errored"], cov["neither"]]])
    if e["num_errors"]:
        L += _table(["reason", "trajectories", "mean attempts"],
                    [[k, v["count"], v["mean_attempts"]] for k, v in e["reasons"].items()])
        L += _img("critic_errors.png", "critic error reasons")
    else:
        L += [r["notes"].get("errors", "No critic errors."), ""]
    L += [f"Critic usage: {u['prompt_tokens']:,} prompt and {u['completion_tokens']:,} completion tokens over "
          f"{u['trajectories_with_usage']} trajectories (models: "
          + ", ".join(f"`{m}`" for m in u["critic_models"]) + ").", ""]
    if r.get("duplicate_labels"):
        L += [f"{r['duplicate_labels']} duplicate (traj_id, step) label rows were dropped (latest run kept).", ""]
    return "\n".join(L)


def html(md: str, title: str) -> str | None:
    """HTML of the Markdown, or None when markdown-it-py is not installed."""
    try:
        from markdown_it import MarkdownIt
    except ImportError:
        return None
    body = MarkdownIt("commonmark").enable("table").render(md)
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;line-height:1.45}"
             "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.2em .6em}"
             "img{max-width:100%}blockquote{color:#8a6d3b;background:#fcf8e3;margin:0;padding:.4em 1em}")
    return (f"<!doctype html>\n<html><head><meta charset='utf-8'><title>{_html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n{body}</body></html>\n")
