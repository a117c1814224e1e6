"""The controlled SRFT experiment: `make experiment`, or

    python -m experiment.run [out=runs/experiment] [seeds=[0,1,2]] [train_runs=...] ...

Per seed: a pool of scripted runs in `env` (kinds and rates in `generate`), written as SWE-smith
tool-style JSONL and ingested by the real ingest stage; the reference step labels written as the
label stage's output; then per recipe the real build stage (Qwen2.5's chat template over the
student's small vocabulary, `student`) and the real train stage (Ray Train + FSDP2 on gloo) from
the same initialisation of the same tiny Qwen2 (with `pretrain_steps`, pretrained to copy first:
`pretrain`), each for the same number of trained (loss) tokens;
then `evaluate` on held-out tasks.
A threshold sweep under critic noise rebuilds and retrains `sweep_recipe` at each `mask.threshold`.

Each finished (seed, recipe) writes its `eval.json`; a re-run skips what is done (`force=true`
redoes it). Results: <out>/results.json, <out>/results.md, <out>/*.png.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from experiment import evaluate as ev
from experiment import generate as gen
from experiment import stages
from experiment.env import TOOLS, Task, make_tasks
from experiment.pretrain import pretrain
from experiment.student import student_tokenizer
from pipeline.config import load_config
from pipeline.errors import UserError

# The paper's table: `base` is the shared initialisation (the pretrained student, not trained on
# any agent run) evaluated only,
# the others are build recipes (every recipe of pipeline.build.config.RECIPES is accepted).
BASE = "base"
RECIPES = [BASE, "rft", "unresolved_nomask", "srft_unresolved", "mix_nomask", "srft_mix"]


@dataclass
class StudentConfig:
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 256
    vocab_size: int = 1024  # the most BPE entries the student tokenizer may learn (student.py)


@dataclass
class ExperimentConfig:
    out: str = "runs/experiment"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    recipes: list[str] = field(default_factory=lambda: list(RECIPES))
    train_runs: int = 3000  # scripted runs in each seed's training pool (fresh data: fewer epochs)
    # render the three tool schemas into every prompt (the rows' `tools`). Off by default: they are
    # ~430 of a 900-token expert run, and with them the student did not learn to copy the failing
    # module's name (docs/experiment.md, "What we tried"); the rows then carry no `tools`, which
    # ingest and build take as a trajectory without schemas, and evaluation renders likewise.
    tool_schemas: bool = False
    eval_tasks: int = 20  # held-out tasks for the decision-point probes
    closed_loop_tasks: int = 8  # held-out tasks the student acts on, greedy
    # sampled closed loop (temperature closed_loop_temperature): samples per task, 0 = not run
    closed_loop_samples: int = 0
    closed_loop_temperature: float = 1.0
    # loss tokens per training run, the same for every recipe: ~3,000 one-row steps for rft, the
    # length at which the student first acted (docs/experiment.md, "What we tried"). `make
    # experiment` runs the token-level table at 200,000 (with tool_schemas=true) to fit its budget.
    trained_tokens: int = 2_300_000
    lr: float = 1e-2
    seq_len: int = 2048  # packed row length
    micro_batch_size: int = 1  # packed rows per optimizer step: the student needs steps (see docs)
    workers: int = 1  # Ray Train workers (FSDP2 on gloo)
    # torch threads per worker; 0: the machine's 2 cores shared out (2 // workers). 1 when several
    # experiment processes share the 2 cores: two threads of one step spin-wait on each other there
    train_threads: int = 0
    student: StudentConfig = field(default_factory=StudentConfig)
    # steps of the student's pretraining on the induction (copy) corpus before any recipe
    # (experiment/pretrain.py): the shared initialisation of every recipe and the `base` row.
    # 0: the random initialisation itself (the token-level `make experiment`). With a pretrained
    # student, fine-tune below its pretraining lr (3e-3): at 1e-2 the fine-tune erased the copy
    # (docs/experiment.md, "What we tried", H); `make experiment-success` runs 600 at lr 1e-3.
    pretrain_steps: int = 0
    mix: dict = field(default_factory=lambda: asdict(gen.Mix()))
    # share of the tasks (training, probe and closed-loop alike) whose operators allow a weak
    # visible test that gets one, with a hidden test in the check (env's module docstring); the
    # failed runs that submit a wrong fix (`mix.wrong_fix`) need them. 0: no hidden test, the
    # tasks of the token-level `make experiment`
    weak_tests: float = 0.0
    # threshold sweep under critic noise (seed sweep_seed, recipe sweep_recipe)
    sweep_thresholds: list[float] = field(default_factory=lambda: [0.5, 0.8, 1.0])
    sweep_noise: float = 0.2
    sweep_recipe: str = "srft_unresolved"
    sweep_seed: int = 0
    force: bool = False

    def validate(self) -> None:
        """The checks that OmegaConf's types do not make (each raises UserError, named by its key)."""
        from pipeline.build.config import RECIPES as BUILD_RECIPES

        unknown = [r for r in self.recipes if r != BASE and r not in BUILD_RECIPES]
        if unknown:
            raise UserError(f"recipes: unknown recipe(s) {unknown}; use {BASE} or one of {sorted(BUILD_RECIPES)}")
        if not 0.0 <= self.weak_tests <= 1.0:
            raise UserError(f"weak_tests={self.weak_tests}: a share of the tasks, between 0 and 1")
        try:
            gen.Mix(**self.mix)
        except TypeError as e:
            raise UserError(f"mix: {e}; its keys are {sorted(asdict(gen.Mix()))}") from None
        except ValueError as e:
            raise UserError(str(e)) from None


