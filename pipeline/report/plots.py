"""PNG plots of the report's numbers (matplotlib, Agg backend: no display needed).

Each function takes the dict from pipeline.report.stats and returns the PNG bytes.
"""

from __future__ import annotations

import io as _io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator

COLORS = {"good": "#4caf50", "unnecessary": "#ffb300", "mistake": "#e53935", "recover": "#1e88e5"}
DPI = 110


def _color(label: str, i: int = 0) -> str:
    return COLORS.get(label, plt.cm.tab10(i % 10))


def _png(fig) -> bytes:
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def label_distribution(dist: dict) -> bytes:
    labels = dist["labels"]
    trajs = dist["trajectories"]
    height = max(3.0, 0.28 * len(trajs) + 1.5)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, height), gridspec_kw={"width_ratios": [1, 2]},
                                   layout="constrained")
    counts = [dist["counts"][lab] for lab in labels]
    bars = ax1.bar(labels, counts, color=[_color(lab, i) for i, lab in enumerate(labels)])
    for b, lab in zip(bars, labels):
        share = dist["shares"][lab] or 0.0
        ax1.annotate(f"{dist['counts'][lab]}\n{share:.0%}", (b.get_x() + b.get_width() / 2, b.get_height()),
                     ha="center", va="bottom", fontsize=9)
    ax1.set_title(f"All steps (n={dist['total_steps']})")
    ax1.set_ylabel("steps")
    ax1.set_ylim(0, max(counts + [1]) * 1.25)
    ax1.tick_params(axis="x", rotation=20)

    names = [f"{t['traj_id'][:28]}{'' if t['resolved'] is None else (' ✓' if t['resolved'] else ' ✗')}"
             for t in trajs]
    y = np.arange(len(trajs))
    left = np.zeros(len(trajs))
    for i, lab in enumerate(labels):
        share = np.array([t[lab] / t["steps"] if t["steps"] else 0 for t in trajs])
        ax2.barh(y, share, left=left, color=_color(lab, i), label=lab)
        left += share
    ax2.set_yticks(y, names, fontsize=8)
    ax2.invert_yaxis()
    ax2.set_xlim(0, 1)
    ax2.set_xlabel("share of the trajectory's steps")
    shown = dist["trajectories_shown"]
    ax2.set_title(f"Per trajectory ({shown} of {dist['num_trajectories']}, most steps first; ✓ resolved, ✗ failed)",
                  pad=22)
    ax2.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), fontsize=8, ncols=len(labels), frameon=False)
    return _png(fig)


def harmful_share(h: dict) -> bytes:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2), layout="constrained")
    paper = h["paper_harmful_share"]
    cols = [("paper, failed runs\n(upper bound)", paper)]
    for g, name in (("unresolved", "failed runs"), ("resolved", "resolved runs"), ("unknown", "unknown outcome"),
                    ("all", "all runs")):
        s = h["groups"][g]["harmful_share"]
        if s is not None:
            cols.append((f"{name}\n(n={h['groups'][g]['steps']} steps)", s))
    x = np.arange(len(cols))
    harm = np.array([c[1] for c in cols])
    ax1.bar(x, harm, color=COLORS["mistake"], label="harmful (" + ", ".join(h["harmful_labels"]) + ")")
    ax1.bar(x, 1 - harm, bottom=harm, color="#9e9e9e", label="fine")
    ax1.bar([0], [1], fill=False, hatch="//", edgecolor="k", linewidth=0)
    for xi, v in zip(x, harm):
        if v >= 0.04:
            ax1.text(xi, v / 2, f"{v:.0%}", ha="center", va="center", color="white", fontweight="bold")
    ax1.axhline(paper, color="k", linestyle="--", linewidth=1)
    ax1.set_xticks(x, [c[0] for c in cols], fontsize=8)
    ax1.set_ylim(0, 1)
    ax1.set_ylabel("share of steps")
    ax1.set_title("Harmful vs fine steps (dashed: the paper's ≤24%)" if abs(paper - 0.24) < 1e-9
                  else f"Harmful vs fine steps (dashed: reference {paper:.0%})")
    ax1.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize=8, ncols=2, frameon=False)

    edges = np.linspace(0, 1, 11)
    data, names, colors = [], [], []
    for g, name, color in (("unresolved", "failed", "#e53935"), ("resolved", "resolved", "#43a047"),
                           ("unknown", "unknown outcome", "#9e9e9e")):
        if h["per_trajectory_shares"][g]:
            data.append(h["per_trajectory_shares"][g])
            names.append(name)
            colors.append(color)
    if data:
        ax2.hist(data, bins=edges, label=names, color=colors)
        ax2.legend(fontsize=8)
    ax2.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax2.axvline(paper, color="k", linestyle="--", linewidth=1)
    ax2.set_xlabel("harmful share of a trajectory's steps")
    ax2.set_ylabel("trajectories")
    ax2.set_title("Per trajectory")
    return _png(fig)


