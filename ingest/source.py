"""File identity and reading complete lines: the two things the tailer needs from one file.

The *head fingerprint* of a file is a hash of its first line, or of its first
``FINGERPRINT_BYTES`` bytes when the first line is longer. Log files are append-only, so that
prefix never changes once it is there: a file keeps it through renames (rotation), while a new
file in a reused inode, or a file truncated and rewritten, gets a new one. A file whose first line
is shorter than that and not yet complete has no fingerprint yet; it also has nothing to read yet.

Two different files can share a first line (both start with a blank line, or with the same
header). The tailer then tells them apart as Vector and Filebeat do, by device and inode together
with a longer fingerprint: the first file keeps the head fingerprint as its *source key*; a file
on another inode whose first ``IDENTITY_BYTES`` differ from it gets an *extended key*
(``extended_key``): the head fingerprint, the length ``n`` of its prefix up to and including the
first byte where the two differ, and a hash of those ``n`` bytes. That key is recomputable from
the file's content alone (``key_matches``), so it survives renames, copies and restarts. A file
whose content so far is the same as another's is taken for a copy of it (copy-truncate rotation)
until the two differ.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

FINGERPRINT_BYTES = 256
IDENTITY_BYTES = 4096  # how far two files with the same first line are compared to tell them apart


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


def extended_key(head_fp: str, prefix: bytes) -> str:
    """The source key of a file whose head fingerprint is taken and whose content starts with `prefix`."""
    return f"{head_fp}+{len(prefix)}-{hashlib.blake2b(prefix, digest_size=12).hexdigest()}"


def head_of(key: str) -> str:
    """The head fingerprint of a source key (the key itself, or the part before '+')."""
    return key.split("+", 1)[0]


def key_length(key: str) -> int:
    """How many leading bytes an extended key covers (0 for a head fingerprint)."""
    return int(key.split("+", 1)[1].split("-", 1)[0]) if "+" in key else 0


def key_matches(key: str, head: bytes) -> bool:
    """Whether a file that starts with `head` (at least the key's length) has that extended key."""
    n = key_length(key)
    return 0 < n <= len(head) and extended_key(head_of(key), head[:n]) == key


def first_difference(a: bytes, b: bytes) -> int | None:
    """The first index where `a` and `b` differ within their common length, or None."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return None
    lo, hi = 0, n  # the first difference is in [lo, hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    return lo


def shown_path(path: str) -> str:
    """`path` as text that is always valid UTF-8: what the store, status files and logs show.

    Names that are valid UTF-8 are unchanged. In a name that is not, the tailer holds the
    undecodable bytes as surrogates (``os.fsdecode``, lossless, used to open the file); here
    each of them is written as ``\\xNN``, its byte in hex (``os.fsencode(path)`` gives the
    exact bytes back from the tailer's path).
    """
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return os.fsencode(path).decode("utf-8", "backslashreplace")


@dataclass(frozen=True)
class Lines:
    """Complete lines read from a file: bytes [start, end) of it; `data` ends with a newline."""

    start: int
    data: bytes | bytearray

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
        # Read into a bytearray and cut the partial last line off in place: slicing bytes would
        # copy the whole block into fresh memory (a page fault per 4 KiB), about a third of the
        # read's cost at 32 MiB blocks.
        data = bytearray(want)
        got = os.preadv(fd, [data], start)
        if got < want:
            del data[got:]
        cut = data.rfind(b"\n")
        if cut >= 0:
            del data[cut + 1 :]
            return Lines(start, data)
        data = bytes(data)
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
