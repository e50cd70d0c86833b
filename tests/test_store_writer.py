"""StoreWriter: atomic Delta commits, positions recovered from the table, clear refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable

import store
from kaelum.events import TraceEvents
from store import (
    EVENTS_SCHEMA,
    BatchBuilder,
    QuarantineRecord,
    SourceRange,
    StoreError,
    StoreWriter,
    events_from_dicts,
    events_table,
    open_store,
)


def _started(t: TraceEvents, domain: str = "math", query: str = "What is 2+2?") -> dict:
    return t.make(
        "trace_started",
        query=query,
        domain=domain,
        router={"domain": domain, "confidence": 1.0, "method": "explicit"},
        worker_model="tiny",
        params={"simulations": 4, "max_depth": 3, "branching": 2, "exploration": 1.0, "temperature": 0.7, "seed": 1},
        tags=["t"],
    ).to_dict()


def _rows(root: Path, table: str = "events") -> list[dict]:
    """The rows of the table's newest version, read by delta-rs itself (not through the views)."""
    return DeltaTable(str(root / table)).to_pyarrow_table().to_pylist()


def test_commit_writes_events_quarantine_and_positions(tmp_path: Path) -> None:
    t = TraceEvents()
    events = [_started(t)]
    with StoreWriter(tmp_path / "st", writer_id="host-a") as w:
        info = w.commit(
            events_from_dicts(events, source="fp1", source_path="/logs/a.jsonl", offsets=[0]),
            quarantine=[QuarantineRecord("/logs/a.jsonl", "fp1", 311, b"\xff\xfe not utf-8 {", "line is not valid UTF-8")],
            sources=[SourceRange("fp1", "/logs/a.jsonl", 0, 350, events=1, quarantined=1)],
        )
    assert info.seq == 1 and info.events == 1 and info.quarantined == 1 and info.version == 1
    (row,) = _rows(tmp_path / "st")
    assert str(row["date"]) == events[0]["ts"][:10]
    assert row["id"] == events[0]["id"] and row["writer"] == "host-a" and row["offset"] == 0
    assert row["domain"] == "math" and row["query"] == "What is 2+2?" and row["tags"] == ["t"]
    assert json.loads(row["data"]) == events[0]["data"]
    (q,) = _rows(tmp_path / "st", "quarantine")
    assert q["batch"] == 1 and q["writer"] == "host-a"
    assert q["raw"] == b"\xff\xfe not utf-8 {" and q["raw_text"] == "\\xff\\xfe not utf-8 {"
    assert q["offset"] == 311 and q["reason"] == "line is not valid UTF-8"

    # The commit carries the writer's app transaction and its positions (Delta commit metadata).
    dt = DeltaTable(str(tmp_path / "st" / "events"))
    assert dt.transaction_version("host-a") == 1
    assert json.loads(dt.history(limit=1)[0]["kaelum.positions"])["fp1"]["offset"] == 350
    # Positions are recovered from the store by a fresh writer and by store.positions.
    with StoreWriter(tmp_path / "st", writer_id="host-a") as w2:
        pos = w2.positions()["fp1"]
        assert (pos.offset, pos.events, pos.quarantined, pos.bytes, pos.path) == (350, 1, 1, 350, "/logs/a.jsonl")
        assert w2.last_seq == 1
    allpos = store.positions(tmp_path / "st")
    assert set(allpos) == {("host-a", "fp1")} and allpos[("host-a", "fp1")].offset == 350


def test_positions_accumulate_and_zero_event_commit_is_durable(tmp_path: Path) -> None:
    with StoreWriter(tmp_path, writer_id="w1") as w:
        w.commit(sources=[SourceRange("fp", "/l.jsonl", 0, 100, events=0)])
        w.commit(
            quarantine=[QuarantineRecord("/l.jsonl", "fp", 100, b"garbage", "not JSON")],
            sources=[SourceRange("fp", "/l.jsonl", 100, 108, events=0, quarantined=1)],
        )
    assert _rows(tmp_path) == [] and len(_rows(tmp_path, "quarantine")) == 1
    assert DeltaTable(str(tmp_path / "events")).transaction_version("w1") == 2  # the zero-event commits count
    pos = StoreWriter(tmp_path, writer_id="w1").positions()["fp"]
    assert (pos.offset, pos.bytes, pos.quarantined, pos.events) == (108, 108, 1, 0)


