"""The critic pool autoscales on a real Ray autoscaling cluster (cluster/local/: Ray's autoscaler
with its fake multi-node provider), and the stage's demand is held while the pool runs and
withdrawn after it, also when the pool fails."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _request():
    """The autoscaler's resource request as `ray.autoscaler.sdk.request_resources` stored it."""
    from ray.autoscaler._private.constants import AUTOSCALER_RESOURCE_REQUEST_CHANNEL
    from ray.experimental.internal_kv import _internal_kv_get

    raw = _internal_kv_get(AUTOSCALER_RESOURCE_REQUEST_CHANNEL)
    return json.loads(raw) if raw else None


def test_pool_demand_is_held_while_the_batches_run_and_withdrawn_after(ray_session):
    from pipeline.label.autoscale import actor_bundles, holding_demand

    bundles = actor_bundles(3, 1, 0.5)
    assert bundles == [{"GPU": 1.0, "CPU": 0.5}] * 3
    seen = [_request() for _ in holding_demand(iter(range(2)), bundles)]
    assert seen == [bundles, bundles] and _request() == []

    def failing():
        yield 1
        raise RuntimeError("the actor pool failed")

    with pytest.raises(RuntimeError):
        for _ in holding_demand(failing(), bundles):
            assert _request() == bundles
    assert _request() == []  # withdrawn on the failure too


@pytest.mark.slow
def test_critic_pool_grows_to_three_autoscaled_nodes_and_they_go_after_the_run(tmp_path):
    """`python -m bench.autoscale` in its own process (its driver joins the autoscaling cluster):
    30 trajectories, a critic of 2 s per request, pool min 1 max 3, critic nodes 0..3."""
    proc = subprocess.run([sys.executable, "-m", "bench.autoscale", "--results", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=1200, check=False)
    result_file = tmp_path / "autoscale.json"
    assert result_file.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(result_file.read_text())
    assert r["returncode"] == 0
    # Every selected trajectory labelled, each (traj_id, step) once.
    assert r["trajectories_labelled"] == 30 and r["label_rows"] == 60 == r["distinct_steps"]
    # The full pool, one actor on each of 3 autoscaled critic nodes.
    assert r["max_critic_nodes"] == 3 and r["max_actors"] == 3 and r["max_actor_nodes"] == 3
    # The nodes are removed after the run (idle timeout 6 s; the measurement waits up to 120 s).
    assert r["scale_down_s"] is not None and r["timeline"][-1]["critic_nodes"] == 0
    # stop() ended the cluster's processes, and nothing of it is left.
    assert r["stopped_processes"] > 0 and r["processes_left"] == 0
