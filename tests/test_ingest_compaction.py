"""The daemon's automatic compaction: it compacts while following, the views do not change, and
every event id is in the store exactly once — in the snapshot readers see, and in the raw files
once the replaced segments are gone."""

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

import duckdb
import orjson
import pytest
from click.testing import CliRunner

import store
from ingest import ingest_once
from ingest.cli import main as cli
from ingest.compactor import fresh_segments
from store.snapshot import resolve

pytestmark = pytest.mark.timeout(120)

_bench = importlib.util.spec_from_file_location("ingest_bench", Path(__file__).parents[1] / "benchmarks" / "ingest_bench.py")
ingest_bench = importlib.util.module_from_spec(_bench)
_bench.loader.exec_module(ingest_bench)


def _ids_in(files) -> collections.Counter:
    if not files:
        return collections.Counter()
    rows = duckdb.execute("select id from read_parquet(?, union_by_name=true)", [[str(f) for f in files]]).fetchall()
    return collections.Counter(r[0] for r in rows)


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
            snap = resolve(info)
            if snap.manifest is not None and not snap.fresh and set(_ids_in(snap.compacted)) >= set(ids):
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"never compacted everything; daemon log:\n{(tmp_path / 'daemon.log').read_text()[-3000:]}")
        # What readers see: the snapshot's files hold every id exactly once.
        snap = resolve(info)
        assert _ids_in(list(snap.compacted) + list(snap.fresh)) == collections.Counter(ids)
        log = (tmp_path / "daemon.log").read_text()
        assert "event=compacted" in log
        # The replaced writer segments go after the grace period (10 s): then the raw files too.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            raw = _ids_in(sorted((st / "events").glob("*/[wc]-*.parquet")))
            if raw == collections.Counter(ids):
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"raw segments still hold {sum(raw.values())} rows for {len(ids)} ids")
        assert fresh_segments(str(st)) == 0
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

    for _ in range(3):
        once("--compact-every-s", "0.01")  # 1, 2, 3 fresh segments: fewer than the default 8
    assert resolve(store.open_store(tmp_path / "s")).manifest is None
    assert fresh_segments(str(tmp_path / "s")) == 3
    once("--compact-every-s", "0", "--compact-min-segments", "1")  # off means off
    assert resolve(store.open_store(tmp_path / "s")).manifest is None
    assert fresh_segments(str(tmp_path / "s")) == 4
    before = _views(tmp_path / "s")
    once("--compact-min-segments", "5")  # the 5th segment makes it worth it
    snap = resolve(store.open_store(tmp_path / "s"))
    assert snap.manifest is not None and fresh_segments(str(tmp_path / "s")) == 0
    after = _views(tmp_path / "s")
    assert len(after["events"]) > len(before["events"])
    assert set(before["events"]) <= set(after["events"])  # nothing lost, nothing duplicated
    assert len({row[0] for row in after["events"]}) == len(after["events"])
