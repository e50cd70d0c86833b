"""Automatic compaction while the daemon follows: Delta OPTIMIZE and VACUUM on a schedule.

Every ``every_s`` seconds a background thread of the daemon counts the small files in the newest
version of the store's tables (the many small commits of a daemon that follows) and runs
``store.compact.compact`` when there are at least ``min_segments`` of them.

Why this is safe beside ingestion and readers (docs/store.md, store/compact.py):
- OPTIMIZE is one Delta commit that removes files and adds the same rows; Delta lets it commit
  beside concurrent appends, and it never touches the writers' app transactions or the commit
  metadata that holds their positions, so exactly-once is unaffected;
- VACUUM deletes only files no version younger than its retention names, so a running query
  never loses a file;
- a compaction abandoned half-way (the daemon exits, a crash) commits nothing; its files are
  in no version, and a later VACUUM removes them.

It must not starve ingestion: the thread lowers its own scheduling priority (Linux ``nice`` is
per thread, and the worker threads that delta-rs starts from it inherit it), so on a busy machine
the parse and commit threads win the cores.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from store import StoreInfo

from .observe import Hub

log = logging.getLogger("kaelum.ingest")

NICE_INCREMENT = 10


class Compactor:
    """The daemon's compaction thread; ``start()``, then ``stop()`` when the daemon stops."""

    def __init__(self, store: StoreInfo, hub: Hub, every_s: float, min_segments: int, retention_s: float | None = None) -> None:
        from store.compact import DEFAULT_RETENTION_S

        self.store = store
        self.hub = hub
        self.every_s = every_s
        self.min_segments = min_segments
        self.retention_s = DEFAULT_RETENTION_S if retention_s is None else retention_s
        self.runs = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kaelum-ingest-compact", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, wait_s: float = 5.0) -> None:
        """Ask the thread to stop; wait up to `wait_s` for a compaction in progress to finish.

        A compaction still running after that is abandoned when the process exits: it commits
        nothing (see the module docstring)."""
        self._stop.set()
        self._thread.join(timeout=wait_s)
        if self._thread.is_alive():
            log.warning("event=compaction_abandoned reason=\"still running %.0f s after stop; nothing of it is committed\"", wait_s)

    @property
    def running(self) -> bool:
        """Whether the thread is still alive (after `stop`: a compaction was abandoned)."""
        return self._thread.is_alive()

    def _run(self) -> None:
        try:  # per-thread on Linux; threads created by this thread inherit it
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICE_INCREMENT)
        except (AttributeError, OSError) as exc:
            log.info("event=compaction_priority_unchanged error=%s", exc)
        while not self._stop.wait(self.every_s):
            self.run_once()

    def run_once(self, summary_anyway: bool = False) -> bool:
        """Compact now if enough small files accumulated; True when a compaction ran.

        With `summary_anyway` (the end of ``--once``) a run that does not compact still brings the
        per-trace summary up to date: it reads the typed columns only, far less than the ingest
        that produced them, and leaves fast views behind a bulk catch-up."""
        from store.compact import build_summary, compact, small_files

        try:
            n = small_files(self.store)
            if n < self.min_segments:
                if summary_anyway:
                    t0 = time.monotonic()
                    version = build_summary(self.store)
                    self.hub.emit("summary_built", events_version=version, seconds=round(time.monotonic() - t0, 2))
                self.hub.emit("compaction_skipped", small_files=n, min_segments=self.min_segments)
                return False
            t0 = time.monotonic()
            result = compact(self.store, retention_s=self.retention_s)
        except Exception as exc:
            # The storage failed, delta-rs refused: ingestion goes on, the next interval tries again.
            self.hub.emit("compaction_failed", error=f"{type(exc).__name__}: {exc}")
            return False
        self.runs += 1
        self.hub.emit(
            "compacted", small_files=n, files_before=result.files_before, files_after=result.files_after,
            merged=result.files_removed, vacuumed=result.files_deleted, seconds=round(time.monotonic() - t0, 2),
        )
        return True
