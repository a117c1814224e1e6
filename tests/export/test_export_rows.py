"""Export rows (pipeline/export): the built rows in TRL's and axolotl's pretokenized forms, masks
unchanged; loaded by TRL's own dataset preparation and collator."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import tables
from pipeline.errors import StageFailed, UserError
from pipeline.schema import TRAINING_ROW

pytest.importorskip("trl")


def _rows(n_rows: int = 6, seed: int = 0) -> list[dict]:
    """Packed rows like the build's: documents of a prompt then steps, every third step masked,
    a document's first token never trained (pipeline.build.packing.pack_row)."""
    from pipeline.build.packing import Doc, pack_row

    rng = np.random.default_rng(seed)
    rows = []
    for r in range(n_rows):
        docs = []
        for d in range(int(rng.integers(1, 4))):
            n = int(rng.integers(12, 60))
            mask = np.zeros(n, dtype=np.int8)
            t, k = 3, 0
            while t < n:
                step = int(rng.integers(3, 9))
                mask[t:t + step] = 0 if k % 3 == 2 else 1
                t, k = t + step, k + 1
            docs.append(Doc(f"traj-{r}-{d}", rng.integers(10, 500, n).astype(np.int32), mask))
        rows.append(pack_row(docs, "srft"))
    return rows


def _write(path, rows: list[dict]) -> str:
    path.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=TRAINING_ROW), path / "part-0.parquet")
    return str(path)


def _export(rows_uri: str, out, fmt: str, *extra: str) -> dict:
    from jobs.export_rows import main

    return main([f"rows={rows_uri}", f"format={fmt}", f"output={out}", *extra])


def _read(out) -> list[dict]:
    from pipeline import io

    files = io.list_files(str(out), (".parquet",))
    return [r for f in files if "_errors" not in f for r in pq.read_table(f).to_pylist()]


def _trained_positions(row: dict) -> np.ndarray:
    """What our trainer trains in a row: loss_mask 1 except each document's first token."""
    mask = np.asarray(row["loss_mask"]).astype(bool)
    mask[np.asarray(row["cu_seqlens"])[:-1]] = False
    return mask


def test_trl_packed_masks_survive_trl_preparation_and_collator(tmp_path, tiny_qwen2_path):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    rows = _rows()
    summary = _export(_write(tmp_path / "rows", rows), tmp_path / "trl", "trl")
    assert summary["rows_in"] == summary["rows_exported"] == len(rows) and summary["rows_quarantined"] == 0
    assert summary["trained_tokens_in"] == summary["trained_tokens_out"] > 0
    exported = _read(tmp_path / "trl")
    assert len(exported) == len(rows)

    # TRL's own preparation (completion_mask -> labels) and padding-free collator.
    args = SFTConfig(output_dir=str(tmp_path / "sft"), completion_only_loss=True, padding_free=True,
                     max_length=None, per_device_train_batch_size=2, report_to=[], use_cpu=True)
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen2_path)
    tok = AutoTokenizer.from_pretrained(tiny_qwen2_path)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(exported), processing_class=tok)
    prepared = trainer.train_dataset
    by_traj = {tuple(r["traj_ids"]): r for r in rows}
    for example in prepared:
        row = by_traj[tuple(example["traj_ids"])]
        assert example["input_ids"] == list(row["input_ids"])
        batch = trainer.data_collator([example])
        labels = batch["labels"][0].numpy()
        expected = np.where(_trained_positions(row), np.asarray(row["input_ids"]), -100)
        assert np.array_equal(labels, expected)  # masked steps and document starts stay untrained
        # Documents stay isolated: position_ids restart where ours do, cu_seq_lens are ours.
        assert np.array_equal(batch["position_ids"][0].numpy(), np.asarray(row["position_ids"]))
        assert batch["cu_seq_lens_q"].tolist() == list(row["cu_seqlens"])