def test_several_writers_never_collide(tmp_path: Path) -> None:
    t = TraceEvents()
    e = [_started(t)]
    with StoreWriter(tmp_path, "host-a") as a, StoreWriter(tmp_path, "host-b") as b:
        va = a.commit(events_from_dicts(e), sources=[SourceRange("fa", "/a", 0, 10, 1)]).version
        vb = b.commit(events_from_dicts(e), sources=[SourceRange("fb", "/b", 0, 20, 1)]).version
    assert (va, vb) == (1, 2) and sorted(r["writer"] for r in _rows(tmp_path)) == ["host-a", "host-b"]
    assert {k: p.offset for k, p in store.positions(tmp_path).items()} == {("host-a", "fa"): 10, ("host-b", "fb"): 20}


def test_same_writer_id_twice_is_refused(tmp_path: Path) -> None:
    with StoreWriter(tmp_path, "host-a"):
        with pytest.raises(StoreError, match="writer id 'host-a' is already in use by another process"):
            StoreWriter(tmp_path, "host-a")


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda t: t.drop_columns(["trace_id"]), "column 'trace_id' is missing"),
        (lambda t: t.set_column(4, "seq", pa.array(["0"])), "column 'seq' has type string, expected int64"),
        (lambda t: t.append_column("extra", pa.array([1])), "unexpected column(s) 'extra'"),
        (lambda t: t.set_column(0, "id", pa.array([None], pa.string())), "column 'id' has 1 null value(s)"),
        (lambda t: t.set_column(6, "data", pa.array(["not json"])), "column 'data' must hold JSON objects"),
        (lambda t: t.set_column(1, "v", pa.array([3], pa.int32())), "column 'v': versions 3..3 outside 1..2"),
    ],
)
def test_bad_batch_is_refused_and_nothing_written(tmp_path: Path, mutate, message: str) -> None:
    table = events_from_dicts([_started(TraceEvents())])
    with StoreWriter(tmp_path, "w") as w:
        with pytest.raises(StoreError, match="nothing written") as err:
            w.commit(mutate(table), sources=[SourceRange("fp", "/x", 0, 10, 1)])
        assert message in str(err.value)
        assert w.positions() == {} and w.last_seq == 0
    assert _rows(tmp_path) == [] and DeltaTable(str(tmp_path / "events")).version() == 0  # no commit at all


def test_events_table_parallel_lists_and_builder_agree(tmp_path: Path) -> None:
    t = TraceEvents()
    evs = [_started(t), t.make("reflection", node_id="n1", text="try again").to_dict()]
    b = BatchBuilder(source="fp", source_path="/p")
    for i, e in enumerate(evs):
        b.add(e, offset=i * 100)
    built = b.table()
    direct = events_table(
        id=[e["id"] for e in evs],
        v=[e["v"] for e in evs],
        type=[e["type"] for e in evs],
        trace_id=[e["trace_id"] for e in evs],
        seq=[0, 1],
        ts=[e["ts"] for e in evs],
        data=[json.dumps(e["data"], separators=(",", ":")) for e in evs],
        source="fp",
        source_path="/p",
        offset=[0, 100],
    )
    assert built.schema == EVENTS_SCHEMA
    assert built.drop_columns(["data"]).equals(direct.drop_columns(["data"]))
    assert [json.loads(x) for x in built.column("data").to_pylist()] == [e["data"] for e in evs]
    with pytest.raises(StoreError, match="every column needs 2 values .*seq has 1"):
        events_table(id=["a", "b"], v=[1, 1], type=["x", "x"], trace_id=["t", "t"], seq=[0], ts=["", ""], data=["{}", "{}"])


def test_events_split_into_one_segment_per_utc_date(tmp_path: Path) -> None:
    t = TraceEvents()
    a = _started(t)
    b = dict(t.make("reflection", node_id="n", text="x").to_dict(), ts="2026-01-02T00:00:00.000001Z")
    a["ts"] = "2026-01-01T23:59:59.999999Z"
    with StoreWriter(tmp_path, "w") as w:
        w.commit(events_from_dicts([a, b]))
    dt = DeltaTable(str(tmp_path / "events"))
    assert dt.version() == 1  # one commit ...
    assert sorted(Path(f).parent.name for f in dt.file_uris()) == ["date=2026-01-01", "date=2026-01-02"]  # ... one file per date



