"""kaelum-ingest: tail the runtime's event logs into the trace store, exactly once.

    from ingest import ingest_once
    summary = ingest_once("./logs", "./store")   # same code path as `kaelum-ingest --once`

Parts (each testable alone): ``source`` (file identity, complete lines), ``parse`` (bulk parse +
contract check + quarantine reasons), ``tailer`` (rotation, truncation, removal), ``config``
(the settings and their flags), ``daemon`` (batching, durable commits, the follow loop), ``status``, ``observe`` (one events interface).
"""

from .config import ConfigError, IngestConfig
from .daemon import AlreadyRunning, Daemon, IngestSummary, default_writer_id, ingest_once

__all__ = ["AlreadyRunning", "ConfigError", "Daemon", "IngestConfig", "IngestSummary", "default_writer_id", "ingest_once"]
