"""Critic quality against a hand-labelled reference.

    python -m jobs.eval_critic labels=URI reference=URI [output=URI] [min_confidence=0.0]

The whole command lives in pipeline/label/eval_critic.py; this file only parses the command line.
"""

import sys

from pipeline import cli
from pipeline.config import help_text
from pipeline.label.config import EvalCriticConfig
from pipeline.label.eval_critic import main as evaluate

# the config the command line is parsed into (tests/test_errors.py generates its bad-input cases from it)
CONFIG = EvalCriticConfig


def main(argv: list[str]) -> dict | None:
    if cli.wants_help(argv):
        print(help_text(EvalCriticConfig, "eval_critic", cli.usage_line(__doc__, "eval_critic"),
                        __doc__.split("\n", 1)[0]))
        return None
    return evaluate(argv)


if __name__ == "__main__":
    cli.main(main, sys.argv[1:])
