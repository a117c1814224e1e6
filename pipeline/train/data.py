"""TRAINING_ROW rows -> packed micro-batches, and the sources that feed them to each rank.

A micro-batch is the concatenation of `micro_batch_size` rows into one sequence of T tokens
(batch dimension 1, "padding-free"): documents are delimited by the rows' `cu_seqlens`, so
attention is computed per document (see `pipeline.train.model.attention_inputs`).

Labels are the *shifted* targets: ``labels[t] = input_ids[t+1]`` when token t+1 is in the same
document as t and ``loss_mask[t+1] == 1``, else -100. The trainable-token count that
normalises the loss is counted on these labels (``labels != -100``), not on `loss_mask`: a
masked-in token at a document start has no prediction and is not counted.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from pipeline import io
from pipeline.schema import TRAINING_ROW, check_version

IGNORE = -100
COLUMNS = ["input_ids", "loss_mask", "position_ids", "cu_seqlens", "traj_ids", "num_tokens"]


@dataclass
class MicroBatch:
    input_ids: torch.Tensor  # (1, T) int64
    position_ids: torch.Tensor  # (1, T) int64, restarting at 0 per document
    labels: torch.Tensor  # (1, T) int64, shifted targets, -100 where not trained
    cu_seqlens: torch.Tensor  # (D + 1,) int32 document boundaries over the T tokens
    max_seqlen: int  # longest document
    num_tokens: int  # real tokens (TRAINING_ROW.num_tokens summed)
    num_rows: int

    @property
    def num_targets(self) -> int:
        return int((self.labels != IGNORE).sum())

    def to(self, device: torch.device) -> MicroBatch:
        return MicroBatch(
            self.input_ids.to(device, non_blocking=True),
            self.position_ids.to(device, non_blocking=True),
            self.labels.to(device, non_blocking=True),
            self.cu_seqlens.to(device, non_blocking=True),
            self.max_seqlen,
            self.num_tokens,
            self.num_rows,
        )


def shifted_labels(input_ids: np.ndarray, loss_mask: np.ndarray, cu_seqlens: np.ndarray) -> np.ndarray:
    """labels[t] = input_ids[t+1] if t+1 is in t's document and loss_mask[t+1] == 1, else -100."""
    labels = np.full(len(input_ids), IGNORE, dtype=np.int64)
    labels[:-1] = np.where(loss_mask[1:] == 1, input_ids[1:], IGNORE)
    ends = cu_seqlens[1:] - 1  # the last token of each document predicts nothing
    labels[ends[ends >= 0]] = IGNORE
    return labels


def _check_row(ids, mask, pos, cu, traj_ids, seq_len: int) -> None:
    where = f"training row of trajectories {list(traj_ids)[:4]}"
    n = len(ids)
    if n == 0:
        raise ValueError(f"{where}: empty input_ids")
    if len(mask) != n or len(pos) != n:
        raise ValueError(f"{where}: input_ids/loss_mask/position_ids lengths differ ({n}, {len(mask)}, {len(pos)})")
    if n > seq_len:
        raise ValueError(f"{where}: {n} tokens exceed train.seq_len={seq_len}")
    if len(cu) < 2 or cu[0] != 0 or cu[-1] != n or np.any(np.diff(cu) <= 0):
        raise ValueError(f"{where}: cu_seqlens {list(cu)[:8]}... must rise strictly from 0 to {n}")
    expected = np.arange(n) - np.repeat(cu[:-1], np.diff(cu))
    if not np.array_equal(pos, expected):
        raise ValueError(f"{where}: position_ids do not restart at 0 at each cu_seqlens boundary")


def collate(rows: dict, seq_len: int) -> MicroBatch:
    """Concatenate a batch of TRAINING_ROW rows (column -> sequence of per-row arrays) into one
    packed micro-batch."""
    ids_l, pos_l, lab_l, cu_l = [], [], [], [np.zeros(1, dtype=np.int64)]
    offset, max_len, num_tokens = 0, 0, 0
    n_rows = len(rows["input_ids"])
    for i in range(n_rows):
        ids = np.asarray(rows["input_ids"][i], dtype=np.int64)
        mask = np.asarray(rows["loss_mask"][i], dtype=np.int64)
        pos = np.asarray(rows["position_ids"][i], dtype=np.int64)
        cu = np.asarray(rows["cu_seqlens"][i], dtype=np.int64)
        _check_row(ids, mask, pos, cu, rows["traj_ids"][i], seq_len)
        ids_l.append(ids)
        pos_l.append(pos)
        lab_l.append(shifted_labels(ids, mask, cu))
        cu_l.append(cu[1:] + offset)
        offset += len(ids)
        max_len = max(max_len, int(np.diff(cu).max()))
        num_tokens += int(rows["num_tokens"][i])
    return MicroBatch(
        input_ids=torch.from_numpy(np.concatenate(ids_l))[None],
        position_ids=torch.from_numpy(np.concatenate(pos_l))[None],
        labels=torch.from_numpy(np.concatenate(lab_l))[None],
        cu_seqlens=torch.from_numpy(np.concatenate(cu_l).astype(np.int32)),
        max_seqlen=max_len,
        num_tokens=num_tokens,
        num_rows=n_rows,
    )


def steps_per_epoch(total_rows: int, world_size: int, micro_batch_size: int, grad_accum: int) -> int:
    """Every rank runs this many steps: Ray's equal split gives each rank total_rows // world rows
    (the remainder is dropped), and a step consumes micro_batch_size * grad_accum of them."""
    per_rank = total_rows // world_size
    return per_rank // (micro_batch_size * grad_accum)


