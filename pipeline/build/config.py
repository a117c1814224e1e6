from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from omegaconf import MISSING

from pipeline.errors import UserError
from pipeline.outcome import UNKNOWN_OUTCOME_CHOICES
from pipeline.schema import LABELS

# The paper's table (arXiv 2605.10674, Table 1): RFT, the naive mix and SRFT on the mix, plus the
# unresolved-only pair that isolates the mask. mix_nomask is the naive mix: every run, no mask.
RECIPES = ("rft", "unresolved_nomask", "srft_unresolved", "mix_nomask", "srft_mix")
LABEL_RECIPES = ("srft_unresolved", "srft_mix")  # the recipes that read step labels
# The least max_seq_len / pack.seq_len accepted: the chat template's system prompt, a task and one
# agent step (assistant turn + observation) never fit in fewer tokens, so a smaller limit would
# exclude every trajectory (overlong_no_whole_step) and build nothing. A static floor, checked
# before any work; the per-row check still excludes a row whose first step does not fit.
MIN_SEQ_LEN = 256


@dataclass
class MaskConfig:
    # A step of an unresolved trajectory is masked (kept in context, loss 0) when its label is one
    # of `labels` and its confidence is at least `threshold`.
    labels: list[str] = field(default_factory=lambda: ["mistake"])
    threshold: float = 0.5  # inclusive at float32, the precision confidences are stored in (0.9 masks 9/10)
    # Unresolved trajectories without a label for every step: `exclude` (counted) or `train_all`.
    unlabeled: str = "exclude"


@dataclass
class PackConfig:
    enabled: bool = True  # pack several documents per row (cu_seqlens, per-document position_ids)
    seq_len: int = 32768  # tokens per packed row (a document never exceeds it)
    window: int = 256  # documents held for best-fit decreasing
    max_open_bins: int = 64  # partly filled rows kept open for later, smaller documents
    target_fill: float = 0.995  # a row at least this full is written at once


@dataclass
class BuildConfig:
    trajectories: str = MISSING  # TRAJECTORY shards (ingest output); local, s3:// or hf://
    labels: Optional[str] = None  # noqa: UP045 - OmegaConf needs Optional; STEP_LABEL shards (label output); required by srft_* recipes
    output: str = MISSING  # TRAINING_ROW shards; _errors/, _excluded/, _summary.json beside them
    allow_empty: bool = False  # accept a run that read rows and wrote none (run_stage fails it otherwise)
    model: str = MISSING  # the student: a folder or URI holding its tokenizer and chat template
    chat_template: Optional[str] = None  # noqa: UP045 - OmegaConf needs Optional; a .jinja file that replaces the model's own template
    end_of_turn: Optional[str] = None  # noqa: UP045 - OmegaConf needs Optional; end-of-turn token; default: found from the template
    recipe: str = "srft_mix"  # rft | unresolved_nomask | srft_unresolved | mix_nomask (naive mix) | srft_mix
    # resolved=null trajectories: `unresolved` (trained like failed runs, masks from their labels
    # under srft_*) or `exclude` (resolution_unknown). Same value as label's; see pipeline/outcome.py.
    unknown_outcome: str = "unresolved"
    max_seq_len: int = 32768  # tokens per document (SWE-smith's 32k); longer ones: see overlong; at least 256 (MIN_SEQ_LEN)
    overlong: str = "truncate"  # truncate (at a step boundary) | drop
    parse_tool_arguments: bool = True  # tool_calls[].function.arguments JSON text -> object
    mask: MaskConfig = field(default_factory=MaskConfig)
    pack: PackConfig = field(default_factory=PackConfig)
    batch_size: int = 8  # trajectories per tokenizer call
    num_workers: int = 2  # tokenizer actors (at most)
    worker_cpus: float = 0.5  # CPUs per tokenizer actor
    rows_per_shard: int = 128  # training rows per output Parquet file

    def validate(self) -> None:
        """Refuse bad values before any work, naming the key (pipeline.errors.UserError)."""

        def one_of(key: str, value: str, choices) -> None:
            if value not in choices:
                raise UserError(f"{key}={value!r} is not one of {', '.join(choices)}")

        one_of("recipe", self.recipe, RECIPES)
        one_of("overlong", self.overlong, ("truncate", "drop"))
        one_of("unknown_outcome", self.unknown_outcome, UNKNOWN_OUTCOME_CHOICES)
        one_of("mask.unlabeled", self.mask.unlabeled, ("exclude", "train_all"))
        bad = [x for x in self.mask.labels if x not in LABELS]
        if bad:
            raise UserError(f"mask.labels has {bad}: labels are {', '.join(LABELS)}")
        if not 0.0 <= self.mask.threshold <= 1.0:
            raise UserError(f"mask.threshold={self.mask.threshold} is outside [0, 1]")
        sizes = {"batch_size": self.batch_size, "num_workers": self.num_workers, "rows_per_shard": self.rows_per_shard,
                 "pack.window": self.pack.window, "pack.max_open_bins": self.pack.max_open_bins}
        for key, value in sizes.items():
            if value < 1:
                raise UserError(f"{key} must be at least 1 (got {value})")
        if not self.worker_cpus > 0:
            raise UserError(f"worker_cpus must be > 0 (got {self.worker_cpus})")
        seq_lens = {"max_seq_len": self.max_seq_len}
        if self.pack.enabled:
            seq_lens["pack.seq_len"] = self.pack.seq_len
        for key, value in seq_lens.items():
            if value < MIN_SEQ_LEN:
                raise UserError(
                    f"{key}={value} cannot hold a prompt and one step: use at least {MIN_SEQ_LEN} tokens "
                    "(32768, as in SWE-smith's recipe, is the default)"
                )
        if not 0.0 < self.pack.target_fill <= 1.0:
            raise UserError(f"pack.target_fill must be in (0, 1] (got {self.pack.target_fill})")
        if self.recipe in LABEL_RECIPES and not self.labels:
            raise UserError(f"recipe={self.recipe} needs labels=URI (the label stage's output), or use recipe=rft")


def token_limit(cfg: BuildConfig) -> int:
    """The longest document: max_seq_len, and no more than a packed row."""
    return min(cfg.max_seq_len, cfg.pack.seq_len) if cfg.pack.enabled else cfg.max_seq_len