def test_axolotl_one_document_per_example_with_labels(tmp_path):
    rows = _rows(seed=1)
    summary = _export(_write(tmp_path / "rows", rows), tmp_path / "axo", "axolotl")
    exported = _read(tmp_path / "axo")
    docs = [(row, k) for row in rows for k in range(len(row["traj_ids"]))]
    assert summary["unpacked"] and summary["examples"] == len(exported) == len(docs)
    assert set(exported[0]) == {"input_ids", "attention_mask", "labels"}  # exactly axolotl's columns
    for example, (row, k) in zip(exported, docs):
        s, e = row["cu_seqlens"][k], row["cu_seqlens"][k + 1]
        ids = np.asarray(row["input_ids"][s:e])
        assert example["input_ids"] == ids.tolist() and set(example["attention_mask"]) == {1}
        expected = np.where(_trained_positions(row)[s:e], ids, -100)
        assert example["labels"] == expected.tolist()
    assert summary["trained_tokens_in"] == summary["trained_tokens_out"]


def test_bad_row_is_quarantined_not_fatal(tmp_path):
    rows = _rows(n_rows=5, seed=2)
    bad = dict(rows[0], position_ids=np.zeros(len(rows[0]["input_ids"]), dtype=np.int32))
    summary = _export(_write(tmp_path / "rows", [bad, *rows[1:]]), tmp_path / "out", "trl", "unpack=true")
    assert summary["rows_in"] == 5 == summary["rows_exported"] + summary["rows_quarantined"]
    assert summary["rows_quarantined"] == 1
    errors = tables.read(str(tmp_path / "out" / "_errors")).to_pylist()  # the side table, as Delta reads it
    assert errors[0]["traj_ids"] == list(bad["traj_ids"]) and "position_ids" in errors[0]["reason"]
    exported = _read(tmp_path / "out")
    assert {e["traj_id"] for e in exported} == {t for r in rows[1:] for t in r["traj_ids"]}


def test_mostly_bad_rows_fail_and_bad_format_is_a_user_error(tmp_path):
    rows = _rows(n_rows=2, seed=3)
    bad = [dict(r, cu_seqlens=[0, 1]) for r in rows]
    with pytest.raises(StageFailed, match="could not be exported"):
        _export(_write(tmp_path / "rows", bad), tmp_path / "out", "trl")
    with pytest.raises(UserError, match="format="):
        _export(str(tmp_path / "rows"), tmp_path / "out2", "megatron")


def test_real_shared_trajectories_round_trip(tmp_path, shared_data, qwen_tokenizer_path):
    """Real SWE-smith / SWE-agent trajectories, masked by the build's MaskBuilder with the real Qwen
    tokenizer and packed by its pack_row, export to both formats with every mask unchanged."""
    from pipeline import io
    from pipeline.build.builder import Built, Conversation, MaskBuilder
    from pipeline.build.packing import Doc, pack_row
    from pipeline.ingest.read import SUFFIXES, read_file

    trajs = [rec for uri in io.list_files(str(shared_data), SUFFIXES) for rec in read_file(uri, {})
             if rec.get("quarantine_reason") is None and rec["num_steps"] > 0]
    assert len(trajs) >= 3
    builder = MaskBuilder(str(qwen_tokenizer_path), max_len=32768)
    built = builder.build([Conversation(t["traj_id"], t["messages"], frozenset({1, 3}), t.get("tools"))
                           for t in trajs])
    docs = [Doc(b.traj_id, b.input_ids, b.loss_mask, b.num_masked_tokens) for b in built if isinstance(b, Built)]
    assert len(docs) >= 3
    rows = [pack_row(docs[i:i + 2], "srft") for i in range(0, len(docs), 2)]
    rows_uri = _write(tmp_path / "rows", rows)
    trl = _export(rows_uri, tmp_path / "trl", "trl")
    axo = _export(rows_uri, tmp_path / "axo", "axolotl")
    want = sum(int(_trained_positions(r).sum()) for r in rows)
    assert trl["trained_tokens_out"] == axo["trained_tokens_out"] == want > 0
    assert axo["examples"] == len(docs) and trl["examples"] == len(rows)
    for example, row in zip(_read(tmp_path / "trl"), rows):
        assert example["completion_mask"] == list(row["loss_mask"])
        assert example["seq_lengths"] == np.diff(row["cu_seqlens"]).tolist()