def log(msg: str) -> None:
    print(f"[experiment {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def training_pool(cfg: ExperimentConfig, seed: int) -> list[gen.Run]:
    return gen.generate(make_tasks(1000 + seed, cfg.train_runs, f"train{seed}", cfg.weak_tests), gen.Mix(**cfg.mix), seed)


def probe_tasks(cfg: ExperimentConfig, seed: int) -> list[Task]:
    """The seed's held-out tasks of the decision-point probes (one place, so every unit and the
    base row probe the same tasks, weak-tested alike)."""
    return make_tasks(5000 + seed, cfg.eval_tasks, f"eval{seed}", cfg.weak_tests)


def pool_rows(runs: list[gen.Run], tool_schemas: bool) -> list[dict]:
    """The runs as ingest input rows, with the tool schemas (`tools`) or without (None)."""
    return [{**r.row, "tools": TOOLS if tool_schemas else None} for r in runs]


def mistake_frequencies(runs: list[gen.Run], labels: list[dict], recipe: str, threshold: float) -> dict:
    """How often the training data of `recipe` *trains* each injected mistake at its decision point:
    among the runs the recipe uses whose steps so far follow the expert path to that point, the
    fraction whose next step is the mistake and is not masked. The wrong fix is counted among the
    runs on tasks with a weak visible test, the only ones where it can happen."""
    masked = {(r["traj_id"], r["step"]) for r in labels
              if r["label"] == "mistake" and r["confidence"] >= threshold}  # float64 here, as documented
    use = {BASE: lambda r: False, "rft": lambda r: r.resolved, "unresolved_nomask": lambda r: not r.resolved,
           "srft_unresolved": lambda r: not r.resolved, "mix_nomask": lambda r: True,
           "srft_mix": lambda r: True}[recipe]
    point = {"mistake_delete": (2, "delete_test"), "mistake_edit": (3, "edit_test"), "mistake_wrong_fix": (3, "wrong_fix")}
    out = {}
    for name, (step, kind) in point.items():
        at_point = trained_mistake = 0
        for run in runs:
            if not use(run) or len(run.labels) <= step or (kind == "wrong_fix" and not run.weak_test):
                continue
            if run.kind == "delete_test" and step > 2:
                continue  # left the expert path at step 2
            at_point += 1
            if run.kind == kind:
                tid = run.row["traj_id"]
                srft = recipe.startswith("srft") and not run.resolved
                trained_mistake += not (srft and (tid, step) in masked)
        out[name] = trained_mistake / max(at_point, 1)
    return out


def train_and_eval(cfg: ExperimentConfig, seed: int, name: str, recipe: str, labels_dir: Path,
                   threshold: float, traj: Path, student: Path, closed_loop: bool) -> dict:
    root = Path(cfg.out) / f"seed{seed}" / name
    done = root / "eval.json"
    if done.exists() and not cfg.force:
        return json.loads(done.read_text())
    t0 = time.time()
    built = stages.build(traj, labels_dir, root / "train_rows", student, recipe, threshold, cfg.seq_len)
    rows = _rows(root / "train_rows")
    per_row = rows["trained_tokens"] / rows["rows"]
    steps = max(1, round(cfg.trained_tokens / (per_row * cfg.micro_batch_size * cfg.workers)))
    t1 = time.time()
    log(f"seed {seed} {name}: {rows['rows']} rows, {rows['trained_tokens']} trained tokens; training {steps} steps")
    trained = stages.train(root / "train_rows", student, root / "train", steps, cfg.lr, seed, cfg.seq_len, cfg.workers,
                           cfg.micro_batch_size, cfg.train_threads)
    t2 = time.time()
    tasks = probe_tasks(cfg, seed)
    s = ev.Student.load(trained["export"], train_rows=str(root / "train_rows"))
    audit = audit_rows(root / "train_rows", s.tokenizer)
    result = {
        "seed": seed, "name": name, "recipe": recipe, "threshold": threshold,
        "train_rows": rows["rows"], "build_trained_tokens": rows["trained_tokens"],
        "build_masked_tokens": rows["masked_tokens"], "steps": steps,
        # what the train stage reports it trained on (falls back to the plan)
        "trained_tokens": int(trained.get("trained_tokens") or round(steps * per_row * cfg.micro_batch_size * cfg.workers)),
        "build_summary": {k: built.get(k) for k in ("rows_in", "rows_out", "errors", "excluded") if k in built},
        "final_loss": trained.get("final_loss") or trained.get("loss"),
        "audit": audit,
        "decision_points": ev.decision_points(s, tasks),
    }
    if closed_loop:
        result.update(closed_loops(cfg, seed, s))
    result["seconds"] = {"build": round(t1 - t0, 1), "train": round(t2 - t1, 1), "eval": round(time.time() - t2, 1)}
    done.write_text(json.dumps(result, indent=2))
    shutil.rmtree(root / "train" / "_checkpoints", ignore_errors=True)
    log(f"seed {seed} {name}: {json.dumps(_headline(result))}")
    return result


def closed_loops(cfg: ExperimentConfig, seed: int, student: ev.Student) -> dict:
    """Greedy and (with closed_loop_samples) sampled closed-loop runs on the seed's held-out tasks."""
    tasks = make_tasks(7000 + seed, cfg.closed_loop_tasks, f"loop{seed}", cfg.weak_tests)
    out = {"closed_loop": ev.closed_loop(student, tasks)}
    if cfg.closed_loop_samples:
        out["closed_loop_sampled"] = ev.closed_loop(student, tasks, temperature=cfg.closed_loop_temperature,
                                                    samples=cfg.closed_loop_samples, seed=seed)
    return out


def evaluate_base(cfg: ExperimentConfig, seed: int, student_dir: Path) -> dict:
    """The paper's `base` row: the shared initialisation (pretrained to copy with `pretrain_steps`,
    never trained on an agent run), measured as every recipe is
    (prompts with the tool schemas exactly when `tool_schemas` puts them into the built rows)."""
    done = Path(cfg.out) / f"seed{seed}" / BASE / "eval.json"
    if done.exists() and not cfg.force:
        return json.loads(done.read_text())
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.time()
    import torch

    s = ev.Student(AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32).eval(),
                   AutoTokenizer.from_pretrained(student_dir), TOOLS if cfg.tool_schemas else None)
    result = {"seed": seed, "name": BASE, "recipe": BASE, "threshold": None, "train_rows": 0, "steps": 0,
              "trained_tokens": 0, "build_trained_tokens": 0, "build_masked_tokens": 0,
              "decision_points": ev.decision_points(s, probe_tasks(cfg, seed)),
              **closed_loops(cfg, seed, s)}
    result["seconds"] = {"build": 0.0, "train": 0.0, "eval": round(time.time() - t0, 1)}
    done.parent.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps(result, indent=2))
    log(f"seed {seed} {BASE}: {json.dumps(_headline(result))}")
    return result


