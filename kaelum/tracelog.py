"""TraceLogger: writes events as JSONL, one file per process.

Guarantees the ingester relies on:
- each event is one complete line written with a single ``write(2)`` on an ``O_APPEND`` file
  descriptor, so lines from this process never interleave or tear (a crash can leave at most a
  partial *last* line, which the ingester waits on and never emits);
- rotation renames the active file to a timestamped name and opens a fresh one; a file is never
  rewritten or truncated;
- the file name carries host and pid, so processes never share a file.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from datetime import datetime, timezone
from typing import Iterable, Literal

from .events import Event

log = logging.getLogger("kaelum.tracelog")

FsyncPolicy = Literal["always", "interval", "never"]


def _safe_host() -> str:
    host = socket.gethostname() or "host"
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in host)[:64]


class TraceLogger:
    """Append events to ``<log_dir>/kaelum-<host>-<pid>.jsonl``.

    fsync: ``"always"`` after every write (durable, slow), ``"interval"`` at most every
    ``fsync_interval_s`` seconds (default), ``"never"`` (leave it to the OS).
    Rotation: when the active file would exceed ``max_bytes``, it is renamed to
    ``kaelum-<host>-<pid>.<UTC stamp>.jsonl`` and a new active file is started.
    """

    def __init__(
        self,
        log_dir: str | os.PathLike[str],
        max_bytes: int = 64 * 1024 * 1024,
        fsync: FsyncPolicy = "interval",
        fsync_interval_s: float = 1.0,
        prefix: str = "kaelum",
    ) -> None:
        if fsync not in ("always", "interval", "never"):
            raise ValueError(f"fsync must be 'always', 'interval' or 'never', got {fsync!r}")
        if max_bytes < 1024:
            raise ValueError(f"max_bytes must be at least 1024, got {max_bytes}")
        self.log_dir = os.fspath(log_dir)
        self.max_bytes = max_bytes
        self.fsync = fsync
        self.fsync_interval_s = fsync_interval_s
        self.prefix = prefix
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._size = 0
        self._pid = -1
        self._last_fsync = 0.0
        self.rotations = 0
        os.makedirs(self.log_dir, exist_ok=True)

    @property
    def path(self) -> str:
        return os.path.join(self.log_dir, f"{self.prefix}-{_safe_host()}-{os.getpid()}.jsonl")

    def _open(self) -> None:
        # After fork the child must not write into the parent's file.
        self._pid = os.getpid()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._size = os.fstat(self._fd).st_size

    def _rotate(self) -> None:
        assert self._fd is not None
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = None
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        current = self.path
        target = current[: -len(".jsonl")] + f".{stamp}.jsonl"
        os.rename(current, target)
        self.rotations += 1
        log.info("rotated %s -> %s", current, target)
        self._open()

    def write_line(self, line: bytes) -> None:
        """Append one complete line (must end with a newline and contain no other)."""
        if not line.endswith(b"\n") or b"\n" in line[:-1]:
            raise ValueError("write_line takes exactly one newline-terminated line")
        with self._lock:
            if self._fd is None or self._pid != os.getpid():
                self._open()
            if self._size > 0 and self._size + len(line) > self.max_bytes:
                self._rotate()
            assert self._fd is not None
            written = os.write(self._fd, line)
            if written != len(line):  # a short write on a regular file means the disk is full
                raise OSError(f"short write to {self.path}: {written} of {len(line)} bytes")
            self._size += written
            now = time.monotonic()
            if self.fsync == "always" or (self.fsync == "interval" and now - self._last_fsync >= self.fsync_interval_s):
                os.fsync(self._fd)
                self._last_fsync = now

    def log(self, event: Event) -> None:
        self.write_line(event.to_json_line())

    def log_many(self, events: Iterable[Event]) -> None:
        for event in events:
            self.log(event)

    def flush(self) -> None:
        with self._lock:
            if self._fd is not None and self._pid == os.getpid():
                os.fsync(self._fd)
                self._last_fsync = time.monotonic()

    def close(self) -> None:
        with self._lock:
            if self._fd is not None and self._pid == os.getpid():
                os.fsync(self._fd)
                os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "TraceLogger":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