def test_typed_columns_stay_aligned_with_their_rows_through_the_sort(tmp_path: Path) -> None:
    # The typed columns are computed apart from the other columns (only v/type/data go through
    # DuckDB) and the rows are then sorted: every stored row must carry its own payload's values.
    t = TraceEvents()
    events = []
    for i in range(3000):  # several DuckDB vectors, types interleaved so the sort moves rows
        if i % 3 == 0:
            events.append(t.make("node_expanded", node_id=f"n{i}", parent_id=f"n{i - 1}", depth=i % 7, thought=f"step {i}",
                                 terminal=i % 2 == 0, answer=str(i), llm=None).to_dict())
        elif i % 3 == 1:
            events.append(t.make("node_evaluated", node_id=f"n{i}", value=(i % 100) / 100, signals={}).to_dict())
        else:
            events.append(dict(t.make("feedback", by="u", reward=(i % 10) / 10, label=f"l{i}").to_dict(),
                               ts=f"2026-01-0{1 + i // 3 % 3}T12:00:00.000000Z"))
    with StoreWriter(tmp_path, "w") as w:
        w.commit(events_from_dicts(events, offsets=list(range(len(events)))))
    files = DeltaTable(str(tmp_path / "events")).file_uris()
    assert len(files) == len({e["ts"][:10] for e in events}) >= 3  # one file per date
    rows = _rows(tmp_path)
    assert len(rows) == len(events)
    for r in rows:
        d = json.loads(r["data"])
        assert r["id"] == events[r["offset"]]["id"] and r["writer"] == "w"
        assert (r["node_id"], r["depth"], r["thought"], r["value"], r["reward"], r["label"]) == (
            d.get("node_id"), d.get("depth"), d.get("thought"), d.get("value"), d.get("reward"), d.get("label"))
    import pyarrow.parquet as pq

    for f in files:  # sorted by (type, trace_id, seq) within each file
        tb = pq.read_table(f)
        keys = list(zip(tb.column("type").to_pylist(), tb.column("trace_id").to_pylist(), tb.column("seq").to_pylist()))
        assert keys == sorted(keys)


_CRASH = """
import os, sys
from store import QuarantineRecord, SourceRange, StoreWriter, events_from_dicts
from kaelum.events import TraceEvents
w = StoreWriter(sys.argv[1], "crashy")
t = TraceEvents()
w.commit(events_from_dicts([t.make("reflection", node_id="n", text="x").to_dict()]), sources=[SourceRange("fp", "/l", 0, 50, 1)])
real = w._append
def die_before_the_events_commit(table, rows, seq, meta, what):
    if table is w._events:
        os._exit(3)  # the quarantine of batch 2 is committed, its events and positions are not
    return real(table, rows, seq, meta, what)
w._append = die_before_the_events_commit
w.commit(events_from_dicts([t.make("reflection", node_id="n", text="y").to_dict()]),
         quarantine=[QuarantineRecord("/l", "fp", 60, b"garbage", "not JSON")], sources=[SourceRange("fp", "/l", 50, 99, 1, 1)])
"""


