"""Ask the cluster autoscaler for the critic pool's full size while the pool runs.

Why: Ray Data alone does not grow a GPU actor pool on an autoscaling cluster
(ray-project/ray#59144). Measured on the local autoscaling cluster (cluster/local/, BENCHMARKS.md
"Critic pool autoscaling"): with `critic.pool.min=1 max=3` and critic nodes of one GPU at 0..3,
the autoscaler launched all 3 critic nodes for Ray Data's own requests, but the pool used 2 actors
at most (Ray Data's resource budget counts only what its autoscaling coordinator has reserved,
refreshed every 20 s); on a loaded machine the nodes came and went as idle and the pool stayed at
one actor for the whole run.

So while the pool runs, the stage asks for `pool.max` actor bundles itself
(`ray.autoscaler.sdk.request_resources`): the nodes for the full pool come up and stay while
there is work, Ray Data's budget then counts their GPUs, and its actor autoscaler adds actors
up to `pool.max`. The request is withdrawn when the pool is done, also when it fails, so the
critic nodes go idle and the autoscaler removes them after `idle_timeout_minutes`.

`request_resources` holds one cluster-wide request that every call replaces, and Ray Data's
own autoscaling coordinator calls it too (every 20 s, with its merged requests). The demand is
therefore re-sent every `refresh_s` for as long as the pool runs. That also replaces the requests
of any other job on the cluster for that time (the cluster-wide request has no owner).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator


def actor_bundles(pool_max: int, num_gpus: float, num_cpus: float) -> list[dict[str, float]]:
    """One resource bundle per actor of the full pool, as each actor asks for it."""
    bundle = {k: v for k, v in (("GPU", float(num_gpus)), ("CPU", float(num_cpus))) if v > 0}
    return [dict(bundle) for _ in range(pool_max)] if bundle else []


@contextlib.contextmanager
def pool_demand(bundles: list[dict[str, float]], refresh_s: float = 2.0) -> Iterator[None]:
    """Hold `bundles` as the autoscaler's resource request for the duration of the block."""
    from ray.autoscaler.sdk import request_resources

    if not bundles:
        yield
        return
    stop = threading.Event()

    def hold() -> None:
        while not stop.is_set():
            request_resources(bundles=bundles)
            stop.wait(refresh_s)

    request_resources(bundles=bundles)  # at once, before the first actor is even pending
    holder = threading.Thread(target=hold, name="critic-pool-demand", daemon=True)
    holder.start()
    try:
        yield
    finally:
        stop.set()
        holder.join()
        request_resources(bundles=[])  # withdraw: idle critic nodes may go


def holding_demand(batches: Iterator, bundles: list[dict[str, float]]) -> Iterator:
    """`batches`, with the demand held while they are consumed. An error of Ray's raises inside
    the `with` here; a consumer that stops early closes this generator, which withdraws too."""
    with pool_demand(bundles):
        yield from batches
