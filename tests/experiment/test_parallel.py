"""experiment.parallel's schedule: a seed's trainings start after its `base` unit (which writes the
seed's initialisation), other seeds' units fill a free process meanwhile, and a failed `base`
stops that seed's trainings with a reason instead of running them on a missing student."""

from __future__ import annotations

import json
import sys

from experiment import parallel


def test_schedule_waits_per_seed_and_reports_what_could_not_start(tmp_path, monkeypatch):
    events = tmp_path / "events.jsonl"
    # each unit a real process that records its start and end; seed 1's base fails, seed 2's is slow
    script = ("import json, sys, time; s, r = int(sys.argv[1]), sys.argv[2]; f = open(sys.argv[3], 'a'); "
              "f.write(json.dumps([s, r, 'start', time.time()]) + '\\n'); f.flush(); "
              "time.sleep(1.5 if (s, r) == (2, 'base') else 0.2); "
              "f.write(json.dumps([s, r, 'end', time.time()]) + '\\n'); sys.exit(s == 1 and r == 'base')")
    monkeypatch.setattr(parallel, "_unit_argv",
                        lambda argv, seed, recipe: [sys.executable, "-c", script, str(seed), recipe, str(events)])
    monkeypatch.setattr(parallel, "POLL_S", 0.05)
    units = [(0, "base"), (1, "base"), (2, "base"), (0, "rft"), (1, "rft"), (2, "rft")]
    failed = parallel._run_all(units, [], 2, tmp_path)

    assert failed == ["seed1-base", "seed1-rft (not started: seed1-base failed)"]
    log = [json.loads(line) for line in events.read_text().splitlines()]
    t = {(s, r, e): at for s, r, e, at in log}
    assert {(s, r) for s, r, _, _ in log} == set(units) - {(1, "rft")}
    for seed in (0, 2):  # a training starts only once its seed's base has ended
        assert t[(seed, "rft", "start")] >= t[(seed, "base", "end")]
    # seed 0's training ran while seed 2's slow base still did: no process idled on it
    assert t[(0, "rft", "start")] < t[(2, "base", "end")]
    assert (tmp_path / "seed0-rft.log").exists() and not (tmp_path / "seed1-rft.log").exists()


def test_a_rerun_skips_finished_units_and_keeps_their_logs(tmp_path, monkeypatch):
    started = []
    monkeypatch.setattr(parallel, "_unit_argv",
                        lambda argv, seed, recipe: started.append((seed, recipe)) or [sys.executable, "-c", "pass"])
    monkeypatch.setattr(parallel, "POLL_S", 0.05)
    (tmp_path / "seed0-rft.log").write_text("the first run's log")
    units = [(0, "base"), (0, "rft"), (0, "srft_mix")]
    assert parallel._run_all(units, [], 2, tmp_path, finished={(0, "base"), (0, "rft")}) == []
    assert started == [(0, "srft_mix")]  # it still waited on nothing: its base is finished
    assert (tmp_path / "seed0-rft.log").read_text() == "the first run's log"
