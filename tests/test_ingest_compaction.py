"""The daemon's automatic compaction (Delta OPTIMIZE + VACUUM): it compacts while following, the
views do not change, and every event id is in the table's newest version exactly once."""

import collections
import importlib.util
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner
from deltalake import DeltaTable

import store
from ingest import ingest_once
from ingest.cli import main as cli
from store.compact import small_files

pytestmark = pytest.mark.timeout(120)

_bench = importlib.util.spec_from_file_location("ingest_bench", Path(__file__).parents[1] / "benchmarks" / "ingest_bench.py")
ingest_bench = importlib.util.module_from_spec(_bench)
_bench.loader.exec_module(ingest_bench)


def _ids(st) -> collections.Counter:
    """Event ids in the events table's newest version, as any Delta reader sees them."""
    return collections.Counter(DeltaTable(str(st / "events")).to_pyarrow_table(columns=["id"]).column("id").to_pylist())


def _optimizes(st) -> int:
    return sum(1 for c in DeltaTable(str(st / "events")).history() if c["operation"] == "OPTIMIZE")


def _views(path) -> dict:
    con = store.connect(path)
    try:
        return {
            "events": con.execute("select id, type, trace_id, seq, ts, data::VARCHAR, domain, node_id, reward from events order by id").fetchall(),
            "traces": con.execute("select trace_id, domain, query, status, final_answer, best_path, verified, reward from traces order by trace_id").fetchall(),
            "nodes": con.execute("select trace_id, node_id, parent_id, depth, thought, value from nodes order by trace_id, node_id").fetchall(),
            "training_examples": con.execute("select trace_id, steps, final_answer from training_examples order by trace_id").fetchall(),
            "quarantine": con.execute('select source_path, "offset", reason from quarantine order by source_path, "offset"').fetchall(),
        }
    finally:
        con.close()


def test_daemon_compacts_while_following_views_unchanged_ids_exactly_once(tmp_path):
    logs, st, ref = tmp_path / "logs", tmp_path / "store", tmp_path / "reference"
    logs.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ingest.cli", "--log-dir", str(logs), "--store", str(st), "--flush-ms", "50", "--rescan-ms", "100",
         "--no-progress", "--compact-every-s", "1", "--compact-min-segments", "3"],
        stdout=subprocess.PIPE, stderr=open(tmp_path / "daemon.log", "wb"),
    )
    try:
        r = random.Random(7)
        ids = []
        # Bursts with pauses: every burst becomes its own commit (a segment), so segments pile up
        # and the compactor has work while the daemon keeps ingesting.
        for burst in range(12):
            with open(logs / "run.jsonl", "ab") as fh:
                for _ in range(3):
                    for e in ingest_bench.synthetic_trace(r):
                        fh.write(orjson.dumps(e) + b"\n")
                        ids.append(e["id"])
                if burst == 5:
                    fh.write(b'{"not": "an event"}\n')
            time.sleep(0.3)
        info = store.open_store(st)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            done = "event=compacted" in (tmp_path / "daemon.log").read_text()  # OPTIMIZE, summary and VACUUM finished
            if done and _optimizes(st) and set(_ids(st)) >= set(ids) and small_files(info) <= 2:
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"never compacted everything; daemon log:\n{(tmp_path / 'daemon.log').read_text()[-3000:]}")
        # What readers see: the newest version holds every id exactly once.
        assert _ids(st) == collections.Counter(ids)
        assert (st / "trace_summary" / "_delta_log").is_dir()  # the derived per-trace summary came with it
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    # The same log directory ingested without compaction gives the same views.
    ingest_once(logs, ref, progress=False)
    got, want = _views(st), _views(ref)
    assert len(want["events"]) == len(ids) and len(want["traces"]) == 36 and len(want["quarantine"]) == 1
    for name in want:
        assert got[name] == want[name], name
    # Nothing ingested twice when the daemon resumes on a compacted store.
    assert ingest_once(logs, st, progress=False).events == 0


def test_compaction_flags_are_checked_and_off_means_off(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    r = CliRunner().invoke(cli, ["--log-dir", str(logs), "--store", str(tmp_path / "s"), "--compact-every-s", "-1", "--compact-min-segments", "0"])
    assert r.exit_code == 2
    assert "--compact-every-s must be 0 (off)" in r.output and "--compact-min-segments must be at least 1" in r.output
    # --once compacts at its end only when enough segments are uncompacted, and never with 0.
    def once(*flags: str) -> dict:
        i = len(list(logs.iterdir()))
        with open(logs / f"f{i}.jsonl", "wb") as fh:
            for e in ingest_bench.synthetic_trace(random.Random(i)):
                fh.write(orjson.dumps(e) + b"\n")
        r = CliRunner().invoke(cli, ["--log-dir", str(logs), "--store", str(tmp_path / "s"), "--once", "--no-progress", *flags])
        assert r.exit_code == 0, r.output
        summary = json.loads(r.stdout.strip().splitlines()[-1])
        assert summary["events"] > 0
        return summary

    st = tmp_path / "s"
    for _ in range(3):
        once("--compact-every-s", "0.01")  # 1, 2, 3 small files: fewer than the default 8
    assert _optimizes(st) == 0 and small_files(store.open_store(st)) == 3
    # No compaction, but --once left the per-trace summary of what it ingested behind.
    summary = DeltaTable(str(st / "trace_summary"))
    assert summary.history(limit=1)[0]["kaelum.events_version"] == str(DeltaTable(str(st / "events")).version())
    once("--compact-every-s", "0", "--compact-min-segments", "1")  # off means off
    assert _optimizes(st) == 0 and small_files(store.open_store(st)) == 4
    before = _views(st)
    once("--compact-min-segments", "5")  # the 5th small file makes it worth it
    assert _optimizes(st) == 1 and len(DeltaTable(str(st / "events")).file_uris()) == 1
    after = _views(st)
    assert len(after["events"]) > len(before["events"])
    assert set(before["events"]) <= set(after["events"])  # nothing lost, nothing duplicated
    assert len({row[0] for row in after["events"]}) == len(after["events"])


def test_the_summary_is_stored_in_trace_id_order_whatever_the_order_of_the_events(tmp_path: Path):
    """A trace's summary row is found by the row groups' trace_id statistics: the rows are stored
    sorted by trace_id, also when traces arrive in another order."""
    from store.compact import compact
    from store_traces import _done, _node, _start

    from kaelum.events import TraceEvents

    st = tmp_path / "s"
    ids = [f"trace-{c}" for c in "mzaqf"]
    for tid in ids:
        t = TraceEvents(trace_id=tid)
        evs = [_start(t, f"query of {tid}"), _node(t, "n0", None, 0, "start"), _node(t, "n1", "n0", 1, "Answer.", True, "1"),
               _done(t, ["n0", "n1"], "1", True, 0.9)]
        store.append_events(st, [e.to_dict() for e in evs], writer_id=f"w-{tid}")
    compact(st)
    stored = DeltaTable(str(st / "trace_summary")).to_pyarrow_table(columns=["trace_id", "query"])
    want = sorted(ids)
    assert stored.column("trace_id").to_pylist() == want
    assert stored.column("query").to_pylist() == [f"query of {tid}" for tid in want]  # each row whole, not just its key
