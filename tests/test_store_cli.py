"""kaelum-sql through click's CliRunner on a real store."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from kaelum.events import TraceEvents
from store import SourceRange, StoreWriter, events_from_dicts
from store.cli import main


@pytest.fixture()
def st(tmp_path: Path) -> Path:
    t = TraceEvents()
    evs = [t.make("reflection", node_id=f"n{i}", text=f"note {i}").to_dict() for i in range(3)]
    with StoreWriter(tmp_path / "st", "cli") as w:
        w.commit(events_from_dicts(evs[:2]), sources=[SourceRange("fp", "/l", 0, 10, 2)])
        w.commit(events_from_dicts(evs[2:]), sources=[SourceRange("fp", "/l", 10, 20, 1)])
    return tmp_path / "st"


def test_query_formats(st: Path, tmp_path: Path) -> None:
    r = CliRunner()
    sql = "select node_id, type from events order by node_id"
    out = r.invoke(main, ["--store", str(st), sql])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert lines[1] == "| node_id | type       |" and lines[3] == "| n0      | reflection |" and lines[-1] == "(3 rows)"
    out = r.invoke(main, ["--store", str(st), "--format", "csv", sql])
    assert out.output == "node_id,type\nn0,reflection\nn1,reflection\nn2,reflection\n"
    out = r.invoke(main, ["--store", str(st), "-f", "json"], input=sql + ";\n")  # SQL from stdin
    assert [json.loads(line) for line in out.output.splitlines()][0] == {"node_id": "n0", "type": "reflection"}
    target = tmp_path / "o.parquet"
    out = r.invoke(main, ["--store", str(st), "--format", "parquet", "--output", str(target), sql])
    assert out.exit_code == 0 and pq.read_table(target).column("node_id").to_pylist() == ["n0", "n1", "n2"]


def test_env_default_store(st: Path) -> None:
    out = CliRunner().invoke(main, ["select count(*) as n from events"], env={"KAELUM_STORE": str(st)})
    assert out.exit_code == 0 and "| 3 |" in out.output


def test_errors_are_clear(st: Path, tmp_path: Path) -> None:
    r = CliRunner()
    out = r.invoke(main, ["--store", str(tmp_path / "nope"), "select 1"])
    assert out.exit_code == 1
    assert out.output == (
        f"Error: no store at {tmp_path / 'nope'} (the path does not exist) — run "
        f"`kaelum-ingest --once --log-dir ./logs --store {tmp_path / 'nope'}` first\n"
    )
    out = r.invoke(main, ["--store", str(tmp_path), "select 1"])
    assert out.exit_code == 1 and "the folder has no kaelum-store.json" in out.output
    out = r.invoke(main, ["--store", str(st), "selec 1"])
    assert out.exit_code == 1
    assert out.output.startswith("Error: SQL does not parse: Parser Error: syntax error at or near \"selec\"")
    assert out.output.rstrip().endswith(
        "views: events, traces, nodes, trajectories, verified_trajectories, complete_trajectories, "
        "high_reward_trajectories, training_examples, training_examples_all, preference_pairs, quarantine; "
        "table macros: high_reward_trajectories_at(min_reward), training_examples_at(min_reward)"
    )
    out = r.invoke(main, ["--store", str(st), "select * from trace"])
    assert out.exit_code == 1 and out.output.startswith("Error: SQL refers to something that does not exist: Catalog Error")
    out = r.invoke(main, ["--store", str(st), "-f", "parquet", "select 1"])
    assert out.exit_code == 1 and out.output == "Error: --format parquet writes a file — add --output FILE.parquet\n"


def test_views_lists_columns(st: Path) -> None:
    out = CliRunner().invoke(main, ["views", "--store", str(st)])
    assert out.exit_code == 0
    assert "training_examples  (view)\n    trace_id               VARCHAR\n" in out.output
    assert "high_reward_trajectories_at(min_reward)  (macro)" in out.output
    assert "    steps                  VARCHAR[]" in out.output


def test_compact_history_and_as_of(st: Path, tmp_path: Path) -> None:
    r = CliRunner()
    out = r.invoke(main, ["history", "--store", str(st)])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert lines[1].split()[0] == "2" and "cli (2)" in lines[1] and lines[-1].split()[0] == "0"
    out = r.invoke(main, ["compact", "--store", str(st), "--retention-s", "0"])
    assert out.exit_code == 0 and out.output.startswith("files: 2 -> 1 (2 merged into 1, 2 old files deleted"), out.output
    out = r.invoke(main, ["--store", str(st), "-f", "csv", "select count(*) as n from events"])
    assert out.output == "n\n3\n"
    out = r.invoke(main, ["--store", str(st), "--as-of", "1", "-f", "csv", "select count(*) as n from events"])
    assert out.exit_code == 1 and "older than VACUUM's retention: 1 of its files were deleted" in out.output  # retention 0
    out = r.invoke(main, ["--store", str(st), "--as-of", "soon", "select 1"])
    assert out.exit_code == 2 and "neither a table version" in out.output


def test_as_of_reads_an_old_version(st: Path) -> None:
    r = CliRunner()
    out = r.invoke(main, ["--store", str(st), "--as-of", "1", "-f", "csv", "select count(*) as n from events"])
    assert out.exit_code == 0 and out.output == "n\n2\n", out.output
