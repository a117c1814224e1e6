from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING


def _default_sweep() -> list[float]:
    return [round(i * 0.05, 2) for i in range(21)]


@dataclass
class MaskSweepConfig:
    # The build stage's mask.threshold: a step whose label is in `labels` and whose critic
    # confidence is >= threshold gets loss mask 0 (it stays in context). Marked on the sweep.
    threshold: float = 0.5
    labels: list[str] = field(default_factory=lambda: ["mistake"])
    sweep: list[float] = field(default_factory=_default_sweep)  # thresholds of the sweep plot


@dataclass
class TokenCountConfig:
    # How a step's trained tokens are counted for the threshold sweep:
    #   auto      - the tokenizer if `tokenizer` is set and loads, else characters
    #   tokenizer - the student tokenizer at `tokenizer` (fails if it does not load)
    #   chars     - characters of the assistant message (content + tool_calls text)
    method: str = "auto"
    tokenizer: str | None = None  # local path of the student's HF tokenizer / model folder
    batch_size: int = 512


@dataclass
class ReferenceBuildConfig:
    # A second build of the same trajectories with other labels than the critic's (the demo: the
    # sample's hand-made ones, pipeline/reference_labels.py), reported beside the critic's build.
    labels: str | None = None  # STEP_LABEL shards of those labels
    train_rows: str | None = None  # the build stage's output made with them
    name: str = "reference labels (hand-made)"  # what the report calls them


@dataclass
class ReportConfig:
    trajectories: str = MISSING  # TRAJECTORY shards (ingest output)
    labels: str = MISSING  # STEP_LABEL shards (label output)
    label_errors: str | None = None  # LABEL_ERROR shards; default <labels>/_errors
    train_rows: str | None = None  # TRAINING_ROW shards (build output); missing -> section skipped
    train_metrics: str | None = None  # JSONL / Parquet of per-step metrics (step, loss, ...); missing -> skipped
    output: str = MISSING  # folder: report.md, report.html, report.json, plots/*.png, _summary.json
    allow_empty: bool = False  # accept a run that read rows and wrote none (run_stage fails it otherwise)
    title: str = "SRFT pipeline report"
    harmful_labels: list[str] = field(default_factory=lambda: ["mistake"])
    paper_harmful_share: float = 0.24  # the SRFT paper: at most 24% of steps in failed runs are harmful
    max_trajectories_plotted: int = 40  # per-trajectory bars/table rows (most steps first)
    html: bool = True  # also write report.html (needs markdown-it-py; skipped with a note if absent)
    inspect: bool = True  # also write inspect.html: the mask inspector's page of one masked document
    mask: MaskSweepConfig = field(default_factory=MaskSweepConfig)
    tokens: TokenCountConfig = field(default_factory=TokenCountConfig)
    reference: ReferenceBuildConfig = field(default_factory=ReferenceBuildConfig)
