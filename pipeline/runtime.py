"""Ray start-up shared by every stage: join a cluster when there is one, else start locally."""

from __future__ import annotations

import os
import time
import uuid


def init_ray() -> None:
    """Connect to ``RAY_ADDRESS`` (set by ``ray job submit`` or the user), else start a local Ray.

    ``SRFT_RAY_TMPDIR`` puts a local Ray's session files somewhere else (tests use their temp dir).
    """
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=True)
        return
    kwargs = {"include_dashboard": False}
    if os.environ.get("SRFT_RAY_TMPDIR"):
        kwargs["_temp_dir"] = os.environ["SRFT_RAY_TMPDIR"]
    ray.init(**kwargs)
    ray.data.DataContext.get_current().enable_progress_bars = False


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
