"""kaelum-sql migrate: a store written by the layout-1 code (tests/fixtures/store_v1) becomes Delta
tables with every event, every quarantined line and every writer's position; every other command
opened on an old store says how to migrate."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from deltalake import DeltaTable

import store
from ingest.cli import main as ingest_cli
from store import StoreError
from store.cli import main as sql_cli
from store.legacy import OLD_DIR, migrate

FIXTURE = Path(__file__).parent / "fixtures" / "store_v1"
EXPECTED = json.loads((Path(__file__).parent / "fixtures" / "store_v1.expected.json").read_text())


@pytest.fixture()
def old(tmp_path: Path) -> Path:
    target = tmp_path / "store"
    shutil.copytree(FIXTURE, target)
    return target


def test_every_command_on_an_old_store_says_how_to_migrate(old: Path, tmp_path: Path) -> None:
    hint = f"kaelum-sql migrate --store {old}"
    with pytest.raises(StoreError, match="old layout") as err:
        store.connect(old)
    assert hint in str(err.value)
    r = CliRunner().invoke(sql_cli, ["--store", str(old), "select 1"])
    assert r.exit_code == 1 and hint in r.output
    (tmp_path / "logs").mkdir()
    r = CliRunner().invoke(ingest_cli, ["--log-dir", str(tmp_path / "logs"), "--store", str(old), "--once", "--no-progress"])
    assert r.exit_code == 1 and hint in r.output
    r = CliRunner().invoke(ingest_cli, ["status", "--store", str(old)])
    assert r.exit_code == 1 and hint in r.output
    from train.data import DataError, select_examples

    with pytest.raises(DataError, match="kaelum-sql migrate"):
        select_examples(str(old))


def test_migrate_keeps_every_event_quarantined_line_and_position(old: Path) -> None:
    r = CliRunner().invoke(sql_cli, ["migrate", "--store", str(old)])
    assert r.exit_code == 0, r.output
    assert r.output.startswith(f"migrated {old}: {EXPECTED['raw_event_rows']} event rows, {len(EXPECTED['quarantine'])} quarantined lines")
    assert sorted(p.name for p in old.iterdir()) == ["events", "kaelum-store.json", "quarantine"]  # the old layout is gone
    con = store.connect(old)
    for view in ("events", "traces", "training_examples", "preference_pairs"):
        assert con.execute(f"select count(*) from {view}").fetchone()[0] == EXPECTED[view], view
    assert sorted(r[0] for r in con.execute("select id from events").fetchall()) == EXPECTED["event_ids"]
    assert sorted(r[0] for r in con.execute("select trace_id from training_examples").fetchall()) == EXPECTED["training_example_ids"]
    assert sorted([*r] for r in con.execute('select source, "offset", raw_text from quarantine').fetchall()) == EXPECTED["quarantine"]
    assert {f"{w}/{fp}": p.offset for (w, fp), p in store.positions(old).items()} == EXPECTED["positions"]
    dt = DeltaTable(str(old / "events"))
    assert dt.transaction_version("host-a") == 2 and dt.transaction_version("host-b") == 1  # writers resume at their seq
    with store.StoreWriter(old, "host-a") as w:
        assert w.last_seq == 2 and w.positions()["fp-1"].offset == EXPECTED["positions"]["host-a/fp-1"]
    with pytest.raises(StoreError, match="already in the Delta layout"):
        migrate(old)


def test_an_interrupted_migration_reruns_to_the_same_result(old: Path, monkeypatch) -> None:
    import store.legacy as legacy

    real = legacy.write_marker

    def crash(*a, **k):  # the tables are built, the marker still says layout 1
        raise KeyboardInterrupt

    monkeypatch.setattr(legacy, "write_marker", crash)
    with pytest.raises(KeyboardInterrupt):
        migrate(old)
    assert (old / OLD_DIR).is_dir()
    with pytest.raises(StoreError, match="old layout"):
        store.connect(old)  # still refused: nothing half-migrated is ever read
    monkeypatch.setattr(legacy, "write_marker", real)
    res = migrate(old)
    assert res.events == EXPECTED["raw_event_rows"] and not (old / OLD_DIR).exists()
    assert store.connect(old).execute("select count(*) from events").fetchone()[0] == EXPECTED["events"]
