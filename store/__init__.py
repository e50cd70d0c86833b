"""The Kaelum trace store: two Delta Lake tables (events, quarantine), DuckDB views, ``kaelum-sql``.

    from store import StoreWriter, connect
    with StoreWriter("./store", writer_id="host-a") as w:       # or "s3://bucket/prefix"
        w.commit(events_table, quarantine=[...], sources=[...])
    con = connect("./store")                                    # as_of=12 or "2026-03-01T12:00:00Z"
    con.sql("select domain, count(*) from training_examples group by domain").show()

See docs/store.md for the layout, the write protocol and the views.
"""

from .layout import StoreError, StoreInfo, open_store
from .schema import EVENTS_SCHEMA, QUARANTINE_SCHEMA, SEGMENT_SCHEMA, BatchBuilder, events_from_dicts, events_table
from .upcast import CURRENT, Contract, Upcaster
from .writer import CommitInfo, QuarantineRecord, SegmentWriter, SourcePosition, SourceRange, StoreWriter, positions

__all__ = [
    "BatchBuilder",
    "CURRENT",
    "CommitInfo",
    "Contract",
    "EVENTS_SCHEMA",
    "QUARANTINE_SCHEMA",
    "QuarantineRecord",
    "SEGMENT_SCHEMA",
    "SegmentWriter",
    "SourcePosition",
    "SourceRange",
    "StoreError",
    "StoreInfo",
    "StoreWriter",
    "Upcaster",
    "connect",
    "events_from_dicts",
    "events_table",
    "open_store",
    "append_events",
    "snapshot_of",
    "positions",
]


def connect(path=None, **kwargs):  # noqa: ANN001 - store.views.connect, imported when first used
    from .views import connect as _connect

    return _connect(path, **kwargs)


def snapshot_of(con):  # noqa: ANN001 - store.views.snapshot_of: the table versions a connection read
    from .views import snapshot_of as _snapshot_of

    return _snapshot_of(con)


def append_events(path, events, writer_id):  # noqa: ANN001 - see the docstring
    """Append `events` (dicts in the event contract, e.g. a UI's ``feedback``) to the store at `path`
    in one atomic commit under `writer_id`; returns how many were written.

    Every event is validated first (``kaelum.events.validate_event``): one invalid event raises
    ``kaelum.events.EventError`` and nothing is written. The store is created if missing.
    """
    from kaelum.events import validate_event

    events = list(events)
    for e in events:
        validate_event(e)
    if not events:
        return 0
    with StoreWriter(path, writer_id=writer_id) as w:
        return w.commit(events_from_dicts(events)).events
