"""The ingest daemon: tail a log directory into the store, exactly once, until stopped.

Loop: scan the directory (woken by watchdog events, or by the periodic rescan on file systems
that send none) → read complete lines from every source → parse them in bulk → add them to the
batch → commit the batch through the store's ``StoreWriter`` (one Delta commit, positions
included) when it holds ``batch_events`` events or its oldest line has waited ``flush_ms``. A
source's committed position moves only after the commit returned, i.e. after the store made it
durable; on start the positions come from the store itself (``StoreWriter.positions()``: the
writer's last commit), never from a side file that may be older.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from store import QuarantineRecord, StoreError, StoreInfo, StoreWriter, open_store

from .compactor import Compactor
from .config import IngestConfig
from .emit import Batch, Committer
from .observe import Hub, LogObserver
from .parse import oversize_reason, parse_block
from .source import Lines, Oversize, shown_path
from .status import StatusModel, state_dir, write_status
from .tailer import Source, Tailer

log = logging.getLogger("kaelum.ingest")


class AlreadyRunning(RuntimeError):
    """Another daemon already ingests this log directory into this store."""


def default_writer_id(log_dir: str) -> str:
    host = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname() or "host").strip("._-") or "host"
    digest = hashlib.sha256(os.path.realpath(log_dir).encode()).hexdigest()[:8]
    return f"{host[:100]}-{digest}"


@dataclass
class IngestSummary:
    writer_id: str
    files: int = 0
    events: int = 0
    quarantined: int = 0
    bytes: int = 0
    commits: int = 0
    seconds: float = 0.0
    # Of `seconds`, the end-of-run compaction or per-trace summary build of --once (issue 9 item 6:
    # never longer than the ingest itself).
    compaction_seconds: float = 0.0
    per_file: dict[str, dict[str, int]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # path -> why it could not be read (latest scan)
    links_not_followed: dict[str, str] = field(default_factory=dict)  # symbolic links out of the log directory


class _DirLock:
    """One daemon per (host, log directory, store): an flock in the store, held while running."""

    def __init__(self, store: StoreInfo, log_dir: str, writer_id: str) -> None:
        key = hashlib.sha256(f"{socket.gethostname()}\0{os.path.realpath(log_dir)}".encode()).hexdigest()[:16]
        store_path = store.uri
        d = os.path.join(state_dir(store), "locks")
        os.makedirs(d, mode=0o750, exist_ok=True)
        self.path = os.path.join(d, f"logdir-{key}.lock")
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 512, 0).decode("utf-8", "replace").strip()
            os.close(self.fd)
            raise AlreadyRunning(
                f"another kaelum-ingest ({holder or 'unknown process'}) is already ingesting {log_dir} into {store_path}; "
                "stop it first — two daemons on one log directory would ingest every line twice"
            ) from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"pid={os.getpid()} host={socket.gethostname()} writer={writer_id}\n".encode(), 0)

    def release(self) -> None:
        if self.fd >= 0:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = -1


class Daemon:
    """Ingest `config.log_dir` into `config.store`. Call ``run()``; ``stop()`` from any thread."""

    def __init__(self, config: IngestConfig, hub: Hub | None = None) -> None:
        self.config = config.validate()
        self.writer_id = config.writer_id or default_writer_id(config.log_dir)
        self.hub = hub or Hub()
        if hub is None:
            self.hub.add(LogObserver())
        self.status = StatusModel(self.writer_id, os.path.realpath(config.log_dir))
        self.hub.add(self.status)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._last_status_write = 0.0
        self._flush_now = False
        self.compactor: Compactor | None = None  # set by run() when automatic compaction is on
        self._writer: StoreWriter | None = None
        self.hub.add(self._on_event)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def _on_event(self, kind: str, fields: dict[str, Any]) -> None:
        if kind == "truncated":
            # A batch must not hold two generations of one source: commit what was read first.
            self._flush_now = True

    # --- the loop -----------------------------------------------------------------------------

    def run(self) -> IngestSummary:
        cfg = self.config
        started = time.monotonic()
        info = open_store(cfg.store, create=True)  # StoreError names the fix; the CLI shows it
        lock = _DirLock(info, cfg.log_dir, self.writer_id)
        watcher = None
        try:
            writer = self._writer = StoreWriter(info, writer_id=self.writer_id)
            try:
                positions = {fp: p.offset for fp, p in writer.positions().items()}
                self.status.restore(writer.positions())
                tailer = Tailer(cfg.log_dir, self.hub, positions, cfg.include, cfg.exclude, cfg.block_bytes, cfg.max_line_bytes)
                self.hub.emit("started", writer=self.writer_id, log_dir=cfg.log_dir, store=info.uri, known_sources=len(positions), pid=os.getpid())
                if cfg.use_watchdog and not cfg.once:
                    watcher = _watch(cfg.log_dir, self._wake)
                compactor = self.compactor = (
                    Compactor(info, self.hub, cfg.compact_every_s, cfg.compact_min_segments)
                    if cfg.compact_every_s > 0 else None
                )
                following = compactor is not None and not cfg.once
                if following:
                    compactor.start()  # a thread compacting every compact_every_s
                try:
                    summary = self._loop(tailer, writer, info)
                finally:
                    tailer.close()
                    if following:
                        compactor.stop()
                if compactor is not None and cfg.once and not self._stop.is_set():
                    t0 = time.monotonic()
                    compactor.run_once(summary_anyway=True)  # --once: one compaction (or the summary) after the last commit
                    summary.compaction_seconds = time.monotonic() - t0
            finally:
                writer.close()
        finally:
            if watcher is not None:
                watcher.stop()
                watcher.join(timeout=5)
            lock.release()
        summary.seconds = time.monotonic() - started
        self.hub.emit("stopped", writer=self.writer_id, events=summary.events, quarantined=summary.quarantined, commits=summary.commits, seconds=summary.seconds)
        return summary

    def _loop(self, tailer: Tailer, writer: StoreWriter, store: StoreInfo) -> IngestSummary:
        cfg = self.config
        committer = Committer(writer, tailer, self.hub)
        try:
            self._follow(tailer, committer, store)
        finally:
            committer.close()  # commits what was submitted, in order
        self._write_status(store, tailer, force=True)
        t = committer.totals
        summary = IngestSummary(self.writer_id, files=len(self.status.sources), events=t.events, quarantined=t.quarantined, bytes=t.bytes, commits=t.commits)
        summary.per_file = {s.path: {"events": s.events, "quarantined": s.quarantined, "bytes": s.bytes} for s in self.status.sources.values()}
        summary.skipped = {shown_path(p): why for p, why in tailer.skipped.items()}
        summary.links_not_followed = {shown_path(p): why for p, why in tailer.not_followed.items()}
        return summary

    def _follow(self, tailer: Tailer, committer: Committer, store: StoreInfo) -> None:
        cfg = self.config
        batch = Batch()
        tailer.scan()
        bar = _progress(cfg.progress, sum(s.pending_bytes for s in tailer.sources.values()))
        caught_up = False
        min_poll = 0.02  # coalesce bursts of file-system events (one per written line)
        last_poll = 0.0
        failures = 0
        while True:
            if committer.error is not None:
                err = committer.recover()
                batch = Batch()  # read after the failed batch: re-read from the durable positions
                self.status.last_error = err
                failures += 1
                if cfg.once and failures >= 3:
                    # A full disk or an unreachable store: a clear error and exit code 1 (the CLI
                    # shows StoreError); nothing was committed, so nothing is lost.
                    raise StoreError(f"the store refused 3 commits in a row, last: {err}")
                time.sleep(min(5.0, 0.5 * failures))
            progressed = False
            for src in tailer.readable(include_gone=True):
                if self._stop.is_set():
                    break
                if self._flush_now:  # a truncation: commit what was read before re-reading
                    self._flush_now = False
                    committer.submit(batch)
                    batch = Batch()
                n = self._read_one(tailer, src, batch)
                if n:
                    progressed = True
                    if bar is not None:
                        bar.update(n)
                if batch.events >= cfg.batch_events or batch.age_ms() >= cfg.flush_ms:
                    committer.submit(batch)
                    batch = Batch()
            # Following, a batch waits out its flush window even when nothing more arrives: at
            # most one commit per flush_ms, so segments stay few and large enough.
            if batch and (batch.age_ms() >= cfg.flush_ms or (not progressed and cfg.once) or self._stop.is_set() or self._flush_now):
                self._flush_now = False
                committer.submit(batch)
                batch = Batch()
            tailer.settle()
            self._write_status(store, tailer)
            if self._stop.is_set():
                self.hub.emit("stopping", writer=self.writer_id, reason="signal")
                break
            if not progressed:
                if not caught_up:
                    caught_up = True
                    if bar is not None:
                        bar.close()
                        bar = None
                    committer.drain()
                    t = committer.totals
                    self.hub.emit("caught_up", files=len(tailer.sources), events=t.events, quarantined=t.quarantined)
                    self._write_status(store, tailer, force=True)
                if cfg.once:
                    committer.drain()
                    if committer.error is None:
                        break
                    continue
                timeout = cfg.rescan_ms / 1000
                if batch:
                    timeout = min(timeout, max(0.0, (cfg.flush_ms - batch.age_ms()) / 1000))
                self._wake.wait(timeout)
                self._wake.clear()
                wait_more = min_poll - (time.monotonic() - last_poll)
                if wait_more > 0 and not self._stop.is_set():
                    time.sleep(wait_more)
            last_poll = time.monotonic()
            tailer.scan()
        committer.submit(batch)
        if bar is not None:
            bar.close()

    def _read_one(self, tailer: Tailer, src: Source, batch: Batch) -> int:
        """Read and parse one block of `src` into the batch; the number of bytes consumed."""
        start = src.position
        got = tailer.read(src)
        if got is None:
            if src.gone and src.position < src.size and src.fd is not None and tailer.tail_abandoned(src):
                # The file is gone: its last line can never be completed. Keep it, do not drop it.
                raw = os.pread(src.fd, min(src.size - start, self.config.max_line_bytes), start)
                r = batch.range_for(src, start)
                self._quarantine(batch, src, start, raw, "incomplete last line of a file that was removed")
                r.end = src.position = src.size
                r.quarantined += 1
                return src.size - start
            return 0
        r = batch.range_for(src, start)
        if isinstance(got, Oversize):
            self._quarantine(batch, src, got.start, got.head, oversize_reason(got.end - got.start - 1, self.config.max_line_bytes))
            r.quarantined += 1
            r.end = got.end
            return got.end - got.start
        assert isinstance(got, Lines)
        parsed = parse_block(got.data, got.start, self.config.max_line_bytes)
        for b in parsed.bad:
            self._quarantine(batch, src, b.offset, b.raw, b.reason)
        r.quarantined += len(parsed.bad)
        n = parsed.events.num_rows
        if n:
            t = parsed.events
            t = t.append_column("source", pa.repeat(pa.scalar(src.fingerprint, pa.string()), n))
            t = t.append_column("source_path", pa.repeat(pa.scalar(src.shown_path, pa.string()), n))
            batch.tables.append(t)
            batch.events += n
            r.events += n
        r.end = got.end
        return got.end - got.start

    def _quarantine(self, batch: Batch, src: Source, offset: int, raw: bytes, reason: str) -> None:
        batch.bad.append(QuarantineRecord(src.shown_path, src.fingerprint, offset, bytes(raw), reason))
        self.hub.emit("quarantined", path=src.shown_path, fingerprint=src.fingerprint, offset=offset, reason=reason, raw=bytes(raw[:200]))

    def _write_status(self, store: StoreInfo, tailer: Tailer, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_status_write < 1.0:
            return
        self._last_status_write = now
        try:
            # The durable counts: this daemon's writer knows its last commit's positions.
            durable = self._writer.positions() if self._writer is not None else None
            write_status(store, self.status.snapshot(tailer), durable)
        except OSError as exc:
            log.warning("could not write the status file: %s", exc)


def _progress(enabled: bool, total: int):
    if not enabled or total <= 0:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="catching up", leave=False)


def _watch(log_dir: str, wake: threading.Event):
    from watchdog.events import FileSystemEventHandler
    from watchdog.observers import Observer

    class _Wake(FileSystemEventHandler):
        def on_any_event(self, event) -> None:  # noqa: ANN001 - watchdog's signature
            wake.set()

    observer = Observer()
    observer.schedule(_Wake(), log_dir, recursive=False)
    observer.daemon = True
    observer.start()
    return observer


def ingest_once(log_dir: str | os.PathLike[str], store_path: str | os.PathLike[str], writer_id: str | None = None, progress: bool = True) -> IngestSummary:
    """Catch up on everything in `log_dir` into the store at `store_path`, then return.

    The same code path as ``kaelum-ingest --once``; safe to call repeatedly (exactly once).
    """
    cfg = IngestConfig(log_dir=os.fspath(log_dir), store=os.fspath(store_path), writer_id=writer_id, progress=progress, once=True, use_watchdog=False)
    return Daemon(cfg).run()
