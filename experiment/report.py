"""The experiment's Markdown table and plots, from the per-run results."""

from __future__ import annotations

from pathlib import Path

import numpy as np

COLUMNS = [
    # (header, getter)
    ("trained tokens", lambda r: r["trained_tokens"]),
    ("rm-test trained freq", lambda r: r["train_mistake_freq"]["mistake_delete"]),
    ("P(rm test)", lambda r: r["decision_points"]["mistake_delete"]["p_branch"]),
    ("edit-test trained freq", lambda r: r["train_mistake_freq"]["mistake_edit"]),
    ("P(edit test)", lambda r: r["decision_points"]["mistake_edit"]["p_branch"]),
    # on the tasks with a weak visible test (0 where there are none)
    ("wrong-fix trained freq", lambda r: r["train_mistake_freq"].get("mistake_wrong_fix", 0.0)),
    ("mistake preference", lambda r: np.mean([r["decision_points"][k].get("preference", np.nan)
                                              for k in ("mistake_delete", "mistake_edit")])),
    ("greedy mistake", lambda r: np.mean([r["decision_points"][k]["greedy_mistake"]
                                          for k in ("mistake_delete", "mistake_edit")])),
    ("recovery (greedy)", lambda r: np.mean([r["decision_points"][k]["greedy_recover"]
                                             for k in ("recover_delete", "recover_edit")])),
    ("P(starts recovery)", lambda r: np.mean([r["decision_points"][k].get("p_start", np.nan)
                                              for k in ("recover_delete", "recover_edit")])),
    ("P(recovery)", lambda r: np.mean([r["decision_points"][k]["p_action"] for k in ("recover_delete", "recover_edit")])),
    ("closed-loop success", lambda r: r["closed_loop"]["success"]),
    ("closed-loop fixed", lambda r: r["closed_loop"]["fixed"]),
]


def _cell(values: list[float]) -> str:
    v = np.asarray(values, dtype=float)
    if np.all(v == np.round(v)) and v.max() > 10:
        return f"{v.mean():,.0f}" + ("" if v.min() == v.max() else f" ({v.min():,.0f}-{v.max():,.0f})")
    fmt = ".2e" if 0 < abs(v.mean()) < 1e-3 else ".3f"
    if len(v) == 1:
        return f"{v[0]:{fmt}}"
    return f"{v.mean():{fmt}} ± {v.std(ddof=1):{fmt}}"


def recipe_table(results: list[dict], recipes: list[str]) -> str:
    head = "| recipe | seeds | " + " | ".join(h for h, _ in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 2)]
    for recipe in recipes:
        rs = [r for r in results if r["name"] == recipe]
        if not rs:
            continue
        lines.append(f"| {recipe} | {len(rs)} | " + " | ".join(_cell([get(r) for r in rs]) for _, get in COLUMNS) + " |")
    return "\n".join(lines)


PAPER = {  # SWE-bench Verified resolved rate in the paper's table (Qwen2.5-Coder-32B-Instruct)
    "base": "7.0%", "rft": "30.9%", "mix_nomask": "28.5%", "srft_mix": "32.2%",
}


def pooled(results: list[dict], recipe: str, key: str) -> dict | None:
    """One recipe's closed-loop runs (`key`: closed_loop or closed_loop_sampled) pooled over seeds:
    successes / runs with the 95% Wilson interval, and the mistakes committed and recovered."""
    from experiment.evaluate import wilson_interval

    rs = [r[key] for r in results if r["name"] == recipe and key in r]
    if not rs:
        return None
    k, n = sum(r["successes"] for r in rs), sum(r["n"] for r in rs)
    out = {"successes": k, "n": n, "success": k / n, "ci95": wilson_interval(k, n), "seeds": len(rs),
           "per_seed": [r["success"] for r in rs]}
    for kind in ("rm_test", "edit_test", "submit_unfixed", "submit_wrong_fix"):
        # results from before hidden tests have no submit_wrong_fix: none could happen there
        counts = [r["mistakes"].get(kind, {"committed": 0, "recovered": 0}) for r in rs]
        out[kind] = sum(c["committed"] for c in counts)
        out[f"{kind}_recovered"] = sum(c["recovered"] for c in counts)
    return out


