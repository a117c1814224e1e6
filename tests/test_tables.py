"""Every tabular output opens in pandas, Polars, DuckDB and Ray Data with exactly the rows the
pipeline's own reader gives, for the latest version and for an earlier one (pipeline.tables).

The outputs are made by the real stages from the real shared trajectories: ingest (with one broken
file beside them, so the quarantine table has rows), label (the openai backend against the real
HTTP test critic; trajectories without steps become error rows) and build (srft_mix, packed, the
unknown outcomes excluded).
"""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pytest

from pipeline import fsys, io, record, tables
from pipeline.manifest import run_direct
from pipeline.schema import BUILD_ERROR, LABEL_ERROR, QUARANTINE, STEP_LABEL, TRAINING_ROW, TRAJECTORY
from tests.label.fake_critic import FakeCritic
from tests.label.helpers import trajectory, write_trajectories

KEY_ENV = "SRFT_TABLES_TEST_KEY"


def canonical(table: pa.Table) -> list[str]:
    """The rows as sorted JSON strings: equal across readers whatever Arrow types each returns."""
    return sorted(json.dumps(r, sort_keys=True, default=str) for r in table.to_pylist())


def by_pandas(uri: str, version: int | None) -> pa.Table:
    df = tables.open_table(uri, version).to_pandas()
    return pa.Table.from_pandas(df, preserve_index=False)


def by_polars(uri: str, version: int | None) -> pa.Table:
    import polars as pl

    return pl.read_delta(tables.location(uri), version=version).to_arrow()


def by_duckdb(uri: str, version: int | None) -> pa.Table:
    import duckdb

    dataset = tables.open_table(uri, version).to_pyarrow_dataset()  # noqa: F841 -- named in the SQL
    with duckdb.connect() as con:
        return con.sql("SELECT * FROM dataset").fetch_arrow_table()


def by_ray(uri: str, version: int | None) -> pa.Table:
    import ray

    ds = ray.data.read_delta(tables.location(uri), version=version)
    return pa.concat_tables(ray.get(ds.to_arrow_refs()))


READERS = {"pandas": by_pandas, "polars": by_polars, "duckdb": by_duckdb, "ray": by_ray}


@pytest.fixture(scope="module")
def outputs(ray_session, shared_data, qwen_tokenizer_path, tmp_path_factory):
    from pipeline.build.config import BuildConfig, PackConfig
    from pipeline.build.stage import STAGE as BUILD
    from pipeline.ingest.config import IngestConfig
    from pipeline.ingest.stage import STAGE as INGEST
    from pipeline.label import stage as label
    from pipeline.label.config import CriticConfig, LabelConfig, OpenAIConfig

    root = tmp_path_factory.mktemp("tables")
    inp = root / "input"
    inp.mkdir()
    for name in sorted(os.listdir(shared_data)):
        if (shared_data / name).is_dir():
            os.symlink(shared_data / name, inp / name)  # the real data where it is
    (inp / "broken.jsonl").write_text('{"instance_id": "x", "messages": 3}\nnot json\n')
    traj, labels, rows = (str(root / n) for n in ("trajectories", "labels", "train_rows"))
    ingested = run_direct(INGEST, IngestConfig(input=str(inp), output=traj,
                                              resolution=str(shared_data / "swe-smith" / "run_evaluation")))
    assert ingested["rows_out"] > 0 and ingested["rows_quarantined"] > 0

    os.environ[KEY_ENV] = "sk-tables-test"
    server = FakeCritic(key="sk-tables-test").start()
    try:
        def critic(seed: int) -> CriticConfig:
            return CriticConfig(backend="openai", model="fake-critic", tokenizer=str(qwen_tokenizer_path),
                                seed=seed, openai=OpenAIConfig(base_url=server.url, api_key_env=KEY_ENV))

        first = run_direct(label.STAGE, LabelConfig(input=traj, output=labels, critic=critic(0)))
        first_commit = record.read_commit(labels)
        first_rows = io.read_table(labels, STEP_LABEL)
        second = run_direct(label.STAGE, LabelConfig(input=traj, output=labels, replace=True, critic=critic(1)))
        # The real runs all label; error rows come from trajectories the test critic answers badly.
        synthetic = write_trajectories([trajectory(f"{b}.{i}", 2) for b in ("good", "http500", "null_choice")
                                        for i in range(2)], str(root / "synthetic"))
        failing = run_direct(label.STAGE, LabelConfig(input=synthetic, output=str(root / "labels_errors"), max_error_fraction=1.0,
                                        critic=critic(0)))
    finally:
        server.stop()
        os.environ.pop(KEY_ENV, None)
    assert first["rows_out"] > 0 and second["rows_out"] > 0 and failing["trajectories_errored"] == 4

    built = run_direct(BUILD, BuildConfig(trajectories=traj, labels=labels, output=rows, model=str(qwen_tokenizer_path),
                              recipe="srft_mix", max_seq_len=32768, unknown_outcome="exclude",
                              pack=PackConfig(enabled=True, seq_len=40000), batch_size=2, num_workers=1))
    assert built["rows_out"] > 0 and built["rows_excluded"] > 0
    return {"trajectories": traj, "labels": labels, "train_rows": rows, "labels_errors": str(root / "labels_errors"),
            "labels_first": (first_commit, first_rows)}