def total_steps(total_rows: int, world_size: int, micro_batch_size: int, grad_accum: int,
                epochs: int, max_steps: int) -> tuple[int, int]:
    per_epoch = steps_per_epoch(total_rows, world_size, micro_batch_size, grad_accum)
    if per_epoch == 0:
        raise ValueError(
            f"{total_rows} rows over {world_size} ranks is less than one step of "
            f"micro_batch_size x grad_accum = {micro_batch_size * grad_accum} rows per rank"
        )
    total = per_epoch * epochs
    if max_steps > 0:
        total = min(total, max_steps)
    return per_epoch, total


def held_out(traj_ids, fraction: float) -> bool:
    """Whether a row belongs to the eval set: a hash of its trajectory ids, read as a number in
    [0, 1), falls below `fraction`. Deterministic, independent of row order and of the other rows
    (adding rows never moves a row between the sets); the eval set is about `fraction` of the rows."""
    if fraction <= 0:
        return False
    digest = hashlib.sha256("\x1f".join(str(t) for t in traj_ids).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


# A source maps (epoch, micro-batches to skip) -> iterator of micro-batches for this rank.
Source = Callable[[int, int], Iterator[MicroBatch]]


def ray_source(seq_len: int, micro_batch_size: int, shuffle: bool, shuffle_buffer_rows: int, seed: int,
               name: str = "train", drop_last: bool = True) -> Source:
    """This rank's shard of the `name` dataset given to the TorchTrainer. Ray's split is
    equal (every rank gets total // world rows) and, with preserve_order, deterministic, so the
    data position after a restart is a count of micro-batches to skip."""
    import ray.train

    shard = ray.train.get_dataset_shard(name)

    def batches(epoch: int, skip: int) -> Iterator[MicroBatch]:
        it = shard.iter_torch_batches(
            batch_size=micro_batch_size,
            drop_last=drop_last,
            collate_fn=lambda rows: collate(rows, seq_len),
            local_shuffle_buffer_size=shuffle_buffer_rows if shuffle else None,
            local_shuffle_seed=(seed * 100_003 + epoch) if shuffle else None,
        )
        for i, mb in enumerate(it):
            if i >= skip:
                yield mb

    return batches


def local_source(uri: str, rank: int, world_size: int, seq_len: int, micro_batch_size: int,
                 shuffle: bool, seed: int, eval_fraction: float = 0.0, side: str = "all",
                 drop_last: bool = True) -> tuple[Source, int]:
    """Without Ray (torchrun): read the rows with pyarrow, keep the `side` ("train": not held
    out, "eval": held out, "all"), split them equally and deterministically (row i -> rank
    i % world, remainder dropped). Returns (source, total rows)."""
    table = io.read_table(uri, TRAINING_ROW)
    check_version(table.schema, uri)
    if side != "all":
        keep = [held_out(ids, eval_fraction) == (side == "eval") for ids in table.column("traj_ids").to_pylist()]
        table = table.filter(keep)
    total = table.num_rows
    usable = (total // world_size) * world_size
    cols = {c: table.column(c).to_pylist() for c in COLUMNS}

    def batches(epoch: int, skip: int) -> Iterator[MicroBatch]:
        order = list(range(usable))
        if shuffle:
            random.Random(seed * 100_003 + epoch).shuffle(order)
        mine = order[rank::world_size]
        n_batches = len(mine) // micro_batch_size if drop_last else ceil_div(len(mine), micro_batch_size)
        for b in range(skip, n_batches):
            idx = mine[b * micro_batch_size:(b + 1) * micro_batch_size]
            yield collate({c: [cols[c][i] for i in idx] for c in COLUMNS}, seq_len)

    return batches, total


def synthetic_rows(n_rows: int, seq_len: int, vocab: int, seed: int, docs_per_row: int = 4,
                   trained_fraction: float = 0.5) -> dict:
    """Random packed rows for benchmarks: `docs_per_row` documents of random lengths filling
    exactly seq_len tokens, the second half of each document trained."""
    rng = np.random.default_rng(seed)
    rows = {c: [] for c in COLUMNS}
    for r in range(n_rows):
        cuts = np.sort(rng.choice(np.arange(1, seq_len), size=docs_per_row - 1, replace=False))
        cu = np.concatenate([[0], cuts, [seq_len]]).astype(np.int64)
        lens = np.diff(cu)
        pos = np.arange(seq_len) - np.repeat(cu[:-1], lens)
        mask = (pos >= np.repeat(np.ceil(lens * (1 - trained_fraction)), lens)).astype(np.int8)
        rows["input_ids"].append(rng.integers(0, vocab, seq_len))
        rows["loss_mask"].append(mask)
        rows["position_ids"].append(pos)
        rows["cu_seqlens"].append(cu)
        rows["traj_ids"].append([f"synthetic-{r}-{d}" for d in range(docs_per_row)])
        rows["num_tokens"].append(seq_len)
    return rows


def doc_attention_flops(cu_seqlens: torch.Tensor, num_layers: int, attn_dim: int) -> float:
    """Causal attention FLOPs of one training step over these documents (forward + backward):
    per document of s tokens the score and value matmuls each cost 2 * attn_dim * s(s+1)/2
    FLOPs forward, and backward costs twice the forward, so 3 * 2 * 2 * attn_dim * s(s+1)/2 =
    6 * attn_dim * s(s+1) per layer."""
    lens = (cu_seqlens[1:] - cu_seqlens[:-1]).double()
    return float(6 * num_layers * attn_dim * (lens * (lens + 1)).sum())


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)
