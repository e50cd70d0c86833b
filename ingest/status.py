"""The status model: per source file, what was ingested, how far behind, what went wrong.

Durable counts (bytes, events, quarantined lines per file) come from the store's commits
(``store.positions``: the read positions each writer's commits carry), so they survive restarts and
are true even after a kill -9. The daemon adds what only it knows — file sizes at its last look,
lag in seconds, the last error — in a small status file per writer, in the daemon's state folder
(``state_dir``: ``<store>/_ingest`` for a local store; for a URL store a folder of this host,
``$XDG_STATE_HOME/kaelum/ingest/<hash of the URL>``), written temp → fsync → rename.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from typing import Any

from store import StoreInfo, open_store, positions as store_positions
from store.layout import is_url, normalise

from .observe import Hub
from .source import shown_path

INGEST_DIR = "_ingest"  # inside a local store: the daemons' locks and status files


def state_dir(store: str | StoreInfo) -> str:
    """Where the daemons of this host keep locks and status files for `store`."""
    uri = store.uri if isinstance(store, StoreInfo) else normalise(store)
    if not is_url(uri):
        return os.path.join(uri, INGEST_DIR)
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "kaelum", "ingest", hashlib.sha256(uri.encode()).hexdigest()[:16])


@dataclass
class SourceStatus:
    fingerprint: str
    path: str
    bytes: int = 0  # consumed from this file, durably
    events: int = 0
    quarantined: int = 0
    position: int = 0  # durable end offset
    size: int | None = None  # file size when last looked at (None: not known)
    lag_bytes: int | None = None
    lag_seconds: float | None = None
    last_error: str | None = None
    writer: str = ""


@dataclass
class StatusSnapshot:
    writer: str
    log_dir: str
    pid: int
    updated_at: float
    sources: list[SourceStatus]
    last_error: str | None = None
    quarantined_total: int = 0
    events_total: int = 0


class StatusModel:
    """An observer of the daemon's events that keeps what `status` reports."""

    def __init__(self, writer: str, log_dir: str) -> None:
        self.writer = writer
        self.log_dir = log_dir
        self.sources: dict[str, SourceStatus] = {}
        self.last_error: str | None = None

    def restore(self, durable: dict[str, Any]) -> None:
        for fp, p in durable.items():
            self.sources[fp] = SourceStatus(fp, p.path, p.bytes, p.events, p.quarantined, p.offset, writer=self.writer)

    def _src(self, fields: dict[str, Any]) -> SourceStatus | None:
        fp = fields.get("fingerprint")
        if fp is None:
            return None
        s = self.sources.get(fp)
        if s is None:
            s = self.sources[fp] = SourceStatus(fp, fields.get("path", ""), writer=self.writer)
        if "path" in fields:
            s.path = fields["path"]
        return s

    def __call__(self, kind: str, fields: dict[str, Any]) -> None:
        if kind == "flushed":
            return  # durable counts are taken from the commit (see snapshot)
        if kind in ("file_added", "renamed", "switched"):
            self._src(fields)
        elif kind == "quarantined":
            s = self._src(fields)
            if s is not None:
                s.last_error = f"offset {fields['offset']}: {fields['reason']}"
        elif kind == "truncated":
            s = self._src(fields)
            if s is not None:
                s.last_error = f"truncated to {fields['new_size']} bytes below position {fields['position']}"
        elif kind == "commit_failed":
            self.last_error = fields.get("error")

    def snapshot(self, tailer) -> StatusSnapshot:  # noqa: ANN001 - a Tailer
        now = time.time()
        for fp, src in tailer.sources.items():
            s = self.sources.setdefault(fp, SourceStatus(fp, src.shown_path, writer=self.writer))
            s.path = src.shown_path
            s.size = src.size
            s.lag_bytes = max(0, src.size - src.committed)
            s.lag_seconds = 0.0 if s.lag_bytes == 0 else round(now - src.caught_up_at, 3)
        return StatusSnapshot(
            self.writer, self.log_dir, os.getpid(), now, list(self.sources.values()), self.last_error,
            sum(s.quarantined for s in self.sources.values()), sum(s.events for s in self.sources.values()),
        )