# (output, side table or "", schema): every table the three stages wrote here
TABLES = [
    ("trajectories", "", TRAJECTORY), ("trajectories", "_quarantine", QUARANTINE),
    ("labels", "", STEP_LABEL), ("labels_errors", "_errors", LABEL_ERROR),
    ("train_rows", "", TRAINING_ROW), ("train_rows", "_excluded", BUILD_ERROR),
]


@pytest.mark.parametrize("output,side,schema", TABLES, ids=[f"{o}{'/' + s if s else ''}" for o, s, _ in TABLES])
def test_every_reader_gets_exactly_the_pipelines_rows(outputs, output, side, schema):
    uri = fsys.join(outputs[output], side) if side else outputs[output]
    ours = io.read_table(uri, schema)
    assert ours.num_rows > 0, f"{uri}: nothing to compare"
    c = record.read_commit(outputs[output])
    assert tables.open_table(uri).version() == c.manifest["commit"]["tables"][side]
    want = canonical(ours)
    for name, read in READERS.items():
        assert canonical(read(uri, None)) == want, f"{name} read other rows from {uri}"


def test_an_earlier_version_reads_as_it_was(outputs):
    """Time travel: the labels of the first run (the second one replaced them) by the Delta version
    its commit record names, in every reader."""
    first_commit, first_rows = outputs["labels_first"]
    uri = outputs["labels"]
    now = canonical(io.read_table(uri, STEP_LABEL))
    then = canonical(first_rows)
    assert now != then  # another critic seed: other labels
    version = first_commit.manifest["commit"]["tables"][""]
    assert version < tables.open_table(uri).version()
    for name, read in READERS.items():
        assert canonical(read(uri, version)) == then, f"{name} at version {version}"


def test_each_delta_commit_names_its_stage_run_and_status(outputs):
    """A Delta reader can tell a finished run's version from a periodic partial one."""
    uri = outputs["labels"]
    writes = [h for h in tables.open_table(uri).history() if h.get("operation") == "WRITE"]
    assert writes and {h["srft.stage"] for h in writes} == {"label"}
    assert writes[0]["srft.status"] == "complete"
    assert writes[0]["srft.run_id"] == record.read_commit(uri).manifest["run_id"]


def _race_two_overwrites(table_uri: str) -> tuple[list, pa.Table]:
    """Two writers replace the same table at the same instant; returns (outcomes, rows after)."""
    import threading

    import pyarrow.parquet as pq

    fs, root = fsys.filesystem(table_uri)
    for name in ("a", "b", "c"):
        fs.create_dir(f"{root}/_v-t-{name}", recursive=True)
        with fs.open_output_stream(f"{root}/_v-t-{name}/part-0.parquet") as f:
            pq.write_table(pa.table({"writer": [name] * 3}), f)
    tables.publish(table_uri, ["_v-t-a/part-0.parquet"], stage="t", run_id="a", status="complete")
    barrier, outcomes = threading.Barrier(2), []

    def write(name: str) -> None:
        barrier.wait()
        try:
            tables.publish(table_uri, [f"_v-t-{name}/part-0.parquet"], stage="t", run_id=name, status="complete")
            outcomes.append(("won", name))
        except Exception as e:  # noqa: BLE001 -- the loser's error is the outcome under test
            outcomes.append(("lost", type(e).__name__))

    threads = [threading.Thread(target=write, args=(n,)) for n in ("b", "c")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return outcomes, tables.read(table_uri)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_racing_commits_never_mix_two_writers(where, tmp_path, request):
    """delta-rs commits with put-if-absent (a no-replace rename locally, a conditional PUT on S3;
    moto honours it): no lock service. Of two writers replacing a table at once, either one wins and
    the other's commit fails, or they land one after the other (the second read the first's
    version); either way each version holds one writer's rows, never both."""
    table_uri = str(tmp_path / "t") if where == "local" else f"{request.getfixturevalue('s3_bucket')}/t"
    outcomes, rows = _race_two_overwrites(table_uri)
    won = [n for o, n in outcomes if o == "won"]
    assert len(outcomes) == 2 and won, outcomes
    assert rows["writer"].to_pylist() in [[w] * 3 for w in won], rows["writer"].to_pylist()
    assert tables.open_table(table_uri).version() == 1 + len(won)
