"""The store on S3: a real S3 API server (moto's server mode, in a subprocess on a free loopback
port) and the real delta-rs client talking to it — no mocked calls. Ingest and read back, three
daemons with their own writer ids and log directories writing one store while readers query, and
an unreachable store that fails before any work.

moto runs in its own process: a ThreadedMotoServer inside the test process let delta-rs's requests
time out (observed here), and a separate process is closer to a real server anyway.
"""

from __future__ import annotations

import collections
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner
from deltalake import DeltaTable

import store
from ingest import ingest_once
from kaelum.events import TraceEvents
from kaelum.tracelog import TraceLogger

pytestmark = pytest.mark.timeout(300)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_server():
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{url}/moto-api/", timeout=1)
            break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, "moto_server did not start"
            time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture()
def s3(s3_server, monkeypatch, tmp_path):
    """A fresh bucket; the standard AWS variables point this process and its children at it."""
    env = {"AWS_ENDPOINT_URL": s3_server, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_REGION": "us-east-1", "XDG_STATE_HOME": str(tmp_path / "state")}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    import boto3

    bucket = f"kaelum-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket=bucket)
    return f"s3://{bucket}/store"


def _opts() -> dict:
    return store.layout.storage_options("s3://x")


def _raw_ids(uri: str) -> collections.Counter:
    t = DeltaTable(f"{uri}/events", storage_options=_opts()).to_pyarrow_table(columns=["id"])
    return collections.Counter(t.column("id").to_pylist())


def _log_events(log_dir: Path, n: int, t: TraceEvents | None = None) -> list[str]:
    t = t or TraceEvents()
    ids = []
    with TraceLogger(log_dir, fsync="never") as lg:
        for i in range(n):
            e = t.make("reflection", node_id=f"n{i}", text=f"thought {i}")
            lg.log(e)
            ids.append(e.id)
    return ids


def test_ingest_to_s3_read_back_exactly_once(s3, tmp_path: Path):
    logs = tmp_path / "logs"
    ids = _log_events(logs, 300)
    with open(next(logs.glob("*.jsonl")), "ab") as fh:
        fh.write(b"{not json\n")
    summary = ingest_once(logs, s3, writer_id="host-a", progress=False)
    assert summary.events == 300 and summary.quarantined == 1
    con = store.connect(s3)
    assert con.execute("select count(*), count(distinct id) from events").fetchone() == (300, 300)
    assert con.execute("select raw_text from quarantine").fetchall() == [("{not json",)]
    assert _raw_ids(s3) == collections.Counter(ids)
    assert ingest_once(logs, s3, writer_id="host-a", progress=False).events == 0  # resumed from the table: nothing twice
    assert {w for w, _fp in store.positions(s3)} == {"host-a"}
    # kaelum-sql on the URL, now and as of the first commit.
    from store.cli import main as sql

    r = CliRunner().invoke(sql, ["--store", s3, "-f", "csv", "select count(*) as n from events"])
    assert r.exit_code == 0 and r.output == "n\n300\n", r.output
    r = CliRunner().invoke(sql, ["--store", s3, "--as-of", "0", "-f", "csv", "select count(*) as n from events"])
    assert r.exit_code == 0 and r.output == "n\n0\n", r.output
    r = CliRunner().invoke(sql, ["compact", "--store", s3, "--retention-s", "0"])
    assert r.exit_code == 0 and r.output.startswith("files: "), r.output
    assert store.connect(s3).execute("select count(*) from events").fetchone()[0] == 300


READER = r"""
import json, os, sys, time
import store
uri, stop_file = sys.argv[1], sys.argv[2]
errors, counts, queries = [], [], 0
while True:
    stop = os.path.exists(stop_file)
    try:
        con = store.connect(uri)
        n = con.execute("select count(*) from events").fetchone()[0]
        raw = con.execute("select count(*) from _events_all").fetchone()[0]
        con.execute("select count(*) from traces").fetchone()
        con.close()
        queries += 1
        if counts and n < counts[-1]:
            errors.append(f"count went back from {counts[-1]} to {n}")
        if raw != n:
            errors.append(f"{raw} stored rows for {n} events: a duplicate")
        counts.append(n)
    except Exception as exc:
        errors.append(repr(exc)[:500])
    if stop:
        break
print(json.dumps({"queries": queries, "errors": errors, "max": max(counts or [0]), "distinct": len(set(counts))}))
"""


def test_three_daemons_write_one_s3_store_while_readers_query(s3, tmp_path: Path):
    n_daemons, per_daemon = 3, 400
    stop_file = tmp_path / "stop"
    daemons, writers, ids = [], [], {}
    for k in range(n_daemons):
        logs = tmp_path / f"logs{k}"
        logs.mkdir()
        daemons.append(subprocess.Popen(
            [sys.executable, "-m", "ingest.cli", "--log-dir", str(logs), "--store", s3, "--writer-id", f"host-{k}",
             "--flush-ms", "100", "--no-progress", "--compact-every-s", "0"],
            stdout=subprocess.DEVNULL, stderr=open(tmp_path / f"daemon{k}.log", "wb")))
        ids[k] = []

        def write(k=k, logs=logs):
            t = TraceEvents()
            with TraceLogger(logs, fsync="never") as lg:
                for i in range(per_daemon):
                    e = t.make("reflection", node_id=f"n{i}", text=f"host {k} thought {i}")
                    lg.log(e)
                    ids[k].append(e.id)
                    time.sleep(0.01)

        writers.append(threading.Thread(target=write))
    # The three daemons create the store at the same time (creation is idempotent); readers start once it exists.
    deadline = time.monotonic() + 60
    while not DeltaTable.is_deltatable(f"{s3}/events", storage_options=_opts()):
        assert time.monotonic() < deadline and all(d.poll() is None for d in daemons)
        time.sleep(0.2)
    readers = [subprocess.Popen([sys.executable, "-c", READER, s3, str(stop_file)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    try:
        for w in writers:
            w.start()
        for w in writers:
            w.join()
        expected = collections.Counter(i for k in ids for i in ids[k])
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not set(_raw_ids(s3)) >= set(expected):
            time.sleep(0.5)
    finally:
        stop_file.touch()
        for d in daemons:
            d.terminate()
        rcs = [d.wait(timeout=60) for d in daemons]
    results = []
    for r in readers:
        out, err = r.communicate(timeout=120)
        assert r.returncode == 0, err[-2000:]
        results.append(json.loads(out))
    logs = "\n".join((tmp_path / f"daemon{k}.log").read_text()[-1500:] for k in range(n_daemons))
    assert rcs == [0] * n_daemons, logs
    assert _raw_ids(s3) == expected, logs  # 0 lost, 0 duplicated
    for r in results:
        assert r["errors"] == [] and r["queries"] >= 2, r  # 0 reader errors
    assert any(r["distinct"] >= 2 for r in results), results  # the readers ran while the daemons wrote
    positions = store.positions(s3)
    assert {w for w, _ in positions} == {f"host-{k}" for k in range(n_daemons)}
    assert sum(p.events for p in positions.values()) == n_daemons * per_daemon


def test_an_unreachable_store_fails_before_any_work_naming_the_url_and_the_variables(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_free_port()}")  # nothing listens there
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    logs = tmp_path / "logs"
    _log_events(logs, 5)
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "ingest.cli", "--log-dir", str(logs), "--store", "s3://nowhere/st", "--once", "--no-progress"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert "cannot reach s3://nowhere/st" in out.stderr and "AWS_ENDPOINT_URL" in out.stderr, out.stderr[-2000:]
    assert "event=started" not in out.stderr and time.monotonic() - t0 < 60
    from store.cli import main as sql

    r = CliRunner().invoke(sql, ["--store", "s3://nowhere/st", "select 1"])
    assert r.exit_code == 1 and "cannot reach s3://nowhere/st" in r.output and "AWS_ACCESS_KEY_ID" in r.output
    with pytest.raises(store.StoreError, match="unsupported store URL"):
        store.connect("ftp://host/x")


def test_kill9_at_random_moments_on_s3_then_restart_exactly_once(s3, tmp_path: Path):
    """The torture of tests/test_ingest_daemon.py, shorter, with the store on S3: 8 kill -9 of the
    daemon (half of them once it has committed) while a TraceLogger rotates files, then --once."""
    import random

    logs, log_file = tmp_path / "logs", tmp_path / "daemon.log"
    logs.mkdir()
    ids: list[str] = []
    done = threading.Event()

    def write():
        rnd = random.Random(3)
        with TraceLogger(logs, max_bytes=8192, fsync="never") as tl:
            t = TraceEvents()
            i = 0
            while not done.is_set():
                e = t.make("reflection", node_id=f"t{i}", text="w" * rnd.randrange(120))
                tl.log(e)
                ids.append(e.id)
                i += 1
                if i % 50 == 0:
                    tl.write_line(b"{garbage\n")
                time.sleep(0.002)

    writer = threading.Thread(target=write)
    writer.start()
    rnd = random.Random(5)
    cmd = [sys.executable, "-m", "ingest.cli", "--log-dir", str(logs), "--store", s3, "--writer-id", "torture",
           "--flush-ms", "50", "--no-progress", "--compact-every-s", "0"]
    try:
        for k in range(8):
            flushed = log_file.read_text().count("event=flushed") if log_file.exists() else 0
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(log_file, "ab"))
            if k % 2:
                deadline = time.monotonic() + 60
                while log_file.read_text().count("event=flushed") == flushed and time.monotonic() < deadline:
                    time.sleep(0.02)
                time.sleep(rnd.uniform(0.05, 1.0))
            else:
                time.sleep(rnd.uniform(0.2, 3.0))
            proc.kill()
            proc.wait()
    finally:
        done.set()
        writer.join()
    assert log_file.read_text().count("event=flushed") >= 4
    out = subprocess.run(cmd + ["--once"], capture_output=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    assert _raw_ids(s3) == collections.Counter(ids)  # 0 lost, 0 duplicated
    q = DeltaTable(f"{s3}/quarantine", storage_options=_opts()).to_pyarrow_table(columns=["source", "offset"]).to_pylist()
    assert len(q) == len({(r["source"], r["offset"]) for r in q}) == len(ids) // 50  # each garbage line once


def test_concurrent_creation_of_one_store_all_succeed(s3):
    """Many writers creating the same store at once race for version 0 of each table; every one of
    them must end with both tables there (the losers' delta-rs errors vary: "already exists",
    "protocol changed since last commit", ...), and the tables must be created exactly once."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(6)

    def create() -> None:
        try:
            barrier.wait(timeout=30)
            store.open_store(s3, create=True)
        except BaseException as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=create) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    from store.tables import EVENTS_TABLE_SCHEMA, QUARANTINE_TABLE_SCHEMA

    for table, schema in (("events", EVENTS_TABLE_SCHEMA), ("quarantine", QUARANTINE_TABLE_SCHEMA)):
        dt = DeltaTable(f"{s3}/{table}", storage_options=_opts())
        # A loser whose create delta-rs retried may commit a second, identical CREATE (version 1):
        # harmless, as long as the table is the one the store defines.
        assert dt.version() in (0, 1)
        assert [f.name for f in dt.schema().fields] == schema.names
        assert dt.metadata().partition_columns == ["date"]
    # The store works for everyone afterwards: an append is read back.
    assert store.append_events(s3, [_feedback_event()], writer_id="after-race") == 1
    assert store.connect(s3).execute("select count(*) from events").fetchone()[0] == 1


def _feedback_event() -> dict:
    from kaelum.events import new_event_id, new_trace_id, utc_now

    return {"v": 1, "id": new_event_id(), "type": "feedback", "trace_id": new_trace_id(), "seq": 0, "ts": utc_now(),
            "data": {"reward": 0.5, "label": "checked", "by": "test"}}


def test_a_url_store_gets_the_per_trace_summary_and_the_conflicts_set_like_a_folder(s3, tmp_path: Path):
    """Item 3 of issue 9 on S3: `--once` leaves a trace_summary (and id_conflicts) table on the URL
    store, readers use it, and every view answers as on a local folder with the same events —
    also with fresh commits (a new trace, a conflicting copy) on top of it."""
    from store_traces import _traces

    traces = _traces()
    logs = tmp_path / "logs"
    with TraceLogger(logs, fsync="never") as lg:
        for _tid, evs in traces.values():
            lg.log_many(evs)
    local = tmp_path / "local"
    for target in (s3, local):
        ingest_once(logs, target, writer_id="host-a", progress=False)
    assert DeltaTable.is_deltatable(f"{s3}/trace_summary", storage_options=_opts())
    assert DeltaTable.is_deltatable(f"{s3}/id_conflicts", storage_options=_opts())
    queries = ["select trace_id, reward, complete from trajectories order by trace_id",
               "select trace_id, n_steps from training_examples order by trace_id",
               "select trace_id, node_id, evaluations from nodes order by 1, 2",
               "select count(*), count(distinct id) from events",
               "select source_path, reason from quarantine order by 1, 2"]

    def same() -> None:
        cu, cl = store.connect(s3), store.connect(local)
        assert store.snapshot_of(cu).summary is not None
        for q in queries:
            assert cu.execute(q).fetchall() == cl.execute(q).fetchall(), q

    same()
    # Fresh: a new trace and a copy of T1's completion id in T3's trace, from a later writer (it loses).
    t1_done = next(e for e in traces["T1"][1] if e.type == "trace_completed").to_dict()
    conflicting = {**t1_done, "trace_id": traces["T3"][0], "seq": 50}
    logs2 = tmp_path / "logs2"
    with TraceLogger(logs2, fsync="never") as lg:
        lg.write_line(json.dumps(conflicting).encode() + b"\n")
    for target in (s3, local):
        with store.StoreWriter(target, "host-b") as w:
            path = next(logs2.glob("*.jsonl"))
            w.commit(store.events_from_dicts([conflicting], source="fp-2", source_path=str(path), offsets=[0]))
    same()
    cu = store.connect(s3)
    assert cu.execute("select count(*) from _kaelum_events_fresh").fetchone()[0] == 1  # the summary covers the rest
    assert cu.execute("select count(*) from quarantine where reason like '%conflicts with the copy kept in events%'").fetchone()[0] == 1
    assert cu.execute("select count(*), count(distinct id) from events").fetchone()[0] == sum(len(e) for _t, e in traces.values())