ACTIONS = {  # what an action's rendered call contains
    "rm_test": '"command": "rm tests/',
    "edit_test": '"command": "str_replace", "path": "tests/',
    "git_checkout": '"command": "git checkout tests/',
    "undo_edit": '"command": "undo_edit"',
}


def audit_rows(folder: Path, tokenizer) -> dict:
    """Count each action among the trained and the context-only assistant turns of the built rows:
    an independent check of the masks (the injected mistakes must never be trained by srft_*)."""
    import numpy as np
    import pyarrow.parquet as pq

    from pipeline import io

    eot = tokenizer.convert_tokens_to_ids("<|im_end|>")
    counts = {f"{where}_{name}": 0 for where in ("trained", "context") for name in ACTIONS}
    t = pq.ParquetDataset(io.list_files(str(folder), (".parquet",))).read(columns=["input_ids", "loss_mask"])
    for ids, mask in zip(t["input_ids"].to_pylist(), t["loss_mask"].to_pylist()):
        ids, mask = np.asarray(ids), np.asarray(mask)
        starts = [i for i in range(len(ids)) if ids[i] == eot]
        begin = 0
        for end in starts:  # one chat turn per end-of-turn token
            turn = tokenizer.decode(ids[begin:end + 1])
            if "<tool_call>" in turn and "<|im_start|>assistant" in turn:
                where = "trained" if mask[begin:end + 1].any() else "context"
                for name, needle in ACTIONS.items():
                    counts[f"{where}_{name}"] += needle in turn
            begin = end + 1
    return counts


