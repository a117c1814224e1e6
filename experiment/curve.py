"""Quick learning curves for a student candidate (#19), outside the pipeline:

    python -m experiment.curve OUT [steps=3000] [tools=0|1] [layers=2] [hidden=128] [heads=4] [lr=1e-2] [beta2=0.999] [init_std=0.02] [init=DIR] ...

A plain torch loop over seed `seed`'s rft runs (the resolved runs of the experiment's pool), with
the experiment's student (tokenizer, Qwen2.5 template, tiny Qwen2 of that shape), AdamW with 5%
warmup and cosine decay to `min_ratio` and gradient clipping at 1.0 as the train stage; one
document per batch row (padded, so no cross-document attention), documents added until ~0.95 x
`seq` tokens per step, as the build packs them. Every `every` steps, on 100 held-out tasks:

- cat_acc: the share of tasks where `cat B` (B the failing module) is the most likely `cat` among
  the task's modules after `ls, pytest`: does the student copy the name from the pytest output?
- fix_p: the mean probability of the whole fix call after `ls, pytest, cat B`.

At the end, greedy closed-loop success on `loop` held-out tasks (the experiment's own loop and
check). It is the quick signal used to choose candidates (docs/experiment.md, "What we tried");
the experiment itself trains through the train stage (`experiment.run`).
"""
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from experiment import evaluate as ev
from experiment import generate as gen
from experiment.env import TOOLS, make_tasks
from experiment.student import student_tokenizer
from pipeline import models

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
a = dict(kv.split("=", 1) for kv in sys.argv[2:])
steps = int(a.get("steps", 2000))
lr = float(a.get("lr", 1e-2))
layers = int(a.get("layers", 2))
hidden = int(a.get("hidden", 128))
heads = int(a.get("heads", 4))
kv = int(a.get("kv", 2))
inter = int(a.get("inter", 2 * hidden))
tools = a.get("tools", "1") == "1"
seq = int(a.get("seq", 2048))
every = int(a.get("every", 250))
nloop = int(a.get("loop", 50))
threads = int(a.get("threads", 1))
min_ratio = float(a.get("min_ratio", 0.1))
sched = a.get("sched", "cosine")
seed = int(a.get("seed", 0))
beta2 = float(a.get("beta2", 0.999))
torch.set_num_threads(threads)

tok_dir = student_tokenizer(out / "student_tokenizer", 1024)
mdir = models.tiny_qwen2(out / "student", hidden_size=hidden, num_layers=layers, num_heads=heads,
                         num_kv_heads=kv, intermediate_size=inter, max_position_embeddings=2048, seed=seed,
                         tokenizer=tok_dir)
from transformers import AutoModelForCausalLM, AutoTokenizer

if "init" in a:  # start from a saved model instead (a pretrained student, experiment/pretrain.py)
    mdir = Path(a["init"])
tok = AutoTokenizer.from_pretrained(mdir)
model = AutoModelForCausalLM.from_pretrained(mdir, dtype=torch.float32)
if "init_std" in a:  # re-initialise the weight matrices at another std (the config's is 0.02)
    torch.manual_seed(seed)
    for mod in model.modules():
        if isinstance(mod, (torch.nn.Linear, torch.nn.Embedding)):
            torch.nn.init.normal_(mod.weight, std=float(a["init_std"]))
T = TOOLS if tools else None
eot = tok.convert_tokens_to_ids("<|im_end|>")

runs = [r for r in gen.generate(make_tasks(1000 + seed, 3000, f"train{seed}"), gen.Mix(), seed) if r.resolved]


def render(msgs, gp):
    return list(tok.apply_chat_template(msgs, tools=T, add_generation_prompt=gp, tokenize=True, return_dict=True)["input_ids"])


docs = []
for r in runs:
    msgs = gen.chat(r.row["messages"])
    ids = render(msgs, False)
    mask = np.zeros(len(ids), bool)
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        s = len(render(msgs[:i], True))
        e = ids.index(eot, s)
        mask[s:e + 1] = True
    docs.append((np.array(ids), mask))
lens = [len(d[0]) for d in docs]
print(f"{len(docs)} docs, mean len {np.mean(lens):.0f}, trained/doc {np.mean([d[1].sum() for d in docs]):.0f}", flush=True)

opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, beta2), weight_decay=0.0)
warm = max(1, steps // 20)


def lam(s):
    if s < warm:
        return (s + 1) / warm
    p = min(1.0, (s - warm) / max(1, steps - warm))
    if sched == "constant":
        return 1.0
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * p))


sch = torch.optim.lr_scheduler.LambdaLR(opt, lam)
S = ev.Student(model, tok, T)
held = make_tasks(5000 + seed, 100, f"eval{seed}")


def probe():
    model.eval()
    ctx, acts, owner = [], [], []
    for ti, t in enumerate(held):
        c = ev.context_after(t, [gen.ls(), gen.pytest()])
        for m in t.modules:
            ctx.append(c)
            acts.append(gen.cat(m.path))
            owner.append((ti, m.path == t.bug.path))
    lp = S.action_logprobs(ctx, acts, batch=32)
    best = {}
    for (ti, right), v in zip(owner, lp):
        if ti not in best or v > best[ti][0]:
            best[ti] = (v, right)
    cat_acc = np.mean([b[1] for b in best.values()])
    fctx = [ev.context_after(t, [gen.ls(), gen.pytest(), gen.cat(t.bug.path)]) for t in held]
    fix_p = float(np.exp(S.action_logprobs(fctx, [gen.fix(t) for t in held], batch=32)).mean())
    model.train()
    return float(cat_acc), fix_p


rng = random.Random(seed)
order = []
log = []
t0 = time.time()
model.train()
for step in range(steps):
    batch, n = [], 0
    while n < seq * 0.95:
        if not order:
            order = list(range(len(docs)))
            rng.shuffle(order)
        j = order.pop()
        d = docs[j]
        if n + len(d[0]) > seq and batch:
            order.append(j)
            break
        batch.append(d)
        n += len(d[0])
    W = max(len(d[0]) for d in batch)
    ids = torch.zeros(len(batch), W, dtype=torch.long)
    am = torch.zeros(len(batch), W, dtype=torch.long)
    lab = torch.full((len(batch), W), -100, dtype=torch.long)
    for r, (x, m) in enumerate(batch):
        ids[r, :len(x)] = torch.from_numpy(x)
        am[r, :len(x)] = 1
        y = np.where(m, x, -100)
        lab[r, :len(x) - 1] = torch.from_numpy(y[1:])
    logits = model(input_ids=ids, attention_mask=am).logits
    loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), lab.view(-1), ignore_index=-100)
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sch.step()
    if (step + 1) % every == 0 or step == steps - 1:
        ca, fp = probe()
        rec = {"step": step + 1, "loss": round(loss.item(), 4), "cat_acc": ca, "fix_p": round(fp, 4),
               "s": round(time.time() - t0)}
        log.append(rec)
        print(json.dumps(rec), flush=True)
model.eval()
cl = ev.closed_loop(S, make_tasks(7000 + seed, nloop, f"loop{seed}"))
res = {"args": a, "log": log, "closed_loop": {k: cl[k] for k in ("successes", "n", "fixed", "submitted", "left_expert_path_at", "invalid_actions")},
       "wall_s": round(time.time() - t0)}
print(json.dumps(res["closed_loop"]), flush=True)
model.save_pretrained(out / "final")
tok.save_pretrained(out / "final")
(out / "result.json").write_text(json.dumps(res, indent=2))
