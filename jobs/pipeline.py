"""The whole pipeline: ingest -> label -> build -> train -> report.

    python -m jobs.pipeline [config=PRESET.yaml] [root=URI] [stages=[label,build]] [force=true] [<stage>.<key>=...]

With no config= preset it runs the embedded demo (conf/pipeline.yaml). The driver lives in
pipeline/driver.py; this file only parses the command line.
"""

import sys

from pipeline import cli, driver
from pipeline.config import help_text, load_config, resolve_outputs_for_ray_job, to_yaml

# the config the command line is parsed into (tests/test_errors.py generates its bad-input cases from it)
CONFIG = driver.PipelineConfig


def main(argv: list[str]) -> dict[str, dict] | None:
    if cli.wants_help(argv):
        print(help_text(driver.PipelineConfig, "pipeline", cli.usage_line(__doc__, "pipeline"),
                        __doc__.split("\n", 1)[0], collapse=driver.STAGES))
        return None
    argv, print_only = cli.pop_print_config(argv)
    cfg = resolve_outputs_for_ray_job(load_config(driver.PipelineConfig, "pipeline", argv))
    if print_only:
        print(to_yaml(cfg), end="")
        return None
    manifests = driver.run(cfg)
    driver.print_outputs(manifests, cfg)
    return manifests


if __name__ == "__main__":
    cli.main(main, sys.argv[1:])
