"""Fast train-side checks without Ray: packed positions, the eval split, schedules, config
validation, MFU peaks, and the run identity."""

from __future__ import annotations

import dataclasses
import itertools
import os
import time

import pytest
import torch

from pipeline.errors import UserError
from pipeline.train import checkpoint as ckpt
from pipeline.train.config import TrainConfig, TrainParams
from pipeline.train.data import collate, held_out
from pipeline.train.loop import lr_lambda
from pipeline.train.metrics import peak_flops
from pipeline.train.model import packed_logits
from pipeline.train.resume import run_identity
from tests.train.helpers import make_rows, write_rows


def _micro_batch(rows: dict, idx: list[int], seq_len: int = 4096):
    return collate({k: [rows[k][i] for i in idx] for k in rows}, seq_len)


# --- position restart (#12 item 4) -----------------------------------------------------------

def test_collated_position_ids_restart_at_every_document():
    """Two packed rows of several documents each: position_ids restart at 0 at every document
    boundary of the micro-batch (not per row, not once per micro-batch)."""
    rows = make_rows(2, seed=4, docs=(3, 3))
    mb = _micro_batch(rows, [0, 1])
    cu = mb.cu_seqlens.tolist()
    assert len(cu) == 7  # 6 documents
    expected = torch.cat([torch.arange(b - a) for a, b in itertools.pairwise(cu)])
    assert mb.position_ids[0].tolist() == expected.tolist()


def test_packed_forward_with_absolute_positions_equals_each_document_alone():
    """Rotary attention inside isolated documents is offset-invariant, so a Qwen2 cannot see
    wrong positions; GPT-2's learned absolute position embeddings can. The packed micro-batch
    (collator's position_ids, documents isolated) must give each document's logits run alone
    from position 0."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=2048, n_positions=256, n_embd=32, n_layer=2, n_head=2,
                        bos_token_id=0, eos_token_id=0)
    lm = GPT2LMHeadModel._from_config(config, attn_implementation="sdpa").eval()
    mb = _micro_batch(make_rows(2, seed=6, docs=(2, 3)), [0, 1])
    cu = mb.cu_seqlens.tolist()
    with torch.no_grad():
        packed = packed_logits(lm, mb)[0]
        alone = torch.cat([lm(mb.input_ids[:, a:b]).logits[0] for a, b in itertools.pairwise(cu)])
        shifted = packed_logits(lm, dataclasses.replace(mb, position_ids=torch.arange(cu[-1])[None]))[0]
    torch.testing.assert_close(packed, alone, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(shifted, alone, atol=1e-3)  # the model does see positions


# --- eval split -------------------------------------------------------------------------------

def test_held_out_rows_are_deterministic_order_free_and_about_the_fraction():
    ids = [[f"traj-{i}", f"traj-{i}-b"] for i in range(4000)]
    chosen = [held_out(t, 0.1) for t in ids]
    assert chosen == [held_out(t, 0.1) for t in reversed(ids)][::-1]
    assert 0.08 < sum(chosen) / len(ids) < 0.12
    assert not any(held_out(t, 0.0) for t in ids)
    # A row held out at a fraction stays held out at a larger one (a hash threshold).
    assert all(held_out(t, 0.2) for t, c in zip(ids, chosen) if c)


# --- schedules, MFU ---------------------------------------------------------------------------

def test_lr_schedules():
    cos, lin, const = (lr_lambda(2, 12, 0.1, s) for s in ("cosine", "linear", "constant"))
    assert [cos(0), cos(1)] == [pytest.approx(1 / 3), pytest.approx(2 / 3)]
    assert cos(2) == lin(2) == const(2) == pytest.approx(1.0)
    assert cos(11) == pytest.approx(0.1) and lin(11) == pytest.approx(0.1) and const(11) == 1.0
    assert cos(6) > lin(6)  # cosine stays high longer in the first half


def test_mfu_peak_is_unknown_on_cpu():
    assert peak_flops(torch.device("cpu"), "bfloat16", None) is None
    assert peak_flops(torch.device("cpu"), "float32", 1e12) is None  # not even when given
    assert TrainParams().peak_flops_per_device is None


# --- defaults and validation ------------------------------------------------------------------

def test_production_defaults():
    t = TrainParams()
    assert (t.lr, t.lr_schedule, t.epochs, t.seq_len, t.param_dtype) == (5e-5, "cosine", 3, 32768, "auto")
    assert ckpt.resolved_param_dtype("auto", on_gpu=True) == "bfloat16"
    assert ckpt.resolved_param_dtype("auto", on_gpu=False) == "float32"


@pytest.mark.parametrize("change, key", [
    ({"train": {"lr": 0.0}}, "train.lr"),
    ({"train": {"epochs": 0}}, "train.epochs"),
    ({"train": {"max_steps": 0}}, "train.max_steps"),
    ({"train": {"param_dtype": "int8"}}, "train.param_dtype"),
    ({"train": {"lr_schedule": "step"}}, "train.lr_schedule"),
    ({"train": {"eval_fraction": 1.0}}, "train.eval_fraction"),
    ({"train": {"eval_fraction": 0.1}, "eval_data": "/x"}, "train.eval_fraction"),
    ({"scaling": {"num_workers": 0}}, "scaling.num_workers"),
    ({"resume": "sometimes"}, "resume"),
    ({"resume": "never", "resume_from": "/ckpt"}, "resume"),
    ({"tracking": "comet"}, "tracking"),
])
def test_validate_names_the_key(change, key):
    cfg = TrainConfig(data="d", model="m", output="o")
    for k, v in change.items():
        if isinstance(v, dict):
            setattr(cfg, k, dataclasses.replace(getattr(cfg, k), **v))
        else:
            setattr(cfg, k, v)
    with pytest.raises(UserError, match=key.replace(".", r"\.")):
        cfg.validate()
    TrainConfig(data="d", model="m", output="o").validate()  # the defaults pass


# --- run identity -----------------------------------------------------------------------------

def test_identity_covers_data_model_and_training_config_only(tmp_path, small_qwen2_path):
    data = write_rows(tmp_path / "a", make_rows(4, seed=1))
    cfg = TrainConfig(data=data, model=str(small_qwen2_path), output=str(tmp_path / "out"))
    base = run_identity(cfg)
    assert run_identity(cfg) == base
    # Logging, output, checkpointing and speed knobs keep the identity.
    same = dataclasses.replace(cfg, output="/elsewhere", tracking="mlflow", run_name="other",
                               train=dataclasses.replace(cfg.train, log_every_steps=5, checkpoint_every_steps=7,
                                                         activation_checkpointing=False, export_dtype="float32"))
    assert run_identity(same)["identity"] == base["identity"]
    # What is trained changes it: the config ...
    lr = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, lr=1e-4))
    assert run_identity(lr)["config"] != base["config"]
    gpu = dataclasses.replace(cfg, scaling=dataclasses.replace(cfg.scaling, use_gpu=True))  # auto -> bf16
    assert run_identity(gpu)["identity"] != base["identity"]
    # ... and the data: other rows, or the same file rewritten.
    other = dataclasses.replace(cfg, data=write_rows(tmp_path / "b", make_rows(4, seed=2)))
    assert run_identity(other)["data"] != base["data"]
    f = os.path.join(data, "part-000.parquet")
    later = time.time() + 5
    os.utime(f, (later, later))
    assert run_identity(cfg)["data"] != base["data"]
    assert run_identity(cfg)["model"] == base["model"]
