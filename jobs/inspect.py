"""Mask inspector: one built document's tokens coloured by role (HTML page or terminal).

The whole command lives in pipeline/inspect/; this file only hands it the command line.
"""

import sys

from pipeline import cli
from pipeline.inspect.command import main
from pipeline.inspect.config import InspectConfig

# the config the command line is parsed into (tests/test_errors.py generates its bad-input cases from it)
CONFIG = InspectConfig

if __name__ == "__main__":
    cli.main(main, sys.argv[1:])
