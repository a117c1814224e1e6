"""FSDP2 numerics without Ray: gloo process groups spawned from the test, tiny real Qwen2."""

from __future__ import annotations

import itertools
import json
import os

import pytest
import torch
import torch.nn.functional as F

from pipeline.train import checkpoint as ckpt
from pipeline.train.config import TrainParams
from pipeline.train.data import collate
from pipeline.train.loop import forward_backward, lr_lambda, make_optimizer, train_step
from pipeline.train.model import build, num_params, packed_logits
from tests.train.helpers import make_rows, spawn

ROWS = 8


def _batch(rows: dict, idx: list[int]):
    return collate({k: [rows[k][i] for i in idx] for k in rows}, 4096)


def _build(model_path, world: int, **kw):
    from torch.distributed.device_mesh import init_device_mesh
    from transformers import AutoConfig

    mesh = init_device_mesh("cpu", (world,))
    kw.setdefault("param_dtype", "float32")
    return build(AutoConfig.from_pretrained(model_path), torch.device("cpu"), mesh, weights=str(model_path), **kw)


def _full_grads(model) -> dict[str, torch.Tensor]:
    out = {}
    for name, p in model.lm.named_parameters():
        g = p.grad
        out[name] = (g.full_tensor() if hasattr(g, "full_tensor") else g).clone()
    return out


def _grads_worker(rank, world, model_path, out, grad_accum, rows_seed):
    """Rank r trains rows r, r+world, ...; split into grad_accum micro-batches."""
    rows = make_rows(ROWS, seed=rows_seed)
    model = _build(model_path, world, activation_checkpointing=True, ce_chunk_tokens=16)
    mine = list(range(rank, ROWS, world))
    per = len(mine) // grad_accum
    mbs = [_batch(rows, mine[i * per:(i + 1) * per]) for i in range(grad_accum)]
    loss, n = forward_backward(model, mbs, torch.device("cpu"))
    grads = _full_grads(model)
    if rank == 0:
        torch.save({"loss": loss, "n": n, "grads": grads}, out)


def _reference(model_path, rows: dict):
    """Plain transformers, no packing: every document run alone, token CE over the shifted
    loss mask, mean over all trained tokens of the batch."""
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    total, n = 0.0, 0
    for i in range(len(rows["input_ids"])):
        ids = torch.tensor(rows["input_ids"][i])
        mask = torch.tensor(rows["loss_mask"][i])
        cu = rows["cu_seqlens"][i]
        for a, b in itertools.pairwise(cu):
            logits = lm(ids[a:b][None]).logits[0, :-1]
            target = ids[a + 1:b]
            keep = mask[a + 1:b] == 1
            total = total + F.cross_entropy(logits[keep], target[keep], reduction="sum")
            n += int(keep.sum())
    loss = total / n
    loss.backward()
    return float(loss.detach()), n, {k: p.grad.clone() for k, p in lm.named_parameters()}


def test_fsdp_loss_and_grads_equal_single_process_full_batch(small_qwen2_path, tmp_path):
    world, grad_accum = 2, 2
    out = str(tmp_path / "grads.pt")
    spawn(_grads_worker, world, str(small_qwen2_path), out, grad_accum, 0)
    got = torch.load(out)
    loss, n, grads = _reference(small_qwen2_path, make_rows(ROWS, seed=0))
    assert got["n"] == n
    assert got["loss"] == pytest.approx(loss, rel=1e-5)
    assert set(got["grads"]) == set(grads)
    for k, g in grads.items():
        torch.testing.assert_close(got["grads"][k], g, rtol=1e-4, atol=1e-6, msg=k)


def _masked_worker(rank, world, model_path, out):
    """The same batch twice; the second time every *masked* target id that is not context for a
    trained token (a trailing masked step, and a whole masked document) is replaced."""
    rows = make_rows(2, seed=3, docs=(2, 2))
    rows["loss_mask"][0] = list(rows["loss_mask"][0])
    cu = rows["cu_seqlens"][0]
    # Document 0 of row 0 ends with a masked step: mask its last 6 tokens. Document 1 of row 1: all masked.
    for t in range(cu[1] - 6, cu[1]):
        rows["loss_mask"][0][t] = 0
    cu1 = rows["cu_seqlens"][1]
    rows["loss_mask"][1] = [0 if cu1[1] <= t < cu1[2] else m for t, m in enumerate(rows["loss_mask"][1])]
    results = []
    for variant in range(2):
        if variant == 1:
            rows["input_ids"][0] = list(rows["input_ids"][0])
            for t in range(cu[1] - 6, cu[1]):
                rows["input_ids"][0][t] = (rows["input_ids"][0][t] * 7 + 1) % 1900 + 10
            rows["input_ids"][1] = [((x * 13 + 5) % 1900 + 10) if cu1[1] <= t < cu1[2] else x
                                    for t, x in enumerate(rows["input_ids"][1])]
        model = _build(model_path, world, activation_checkpointing=False)
        loss, n = forward_backward(model, [_batch(rows, [rank])], torch.device("cpu"))
        results.append((loss, n, _full_grads(model)))
    if rank == 0:
        torch.save(results, out)


