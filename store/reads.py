"""Reads scoped to one trace: its events, nodes, preference pairs and ``traces`` row, without the whole store.

    import store
    from store.reads import events_of, nodes_of, pairs_of, trace_of
    con = store.connect("./store")
    nodes_of(con, trace_id).order("seq").fetchall()       # = nodes WHERE trace_id = ?

The views compute every per-trace helper over all events and filter afterwards, so a lookup of one
trace in ``nodes`` or ``preference_pairs`` costs a pass over the store. Here the same helpers (the
views' own builders in store/views.py, given a prefix and a source: the SQL lives there once) are
computed over ``events WHERE trace_id = '<id>'``. Every helper groups or partitions by trace_id,
so over one trace's events they give that trace's rows exactly. The trace id is a literal (not a
parameter) so that DuckDB pushes it into the Parquet scan, which then skips the row groups whose
trace_id statistics exclude it: trace ids are UUIDv7s (time-ordered) and the writer sorts each
commit by (type, trace_id), so a trace's events sit in a few row groups.

All relations of one query read one snapshot; ``scoped_sql`` composes several in one statement.
"""

from __future__ import annotations

import re
from typing import Sequence

import duckdb

from .views import Views, _q, _trace_columns_sql, _trace_views, nodes_views, preference_pairs_views

PREFIX = "_t"  # the scoped helpers' names: _t_events, _t_started, ..., _t_nodes, _t_preference_pairs

# What a query over one trace may read, by name (the names are CTEs of the statement).
EVENTS = f"{PREFIX}_events"
NODES = f"{PREFIX}_nodes"
PAIRS = f"{PREFIX}_preference_pairs"
TRACE = f"{PREFIX}_traces"


def sql_string(value: str) -> str:
    """`value` as a SQL string literal (a literal, unlike a parameter, reaches the Parquet scan's statistics)."""
    return _q(value)


def trace_ids_clause(trace_ids: Sequence[str]) -> str:
    """A WHERE clause for the rows of these traces (at least one): the IN-list, and its range.

    DuckDB pushes an IN-list into a Parquet scan only as an optional filter; the range beside it is
    a real one, applied to each vector of the sorted summary. On the 1M-trace UI store, three
    traces of `training_examples` took 85-91 ms with it against 153-165 ms without (13 rows scanned
    instead of 14,237 for neighbours, 3,250 instead of 42,925 for three random ids)."""
    if not trace_ids:
        raise ValueError("trace_ids_clause needs at least one trace id")
    return (f"trace_id between {_q(min(trace_ids))} and {_q(max(trace_ids))} "
            f"and trace_id in ({', '.join(_q(t) for t in dict.fromkeys(trace_ids))})")


def _bodies(defs: Views) -> list[tuple[str, str]]:
    """(name, SELECT) of view definitions built as ``CREATE OR REPLACE VIEW name AS SELECT``."""
    out = []
    for name, sql in defs:
        head = f"CREATE OR REPLACE VIEW {name} AS "
        if not sql.startswith(head):
            raise ValueError(f"{name} is not a plain view definition, so it cannot be scoped to one trace")
        out.append((name, sql[len(head):]))
    return out


def _scoped_defs() -> list[tuple[str, str]]:
    """The per-trace helpers over ``{PREFIX}_events``, in dependency order (without the events themselves)."""
    return [
        *_trace_views(PREFIX, EVENTS),
        (TRACE, _trace_columns_sql(PREFIX)),
        *_bodies(nodes_views(PREFIX, EVENTS)),
        *_bodies(preference_pairs_views(PREFIX)),
    ]


_DEFS = _scoped_defs()
_NAME = re.compile(rf"\b{PREFIX}_\w+")


def _needed(select: str) -> list[tuple[str, str]]:
    """The scoped helpers `select` reads, directly or through others, in dependency order."""
    bodies = dict(_DEFS)
    want, todo = set(), set(_NAME.findall(select))
    while todo:
        name = todo.pop()
        if name in bodies and name not in want:
            want.add(name)
            todo |= set(_NAME.findall(bodies[name]))
    return [(n, b) for n, b in _DEFS if n in want]


def scoped_sql(trace_id: str, select: str) -> str:
    """A statement that runs `select` over the relations of one trace: ``_t_events`` (the trace's
    rows of ``events``), ``_t_traces`` (its row of ``traces``), ``_t_nodes`` (of ``nodes``) and
    ``_t_preference_pairs`` (of ``preference_pairs``). Only the helpers `select` needs are planned."""
    if not isinstance(trace_id, str):
        raise TypeError(f"trace_id must be a string, got {type(trace_id).__name__}")
    # MATERIALIZED: the helpers read the trace's events once, not one scan of the store per helper.
    ctes = [f"{EVENTS} AS MATERIALIZED (SELECT * FROM events WHERE trace_id = {_q(trace_id)})"]
    ctes += [f"{name} AS ({body})" for name, body in _needed(select)]
    return "WITH RECURSIVE " + ",\n".join(ctes) + "\n" + select


def events_of(con: duckdb.DuckDBPyConnection, trace_id: str) -> duckdb.DuckDBPyRelation:
    """The trace's rows of ``events`` (each id once)."""
    return con.sql(scoped_sql(trace_id, f"SELECT * FROM {EVENTS}"))


def trace_of(con: duckdb.DuckDBPyConnection, trace_id: str) -> duckdb.DuckDBPyRelation:
    """The trace's row of ``traces`` (none if the store has no event of it)."""
    return con.sql(scoped_sql(trace_id, f"SELECT * FROM {TRACE}"))


def nodes_of(con: duckdb.DuckDBPyConnection, trace_id: str) -> duckdb.DuckDBPyRelation:
    """The trace's rows of ``nodes``."""
    return con.sql(scoped_sql(trace_id, f"SELECT * FROM {NODES}"))


def pairs_of(con: duckdb.DuckDBPyConnection, trace_id: str) -> duckdb.DuckDBPyRelation:
    """The trace's rows of ``preference_pairs``."""
    return con.sql(scoped_sql(trace_id, f"SELECT * FROM {PAIRS}"))


__all__ = ["sql_string", "trace_ids_clause", "events_of", "nodes_of", "pairs_of", "trace_of", "scoped_sql", "EVENTS", "NODES", "PAIRS", "TRACE"]
