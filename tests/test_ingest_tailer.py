"""File identity, complete-line reading and the tailer's rotation/truncation decisions, in process."""

import os
import shutil

from ingest.observe import Hub, Recorder
from ingest.source import FINGERPRINT_BYTES, Lines, Oversize, fingerprint_of, read_lines
from ingest.tailer import Tailer


def test_fingerprint_needs_a_complete_first_line_or_enough_bytes_and_never_changes_after():
    assert fingerprint_of(b"") is None
    assert fingerprint_of(b'{"id":"a"') is None  # partial first line, short: nothing to read yet
    fp = fingerprint_of(b'{"id":"a"}\n')
    assert fp is not None and fingerprint_of(b'{"id":"a"}\n{"id":"b"}\n' + b"x" * 1000) == fp
    assert fingerprint_of(b'{"id":"b"}\n') != fp
    long = b"y" * FINGERPRINT_BYTES
    assert fingerprint_of(long) is not None and fingerprint_of(long + b"zzz\n") == fingerprint_of(long)


def _fd(path):
    return os.open(path, os.O_RDONLY)


def test_read_lines_returns_complete_lines_only_and_handles_oversize(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_bytes(b"one\ntwo\nthr")
    fd = _fd(p)
    got = read_lines(fd, 0, os.path.getsize(p), 1 << 16, 1024)
    assert isinstance(got, Lines) and got.data == b"one\ntwo\n" and got.end == 8
    assert read_lines(fd, 8, os.path.getsize(p), 1 << 16, 1024) is None  # partial: wait
    with open(p, "ab") as fh:
        fh.write(b"ee\n" + b"z" * 3000)
    size = os.path.getsize(p)
    got = read_lines(fd, 8, size, 1 << 16, 1024)
    assert got.data == b"three\n"
    scanned = read_lines(fd, got.end, size, 1 << 16, 1024)
    assert isinstance(scanned, int) and scanned == size  # over the limit, newline not there yet
    with open(p, "ab") as fh:
        fh.write(b"z" * 5000 + b"\nok\n")
    size = os.path.getsize(p)
    over = read_lines(fd, got.end, size, 4096, 1024, scanned_to=scanned)
    assert isinstance(over, Oversize) and over.end - over.start == 8001 and over.head == b"z" * 1024
    assert read_lines(fd, over.end, size, 4096, 1024).data == b"ok\n"
    os.close(fd)


def _drain(t: Tailer) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    t.scan()
    for _ in range(100):
        progressed = False
        for src in t.readable(include_gone=True):
            got = t.read(src)
            if got is not None:
                out[src.fingerprint] = out.get(src.fingerprint, b"") + got.data
                progressed = True
            src.committed = src.position
        t.settle()
        if not progressed:
            break
        t.scan()
    return out


def _recorded_tailer(log_dir) -> tuple[Tailer, Recorder]:
    """A tailer on `log_dir` whose events are recorded."""
    rec = Recorder()
    hub = Hub()
    hub.add(rec)
    return Tailer(str(log_dir), hub), rec


def test_rename_rotation_copy_truncate_truncation_and_removal(tmp_path):
    t, rec = _recorded_tailer(tmp_path)
    a = tmp_path / "app.jsonl"
    a.write_bytes(b"a1\na2\n")
    got = _drain(t)
    fp_a = fingerprint_of(b"a1\n")
    assert got == {fp_a: b"a1\na2\n"} and rec.kinds() == ["file_added"]

    # rename-and-create: the old content keeps its identity under its new name
    a.rename(tmp_path / "app.1.jsonl")
    with open(tmp_path / "app.1.jsonl", "ab") as fh:
        fh.write(b"a3\n")
    a.write_bytes(b"b1\n")
    got = _drain(t)
    assert got == {fp_a: b"a3\n", fingerprint_of(b"b1\n"): b"b1\n"}
    assert ("renamed", {"fingerprint": fp_a, "old_path": str(a), "path": str(tmp_path / "app.1.jsonl")}) in rec.events

    # copy-truncate: the copy has the same content (no re-read), the original starts anew
    with open(a, "ab") as fh:
        fh.write(b"b2\n")
    shutil.copy(a, tmp_path / "app.jsonl.1")
    with open(a, "r+b") as fh:
        fh.truncate(0)
    a.write_bytes(b"c1\n")
    got = _drain(t)
    assert got == {fingerprint_of(b"b1\n"): b"b2\n", fingerprint_of(b"c1\n"): b"c1\n"}
    assert "truncated" in rec.kinds() and "switched" in rec.kinds()

    # truncation below the position, same first line: re-read from the start of the new content
    with open(a, "ab") as fh:
        fh.write(b"c2\nc3\n")
    assert _drain(t) == {fingerprint_of(b"c1\n"): b"c2\nc3\n"}
    a.write_bytes(b"c1\nx\n")  # open(..., "wb") truncates, then writes: 5 bytes < position 9
    before = len(rec.events)
    got = _drain(t)
    assert got == {fingerprint_of(b"c1\n"): b"c1\nx\n"}
    assert [k for k, _ in rec.events[before:]] == ["truncated"]

    # removal: drained, then forgotten; a new file in the old name (maybe the same inode) is new
    os.unlink(tmp_path / "app.1.jsonl")
    _drain(t)
    assert ("file_removed", {"path": str(tmp_path / "app.1.jsonl"), "fingerprint": fp_a, "position": 9}) in rec.events  # a1 a2 a3
    assert fp_a not in t.sources


def test_files_without_a_complete_first_line_wait_and_others_are_ignored(tmp_path):
    t = Tailer(str(tmp_path), Hub())
    (tmp_path / "a.jsonl").write_bytes(b'{"partial')
    (tmp_path / "notes.txt").write_bytes(b"ignored\n")
    (tmp_path / "old.jsonl.gz").write_bytes(b"compressed\n")
    assert _drain(t) == {}
    with open(tmp_path / "a.jsonl", "ab") as fh:
        fh.write(b'"}\n')
    assert _drain(t) == {fingerprint_of(b'{"partial"}\n'): b'{"partial"}\n'}


def test_resumes_from_store_positions(tmp_path):
    (tmp_path / "a.jsonl").write_bytes(b"l1\nl2\nl3\n")
    fp = fingerprint_of(b"l1\n")
    t = Tailer(str(tmp_path), Hub(), start_positions={fp: 6})
    assert _drain(t) == {fp: b"l3\n"}


def test_descriptors_are_capped_and_reopened_when_a_file_grows(tmp_path):
    t = Tailer(str(tmp_path), Hub(), max_open=2)
    for i in range(5):
        (tmp_path / f"f{i}.jsonl").write_bytes(f"line {i}\n".encode())
    assert len(_drain(t)) == 5
    assert sum(s.fd is not None for s in t.sources.values()) == 2
    with open(tmp_path / "f0.jsonl", "ab") as fh:
        fh.write(b"more\n")
    assert _drain(t) == {fingerprint_of(b"line 0\n"): b"more\n"}


def test_a_read_racing_a_truncate_and_rewrite_is_dropped(tmp_path):
    # The file is identified, then cut and rewritten before the read: the bytes read belong to
    # the new content and must not be emitted as the old source.
    t, rec = _recorded_tailer(tmp_path)
    a = tmp_path / "a.jsonl"
    a.write_bytes(b"old-1\nold-2\n")
    t.scan()
    src = t.sources[fingerprint_of(b"old-1\n")]
    a.write_bytes(b"new-1\n")  # truncate + rewrite, the tailer has not scanned since
    assert t.read(src) is None and src.position == 0
    got = _drain(t)
    assert got == {fingerprint_of(b"new-1\n"): b"new-1\n"} and "truncated" in rec.kinds()


# --- identity: files that share a first line -----------------------------------------------


def test_files_with_the_same_first_line_are_two_files_through_restart_rename_and_copy_truncate(tmp_path):
    # Both start with a blank line and the same header: the first-line fingerprint alone took them
    # for one file and the second was never read.
    t, rec = _recorded_tailer(tmp_path)
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_bytes(b"\n# kaelum\nA1\nA2\n")
    b.write_bytes(b"\n# kaelum\nB1\n")
    os.utime(b, ns=(os.stat(a).st_mtime_ns + 10**6,) * 2)  # a is older: it keeps the plain key
    got = _drain(t)
    head = fingerprint_of(b"\n")
    assert got[head] == b"\n# kaelum\nA1\nA2\n"
    (key_b,) = [k for k in got if k != head]
    assert key_b.startswith(head + "+") and got[key_b] == b"\n# kaelum\nB1\n"

    # A restart from the store's positions: each file resumes where it was, nothing read twice.
    with open(a, "ab") as fh:
        fh.write(b"A3\n")
    with open(b, "ab") as fh:
        fh.write(b"B2\n")
    positions = {fp: src.committed for fp, src in t.sources.items()}
    t.close()
    t2, rec2 = _recorded_tailer(tmp_path)
    t2.start_positions = positions
    assert _drain(t2) == {head: b"A3\n", key_b: b"B2\n"}

    # Rename rotation of the second file keeps its key; its copy-truncate copy is not re-read.
    b.rename(tmp_path / "b.1.jsonl")
    with open(tmp_path / "b.1.jsonl", "ab") as fh:
        fh.write(b"B3\n")
    assert _drain(t2) == {key_b: b"B3\n"}
    shutil.copy(tmp_path / "b.1.jsonl", tmp_path / "b.1.jsonl.copy")
    with open(tmp_path / "b.1.jsonl", "r+b") as fh:
        fh.truncate(0)
    with open(tmp_path / "b.1.jsonl.copy", "ab") as fh:
        pass
    got = _drain(t2)
    assert key_b not in got or got[key_b] == b""  # the copy holds nothing unread
    assert "switched" in rec2.kinds()
    with open(tmp_path / "b.1.jsonl.copy", "ab") as fh:
        fh.write(b"B4\n")
    assert _drain(t2) == {key_b: b"B4\n"}


def test_an_exact_copy_is_not_a_second_file(tmp_path):
    t, _ = _recorded_tailer(tmp_path)
    (tmp_path / "a.jsonl").write_bytes(b"\nx1\nx2\n")
    shutil.copy(tmp_path / "a.jsonl", tmp_path / "a.jsonl.1")
    assert _drain(t) == {fingerprint_of(b"\n"): b"\nx1\nx2\n"}
    assert len(t.sources) == 1


def test_three_files_that_differ_from_the_first_at_the_same_byte_are_three_files(tmp_path):
    t, _ = _recorded_tailer(tmp_path)
    files = {"a.jsonl": b"\nA-1\n", "b.jsonl": b"\nB-1\nb\n", "c.jsonl": b"\nB-2\nc\n"}  # b and c leave a at byte 1
    for i, (name, data) in enumerate(files.items()):
        (tmp_path / name).write_bytes(data)
        os.utime(tmp_path / name, ns=(10**18 + i * 10**6,) * 2)
    got = _drain(t)
    assert sorted(got.values()) == sorted(files.values()) and len(t.sources) == 3