def success_table(results: list[dict], recipes: list[str]) -> str:
    """The paper's table, closed loop: per recipe, success pooled over seeds with its 95% Wilson
    interval, greedy and sampled; how often each injected mistake was committed in the loop, and
    how often a committed rm / test edit was recovered (the test file back as it was)."""
    lines = [("| recipe | paper (SWE-bench V.) | greedy success [95% CI] | per seed | sampled success [95% CI] "
              "| rm test committed (recovered) | test edit committed (recovered) | unfixed submit (of which a wrong fix) |"),
             "|---|---|---|---|---|---|---|---|"]
    for recipe in recipes:
        g, t = pooled(results, recipe, "closed_loop"), pooled(results, recipe, "closed_loop_sampled")
        if g is None:
            continue

        def cell(p):
            return "-" if p is None else (f"{p['successes']}/{p['n']} = {p['success']:.3f} "
                                          f"[{p['ci95'][0]:.3f}, {p['ci95'][1]:.3f}]")

        def mistakes(kind, pair=(g, t)):
            parts = [f"{p[kind]}/{p['n']} ({p[kind + '_recovered']})" for p in pair if p is not None]
            return " · ".join(parts)

        unfixed = " · ".join(f"{p['submit_unfixed']}/{p['n']} ({p['submit_wrong_fix']})" for p in (g, t) if p is not None)
        lines.append(f"| {recipe} | {PAPER.get(recipe, '-')} | {cell(g)} | "
                     f"{', '.join(f'{v:.2f}' for v in g['per_seed'])} | {cell(t)} | {mistakes('rm_test')} "
                     f"| {mistakes('edit_test')} | {unfixed} |")
    return "\n".join(lines)


