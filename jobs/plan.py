"""Plan: will the production presets fit on the GPUs, and what will they cost?

    python -m jobs.plan [train_preset=conf/prod/train.yaml] [label_preset=conf/prod/label.yaml] [mfu=0.4]

Simulates one training step of the real architecture through the training code on fake tensors
and works out the critic's KV cache and throughput; refuses (exit 2) a preset that does not fit.
The whole tool lives in pipeline/plan/; this file only parses the command line.
"""

import json
import sys

from pipeline import cli
from pipeline.config import help_text, load_config
from pipeline.plan.config import PlanConfig

# the config the command line is parsed into (tests/test_errors.py generates its bad-input cases from it)
CONFIG = PlanConfig


def main(argv: list[str]) -> dict | None:
    if cli.wants_help(argv):
        print(help_text(PlanConfig, "plan", cli.usage_line(__doc__, "plan"), __doc__.split("\n", 1)[0]))
        return None
    from pipeline.plan.plan import run

    plan = run(load_config(PlanConfig, "plan", argv))
    print(json.dumps(plan, indent=2, default=float))
    return plan


if __name__ == "__main__":
    cli.main(main, sys.argv[1:])
