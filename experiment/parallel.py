"""The experiment's (seed, recipe) units over several processes: `make experiment-success`, or

    python -m experiment.parallel [procs=2] [any experiment.run key=value ...]

Why processes. The student is tiny: one training step does not get faster with a second torch
thread, and with other work on the cores two threads of one step spin-wait on each other
(docs/experiment.md, "Task success"). Two one-thread processes on the 2 cores therefore finish the
table in about half the time of one process.

How. Every unit is ``python -m experiment.run <keys> seeds=[s] recipes=[r] train_threads=1`` in a
subprocess with its own Ray session directory (``SRFT_RAY_TMPDIR``). It writes its ``eval.json``
exactly as a serial run does, and a serial run skips the units it finds done; so does a re-run of
this one (it starts no process for them, and keeps their logs). No two processes
ever create the same file:

1. the student tokenizer is made here, first (every unit reads it);
2. each seed's `base` unit also writes the seed's initialisation (pretrains it, with
   `pretrain_steps`) and ingests its pool, so a seed's training units start only once its `base`
   unit is done. Other seeds' units fill the free process meanwhile: with pretraining, a `base`
   unit takes ~5 min, and waiting for all three left a core idle that long;
3. the training units go recipe by recipe over the seeds, `procs` at a time.

At the end, one serial ``experiment.run`` over every seed and recipe finds every unit done and
writes the pooled results.json, results.md and plots. A failed unit is reported by its log (a
seed whose `base` unit failed starts none of its trainings); the final run then does what is not
done serially, so the table is never silently short.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from experiment.run import BASE, ExperimentConfig, load, log
from experiment.student import student_tokenizer
from pipeline.errors import UserError

POLL_S = 5  # how often the running units are checked


def _unit_argv(argv: list[str], seed: int, recipe: str) -> list[str]:
    return [sys.executable, "-m", "experiment.run", *argv, f"seeds=[{seed}]", f"recipes=[{recipe}]",
            "train_threads=1"]


def _run_all(units: list[tuple[int, str]], argv: list[str], procs: int, logs: Path,
             finished: set[tuple[int, str]] = frozenset()) -> list[str]:
    """Run the units `procs` at a time, each seed's `base` unit before its other units, skipping
    the `finished` ones (a re-run keeps their logs); the names of those that failed or could not
    start."""
    done, failed = set(finished), []
    pending, running = [u for u in units if u not in done], {}
    for seed, recipe in done & set(units):
        log(f"seed{seed}-{recipe} done already (log {logs / f'seed{seed}-{recipe}.log'})")

    def ready(unit: tuple[int, str]) -> bool:
        seed, recipe = unit
        return recipe == BASE or (seed, BASE) in done or (seed, BASE) not in units

    while pending or running:
        while len(running) < procs and (unit := next((u for u in pending if ready(u)), None)):
            pending.remove(unit)
            seed, recipe = unit
            slot = next(i for i in range(procs) if i not in {s for s, _, _, _ in running.values()})
            name = f"seed{seed}-{recipe}"
            env = {**os.environ, "OMP_NUM_THREADS": "1", "SRFT_RAY_TMPDIR": f"/tmp/srft-exp-{os.getpid()}-{slot}"}
            with open(logs / f"{name}.log", "w") as f:
                p = subprocess.Popen(_unit_argv(argv, seed, recipe), stdout=f, stderr=subprocess.STDOUT, env=env)
            running[p.pid] = (slot, unit, name, p)
            log(f"started {name} (log {logs / f'{name}.log'})")
        if not running:  # what is left waits on a `base` unit that failed
            failed += [f"seed{s}-{r} (not started: seed{s}-{BASE} failed)" for s, r in pending]
            break
        time.sleep(POLL_S)
        for pid, (slot, unit, name, p) in list(running.items()):
            if p.poll() is not None:
                del running[pid]
                log(f"{name} {'done' if p.returncode == 0 else f'FAILED (exit {p.returncode})'}")
                if p.returncode:
                    failed.append(name)
                else:
                    done.add(unit)
    return failed


def main(argv: list[str]) -> None:
    procs = 2
    rest = []
    for a in argv:
        if a.startswith("procs="):
            value = a.split("=", 1)[1]
            if not value.isdigit() or int(value) < 1:
                raise UserError(f"procs={value}: the number of experiment processes at once, 1 or more")
            procs = int(value)
        else:
            rest.append(a)
    cfg: ExperimentConfig = load(rest)
    out = Path(cfg.out)
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    student_tokenizer(out / "student_tokenizer", cfg.student.vocab_size)
    trained = [r for r in cfg.recipes if r != BASE]
    units = [(s, BASE) for s in cfg.seeds] + [(s, r) for r in trained for s in cfg.seeds]
    finished = set() if cfg.force else {(s, r) for s, r in units if (out / f"seed{s}" / r / "eval.json").exists()}
    failed = _run_all(units, rest, procs, logs, finished)
    log(f"units finished in {(time.time() - t0) / 60:.1f} min; failed: {failed or 'none'}")
    subprocess.run([sys.executable, "-m", "experiment.run", *rest], check=True)
    log(f"experiment.parallel: {(time.time() - t0) / 60:.1f} min in all")


if __name__ == "__main__":
    from pipeline import cli

    cli.main(main, sys.argv[1:])