def test_crash_between_quarantine_and_events_commit_resumes_from_the_events_table(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", _CRASH, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3, proc.stderr
    assert len(_rows(tmp_path)) == 1 and len(_rows(tmp_path, "quarantine")) == 1  # the orphan quarantine row
    with StoreWriter(tmp_path, "crashy") as w:
        assert w.positions()["fp"].offset == 50 and w.last_seq == 1
        assert _rows(tmp_path, "quarantine") == []  # removed on open: the re-read line is quarantined once
        assert w.commit(quarantine=[QuarantineRecord("/l", "fp", 60, b"garbage", "not JSON")],
                        sources=[SourceRange("fp", "/l", 50, 99, 1, 1)]).seq == 2
    assert [r["offset"] for r in _rows(tmp_path, "quarantine")] == [60]


def test_a_commit_that_fails_on_its_second_date_leaves_no_rows(tmp_path: Path) -> None:
    # A real storage failure half-way through a commit: the first date's file is written, the
    # second date's partition cannot be created (a file is in its way), the log entry never happens.
    t = TraceEvents()
    a = dict(_started(t), ts="2026-01-01T10:00:00.000000Z")
    b = dict(t.make("reflection", node_id="n", text="x").to_dict(), ts="2026-01-02T10:00:00.000000Z")
    with StoreWriter(tmp_path, "w") as w:
        blocker = tmp_path / "events" / "date=2026-01-02"
        blocker.write_text("not a directory")
        with pytest.raises(StoreError, match="committing events failed"):
            w.commit(events_from_dicts([a, b]), sources=[SourceRange("fp", "/l", 0, 99, 2)])
        assert _rows(tmp_path) == [] and w.positions() == {} and w.last_seq == 0
        assert store.connect(tmp_path).execute("SELECT count(*) FROM _events_all").fetchone()[0] == 0
        blocker.unlink()
        assert w.commit(events_from_dicts([a, b]), sources=[SourceRange("fp", "/l", 0, 99, 2)]).seq == 1
    assert sorted(r["id"] for r in _rows(tmp_path)) == sorted([a["id"], b["id"]])  # once each


def test_a_full_disk_is_named_as_such(tmp_path: Path, monkeypatch) -> None:
    import deltalake

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    with StoreWriter(tmp_path, "w") as w:
        monkeypatch.setattr(deltalake, "write_deltalake", full_disk)
        with pytest.raises(StoreError, match="the disk is full .nothing was committed"):
            w.commit(events_from_dicts([_started(TraceEvents())]), sources=[SourceRange("fp", "/l", 0, 99, 1)])


def test_store_files_are_not_world_readable(tmp_path: Path) -> None:
    with StoreWriter(tmp_path / "st", "w") as w:
        w.commit(events_from_dicts([_started(TraceEvents())]))
    assert (tmp_path / "st").stat().st_mode & 0o007 == 0  # "others" cannot even enter the folder


def test_two_processes_under_one_writer_id_cannot_both_commit(tmp_path: Path) -> None:
    # On object storage there is no flock: Delta's app-transaction conflict check is the guard.
    with StoreWriter(tmp_path, "w") as a:
        a.commit(events_from_dicts([_started(TraceEvents())]), sources=[SourceRange("fp", "/l", 0, 10, 1)])
        b_events = DeltaTable(str(tmp_path / "events"))  # a second process's view of the table, as of seq 1
        a.commit(events_from_dicts([_started(TraceEvents())]), sources=[SourceRange("fp", "/l", 10, 20, 1)])
        a._events = b_events  # commit seq 2 again from the stale state, as the other process would
        a._seq = 1
        with pytest.raises(StoreError, match="another process committed under writer id 'w'"):
            a.commit(events_from_dicts([_started(TraceEvents())]), sources=[SourceRange("fp", "/l", 10, 20, 1)])
    assert len(_rows(tmp_path)) == 2


def test_open_store_errors(tmp_path: Path) -> None:
    with pytest.raises(StoreError) as err:
        open_store(tmp_path / "x")
    assert str(err.value) == (
        f"no store at {tmp_path / 'x'} (the path does not exist) — run `kaelum-ingest --once --log-dir ./logs --store {tmp_path / 'x'}` first"
    )
    with pytest.raises(StoreError, match="the folder has no kaelum-store.json"):
        open_store(tmp_path)
    (tmp_path / "f").write_text("x")
    with pytest.raises(StoreError, match="is a file, not a store folder"):
        open_store(tmp_path / "f")
    info = open_store(tmp_path / "new", create=True)
    assert open_store(info.path).layout_version == 2
    with pytest.raises(StoreError, match="invalid writer id"):
        StoreWriter(tmp_path / "new", writer_id="bad/id")


def test_a_store_is_never_laid_out_in_a_folder_holding_other_files(tmp_path: Path) -> None:
    # `--store ./store` inside a Kaelum checkout names the `store` package's source folder.
    pkg = tmp_path / "store"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "views.py").write_text("")
    with pytest.raises(StoreError, match=r"is not empty and not a Kaelum store \(it holds __init__.py, views.py\)"):
        open_store(pkg, create=True)
    with pytest.raises(StoreError, match="is not empty and not a Kaelum store"):
        StoreWriter(pkg, writer_id="w")
    assert sorted(p.name for p in pkg.iterdir()) == ["__init__.py", "views.py"]  # nothing written
    # An empty folder, or one another process is laying out right now, is fine.
    (tmp_path / "empty").mkdir()
    assert open_store(tmp_path / "empty", create=True).layout_version == 2
    half = tmp_path / "half"
    (half / "events").mkdir(parents=True)
    (half / "quarantine").mkdir()
    assert open_store(half, create=True).layout_version == 2


def test_commit_of_100k_events_in_one_commit(tmp_path: Path) -> None:
    """A large block commits whole (its speed is measured by benchmarks/store_bench.py, "commit")."""
    t = TraceEvents()
    base = t.make(
        "node_expanded", node_id="n1", parent_id="n0", depth=1, thought="Step 1: add the two numbers. " * 4,
        terminal=False, answer=None, llm={"model": "m", "prompt_tokens": 100, "completion_tokens": 40, "latency_ms": 10.0},
    ).to_dict()
    table = events_from_dicts([dict(base, id=f"id-{i}", seq=i) for i in range(100_000)], "fp", "/l", list(range(100_000)))
    with StoreWriter(tmp_path, "w") as w:
        w.commit(table, sources=[SourceRange("fp", "/l", 0, 10_000_000, 100_000)])
        assert w.positions()["fp"].offset == 10_000_000
    con = store.connect(tmp_path)
    assert con.execute("SELECT count(*), count(DISTINCT id), min(seq), max(seq) FROM events").fetchone() == (100_000, 100_000, 0, 99_999)