def confidence_histogram(c: dict, threshold: float) -> bytes:
    fig, ax = plt.subplots(figsize=(8, 4))
    edges = np.array(c["edges"])
    width = edges[1] - edges[0]
    bottom = np.zeros(len(edges) - 1)
    for i, (lab, counts) in enumerate(c["counts"].items()):
        counts = np.array(counts)
        if counts.sum() == 0:
            continue
        ax.bar(edges[:-1], counts, width=width, bottom=bottom, align="edge", color=_color(lab, i),
               edgecolor="white", linewidth=0.5, label=f"{lab} (n={int(counts.sum())})")
        bottom += counts
    ax.axvline(threshold, color="k", linestyle="--", linewidth=1, label=f"mask.threshold = {threshold:g}")
    ax.set_xlim(0, 1)
    ax.set_xlabel("critic confidence")
    ax.set_ylabel("steps")
    ax.set_title("Critic confidence by label (stacked)")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=8)
    return _png(fig)


def threshold_sweep(s: dict, recipes: dict | None) -> bytes:
    fig, ax = plt.subplots(figsize=(8, 4.2))
    styles = {"all": ("k", "-"), "unresolved": ("#e53935", "--")}
    names = {"all": "all runs (srft_mix)", "unresolved": "failed runs (srft_unresolved)"}
    for g, ys in s["fraction_masked"].items():
        color, ls = styles[g]
        ax.plot(s["thresholds"], ys, color=color, linestyle=ls, marker="o", markersize=3,
                label=f"{names[g]}: {s['trainable_total'][g]:,} {s['unit']}")
    ax.axvline(s["current_threshold"], color="#555", linestyle="-.", linewidth=1,
               label=f"mask.threshold = {s['current_threshold']:g}")
    for recipe, r in (recipes or {}).items():
        if r["num_masked_tokens"]:
            ax.plot([s["current_threshold"]], [r["masked_share_of_trainable"]], marker="*", markersize=12,
                    linestyle="none", label=f"build output, recipe {recipe} (student tokens)")
    ax.set_ylim(bottom=0)
    ax.set_xlim(min(s["thresholds"] + [0]), max(s["thresholds"] + [1]))
    ax.set_xlabel("mask.threshold (mask " + ", ".join(s["mask_labels"]) + " steps with confidence ≥ threshold)")
    ax.set_ylabel(f"fraction of trainable {s['unit']} masked")
    ax.set_title(f"Threshold sweep (step size in {s['unit']})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def recipe_tokens(recipes: dict) -> bytes:
    names = list(recipes)
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(names) + 2), 4))
    x = np.arange(len(names))
    bottom = np.zeros(len(names))
    for key, label, color in (("num_trained_tokens", "trained (loss mask 1)", "#4caf50"),
                              ("num_masked_tokens", "masked steps (context only)", "#e53935"),
                              ("num_context_tokens", "other context (prompt, observations)", "#bdbdbd")):
        v = np.array([recipes[n][key] for n in names], dtype=float)
        ax.bar(x, v, bottom=bottom, color=color, label=label)
        bottom += v
    for xi, n in zip(x, names):
        ax.text(xi, bottom[xi], f"{recipes[n]['num_tokens']:,}\n{recipes[n]['rows']} row{'s' if recipes[n]['rows'] != 1 else ''}", ha="center",
                va="bottom", fontsize=8)
    ax.set_xticks(x, names)
    ax.set_ylim(0, bottom.max() * 1.2 if bottom.max() else 1)
    ax.set_ylabel("tokens")
    ax.set_title("Tokens per recipe")
    ax.legend(fontsize=8, loc="upper left")
    return _png(fig)


def loss_curve(lc: dict) -> bytes:
    fig, ax = plt.subplots(figsize=(8, 4))
    for i, (k, pts) in enumerate(lc["series"].items()):
        pts = np.array(pts, dtype=float)
        ax.plot(pts[:, 0], pts[:, 1], label=k, color=plt.cm.tab10(i), alpha=0.5 if len(pts) > 50 else 1,
                marker="o" if len(pts) <= 50 else None, markersize=3)
        if len(pts) > 50:  # a moving average on long runs
            w = max(5, len(pts) // 50)
            smooth = np.convolve(pts[:, 1], np.ones(w) / w, mode="valid")
            ax.plot(pts[w - 1:, 0], smooth, color=plt.cm.tab10(i), label=f"{k} (mean of {w})")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if lc.get("lr"):
        lr = np.array(lc["lr"], dtype=float)
        ax2 = ax.twinx()
        ax2.plot(lr[:, 0], lr[:, 1], color="#888", linestyle=":", label="lr (right axis)")
        ax2.set_ylabel("learning rate")
        ax2.set_ylim(bottom=0)
        ax2.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
        ax2.legend(fontsize=8, loc="upper center")
    ax.set_title("Training loss")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def critic_errors(e: dict) -> bytes:
    reasons = list(e["reasons"])
    fig, ax = plt.subplots(figsize=(8, max(2.5, 0.4 * len(reasons) + 1.2)))
    counts = [e["reasons"][r]["count"] for r in reasons]
    ax.barh(reasons, counts, color="#8e24aa")
    for i, c in enumerate(counts):
        ax.text(c, i, f" {c}", va="center", fontsize=9)
    ax.invert_yaxis()
    ax.set_xlabel("trajectories")
    cov = e["coverage"]
    ax.set_title(f"Critic errors by reason ({e['num_errors']} errors; {cov['labelled']} of "
                 f"{cov['trajectories']} trajectories labelled)")
    ax.set_xlim(0, max(counts + [1]) * 1.15)
    return _png(fig)
