"""The one way every stage is run from the command line: config, manifest, summary."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from pipeline.config import load_config
from pipeline.manifest import run_stage


def stage_main(
    stage: str,
    config_cls: type,
    run: Callable[[Any], dict],
    inputs: Callable[[Any], dict[str, str | None]],
    argv: list[str],
) -> dict:
    """``python -m jobs.<stage> [config=PRESET] [key=value ...]``: an explicit run always runs
    (the pipeline driver is what skips complete stages), and leaves a manifest. Returns the
    stage summary."""
    cfg = load_config(config_cls, stage, argv)
    manifest = run_stage(stage, cfg, inputs(cfg), cfg.output, run, force=True)
    print(json.dumps(manifest["summary"], indent=2, default=str))
    print(f"[{stage}] output: {cfg.output}")
    return manifest["summary"]
