"""Is the simulated 32B step's memory a line in the number of decoder layers? (BENCHMARKS.md, "Production plan")

    .venv/bin/python -m bench.plan_depth 4 6 8 16          # the production preset, one fresh process per depth
    .venv/bin/python -m bench.plan_depth --small 2 6       # a small Qwen2 shape, fake simulation vs a real
                                                           # gloo world-2 run of the same step on CPU

Each depth is simulated in its own process (DTensor's and the fake mode's caches start empty, as in
`jobs.plan`), and the peaks are printed with the per-layer slope between consecutive depths and the
4/6-layer line's prediction at each depth. `--small` prints the real step's peaks beside the simulated
ones: the simulation is trusted where the two agree (tests/plan checks the same at 2 and 6 layers).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

GIB, MIB = 2**30, 2**20


def small_config(layers: int = 64):
    """A Qwen2 shape small enough for a real CPU step: hidden 256, 4 heads (2 KV), FFN 768, vocab 1024."""
    from transformers import Qwen2Config

    return Qwen2Config(hidden_size=256, intermediate_size=768, num_attention_heads=4, num_key_value_heads=2,
                       vocab_size=1024, num_hidden_layers=layers, max_position_embeddings=4096,
                       tie_word_embeddings=False)


def small_train():
    from pipeline.train.config import TrainParams

    return TrainParams(seq_len=512, ce_chunk_tokens=256, param_dtype="bfloat16")


def _one(depth: int, small: bool) -> dict:
    from pipeline.plan.simulate import simulate_step

    if small:
        s = simulate_step(small_config(), small_train(), 2, depth)
    else:
        from pipeline.plan.config import PlanConfig
        from pipeline.plan.plan import hf_config, load_train

        cfg = PlanConfig()
        tc = load_train(cfg.train_preset)
        s = simulate_step(hf_config(cfg.model_config), tc.train, tc.scaling.num_workers, depth)
    return {"layers": depth, "peak": s.peak_bytes, "wall_s": s.wall_s}


def _real_worker(rank: int, world: int, depths: list[int], out: str) -> None:
    from pipeline.plan.simulate import measure_step

    peaks = [measure_step(small_config(), small_train(), d).peak_bytes for d in depths]
    if rank == 0:
        with open(out, "w") as f:
            json.dump(peaks, f)


def real_small(depths: list[int]) -> list[dict]:
    """The small step on real tensors, gloo world 2 (rank 0's MemTracker peaks)."""
    import tempfile

    from tests.train.helpers import spawn

    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        spawn(_real_worker, 2, depths, f.name)
        return json.load(open(f.name))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("depths", type=int, nargs="+")
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # child: one depth, JSON out
    a = ap.parse_args()
    if a.one:
        print("RESULT " + json.dumps(_one(a.depths[0], a.small)))
        return
    unit, name = (MIB, "MiB") if a.small else (GIB, "GiB")
    runs = []
    for d in a.depths:
        cmd = [sys.executable, "-m", "bench.plan_depth", "--one", str(d)] + (["--small"] if a.small else [])
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        runs.append(json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:]))
    real = real_small(a.depths) if a.small else None
    print(f"{'layers':>6} {'peak ' + name:>12} {'per layer':>10} {'4/6 line':>9} {'real':>9}  by kind ({name})")
    line = {r["layers"]: r["peak"]["Total"] for r in runs}
    for i, r in enumerate(runs):
        total = r["peak"]["Total"]
        slope = "" if i == 0 else f"{(total - runs[i - 1]['peak']['Total']) / (r['layers'] - runs[i - 1]['layers']) / unit:.3f}"
        pred = ""
        if 4 in line and 6 in line:
            pred = f"{(line[6] + (r['layers'] - 6) * (line[6] - line[4]) / 2) / unit:.2f}"
        ref = f"{real[i]['Total'] / unit:.2f}" if real else ""
        kinds = " ".join(f"{k[:5]} {v / unit:.2f}" for k, v in r["peak"].items() if k != "Total")
        print(f"{r['layers']:>6} {total / unit:>12.2f} {slope:>10} {pred:>9} {ref:>9}  {kinds}  ({r['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