def test_masked_tokens_contribute_exactly_zero_gradient(small_qwen2_path, tmp_path):
    out = str(tmp_path / "masked.pt")
    spawn(_masked_worker, 2, str(small_qwen2_path), out)
    (l0, n0, g0), (l1, n1, g1) = torch.load(out)
    assert n0 == n1 and l0 == l1
    for k in g0:
        assert torch.equal(g0[k], g1[k]), k  # bit-identical, not merely close


def test_shifted_labels_respect_mask_and_document_boundaries():
    rows = {"input_ids": [[5, 6, 7, 8, 9, 10]], "loss_mask": [[1, 0, 1, 1, 1, 1]],
            "position_ids": [[0, 1, 2, 0, 1, 2]], "cu_seqlens": [[0, 3, 6]], "traj_ids": [["a", "b"]],
            "num_tokens": [6]}
    mb = collate(rows, 16)
    # token 0 (mask 1) has no prediction; 7 <- 6; 8 starts doc b: not predicted from 7; 9, 10 trained.
    assert mb.labels.tolist() == [[-100, 7, -100, 9, 10, -100]]
    assert mb.num_targets == 3
    bad = dict(rows, position_ids=[[0, 1, 2, 3, 4, 5]])
    with pytest.raises(ValueError, match="position_ids"):
        collate(bad, 16)
    with pytest.raises(ValueError, match="seq_len"):
        collate(rows, 4)


def test_packed_row_logits_equal_each_document_alone(small_qwen2_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    rows = make_rows(2, seed=5, docs=(3, 3))
    config = AutoConfig.from_pretrained(small_qwen2_path)
    ref = AutoModelForCausalLM.from_pretrained(small_qwen2_path, dtype=torch.float32)
    for impl in ("sdpa", "eager"):
        model = build(config, torch.device("cpu"), None, weights=str(small_qwen2_path), attn_implementation=impl,
                      activation_checkpointing=False)
        mb = _batch(rows, [0, 1])  # two packed rows -> one sequence of 6 documents
        with torch.no_grad():
            packed = packed_logits(model.lm, mb)[0]
            cu = mb.cu_seqlens.tolist()
            alone = torch.cat([ref(mb.input_ids[:, a:b]).logits[0] for a, b in itertools.pairwise(cu)])
            unmasked = ref(mb.input_ids).logits[0]
        torch.testing.assert_close(packed, alone, rtol=1e-4, atol=1e-4)
        assert not torch.allclose(unmasked, alone, atol=1e-3)  # the isolation is doing something


def _train_worker(rank, world, model_path, out, steps):
    """A few AdamW steps on one fixed batch; then export and the FSDP model's logits on a probe."""
    from transformers import AutoConfig

    rows = make_rows(4, seed=1)
    model = _build(model_path, world, activation_checkpointing=True)
    t = TrainParams(lr=3e-3, warmup_steps=1)
    opt = make_optimizer(model, t)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(t.warmup_steps, steps, 0.0))
    counts = num_params(AutoConfig.from_pretrained(model_path))
    losses = []
    mbs = [_batch(rows, [rank * 2, rank * 2 + 1])]
    for _ in range(steps):
        m = train_step(model, opt, sched, mbs, torch.device("cpu"), 1.0, counts["matmul"],
                       (int(counts["layers"]), int(counts["attn_dim"])))
        losses.append(m["loss"])
    probe = _batch(make_rows(1, seed=9, docs=(1, 1)), [0])  # one document: plain causal
    model.eval()
    with torch.no_grad():
        model.unshard()  # the root's params (embedding, lm_head): we call the inner HF model directly
        full = packed_logits(model.lm, probe)
        model.reshard()
    ckpt.export_hf(model.lm, str(model_path), os.path.join(out, "hf"), torch.float32)
    if rank == 0:
        torch.save({"losses": losses, "logits": full, "probe": probe, "metrics": m}, os.path.join(out, "train.pt"))


def test_fsdp_training_lowers_loss_and_export_reloads_with_same_logits(small_qwen2_path, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spawn(_train_worker, 2, str(small_qwen2_path), str(tmp_path), 6)
    got = torch.load(tmp_path / "train.pt", weights_only=False)
    losses = got["losses"]
    assert losses[-1] < losses[0] - 0.5, losses
    m = got["metrics"]
    assert m["grad_norm"] > 0 and m["flops"] > 0 and m["trained_tokens"] > 0
    export = tmp_path / "hf"
    assert (export / "model.safetensors").exists() and (export / "tokenizer_config.json").exists()
    assert json.loads((export / "config.json").read_text())["dtype"] == "float32"
    lm = AutoModelForCausalLM.from_pretrained(export)
    AutoTokenizer.from_pretrained(export)
    probe = got["probe"]
    with torch.no_grad():
        logits = lm(probe.input_ids).logits  # one document: plain causal attention
    torch.testing.assert_close(logits, got["logits"], rtol=1e-4, atol=1e-4)
    # and the weights really changed from the initial model
    init = AutoModelForCausalLM.from_pretrained(small_qwen2_path)
    assert not torch.allclose(init.model.embed_tokens.weight, lm.model.embed_tokens.weight)
