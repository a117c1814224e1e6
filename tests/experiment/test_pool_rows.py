"""The training pool's rows carry the tool schemas exactly when `tool_schemas` says so (the acting
student's default renders none: docs/experiment.md, "What we tried"), and nothing else changes."""

from experiment import generate as gen
from experiment import run as experiment
from experiment.env import TOOLS, make_tasks
from pipeline.ingest.tools import normalize_tools


def test_pool_rows_with_and_without_tool_schemas():
    runs = gen.generate(make_tasks(11, 12, "t"), gen.Mix(), 11)
    without, with_tools = experiment.pool_rows(runs, False), experiment.pool_rows(runs, True)
    assert all(row["tools"] is None for row in without)
    assert all(row["tools"] == TOOLS for row in with_tools)
    # ingest reads a missing schema list as none (the build then renders no <tools> block)
    assert normalize_tools(without[0]["tools"], "tools") is None
    for a, b, run in zip(without, with_tools, runs):
        assert {k: v for k, v in a.items() if k != "tools"} == {k: v for k, v in b.items() if k != "tools"}
        assert a["messages"] == run.row["messages"] and a["resolved"] == run.resolved
    assert experiment.ExperimentConfig().tool_schemas is False
