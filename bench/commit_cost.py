"""The cost of one label commit, with and without publishing it as a Delta version (pipeline.tables).

A label run commits every `commit_every_trajectories` (256) or `commit_every_s` (300 s); each
commit names every label shard written so far. This measures `Output.commit` at a periodic
commit's point: `--files` shards already committed plus one new one, on local disk and on a moto
S3 server, both ways interleaved in one run (median of `--repeats`).

    python -m bench.commit_cost [--files 1 10 100] [--repeats 5] [--no-s3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
import uuid

import pyarrow as pa

from pipeline import commit, fsys
from pipeline.schema import STEP_LABEL

ROWS = 1000  # step labels per shard (a few dozen trajectories)


def label_shard(n: int) -> pa.Table:
    return pa.table({
        "traj_id": [f"t{i // 20}" for i in range(n)], "step": [i % 20 for i in range(n)],
        "label": ["good"] * n, "confidence": [0.9] * n, "reason": ["fine"] * n,
        "critic_model": ["m"] * n, "prompt_version": ["v"] * n, "num_samples": [3] * n,
        "run_id": ["r"] * n, "prompt_tokens": [100] * n, "completion_tokens": [10] * n,
    }).cast(STEP_LABEL)


def one_commit(root: str, files: int, delta: bool) -> float:
    """Open a fresh output, commit `files` shards, write one more, and time the next commit."""
    out = commit.open_output("label", root)
    if not delta:
        out.publish_tables = lambda files, status: {}  # the commit as it was before the tables
    try:
        table = label_shard(ROWS)
        for k in range(files):
            fsys.write_table(table, fsys.join(out.uri, f"part-{k:05d}.parquet"))
        out.commit("partial")
        fsys.write_table(table, fsys.join(out.uri, f"part-{files:05d}.parquet"))
        t0 = time.perf_counter()
        out.commit("partial")
        return time.perf_counter() - t0
    finally:
        out.close()


def start_moto() -> tuple[subprocess.Popen, str]:
    """The tests' moto server, the AWS environment pointed at it, and a fresh bucket."""
    from tests.conftest import start_moto_server

    proc, endpoint = start_moto_server()
    os.environ.update({"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "AWS_REGION": "us-east-1"})
    import pyarrow.fs as pafs

    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    pafs.S3FileSystem(endpoint_override=endpoint.removeprefix("http://"), scheme="http", region="us-east-1",
                      allow_bucket_creation=True).create_dir(bucket)
    return proc, f"s3://{bucket}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, nargs="+", default=[1, 10, 100])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-s3", action="store_true")
    args = ap.parse_args(argv)
    places = [("local", tempfile.mkdtemp(prefix="commit-cost-"))]
    moto = None
    if not args.no_s3:
        moto, bucket = start_moto()
        places.append(("s3 (moto)", bucket))
    print(f"load average {os.getloadavg()[0]:.1f}; {ROWS} rows per shard; median of {args.repeats}")
    print("| where | shards committed | commit before (record only) | commit with Delta | ratio |")
    print("|---|---:|---:|---:|---:|")
    try:
        for where, base in places:
            for files in args.files:
                times = {False: [], True: []}
                for r in range(args.repeats):
                    for delta in (False, True):  # interleaved: the same load for both
                        times[delta].append(one_commit(fsys.join(base, f"{files}-{r}-{int(delta)}"), files, delta))
                before, after = statistics.median(times[False]), statistics.median(times[True])
                print(f"| {where} | {files + 1} | {before * 1000:.0f} ms | {after * 1000:.0f} ms | "
                      f"{after / before:.1f}x |", flush=True)
    finally:
        if moto is not None:
            moto.terminate()
            moto.wait(30)


if __name__ == "__main__":
    main()
