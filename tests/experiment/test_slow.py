"""A reduced SRFT experiment end to end (real ingest, build, Ray Train + FSDP2, evaluation) that
asserts the direction of the effect: masking the mistakes of failed runs stops the student from
learning them, while their recoveries are still learnt (which `rft`, trained on successes only,
never sees). Slow: several minutes on an idle 2-core machine."""

from __future__ import annotations

import pytest

from experiment import run as experiment

REDUCED = [
    "seeds=[0]",
    "recipes=[rft,unresolved_nomask,srft_unresolved]",
    "train_runs=3000",
    "tool_schemas=true",  # the setting of the measured run (make experiment's), not the acting default
    "trained_tokens=200000",
    "eval_tasks=20",
    "closed_loop_tasks=8",
    "sweep_thresholds=[]",
]


@pytest.mark.slow
def test_masking_mistakes_removes_them_and_keeps_recoveries(tmp_path, ray_session):
    results = {r["name"]: r for r in experiment.main([f"out={tmp_path / 'exp'}", *REDUCED])}
    assert set(results) == {"rft", "unresolved_nomask", "srft_unresolved"}
    nomask, srft, rft = results["unresolved_nomask"], results["srft_unresolved"], results["rft"]
    # the same budget of trained tokens for every recipe (to within a few packed rows)
    tokens = [r["trained_tokens"] for r in results.values()]
    assert max(tokens) - min(tokens) <= 4 * 2048
    # the masks themselves: no injected mistake is ever a trained turn, every one stays in context,
    # the recoveries are trained
    assert srft["audit"]["trained_rm_test"] == srft["audit"]["trained_edit_test"] == 0
    assert srft["audit"]["context_rm_test"] > 0 and srft["audit"]["context_edit_test"] > 0
    assert srft["audit"]["trained_git_checkout"] > 0 and srft["audit"]["trained_undo_edit"] > 0
    for probe in ("mistake_delete", "mistake_edit"):
        # the unmasked recipe trains the mistake at its decision point, the masked one never does...
        assert nomask["train_mistake_freq"][probe] > 0.25
        assert srft["train_mistake_freq"][probe] == 0.0
        # ...so the unmasked student takes the mistake's branch often, the masked one 10x less
        p_nomask = nomask["decision_points"][probe]["p_branch"]
        p_srft = srft["decision_points"][probe]["p_branch"]
        assert p_nomask > 0.1, (probe, p_nomask)
        assert p_srft < p_nomask / 10, (probe, p_srft, p_nomask)
    for probe in ("recover_delete", "recover_edit"):
        # with the mistake in context, the srft student starts the recovery; rft never saw one
        p_srft, p_rft = srft["decision_points"][probe]["p_start"], rft["decision_points"][probe]["p_start"]
        assert p_srft > 0.1 and p_srft > 10 * p_rft, (probe, p_srft, p_rft)


# The acting student of #19 with the settings of the first pretrained `make experiment-success`
# (docs/experiment.md, "Task success", without hidden tests): 8 heads (4 KV), pretrained to copy
# (600 steps), fine-tuned at lr 1e-3 for 600k trained tokens (~790 steps for rft), no tool
# schemas; seed 2, greedy only.
ACTING = [
    "seeds=[2]",
    "recipes=[base,rft]",
    "eval_tasks=20",
    "closed_loop_tasks=100",
    "sweep_thresholds=[]",
    "train_threads=1",
    "student.num_heads=8",
    "student.num_kv_heads=4",
    "pretrain_steps=600",
    "lr=1e-3",
    "trained_tokens=600000",
]


@pytest.mark.slow
def test_rft_student_acts_on_held_out_tasks(tmp_path, ray_session):
    """rft resolves most held-out tasks in the closed loop; the pretrained, untrained-on-the-task
    initialisation never does. ~9 min on an idle 2-core machine (3.5 min of pretraining, one
    ~790-step training). In the measured run rft resolved 11/100, 93/100 and 96/100 on seeds 0-2:
    every seed copies the module's name now, seed 0 still fails at the fix on 89."""
    from experiment.evaluate import wilson_interval

    results = {r["name"]: r for r in experiment.main([f"out={tmp_path / 'exp'}", *ACTING])}
    base, rft = results["base"]["closed_loop"], results["rft"]["closed_loop"]
    assert base["n"] == rft["n"] == 100
    assert base["successes"] == 0
    # measured 2026-12-07 (make experiment-success, seed 2): 96/100; 60/100 leaves room for
    # run-to-run noise, while the random initialisation's students (seed 2 at lr 1e-2 and 1.15M
    # tokens: 3/100) and the pretrained student at lr 1e-2 (the copy erased) fail it
    assert rft["successes"] >= 60, rft
    assert wilson_interval(rft["successes"], rft["n"])[0] > 0.5
    assert rft["left_expert_path_at"]["cat"] <= 5  # the name is copied on (almost) every task
    # every success is the environment's check: submitted, and the original tests pass
    assert rft["submitted"] >= rft["success"] and rft["fixed"] >= rft["success"]


