"""Lineage: a training selection reads one snapshot; the manifest's versions read it again exactly,
while a real daemon keeps ingesting (kaelum-train --as-of)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import store
from kaelum.tracelog import TraceLogger
from store_traces import _simple  # complete, verified traces (tests/ is on sys.path)
from train.data import select_examples
from train.manifest import build_manifest

pytestmark = pytest.mark.timeout(180)


def _count(st: Path, sql: str, **kw) -> int:
    con = store.connect(st, **kw)
    try:
        return con.execute(sql).fetchone()[0]
    finally:
        con.close()


def test_manifest_versions_reproduce_the_exact_example_set_while_a_daemon_ingests(tmp_path: Path):
    logs, st = tmp_path / "logs", tmp_path / "store"
    logs.mkdir()
    stop = threading.Event()
    written = []

    def write():
        with TraceLogger(logs, fsync="never") as lg:
            i = 0
            while not stop.is_set():
                tid, evs = _simple(f"What is {i}+{i}?", True, 0.5 + (i % 5) / 10, str(2 * i))
                lg.log_many(evs)
                written.append(tid)
                i += 1
                time.sleep(0.02)

    writer = threading.Thread(target=write)
    writer.start()
    daemon = subprocess.Popen([sys.executable, "-m", "ingest.cli", "--log-dir", str(logs), "--store", str(st), "--flush-ms", "50",
                               "--no-progress", "--compact-every-s", "2", "--compact-min-segments", "4"],
                              stdout=subprocess.DEVNULL, stderr=open(tmp_path / "daemon.log", "wb"))
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if (st / "events" / "_delta_log").exists() and _count(st, "select count(*) from training_examples") >= 10:
                break
            time.sleep(0.2)
        first = select_examples(str(st), min_reward=0.6)
        snap = first.snapshot
        assert snap is not None and snap.versions["events"] >= 1 and snap.files
        # Counts, rows and the manifest come from the one snapshot.
        assert first.stages[0][1] == _count(st, "select count(*) from training_examples", as_of=snap.versions)
        assert snap.event_count == _count(st, "select count(*) from events", as_of=snap.versions)
        manifest = build_manifest_store(first)
        assert manifest["versions"] == snap.versions and manifest["file_count"] == len(snap.files)
        # The daemon goes on committing (and compacting): the store moves past the snapshot.
        deadline = time.monotonic() + 60
        while store.snapshot_of(store.connect(st)).events_version < snap.versions["events"] + 5 and time.monotonic() < deadline:
            time.sleep(0.2)
        again = select_examples(str(st), min_reward=0.6, as_of=snap.as_of_arg())
        newest = select_examples(str(st), min_reward=0.6)
    finally:
        stop.set()
        writer.join()
        daemon.terminate()
        assert daemon.wait(timeout=30) == 0
    assert again.snapshot.versions == snap.versions and again.snapshot.files == snap.files
    assert again.trace_ids == first.trace_ids and again.examples == first.examples and again.stages == first.stages
    assert set(newest.trace_ids) > set(first.trace_ids)
    # A timestamp means the table as it was then: the events table at the manifest's version was
    # committed before this moment, so "now" reads at least as much.
    assert len(select_examples(str(st), min_reward=0.6, as_of=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())).examples) >= len(first.examples)


def build_manifest_store(sel) -> dict:
    """The manifest's store section, as kaelum-train writes it."""
    from train.config import DataArgs, TrainArgs

    args = TrainArgs(model="m", output_dir="/tmp/x", data=DataArgs(store="s"))
    return build_manifest(args, sel, sel.examples, [], {}, None, "adapter", None)["store"]
