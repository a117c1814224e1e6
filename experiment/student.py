"""The experiment's student: a tiny Qwen2 with a small BPE vocabulary trained on the environment.

Why not the Qwen2.5 vocabulary itself. With 151,936 entries, the tied embedding, the lm_head and
the softmax over the vocabulary are almost the whole cost of a tiny student: hidden 64 and 128
measured the same 2.4-2.6 CPU-s per 2,048-token step, and at the 30-minute budget the student
stopped at ~13k trained tokens, before it had learnt the tool-call format (docs/experiment.md,
"How the student was chosen"). The environment's text is narrow (file names, Python, pytest
output, the tool-call JSON), so ~630 entries cover it in whole words (`vocab_size` is only a cap),
and a training step is ~25x cheaper.

What stays the same as production, so the pipeline is still exercised as a user would run it:

- Qwen2.5's normalizer, byte-level alphabet and decoder, copied from the real Qwen tokenizer:
  any text round-trips and held-out tasks have no unknown token;
- Qwen2.5's added tokens with the same flags (`<|im_start|>`, `<|im_end|>`, `<|endoftext|>` are
  special; `<tool_call>` and `</tool_call>` are plain added tokens, as in Qwen2.5);
- Qwen2.5's own chat template, tool schemas and `tool_calls` rendering included (the build stage
  probes it like any other template).

What differs, and why: the pre-tokenizer splits text into runs of letters, single digits, runs of
whitespace and runs of other characters (`WORDS`), so a word is the same token wherever it
stands. With Qwen's regex the buggy module's name is three different tokens in the three places
the agent must connect (`_ledger` in `FAILED tests/test_ledger.py`, ` ledger` in `cat ledger.py`,
`ledger` in `"path": "ledger.py"`): the student would have to learn 16 x 3 associations before it
could copy a name, where one token per name makes it a copy, the first thing a 2-layer attention
model learns (an induction head). That is a design choice for a student trained for minutes, not
a measured necessity: the one comparison made (docs/experiment.md) was confounded by the
tool-schema key order that ingest then sorted. The price is 1.4x more tokens per trajectory (937
vs. 676 with Qwen's regex).

Only the merges are new: `tokenizers`' BPE trainer learns them from conversations of a fixed pool
of scripted runs (task seed `CORPUS_SEED`, disjoint from the training and held-out task seeds),
rendered with that template. The trainer is deterministic for a given corpus, so every seed and
recipe shares one tokenizer, and a re-run rebuilds the same one (tests/experiment/test_student.py).
"""

from __future__ import annotations

from pathlib import Path

CORPUS_SEED = 424242
# Pre-tokens: runs of letters, single digits, runs of whitespace, runs of other characters.
WORDS = r"[A-Za-z]+|[0-9]|\s+|[^A-Za-z0-9\s]+"
CORPUS_TASKS = 300


def corpus(qwen) -> list[str]:
    """Conversations of every run kind, rendered with Qwen2.5's template (tools included)."""
    from experiment import generate as gen
    from experiment.env import TOOLS, make_tasks

    runs = gen.generate(make_tasks(CORPUS_SEED, CORPUS_TASKS, "corpus"), gen.Mix(), CORPUS_SEED)
    return [qwen.apply_chat_template(gen.chat(run.row["messages"]), tools=TOOLS, tokenize=False) for run in runs]


def student_tokenizer(dest: str | Path, vocab_size: int = 1024) -> Path:
    """Train (once) and save the student's tokenizer at `dest`."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from pipeline.models import qwen_tokenizer

    dest = Path(dest)
    if (dest / "tokenizer_config.json").exists():
        return dest
    qwen = AutoTokenizer.from_pretrained(qwen_tokenizer(dest.parent / f"{dest.name}.qwen"))
    backend = qwen.backend_tokenizer
    added = sorted(qwen.added_tokens_decoder.items())  # (id, AddedToken), in Qwen's order

    bpe = Tokenizer(models.BPE())
    bpe.normalizer = backend.normalizer
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        # a word is a token of its own wherever it stands (see the module docstring)
        pre_tokenizers.Split(Regex(WORDS), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    bpe.decoder = backend.decoder

    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte: nothing is unknown
        special_tokens=[t.content for _, t in added if t.special],
    )
    bpe.train_from_iterator(corpus(qwen), trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.add_tokens([t for _, t in added if not t.special])  # <tool_call>, </tool_call>, ...: atomic, not special
    tok.chat_template = qwen.chat_template
    tok.save_pretrained(dest)
    return dest
