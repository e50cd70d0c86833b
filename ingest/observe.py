"""One events interface for everything observable in the ingester.

The tailer and the daemon call ``hub.emit(kind, **fields)`` for every decision that matters;
logs, the status model and tests hang off the same calls by adding an observer.

The kinds are ``KINDS``; ``switched`` is the same content found under another file (the copy of
copy-truncate); compacted, compaction_skipped, compaction_failed and summary_built come from the
daemon's automatic compaction (``ingest/compactor.py``).
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any, Callable, Protocol

log = logging.getLogger("kaelum.ingest")

KINDS = (
    "started", "file_added", "file_skipped", "renamed", "switched", "truncated", "file_removed", "quarantined", "flushed",
    "commit_failed", "caught_up", "stopping", "stopped", "compacted", "compaction_skipped", "compaction_failed", "summary_built",
)

# Decisions a user should see at the default level; the rest (each flush) at DEBUG/INFO.
_WARN = {"truncated", "commit_failed", "quarantined", "compaction_failed"}


class Observer(Protocol):
    def __call__(self, kind: str, fields: dict[str, Any]) -> None: ...


class Hub:
    """Fans every event out to its observers; an observer that raises never stops ingestion."""

    def __init__(self) -> None:
        self._observers: list[Observer] = []
        self._lock = threading.Lock()

    def add(self, observer: Observer) -> None:
        with self._lock:
            self._observers.append(observer)

    def emit(self, kind: str, **fields: Any) -> None:
        for obs in list(self._observers):
            try:
                obs(kind, fields)
            except Exception:  # an observer's bug must not lose data
                log.exception("observer %r failed on %s", obs, kind)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        value = round(value, 6)
    s = value if isinstance(value, str) else json.dumps(value, default=str)
    if s == "" or any(c in s for c in ' ="\n\t'):
        return json.dumps(s)
    return s


def logfmt(kind: str, fields: dict[str, Any]) -> str:
    return " ".join([f"event={kind}"] + [f"{k}={_fmt(v)}" for k, v in fields.items()])


class LogObserver:
    """Structured log lines (logfmt: ``event=truncated path=... fingerprint=... old_size=...``)."""

    def __init__(self, logger: logging.Logger = log) -> None:
        self.logger = logger

    def __call__(self, kind: str, fields: dict[str, Any]) -> None:
        if kind == "quarantined":
            fields = {k: v for k, v in fields.items() if k != "raw"}
        level = logging.WARNING if kind in _WARN else logging.INFO
        self.logger.log(level, logfmt(kind, fields))


class Recorder:
    """Keeps every event in memory (tests and the status model use it)."""

    def __init__(self, keep: Callable[[str], bool] = lambda kind: True) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.keep = keep

    def __call__(self, kind: str, fields: dict[str, Any]) -> None:
        if self.keep(kind):
            self.events.append((kind, dict(fields)))

    def kinds(self) -> list[str]:
        return [k for k, _ in self.events]