def _rows(folder: Path) -> dict:
    import pyarrow.parquet as pq

    from pipeline import io

    t = pq.ParquetDataset(io.list_files(str(folder), (".parquet",))).read(
        columns=["num_trained_tokens", "num_masked_tokens"])
    return {"rows": t.num_rows, "trained_tokens": int(sum(t["num_trained_tokens"].to_pylist())),
            "masked_tokens": int(sum(t["num_masked_tokens"].to_pylist()))}


def _headline(r: dict) -> dict:
    d = r["decision_points"]
    out = {k: round(d[k]["p_branch" if k.startswith("mistake") else "p_action"], 3) for k in d}
    for key in ("closed_loop", "closed_loop_sampled"):
        if key in r:
            out[key.replace("closed_loop", "success")] = f"{r[key]['successes']}/{r[key]['n']}"
    return out


def run(cfg: ExperimentConfig) -> list[dict]:
    from pipeline import models

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    tokenizer = student_tokenizer(out / "student_tokenizer", cfg.student.vocab_size)
    results = []
    for seed in cfg.seeds:
        data = out / f"seed{seed}" / "data"
        shape = {k: v for k, v in asdict(cfg.student).items() if k != "vocab_size"}
        student = models.tiny_qwen2(out / f"seed{seed}" / "student_init", seed=seed,
                                    max_position_embeddings=cfg.seq_len, tokenizer=tokenizer, **shape)
        if cfg.pretrain_steps:
            student = pretrain(student, out / f"seed{seed}" / "student", steps=cfg.pretrain_steps, seed=seed,
                               threads=cfg.train_threads or 2, log=log)
        runs = training_pool(cfg, seed)
        labels = gen.label_rows(runs)
        if cfg.force or not (data / "trajectories").exists():
            t = time.time()
            stages.write_rows(pool_rows(runs, cfg.tool_schemas), data / "rows" / "runs.jsonl")
            stages.ingest(data / "rows", data / "trajectories")
            stages.write_labels(labels, data / "labels")
            log(f"seed {seed}: {len(runs)} runs ingested in {time.time() - t:.0f}s")
        sweep = seed == cfg.sweep_seed and cfg.sweep_thresholds
        for recipe in cfg.recipes:
            if recipe == BASE:
                r = evaluate_base(cfg, seed, student)
                r["train_mistake_freq"] = mistake_frequencies(runs, labels, BASE, 0.5)  # trains nothing: 0
                results.append(r)
                continue
            r = train_and_eval(cfg, seed, recipe, recipe, data / "labels", 0.5, data / "trajectories", student, True)
            r["train_mistake_freq"] = mistake_frequencies(runs, labels, recipe, 0.5)
            results.append(r)
        if sweep:
            noisy = gen.label_rows(runs, noise=cfg.sweep_noise, seed=seed, run_id=f"noise{cfg.sweep_noise}")
            stages.write_labels(noisy, data / "labels_noisy")
            for th in cfg.sweep_thresholds:
                r = train_and_eval(cfg, seed, f"sweep_{cfg.sweep_recipe}_t{th:.2f}", cfg.sweep_recipe,
                                   data / "labels_noisy", th, data / "trajectories", student, False)
                r["train_mistake_freq"] = mistake_frequencies(runs, noisy, cfg.sweep_recipe, th)
                r["noise"] = cfg.sweep_noise
                results.append(r)
        (out / "results.json").write_text(json.dumps(results, indent=2))
    from experiment.report import write_report

    write_report(results, cfg, out)
    return results


def load(argv: list[str]) -> ExperimentConfig:
    """The experiment's config from its defaults and `argv` (key=value), checked: a typo or a bad
    value is a UserError that names the key (pipeline.config.load_config, as for every stage)."""
    return load_config(ExperimentConfig, "experiment", argv)


def main(argv: list[str]) -> list[dict]:
    return run(load(argv))


if __name__ == "__main__":
    from pipeline import cli

    cli.main(main, sys.argv[1:])
