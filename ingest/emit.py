"""Emit: batches of parsed lines, committed to the store in order on a background thread.

Reading and parsing the next batch overlaps the store's write of the previous one (DuckDB,
Parquet encoding and fsync release the GIL). At most one batch waits while one is being
committed, so memory stays bounded. A source's ``committed`` position moves only here, after
``StoreWriter.commit`` returned, i.e. after the store made the batch durable.

After a failed commit every later batch is dropped unread-back until the daemon calls
``recover()``: it waits for the queue to empty and rewinds every source to what the store holds.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass

import pyarrow as pa

from store import QuarantineRecord, StoreWriter, SourceRange

from .observe import Hub
from .tailer import Source, Tailer


@dataclass
class Range:
    fingerprint: str
    path: str
    start: int
    end: int
    events: int = 0
    quarantined: int = 0


class Batch:
    def __init__(self) -> None:
        self.tables: list[pa.Table] = []
        self.bad: list[QuarantineRecord] = []
        self.ranges: dict[str, Range] = {}
        self.events = 0
        self.first_at: float | None = None

    def __bool__(self) -> bool:
        return bool(self.ranges)

    def age_ms(self) -> float:
        return 0.0 if self.first_at is None else (time.monotonic() - self.first_at) * 1000

    def range_for(self, src: Source, start: int) -> Range:
        r = self.ranges.get(src.fingerprint)
        if r is None:
            r = self.ranges[src.fingerprint] = Range(src.fingerprint, src.path, start, start)
            if self.first_at is None:
                self.first_at = time.monotonic()
        if r.end != start:  # reads of one source are contiguous within a batch, by construction
            raise RuntimeError(f"internal error: non-contiguous read of {src.path} ({r.end} != {start})")
        r.path = src.path
        return r


@dataclass
class Totals:
    commits: int = 0
    events: int = 0
    quarantined: int = 0
    bytes: int = 0


class Committer:
    def __init__(self, writer: StoreWriter, tailer: Tailer, hub: Hub) -> None:
        self.writer = writer
        self.tailer = tailer
        self.hub = hub
        self.totals = Totals()
        self.error: str | None = None
        self._q: queue.Queue[Batch | None] = queue.Queue(maxsize=1)
        self._thread = threading.Thread(target=self._run, name="kaelum-ingest-commit", daemon=True)
        self._thread.start()

    def submit(self, batch: Batch) -> None:
        if batch:
            self._q.put(batch)  # blocks while one batch already waits: back-pressure on reading

    def drain(self) -> None:
        self._q.join()

    def recover(self) -> str | None:
        """After a failed commit: wait for the queue, rewind all sources, clear and return the error."""
        self.drain()
        err, self.error = self.error, None
        if err is not None:
            self.tailer.rewind(list(self.tailer.sources))
        return err

    def close(self) -> None:
        self._q.put(None)
        self._thread.join()

    def _run(self) -> None:
        while True:
            batch = self._q.get()
            try:
                if batch is None:
                    return
                if self.error is None:
                    self._commit(batch)
            finally:
                self._q.task_done()

    def _commit(self, batch: Batch) -> None:
        t0 = time.monotonic()
        table = pa.concat_tables(batch.tables) if batch.tables else None
        ranges = [SourceRange(r.fingerprint, r.path, r.start, r.end, r.events, r.quarantined) for r in batch.ranges.values()]
        try:
            info = self.writer.commit(table, quarantine=batch.bad, sources=ranges)
        except Exception as exc:  # the store refused or the disk failed: the daemon re-reads and retries
            self.error = f"{type(exc).__name__}: {exc}"
            self.hub.emit("commit_failed", error=self.error, events=batch.events, files=len(ranges))
            return
        for r in ranges:
            src = self.tailer.sources.get(r.fingerprint)
            if src is not None and src.committed == r.start:
                src.committed = r.end
        n_bytes = sum(r.end - r.start for r in ranges)
        self.totals.commits += 1
        self.totals.events += batch.events
        self.totals.quarantined += len(batch.bad)
        self.totals.bytes += n_bytes
        self.hub.emit(
            "flushed", seq=info.seq, events=batch.events, quarantined=len(batch.bad), files=len(ranges), bytes=n_bytes,
            ms=round((time.monotonic() - t0) * 1000, 1), waited_ms=round(batch.age_ms(), 1),
            ranges=[{"path": r.path, "start": r.start, "end": r.end} for r in ranges],
        )
