"""File identity and reading complete lines: the two things the tailer needs from one file.

Identity is by content, not by path or inode: the fingerprint of a file is a hash of its first
line, or of its first ``FINGERPRINT_BYTES`` bytes when the first line is longer. Log files are
append-only, so that prefix never changes once it is there: a file keeps its fingerprint through
renames (rotation), while a new file in a reused inode, or a file truncated and rewritten, gets a
new one. A file whose first line is shorter than that and not yet complete has no fingerprint
yet; it also has nothing to read yet.

Known limit (shared with Vector's checksum fingerprint): two different files whose first lines
are byte-identical are taken for one file. Every Kaelum event line carries a unique id, so
files written by ``TraceLogger`` cannot collide.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

FINGERPRINT_BYTES = 256


def fingerprint_of(head: bytes) -> str | None:
    """The fingerprint of a file that starts with `head` (at least FINGERPRINT_BYTES or all of it)."""
    nl = head.find(b"\n", 0, FINGERPRINT_BYTES)
    if nl >= 0:
        prefix = head[: nl + 1]
    elif len(head) >= FINGERPRINT_BYTES:
        prefix = head[:FINGERPRINT_BYTES]
    else:
        return None
    return hashlib.blake2b(prefix, digest_size=12).hexdigest()


def read_fingerprint(fd: int) -> str | None:
    return fingerprint_of(os.pread(fd, FINGERPRINT_BYTES, 0))


@dataclass(frozen=True)
class Lines:
    """Complete lines read from a file: bytes [start, end) of it; `data` ends with a newline."""

    start: int
    data: bytes

    @property
    def end(self) -> int:
        return self.start + len(self.data)


@dataclass(frozen=True)
class Oversize:
    """A line longer than the limit, [start, end) newline included; only its head is kept."""

    start: int
    end: int
    head: bytes


def read_lines(fd: int, start: int, size: int, block_bytes: int, max_line_bytes: int, scanned_to: int = 0) -> Lines | Oversize | int | None:
    """Read what can be consumed at `start` of a file of `size` bytes.

    Returns Lines (complete lines, at most about `block_bytes`), an Oversize line once its
    newline has arrived, None when only a partial line is there (wait for more), or an int: the
    offset scanned so far in a line already longer than the limit whose newline has not arrived,
    to be passed back as `scanned_to` so the search does not start over.
    """
    if start >= size:
        return None
    want = min(block_bytes, size - start)
    if scanned_to <= start:
        data = os.pread(fd, want, start)
        cut = data.rfind(b"\n")
        if cut >= 0:
            return Lines(start, data[: cut + 1])
        if len(data) <= max_line_bytes:
            return None  # a partial line: it waits for its newline, however long that takes
        head = data[:max_line_bytes]
        pos = start + len(data)
    else:
        head = os.pread(fd, max_line_bytes, start)
        pos = scanned_to
    # A line over the limit: find its end without holding it in memory.
    while pos < size:
        chunk = os.pread(fd, min(block_bytes, size - pos), pos)
        if not chunk:
            break
        nl = chunk.find(b"\n")
        if nl >= 0:
            return Oversize(start, pos + nl + 1, head)
        pos += len(chunk)
    return pos
