"""Automatic compaction while the daemon follows: the views are much faster over compacted segments.

Every ``every_s`` seconds a background thread of the daemon counts the store's uncompacted
(fresh) segments — event and quarantine segments written by any writer and not yet folded into
a compaction generation — and runs ``store.compact.compact`` when there are at least
``min_segments`` of them.

Why this is safe beside ingestion and readers (docs/store.md, store/compact.py):
- compaction only takes segments whose commit record is durable, and never touches commit
  records, so positions, and with them exactly-once, are unaffected;
- readers switch generations atomically (the manifest's rename) and replaced files are deleted
  only after ``grace_s``;
- a compaction abandoned half-way (the daemon exits, a crash) leaves files the next one removes.

It must not starve ingestion: the thread lowers its own scheduling priority (Linux ``nice`` is
per thread, and the DuckDB workers that compaction starts inherit it), so on a busy machine the
parse and commit threads win the cores.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from store import open_store

from .observe import Hub

log = logging.getLogger("kaelum.ingest")

NICE_INCREMENT = 10


def fresh_segments(store_path: str) -> int:
    """Event and quarantine segments of the store that no compaction has folded in yet."""
    from store.snapshot import resolve

    info = open_store(store_path)
    snap = resolve(info)
    return len(snap.fresh) + sum(1 for p in snap.quarantine if p.name.startswith("w-"))


class Compactor:
    """The daemon's compaction thread; ``start()``, then ``stop()`` when the daemon stops."""

    def __init__(self, store_path: str, hub: Hub, every_s: float, min_segments: int, grace_s: float = 10.0) -> None:
        self.store_path = store_path
        self.hub = hub
        self.every_s = every_s
        self.min_segments = min_segments
        self.grace_s = grace_s
        self.runs = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kaelum-ingest-compact", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, wait_s: float = 5.0) -> None:
        """Ask the thread to stop; wait up to `wait_s` for a compaction in progress to finish.

        A compaction still running after that is abandoned when the process exits: the next
        compaction removes what it left (see the module docstring)."""
        self._stop.set()
        self._thread.join(timeout=wait_s)
        if self._thread.is_alive():
            log.warning("event=compaction_abandoned reason=\"still running %.0f s after stop; the next compaction cleans up\"", wait_s)

    def _run(self) -> None:
        try:  # per-thread on Linux; DuckDB's worker threads created by this thread inherit it
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICE_INCREMENT)
        except (AttributeError, OSError) as exc:
            log.info("event=compaction_priority_unchanged error=%s", exc)
        while not self._stop.wait(self.every_s):
            self.run_once()

    def run_once(self) -> bool:
        """Compact now if enough fresh segments accumulated; True when a compaction ran."""
        from store.compact import compact

        try:
            n = fresh_segments(self.store_path)
            if n < self.min_segments:
                self.hub.emit("compaction_skipped", fresh_segments=n, min_segments=self.min_segments)
                return False
            t0 = time.monotonic()
            result = compact(self.store_path, grace_s=self.grace_s)
        except Exception as exc:
            # Another compaction (kaelum-sql compact, a second daemon) holds the lock, the disk
            # failed, DuckDB refused: ingestion goes on, the next interval tries again.
            self.hub.emit("compaction_failed", error=f"{type(exc).__name__}: {exc}")
            return False
        self.runs += 1
        self.hub.emit(
            "compacted", fresh_segments=n, segments_before=result.segments_before, segments_after=result.segments_after,
            rows=result.rows, seconds=round(time.monotonic() - t0, 2),
        )
        return True