def success_plot(results: list[dict], recipes: list[str], out: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    present = [r for r in recipes if pooled(results, r, "closed_loop")]
    if not present:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.6))
    top = 0.0
    for j, (key, label) in enumerate((("closed_loop", "greedy"), ("closed_loop_sampled", "sampled, T=1"))):
        for i, recipe in enumerate(present):
            p = pooled(results, recipe, key)
            if p is None:
                continue
            x = i + (j - 0.5) * 0.36
            ax.bar(x, p["success"], width=0.34, color=f"C{j}", alpha=0.7, label=label if i == 0 else None)
            ax.errorbar(x, p["success"], yerr=[[p["success"] - p["ci95"][0]], [p["ci95"][1] - p["success"]]],
                        color="k", capsize=3, lw=1)
            top = max(top, p["ci95"][1])
    ax.set_xticks(range(len(present)), present, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("closed-loop success (95% Wilson CI)")
    ax.set_ylim(0, min(1.0, max(0.1, 1.2 * top)))  # small rates stay readable
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "success.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def sweep_rows(results: list[dict]) -> list[dict]:
    return sorted((r for r in results if r["name"].startswith("sweep_")), key=lambda r: r["threshold"])


def sweep_table(results: list[dict]) -> str:
    rows = sweep_rows(results)
    if not rows:
        return ""
    lines = [("| mask.threshold | kept trained tokens (build) | masked tokens | rm-test trained freq | P(rm test) "
             "| edit-test trained freq | P(edit test) | P(starts recovery) |"), "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        d, f = r["decision_points"], r["train_mistake_freq"]
        rec = np.mean([d[k].get("p_start", np.nan) for k in ("recover_delete", "recover_edit")])
        lines.append(f"| {r['threshold']:.2f} | {r['build_trained_tokens']:,} | {r['build_masked_tokens']:,} "
                     f"| {f['mistake_delete']:.3f} | {d['mistake_delete']['p_branch']:.3f} "
                     f"| {f['mistake_edit']:.3f} | {d['mistake_edit']['p_branch']:.3f} | {rec:.3f} |")
    return "\n".join(lines)


def plots(results: list[dict], recipes: list[str], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    column = dict(COLUMNS)
    metrics = [(name, column[name]) for name in ("P(rm test)", "P(edit test)", "P(starts recovery)",
                                                 "closed-loop success")]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.4))
    present = [r for r in recipes if any(x["name"] == r for x in results)]
    for ax, (title, get) in zip(axes, metrics):
        for i, recipe in enumerate(present):
            vals = [get(r) for r in results if r["name"] == recipe]
            ax.bar(i, np.mean(vals), color=f"C{i}", alpha=0.6)
            ax.scatter([i] * len(vals), vals, color="k", s=10, zorder=3)
        ax.set_xticks(range(len(present)), present, rotation=30, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_ylim(0, 1)
    fig.tight_layout()
    path = out / "recipes.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

    rows = sweep_rows(results)
    if rows:
        th = [r["threshold"] for r in rows]
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        for i, (probe, what) in enumerate((("mistake_delete", "rm test"), ("mistake_edit", "edit test"))):
            ax.plot(th, [r["decision_points"][probe]["p_branch"] for r in rows], "o-", color=f"C{i}",
                    label=f"P({what})")
            ax.plot(th, [r["train_mistake_freq"][probe] for r in rows], "o:", color=f"C{i}",
                    label=f"{what} trained freq")
        ax.set_xlabel("mask.threshold")
        ax.set_ylabel("mistake probability / trained frequency")
        ax.set_ylim(bottom=0)
        ax2 = ax.twinx()
        ax2.plot(th, [r["build_trained_tokens"] for r in rows], "k--", label="kept trained tokens")
        ax2.set_ylabel("kept trained tokens (build)")
        lines = ax.get_legend_handles_labels()
        lines2 = ax2.get_legend_handles_labels()
        ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=8, loc="upper left")
        ax.set_title(f"{rows[0]['recipe']}, critic noise {rows[0].get('noise')}", fontsize=10)
        fig.tight_layout()
        path = out / "threshold.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def write_report(results: list[dict], cfg, out: Path) -> Path:
    recipes = list(cfg.recipes)
    pngs = plots(results, recipes, out)
    main = [r for r in results if not r["name"].startswith("sweep_")]
    seconds = sum(sum(r["seconds"].values()) for r in results)
    text = [
        "# SRFT controlled experiment",
        "",
        (f"Seeds {list(cfg.seeds)}; {cfg.train_runs} scripted runs per seed; student: tiny Qwen2 "
        f"({cfg.student.num_layers} layers, hidden {cfg.student.hidden_size}); tool schemas in the prompt: "
        f"{'yes' if getattr(cfg, 'tool_schemas', True) else 'no'}; {cfg.trained_tokens:,} trained tokens "
        f"per recipe; {cfg.eval_tasks} held-out tasks per probe, {cfg.closed_loop_tasks} closed-loop tasks. "
        "Cells: mean ± sample std over seeds."),
        "",
        recipe_table(main, recipes),
        "",
    ]
    if any("closed_loop" in r for r in main):
        loop = ("Closed loop (the paper's table): successes pooled over seeds, greedy "
                f"({cfg.closed_loop_tasks} held-out tasks per seed)")
        if getattr(cfg, "closed_loop_samples", 0):
            loop += f" and sampled ({cfg.closed_loop_samples} samples per task at T={cfg.closed_loop_temperature})"
        text += [loop + "; mistakes as committed/runs (recovered), greedy · sampled.", "",
                 success_table(main, recipes), ""]
        plot = success_plot(main, recipes, out)
        if plot:
            pngs.append(plot)
    sweep = sweep_table(results)
    if sweep:
        text += [f"Threshold sweep ({cfg.sweep_recipe}, seed {cfg.sweep_seed}, critic noise {cfg.sweep_noise}):", "",
                 sweep, ""]
    text += [f"Build + train + eval time over all runs: {seconds / 60:.1f} min.", ""]
    text += [f"![{p.stem}]({p.name})" for p in pngs]
    path = out / "results.md"
    path.write_text("\n".join(text) + "\n")
    return path
