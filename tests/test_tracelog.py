"""TraceLogger: complete lines, rotation by rename, many threads, schema-valid output."""

import glob
import json
import os
import threading

import jsonschema
import pytest

from kaelum.events import SCHEMA_PATH, TraceEvents
from kaelum.tracelog import TraceLogger


def test_threads_write_whole_lines_and_rotation_never_splits_or_loses(tmp_path):
    logger = TraceLogger(tmp_path, max_bytes=8192, fsync="never")
    per_thread, threads = 300, 6

    def work(k: int) -> None:
        t = TraceEvents()
        for i in range(per_thread):
            logger.log(t.make("reflection", node_id=f"t{k}-{i}", text="x" * (i % 50)))

    ts = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    logger.close()

    files = sorted(glob.glob(str(tmp_path / "*.jsonl")))
    assert logger.rotations >= 10 and len(files) == logger.rotations + 1
    host_pid = f"-{os.getpid()}"
    assert all(host_pid in os.path.basename(f) for f in files)
    validator = jsonschema.Draft202012Validator(json.load(open(SCHEMA_PATH)))
    seen = []
    for f in files:
        data = open(f, "rb").read()
        assert data.endswith(b"\n")
        assert len(data) <= 8192
        for line in data.splitlines():
            obj = json.loads(line)
            validator.validate(obj)
            seen.append(obj["data"]["node_id"])
    assert sorted(seen) == sorted(f"t{k}-{i}" for k in range(threads) for i in range(per_thread))


def test_reopening_appends_never_truncates(tmp_path):
    t = TraceEvents()
    with TraceLogger(tmp_path, fsync="always") as lg:
        lg.log(t.make("reflection", node_id="a", text="1"))
    with TraceLogger(tmp_path, fsync="always") as lg:
        lg.log(t.make("reflection", node_id="b", text="2"))
    lines = open(lg.path, "rb").read().splitlines()
    assert [json.loads(x)["data"]["node_id"] for x in lines] == ["a", "b"]


def test_bad_configuration_and_bad_lines_are_refused(tmp_path):
    with pytest.raises(ValueError, match="fsync must be"):
        TraceLogger(tmp_path, fsync="sometimes")
    with pytest.raises(ValueError, match="max_bytes must be at least 1024"):
        TraceLogger(tmp_path, max_bytes=10)
    lg = TraceLogger(tmp_path)
    with pytest.raises(ValueError, match="exactly one newline-terminated line"):
        lg.write_line(b'{"a":1}\n{"b":2}\n')
