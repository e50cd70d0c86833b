"""The Kaelum trace store: append-only Parquet segments, DuckDB views, ``kaelum-sql``.

    from store import SegmentWriter, connect
    with SegmentWriter("./store", writer_id="host-a") as w:
        w.commit(events_table, quarantine=[...], sources=[...])
    con = connect("./store")
    con.sql("select domain, count(*) from training_examples group by domain").show()

See docs/store.md for the layout, the write protocol and the views.
"""

from .layout import StoreError, StoreInfo, open_store
from .schema import EVENTS_SCHEMA, QUARANTINE_SCHEMA, SEGMENT_SCHEMA, BatchBuilder, events_from_dicts, events_table
from .upcast import CURRENT, Contract, Upcaster
from .writer import CommitInfo, QuarantineRecord, SegmentWriter, SourcePosition, SourceRange, positions

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
    "Upcaster",
    "connect",
    "events_from_dicts",
    "events_table",
    "open_store",
    "positions",
]


def connect(path, **kwargs):  # noqa: ANN001 - re-exported with its real signature below
    from .views import connect as _connect

    return _connect(path, **kwargs)