def write_status(store: StoreInfo, snap: StatusSnapshot, durable_positions: dict | None = None) -> None:
    # The durable counts are the store's (the writer's last commit); refresh them before writing.
    durable = durable_positions if durable_positions is not None else {
        fp: p for (w, fp), p in store_positions(store).items() if w == snap.writer}
    for s in snap.sources:
        p = durable.get(s.fingerprint)
        if p is not None:
            s.bytes, s.events, s.quarantined, s.position = p.bytes, p.events, p.quarantined, p.offset
    snap.quarantined_total = sum(s.quarantined for s in snap.sources)
    snap.events_total = sum(s.events for s in snap.sources)
    d = os.path.join(state_dir(store), "status")
    os.makedirs(d, mode=0o750, exist_ok=True)
    target = os.path.join(d, f"{snap.writer}.json")
    tmp = target + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(asdict(snap), fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, target)


def _read_status_files(store: StoreInfo) -> dict[str, dict[str, Any]]:
    d = os.path.join(state_dir(store), "status")
    out = {}
    if os.path.isdir(d):
        for name in sorted(os.listdir(d)):
            if name.endswith(".json"):
                try:
                    with open(os.path.join(d, name), encoding="utf-8") as fh:
                        out[name[:-5]] = json.load(fh)
                except (OSError, ValueError):
                    continue
    return out


def _current_sizes(log_dir: str, known_keys: set[str]) -> dict[str, tuple[str, int, float]]:
    """source key → (path, size, mtime) of the files in `log_dir` now, identified as the tailer does."""
    from .tailer import Tailer  # the tailer's own identification: same keys, links and skips

    out: dict[str, tuple[str, int, float]] = {}
    for key, path, size, mtime in Tailer(log_dir, Hub(), start_positions=dict.fromkeys(known_keys, 0)).files_now():
        if key not in out or size > out[key][1]:
            out[key] = (shown_path(path), size, mtime)
    return out


def collect_status(store_path: str, log_dir: str | None = None) -> list[StatusSnapshot]:
    """The status of every writer of the store; with `log_dir`, lag is measured against it now."""
    info = open_store(store_path)  # raises StoreError naming the fix when it is not a store
    durable = store_positions(info)
    files = _read_status_files(info)
    sizes = _current_sizes(log_dir, {fp for _, fp in durable}) if log_dir else {}
    writers = sorted({w for w, _ in durable} | set(files))
    out = []
    for w in writers:
        f = files.get(w, {})
        known = {s["fingerprint"]: s for s in f.get("sources", [])}
        sources = []
        for (wid, fp), p in sorted(durable.items()):
            if wid != w:
                continue
            k = known.get(fp, {})
            s = SourceStatus(fp, p.path, p.bytes, p.events, p.quarantined, p.offset, k.get("size"), k.get("lag_bytes"), k.get("lag_seconds"), k.get("last_error"), w)
            if fp in sizes:
                path, size, mtime = sizes[fp]
                s.path, s.size = path, size
                s.lag_bytes = max(0, size - p.offset)
                s.lag_seconds = 0.0 if s.lag_bytes == 0 else round(max(0.0, mtime - p.committed_at.timestamp()), 3)
            sources.append(s)
        for fp, k in known.items():  # seen by the daemon, nothing committed yet
            if (w, fp) not in durable:
                sources.append(SourceStatus(**{**k, "writer": w}))
        if log_dir:
            mine = {s.fingerprint for s in sources}
            for fp, (path, size, _m) in sizes.items():
                if fp not in mine and w == writers[0]:
                    sources.append(SourceStatus(fp, path, size=size, lag_bytes=size, lag_seconds=None, writer=w))
        out.append(StatusSnapshot(w, f.get("log_dir", ""), f.get("pid", 0), f.get("updated_at", 0.0), sources, f.get("last_error"),
                                  sum(s.quarantined for s in sources), sum(s.events for s in sources)))
    if not out and log_dir:
        sources = [SourceStatus(fp, path, size=size, lag_bytes=size) for fp, (path, size, _m) in sizes.items()]
        out.append(StatusSnapshot("(none)", log_dir, 0, 0.0, sources))
    return out
