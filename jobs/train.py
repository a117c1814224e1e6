"""Train: FSDP2 fine-tuning of the student on TRAINING_ROW rows, under Ray Train.

The whole stage lives in pipeline/train/stage.py; this file only parses the command line.
"""

import sys

from pipeline import cli
from pipeline.train.stage import STAGE

# the config the command line is parsed into (tests/test_errors.py generates its bad-input cases from it)
CONFIG = STAGE.config


def main(argv: list[str]) -> dict:
    return cli.run_stage_cli(STAGE, argv)


if __name__ == "__main__":
    cli.main(main, sys.argv[1:])