def test_positions_checkpoint_bounds_the_log_that_positions_read(tmp_path: Path, monkeypatch) -> None:
    """Compaction records every writer's positions in one commit; `store.positions` (what
    `kaelum-ingest status` shows) and recovery then read the log back to it only, and agree with
    the full log."""
    import store.writer as writer_mod
    from store.compact import compact

    with StoreWriter(tmp_path, "host-a") as a, StoreWriter(tmp_path, "host-b") as b:
        for i in range(30):
            a.commit(sources=[SourceRange("fa", "/a", i * 10, i * 10 + 10, 0)])
        for i in range(3):
            b.commit(sources=[SourceRange("fb", "/b", i * 20, i * 20 + 20, 0)])
    full = {k: (p.offset, p.bytes) for k, p in store.positions(tmp_path).items()}
    assert full == {("host-a", "fa"): (300, 300), ("host-b", "fb"): (60, 60)}
    compact(tmp_path, retention_s=0)
    with StoreWriter(tmp_path, "host-a") as a, StoreWriter(tmp_path, "host-c") as c:
        a.commit(sources=[SourceRange("fa", "/a", 300, 310, 0)])
        c.commit(sources=[SourceRange("fc", "/c", 0, 5, 0)])
    read = []
    real = writer_mod._history
    monkeypatch.setattr(writer_mod, "_history", lambda table: (read.append(c) or c for c in real(table)))
    got = {k: (p.offset, p.bytes) for k, p in store.positions(tmp_path).items()}
    assert got == {("host-a", "fa"): (310, 310), ("host-b", "fb"): (60, 60), ("host-c", "fc"): (5, 5)}
    # The two commits after the checkpoint, the checkpoint, and the first commit below its base.
    assert len(read) <= 4 and len(DeltaTable(str(tmp_path / "events")).history()) > 35
    read.clear()
    with StoreWriter(tmp_path, "host-b") as b:  # recovery from the checkpoint: host-b's own commits are below it
        assert (b.last_seq, b.positions()["fb"].offset) == (3, 60)
    assert len(read) <= 4
    # Nothing new since the checkpoint: compacting again adds no second one.
    assert writer_mod.checkpoint_positions(tmp_path) is not None  # host-a and host-c committed since
    assert writer_mod.checkpoint_positions(tmp_path) is None


def test_a_commit_made_while_a_checkpoint_was_written_wins_over_the_checkpoint(tmp_path: Path) -> None:
    """A checkpoint records the log as of its `base`; a writer's commit after `base` but before the
    checkpoint's own commit (it raced the compaction) is newer than the checkpoint's entry."""
    from deltalake import CommitProperties, write_deltalake

    from store.tables import EVENTS_TABLE_SCHEMA, PARTITION
    from store.writer import META_CHECKPOINT

    with StoreWriter(tmp_path, "host-a") as a:
        for i in range(3):
            a.commit(sources=[SourceRange("fa", "/a", i * 10, i * 10 + 10, 0)])  # versions 1, 2, 3
    stale = {"fa": {"path": "/a", "offset": 10, "events": 0, "quarantined": 0, "bytes": 10, "committed_at": "2026-01-01T00:00:00.000000Z"}}
    meta = {META_CHECKPOINT: json.dumps({"base": 1, "writers": {"host-a": {"seq": 1, "positions": stale},
                                                                 "host-z": {"seq": 4, "positions": stale}}})}
    write_deltalake(str(tmp_path / "events"), EVENTS_TABLE_SCHEMA.empty_table(), mode="append", partition_by=[PARTITION],
                    commit_properties=CommitProperties(custom_metadata=meta))
    got = {k: p.offset for k, p in store.positions(tmp_path).items()}
    assert got == {("host-a", "fa"): 30, ("host-z", "fa"): 10}  # host-a from its own newer commit; host-z only in the checkpoint
    with StoreWriter(tmp_path, "host-a") as a:
        assert (a.last_seq, a.positions()["fa"].offset) == (3, 30)