@pytest.mark.slow
def test_srft_mix_beats_the_naive_mix_and_never_deletes_the_test(tmp_path, ray_session):
    """The paper's SRFT mix > naive mix, as task success, on seed 0 of the measured run, and the
    mechanism in the sampled loop: the unmasked mix deletes the test, the masked one never does.
    ~15 min on an idle 2-core machine (pretraining, two trainings, 100 greedy + 400 sampled runs
    each). Seed 0 only: pooled over 3 seeds srft_mix led 100/300 to 50/300, but on seed 1 the
    naive mix led (32 vs 6), so this guards the measured seed-0 direction, not every seed."""
    from experiment.evaluate import wilson_interval

    settings = [a for a in ACTING if not a.startswith(("seeds=", "recipes="))]
    results = {r["name"]: r for r in experiment.main([f"out={tmp_path / 'exp'}", "seeds=[0]",
                                                      "recipes=[mix_nomask,srft_mix]", "closed_loop_samples=4",
                                                      *settings])}
    naive, srft = results["mix_nomask"], results["srft_mix"]
    # measured 2026-12-07 (make experiment-success, seed 0): srft_mix 59/100 greedy, mix_nomask 1/100
    assert srft["closed_loop"]["successes"] >= 30, srft["closed_loop"]
    assert wilson_interval(srft["closed_loop"]["successes"], 100)[0] > wilson_interval(
        naive["closed_loop"]["successes"], 100)[1]
    # sampled at T=1: rm test committed 0/400 masked, 35/400 unmasked (measured)
    assert srft["closed_loop_sampled"]["n"] == naive["closed_loop_sampled"]["n"] == 400
    assert srft["closed_loop_sampled"]["mistakes"]["rm_test"]["committed"] == 0
    assert naive["closed_loop_sampled"]["mistakes"]["rm_test"]["committed"] >= 10


# `make experiment-success` with hidden tests (docs/experiment.md, "Task success"): the same
# student and length, 2/3 of the tasks weak-tested, and failed runs that submit a wrong fix.
HIDDEN = [*(a for a in ACTING if not a.startswith(("seeds=", "recipes="))), "weak_tests=1.0", "mix.wrong_fix=0.3",
          "mix.wander=0.1", "mix.delete_test=0.15", "mix.edit_test=0.15"]


@pytest.mark.slow
def test_srft_unresolved_resolves_tasks_once_failed_runs_submit_wrong_fixes(tmp_path, ray_session):
    """The paper's SRFT unresolved > unresolved no mask, as task success, on seed 1 of the measured
    run with hidden tests: trained on failed runs only, the masked student fixes and submits, the
    unmasked one does not, and deletes the test in the sampled loop. ~15 min on an idle 2-core
    machine. Measured (make experiment-success, 2026-12-07): srft_unresolved 23/100 greedy,
    unresolved_nomask 0/100; pooled 61/300 against 32/300 (seed 2: 27 against 26)."""
    from experiment.evaluate import wilson_interval

    results = {r["name"]: r for r in experiment.main([f"out={tmp_path / 'exp'}", "seeds=[1]",
                                                      "recipes=[unresolved_nomask,srft_unresolved]",
                                                      "closed_loop_samples=4", *HIDDEN])}
    nomask, srft = results["unresolved_nomask"], results["srft_unresolved"]
    # the masks: the wrong fix is trained by the unmasked recipe only
    assert nomask["train_mistake_freq"]["mistake_wrong_fix"] > 0.3
    assert srft["train_mistake_freq"]["mistake_wrong_fix"] == 0.0
    k_srft, k_nomask = srft["closed_loop"]["successes"], nomask["closed_loop"]["successes"]
    assert k_srft >= 10, srft["closed_loop"]
    assert wilson_interval(k_srft, 100)[0] > wilson_interval(k_nomask, 100)[1]
    # sampled at T=1: rm test committed 0/400 masked, 21/400 unmasked (measured)
    assert srft["closed_loop_sampled"]["mistakes"]["rm_test"]["committed"] == 0
    assert nomask["closed_loop_sampled"]["mistakes"]["rm_test"]["committed"] >= 5
