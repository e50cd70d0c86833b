"""Readers: an in-process DuckDB connection whose views turn the Delta tables into traces and datasets.

Every view is derived from the events at query time, from one snapshot of the store per query
(store/snapshot.py): it sees every commit finished before the snapshot, all of a commit or none
of it, and never a file being written or one of a failed commit.

The definitions follow DESIGN.md ("Definitions the views implement"); docs/store.md lists every
view's columns. Each public view has one builder here (``events_views``, ``traces_views``, ...);
``view_sql`` lists them in dependency order. Only the two scans (``Scans``) know where rows come
from: the snapshot's files of a local store, a pinned pyarrow dataset of a URL store, or a SELECT
given by the caller (the benchmark asks raw JSONL the very same questions).
"""

from __future__ import annotations

import os
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import duckdb

from kaelum.cliopts import default_store_path
from kaelum.domains.base import CHECKED_METHODS

from .conflicts import CONFLICT_COLUMNS, DEDUP_ORDER, compute_conflicts, conflicts_sql
from .layout import StoreError, StoreInfo, open_store
from .snapshot import AsOf, EMPTY_PARTITION, Snapshot, SnapshotFiles, Snapshots, conflicts_schema_file, schema_file
from .tables import EVENTS_TABLE_SCHEMA
from .upcast import CURRENT, Contract, method_sql

DEFAULT_MIN_REWARD = 0.7

ENVELOPE = 'id, v, type, trace_id, seq, ts, source, source_path, "offset", writer, date'
QUARANTINE_COLUMNS = 'source, source_path, "offset", reason, raw_text, raw, writer, quarantined_at, date'


def _q(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


# training_examples keeps only traces verified by a method that checks the answer (CHECKED_METHODS);
# training_examples_all has every verified trace, for whoever includes the rest knowingly.
_CHECKED_SQL = ", ".join(_q(m) for m in CHECKED_METHODS)


def _verification_method(data: str = "data") -> str:
    """SQL for a verification's method: stated (version 2), else derived from its verifier name (as the upcaster does)."""
    verifier = data + "->>'$.verifier'"
    # CASE evaluates the fallback only for the rows without a stated method (few: upcast rows state one).
    return f"(CASE WHEN {data}->>'$.method' IS NOT NULL THEN {data}->>'$.method' ELSE {method_sql(verifier)} END)"


@dataclass(frozen=True)
class Scans:
    """Where the views read stored rows from: a relation (SQL) for each table.

    With `summary` (local stores), per-trace views read the summary compaction derived for every
    trace that no newer events touch (`fresh`: the events files the summary does not cover), and
    recompute the others from all their events (`if_fresh`: every events file when any is fresh).
    `conflicts` is the snapshot's losing copies of conflicting ids (store/conflicts.py), computed
    outside the views; without it the views compute them from every stored row.
    """

    events: str
    quarantine: str
    summary: str | None = None
    fresh: str | None = None
    if_fresh: str | None = None
    conflicts: str | None = None

    @staticmethod
    def snapshot_files() -> "Scans":
        """The files of the query's snapshot, from ``kaelum_files`` (local stores)."""
        opts = "hive_partitioning = true, hive_types = {'date': DATE}"

        def scan(kind: str, hive: bool = True) -> str:
            return f"read_parquet(kaelum_files('{kind}', txid_current()), {opts if hive else 'hive_partitioning = false'})"

        return Scans(scan("events"), scan("quarantine"), scan("summary", hive=False), scan("events_fresh"), scan("events_if_fresh"),
                     scan("conflicts", hive=False))

    @staticmethod
    def registered(events: str, quarantine: str, conflicts: str | None = None) -> "Scans":
        """Arrow datasets registered on the connection under these names (URL stores)."""
        return Scans(events, quarantine, conflicts=conflicts)


def _events_up(scan: str, contract: Contract, where: str | None = None) -> str:
    """Stored event rows of `scan`, typed columns at the reader's contract version (upcast on read).

    `where` filters the stored rows before the payload is cast and upcast: a filter that DuckDB
    turns into a join (``trace_id IN (SELECT ...)``) is not pushed below that projection, and
    casting every row's payload to JSON parses it (at 5M events with 100k fresh, the live part cast
    3.2M payloads to keep 100k: 7.8 s of a 7.8 s query)."""
    skip = f"WHERE date <> DATE '{EMPTY_PARTITION[5:]}'" + (f" AND ({where})" if where else "")
    if not contract.upcasters:
        cols = ", ".join(f'"{n}"' for n in contract.fields)
        return f"SELECT {ENVELOPE}, data::JSON AS data, {cols} FROM {scan} {skip}"
    # Rows older than the contract: upcast the payload in SQL and re-derive the typed columns from
    # it. CASE evaluates a branch only for the rows that take it, so current rows pay nothing.
    cases = " ".join(f"WHEN {v} THEN {contract.upcast_sql(v)}" for v in range(1, contract.version))
    data = f"CASE v {cases} ELSE data::JSON END"
    if contract.typed_columns_as_stored:  # only the payload changes: the stored typed columns are current
        cols = ", ".join(f'"{n}"' for n in contract.fields)
        return f"SELECT {ENVELOPE}, {data} AS data, {cols} FROM {scan} {skip}"
    struct = contract.extract_sql("_d")
    typed = ", ".join(
        f'CASE WHEN v < {contract.version} THEN {contract.column_of("_x", n)} ELSE "{n}" END AS "{n}"' for n in contract.fields
    )
    return (
        f"SELECT {ENVELOPE}, _d AS data, {typed} FROM ("
        f"SELECT *, CASE WHEN v < {contract.version} THEN {struct} END AS _x FROM ("
        f"SELECT * EXCLUDE (data), {data} AS _d FROM {scan} {skip}))"
    )


Views = list[tuple[str, str]]


def _view(name: str, body: str) -> tuple[str, str]:
    return name, f"CREATE OR REPLACE VIEW {name} AS {body}"


def _macro(name: str, body: str) -> tuple[str, str]:
    return name, f"CREATE OR REPLACE MACRO {name}(min_reward) AS TABLE {body}"


def _without_losers(rel: str) -> str:
    """The rows of `rel` that are not losing copies of a conflicting id, each (type, trace_id, id) once."""
    # Losing copies are out first (an anti-join with the small `_conflicts`); what is left of an id
    # is the winner's (type, trace_id), so de-duplicating on (type, trace_id, id) keeps each id
    # once. That key rather than id alone lets DuckDB push a view's filter on type or trace_id
    # below the de-duplication, down to the scan.
    # An explicit ANTI JOIN, not NOT EXISTS: DuckDB turns the correlated subquery into a join over
    # a materialised copy of the scan, which a view's filter on type then no longer reaches.
    return (f"SELECT e.* FROM {rel} e ANTI JOIN _conflicts c ON c.id = e.id AND c.type = e.type AND c.trace_id = e.trace_id "
            f"QUALIFY row_number() OVER (PARTITION BY e.type, e.trace_id, e.id ORDER BY {', '.join('e.' + k.strip() for k in DEDUP_ORDER.split(','))}) = 1")


def events_views(scans: Scans, contract: Contract, events_source: str | None) -> Views:
    """``_events_all`` (every stored row), ``_conflicts`` (losing copies) and ``events`` (each id once)."""
    raw = events_source if events_source is not None else _events_up(scans.events, contract)
    conflicts = (f"SELECT {CONFLICT_COLUMNS} FROM {scans.conflicts}" if scans.conflicts is not None
                 else conflicts_sql("_events_all", None, live=False))
    return [
        _view("_events_all", raw),
        _view("_conflicts", conflicts),
        _view("events", _without_losers("_events_all")),
    ]


def _trace_views(p: str, src: str) -> list[tuple[str, str]]:
    """The per-trace helpers over the event relation `src`, named with prefix `p`.

    The views build them over ``events`` with prefix ``_``; a prefix lets a per-trace summary be
    computed over another relation of the same columns.
    """
    return [
        # One trace_started / trace_completed per trace (the earliest start, the latest completion).
        (f"{p}_started", f"SELECT trace_id, query, domain, worker_model, tags, ts AS started_at, data FROM {src} "
         "WHERE type = 'trace_started' QUALIFY row_number() OVER (PARTITION BY trace_id ORDER BY seq, id) = 1"),
        (f"{p}_completed", f"SELECT trace_id, status, final_answer, best_path, verified, reward, ts AS completed_at, data, "
         f"data->>'$.verified_by' AS stated_verified_by FROM {src} "
         "WHERE type = 'trace_completed' QUALIFY row_number() OVER (PARTITION BY trace_id ORDER BY seq DESC, id DESC) = 1"),
        # Corrections are new events: the latest feedback that carries a reward wins.
        (f"{p}_feedback", "SELECT trace_id, arg_max(reward, (ts, seq, id)) FILTER (WHERE reward IS NOT NULL) AS feedback_reward, "
         "arg_max(label, (ts, seq, id)) FILTER (WHERE label IS NOT NULL) AS feedback_label, count(*) AS feedback_count "
         f"FROM {src} WHERE type = 'feedback' GROUP BY trace_id"),
        (f"{p}_node_expanded", "SELECT trace_id, node_id, parent_id, depth, thought, terminal, answer, ts, seq, data "
         f"FROM {src} WHERE type = 'node_expanded'"),
        # The method of each node's latest verification (arg_max_null: a latest verdict without a
        # method, e.g. an internal error, is the node's verdict; arg_max would skip it). A completion
        # that does not state its method (version 1 events, whose upcaster sees one event and cannot)
        # takes the one of its best path's last node: the final answer's verdict.
        (f"{p}_verdict_method", f"SELECT trace_id, node_id, arg_max_null({_verification_method()}, (ts, seq, id)) AS method "
         f"FROM {src} WHERE type = 'verification' GROUP BY trace_id, node_id"),
    ]


def _trace_columns_sql(p: str) -> str:
    """One row per trace with the columns of ``traces`` (no best-path check: ``traces`` needs none)."""
    return f"""
            SELECT coalesce(s.trace_id, c.trace_id) AS trace_id, s.domain, s.query, s.worker_model, s.tags,
                   s.data->>'$.router.method' AS router_method, (s.data->>'$.router.confidence')::DOUBLE AS router_confidence,
                   s.started_at, c.completed_at, c.status, c.final_answer, c.best_path, c.verified,
                   coalesce(c.stated_verified_by, m.method) AS verified_by,
                   coalesce(f.feedback_reward, c.reward) AS reward, c.reward AS completed_reward,
                   f.feedback_reward, f.feedback_label, coalesce(f.feedback_count, 0) AS feedback_count,
                   (c.data->>'$.duration_ms')::DOUBLE AS duration_ms, c.data->>'$.error' AS error,
                   (c.data->>'$.usage.llm_calls')::BIGINT AS llm_calls
            FROM {p}_started s FULL OUTER JOIN {p}_completed c ON s.trace_id = c.trace_id
            LEFT JOIN {p}_feedback f ON f.trace_id = coalesce(s.trace_id, c.trace_id)
            LEFT JOIN {p}_verdict_method m ON c.stated_verified_by IS NULL AND m.trace_id = c.trace_id AND m.node_id = c.best_path[-1]
    """


# What a free-text search over traces looks in, lower-cased once per trace when the summary is built
# (its ``search_text``): the query and the final answer, one line each. Lower-casing 1M queries and
# answers at every search measured ~90 ms of a 140 ms scan at 1M traces (benchmarks/README.md).
SEARCH_TEXT_SQL = "lower(coalesce(t.query, '')) || chr(10) || lower(coalesce(t.final_answer, ''))"


def _summary_sql(p: str) -> str:
    """One row per trace: the columns of ``traces`` plus the best path's steps, ``complete`` and
    ``search_text`` (``SEARCH_TEXT_SQL``)."""
    return f"""
        WITH path AS (
            SELECT trace_id, unnest(best_path) AS node_id, generate_subscripts(best_path, 1) AS pos, len(best_path) AS n
            FROM {p}_completed
        ),
        -- The best path of each completed trace, checked node by node against its node_expanded events.
        pc AS (
            SELECT p.trace_id,
                   list(n.thought ORDER BY p.pos) FILTER (WHERE p.pos > 1) AS steps,
                   list(p.node_id ORDER BY p.pos) FILTER (WHERE p.pos > 1) AS step_node_ids,
                   bool_and(n.node_id IS NOT NULL AND coalesce(n.thought, '') <> '') AS nodes_ok,
                   bool_or(p.pos = p.n AND coalesce(n.terminal, false) AND coalesce(n.answer, '') <> '') AS last_ok
            FROM path p LEFT JOIN {p}_node_expanded n ON n.trace_id = p.trace_id AND n.node_id = p.node_id
            GROUP BY p.trace_id
        ),
        t AS ({_trace_columns_sql(p)})
        SELECT t.*, coalesce(pc.steps, []::VARCHAR[]) AS steps, coalesce(pc.step_node_ids, []::VARCHAR[]) AS step_node_ids,
               (t.started_at IS NOT NULL AND t.status = 'ok' AND coalesce(pc.nodes_ok AND pc.last_ok, false)) AS complete,
               {SEARCH_TEXT_SQL} AS search_text
        FROM t LEFT JOIN pc ON pc.trace_id = t.trace_id
        """


TRACE_COLUMNS = (
    "trace_id, domain, query, worker_model, tags, router_method, router_confidence, started_at, completed_at, status, "
    "final_answer, best_path, verified, verified_by, reward, completed_reward, feedback_reward, feedback_label, feedback_count, "
    "duration_ms, error, llm_calls"
)


def traces_views(scans: Scans, contract: Contract) -> Views:
    """The per-trace helpers, ``_trace_summary`` (traces plus steps and completeness) and ``traces``.

    Without a summary scan both are computed from ``events``. With one, ``_trace_live`` computes
    them from all events of the traces that fresh events touch, and the summary's rows stand for
    every other trace (what compaction stores as the summary is ``_trace_live`` over all events).

    The live branch of ``traces`` and ``_trace_summary`` carries its helpers as CTEs of its own, the
    touched traces and their events materialized: every helper then reads those rows, not a scan of
    every events file each (four scans per query over views). The CTEs are the live branch's only:
    over the whole UNION they kept the summary branch from reading just the columns a query needs
    (`count(*) from traces` at 1M traces, one CPU: 386 ms, against 220 ms before and 132 ms so).
    The same helpers stay views too, to look into; the summary branch's ``_touched`` is that view.
    """
    defs = [_view(n, b) for n, b in _trace_views("", "events")]
    if scans.summary is None:
        return defs + [_view("_trace_live", _summary_sql("")), _view("_trace_summary", "SELECT * FROM _trace_live"),
                       _view("traces", _trace_columns_sql(""))]
    # (name, SELECT, materialized) of the live part, in dependency order.
    live = [
        # Traces with fresh events, and the traces of both sides of a conflict that fresh events
        # started or changed (a fresh copy may win over one the summary kept).
        ("_touched", f"SELECT DISTINCT trace_id FROM ({_events_up(scans.fresh, contract)}) "
                     "UNION SELECT trace_id FROM _conflicts WHERE live UNION SELECT winner_trace_id FROM _conflicts WHERE live", True),
        # The filter on trace_id comes before the payload's cast and the de-duplication, so both
        # see only those traces' rows.
        ("_events_live", _without_losers(f"({_events_up(scans.if_fresh, contract, 'trace_id IN (SELECT trace_id FROM _touched)')})"), True),
        *((n, b, False) for n, b in _trace_views("_l", "_events_live")),
    ]
    defs += [_view(n, b) for n, b, _m in live]
    defs += [_view("_trace_live", _summary_sql("_l")), _view("_trace_live_columns", _trace_columns_sql("_l"))]
    ctes = "WITH " + ",\n".join(f"{n} AS {'MATERIALIZED ' if m else ''}({b})" for n, b, m in live) + "\n"
    kept = f"{scans.summary} d WHERE NOT EXISTS (SELECT 1 FROM _touched t WHERE t.trace_id = d.trace_id)"
    return defs + [
        _view("_trace_summary", f"SELECT * FROM {kept} UNION ALL SELECT * FROM ({ctes}SELECT * FROM ({_summary_sql('_l')}))"),
        _view("traces", f"SELECT {TRACE_COLUMNS} FROM {kept} UNION ALL SELECT {TRACE_COLUMNS} FROM ({ctes}SELECT * FROM ({_trace_columns_sql('_l')}))"),
    ]


def nodes_views(p: str = "", src: str = "events") -> Views:
    """``nodes`` and its per-node helpers (latest value, latest verdict) over the event relation `src`.

    The views build them over ``events`` with prefix ``""``; with a prefix (``nodes`` is then
    ``{p}_nodes``) they are computed over another relation of the same columns, e.g. one trace's
    events (store/reads.py), so the SQL of a node's value and verdict lives here only.
    """
    defs: Views = []
    def view(name: str, body: str) -> None:
        defs.append(_view(name, body))

    view(
        f"{p}_node_value",
        "SELECT trace_id, node_id, arg_max(value, (ts, seq, id)) AS value, count(*) AS evaluations "
        f"FROM {src} WHERE type = 'node_evaluated' GROUP BY trace_id, node_id",
    )
    view(
        f"{p}_node_verdict",
        "SELECT trace_id, node_id, arg_max(passed, (ts, seq, id)) AS passed, arg_max(score, (ts, seq, id)) AS score, "
        "arg_max(data->>'$.verifier', (ts, seq, id)) AS verifier, "
        f"arg_max_null({_verification_method()}, (ts, seq, id)) AS method "
        f"FROM {src} WHERE type = 'verification' GROUP BY trace_id, node_id",
    )
    view(
        f"{p}_nodes" if p else "nodes",
        f"""
        SELECT n.trace_id, n.node_id, n.parent_id, n.depth, n.thought, n.terminal, n.answer,
               v.value, v.evaluations, r.passed, r.score AS verification_score, r.verifier, r.method AS verification_method,
               n.data->>'$.llm.model' AS llm_model, (n.data->>'$.llm.prompt_tokens')::BIGINT AS prompt_tokens,
               (n.data->>'$.llm.completion_tokens')::BIGINT AS completion_tokens,
               (n.data->>'$.llm.latency_ms')::DOUBLE AS latency_ms, n.ts AS expanded_at, n.seq
        FROM {p}_node_expanded n
        LEFT JOIN {p}_node_value v ON v.trace_id = n.trace_id AND v.node_id = n.node_id
        LEFT JOIN {p}_node_verdict r ON r.trace_id = n.trace_id AND r.node_id = n.node_id
        """,
    )
    return defs


def trajectories_views() -> Views:
    """``trajectories`` and the filtered views and macro over it."""
    defs: Views = []
    def view(name: str, body: str) -> None:
        defs.append(_view(name, body))

    view(
        "trajectories",
        """
        SELECT trace_id, domain, query, steps, step_node_ids, final_answer, reward, verified, verified_by,
               status, worker_model, started_at, completed_at, tags, best_path,
               completed_reward, feedback_reward, feedback_label, complete
        FROM _trace_summary WHERE completed_at IS NOT NULL
        """,
    )
    view("verified_trajectories", "SELECT * FROM trajectories WHERE verified")
    view("complete_trajectories", "SELECT * FROM trajectories WHERE complete")
    defs.append(_macro("high_reward_trajectories_at", "SELECT * FROM trajectories WHERE reward >= min_reward"))
    view("high_reward_trajectories", f"SELECT * FROM trajectories WHERE reward >= {DEFAULT_MIN_REWARD}")
    return defs


def training_examples_views() -> Views:
    """``training_examples_all`` (complete and verified trajectories), ``training_examples`` (those verified
    by a checked method) and ``training_examples_at``."""
    defs: Views = []
    def view(name: str, body: str) -> None:
        defs.append(_view(name, body))

    view(
        "training_examples_all",
        """
        SELECT trace_id, domain, query, steps, final_answer, reward, verified, verified_by, worker_model, started_at,
               completed_at, tags, len(steps) AS n_steps, completed_reward, feedback_label
        FROM trajectories WHERE complete AND verified
        """,
    )
    view("training_examples", f"SELECT * FROM training_examples_all WHERE verified_by IN ({_CHECKED_SQL})")
    defs.append(_macro("training_examples_at", "SELECT * FROM training_examples WHERE reward >= min_reward"))
    return defs


def preference_pairs_views(p: str = "") -> Views:
    """``preference_pairs``: one (chosen, rejected) continuation pair per branch node, over the helpers
    named with prefix `p` (``""``: the views'; see ``nodes_views``; the view is then ``{p}_preference_pairs``)."""
    defs: Views = []
    def view(name: str, body: str) -> None:
        defs.append(_view(name, body))

    # Preference pairs: only terminals whose verdict a checked method reached are outcomes (a branch
    # that "passed" by agreement may be wrong, one that "failed" by it may be right), then:
    # in a trace with both a passed and a failed verified terminal, walk each such
    # terminal up to the root; a passed and a failed terminal whose paths part at node b form a
    # pair branching at b. Per branch node, the best-valued passed and worst-valued failed terminal.
    # Paths are built from node ids only; thoughts are looked up for the chosen pairs at the end
    # (carrying every path's thought list through the pairing was 2.5x slower at 1M events).
    view(
        f"{p}_preference_pairs" if p else "preference_pairs",
        """
        WITH RECURSIVE
        leaves AS (
            SELECT n.trace_id, n.node_id, r.passed, v.value, n.answer
            FROM """ + p + """_node_expanded n JOIN """ + p + """_node_verdict r ON r.trace_id = n.trace_id AND r.node_id = n.node_id
            LEFT JOIN """ + p + """_node_value v ON v.trace_id = n.trace_id AND v.node_id = n.node_id
            WHERE n.terminal AND r.passed IS NOT NULL AND r.method IN (""" + _CHECKED_SQL + """)
        ),
        mixed AS (SELECT trace_id FROM leaves GROUP BY trace_id HAVING bool_or(passed) AND bool_or(NOT passed)),
        tree AS MATERIALIZED (
            SELECT n.trace_id, n.node_id, n.parent_id, n.thought FROM """ + p + """_node_expanded n SEMI JOIN mixed m ON m.trace_id = n.trace_id
        ),
        up(trace_id, leaf, node_id, parent_id, k) AS (
            SELECT t.trace_id, t.node_id, t.node_id, t.parent_id, 0
            FROM tree t SEMI JOIN leaves l ON l.trace_id = t.trace_id AND l.node_id = t.node_id
            UNION ALL
            SELECT u.trace_id, u.leaf, t.node_id, t.parent_id, u.k + 1
            FROM up u JOIN tree t ON t.trace_id = u.trace_id AND t.node_id = u.parent_id
            WHERE u.k < 1000
        ),
        paths AS (
            SELECT trace_id, leaf, list(node_id ORDER BY k DESC) AS ids, bool_or(parent_id IS NULL) AS rooted
            FROM up GROUP BY trace_id, leaf
        ),
        pairs AS (
            SELECT c.trace_id, pc.ids AS cids, pr.ids AS rids,
                   c.node_id AS cnode, r.node_id AS rnode, c.answer AS canswer, r.answer AS ranswer,
                   c.value AS cvalue, r.value AS rvalue,
                   coalesce(list_position(list_transform(range(1, least(len(pc.ids), len(pr.ids)) + 1), lambda i: pc.ids[i] = pr.ids[i]), false) - 1,
                            least(len(pc.ids), len(pr.ids))) AS lcp
            FROM leaves c JOIN leaves r ON r.trace_id = c.trace_id AND c.passed AND NOT r.passed
            JOIN paths pc ON pc.trace_id = c.trace_id AND pc.leaf = c.node_id AND pc.rooted
            JOIN paths pr ON pr.trace_id = r.trace_id AND pr.leaf = r.node_id AND pr.rooted
        ),
        chosen AS MATERIALIZED (
            SELECT * FROM pairs p
            WHERE p.lcp >= 1 AND p.lcp < len(p.cids) AND p.lcp < len(p.rids)
            QUALIFY row_number() OVER (
                PARTITION BY p.trace_id, p.cids[p.lcp]
                ORDER BY p.cvalue DESC NULLS LAST, p.rvalue ASC NULLS LAST, p.cnode, p.rnode) = 1
        ),
        thoughts AS (SELECT trace_id, map_from_entries(list((node_id, thought))) AS m FROM tree GROUP BY trace_id)
        SELECT p.trace_id, s.domain, s.query, p.cids[p.lcp] AS branch_node_id,
               list_transform(p.cids[2:p.lcp], lambda i: th.m[i]) AS prompt_steps,
               list_transform(p.cids[p.lcp + 1:], lambda i: th.m[i]) AS chosen_steps, p.canswer AS chosen_answer, p.cvalue AS chosen_value, p.cnode AS chosen_node_id,
               list_transform(p.rids[p.lcp + 1:], lambda i: th.m[i]) AS rejected_steps, p.ranswer AS rejected_answer, p.rvalue AS rejected_value, p.rnode AS rejected_node_id
        FROM chosen p JOIN """ + p + """_started s ON s.trace_id = p.trace_id JOIN thoughts th ON th.trace_id = p.trace_id
        """,
    )
    return defs


def quarantine_views(scans: Scans) -> Views:
    """``quarantine``: refused lines, each (source, offset) once (the first quarantining wins), and
    the losing copies of conflicting event ids (``_conflicts``, store/conflicts.py)."""
    return [
        _view(
            "quarantine",
            f"SELECT {QUARANTINE_COLUMNS} FROM {scans.quarantine} "
            f"WHERE date <> DATE '{EMPTY_PARTITION[5:]}' "
            'QUALIFY row_number() OVER (PARTITION BY source, "offset" ORDER BY quarantined_at, writer) = 1 '
            'UNION ALL SELECT source, source_path, "offset", reason, raw_text, raw_text::BLOB AS raw, writer, '
            "NULL::TIMESTAMPTZ AS quarantined_at, date FROM _conflicts",
        ),
    ]


def view_sql(scans: Scans, contract: Contract = CURRENT, events_source: str | None = None) -> Views:
    """(name, CREATE statement) of every view and macro, in dependency order.

    `events_source` replaces the events scan (a SELECT with the columns of ``_events_all``).
    """
    return [
        *events_views(scans, contract, events_source),
        *traces_views(scans if events_source is None else Scans(scans.events, scans.quarantine), contract),
        *nodes_views(),
        *trajectories_views(),
        *training_examples_views(),
        *preference_pairs_views(),
        *quarantine_views(scans),
    ]


# The views users see (internal helpers start with "_"), in the order `kaelum-sql views` lists them.
PUBLIC_VIEWS = (
    "events",
    "traces",
    "nodes",
    "trajectories",
    "verified_trajectories",
    "complete_trajectories",
    "high_reward_trajectories",
    "training_examples",
    "training_examples_all",
    "preference_pairs",
    "quarantine",
)
MACROS = ("high_reward_trajectories_at", "training_examples_at")



def install_views(con: duckdb.DuckDBPyConnection, scans: Scans, contract: Contract = CURRENT, events_source: str | None = None,
                  files: SnapshotFiles | None = None, through: str | None = None) -> None:
    """Create the views on `con`; with a summary scan, `files` (the connection's ``kaelum_files``)
    learns the summary's columns before the view that reads it is created. With `through`, only
    the views up to that one in dependency order (binding each view costs DuckDB 10-90 ms)."""
    for name, sql in view_sql(scans, contract, events_source):
        if name == "_trace_summary" and files is not None and scans.summary is not None:
            files.summary_schema, files.summary_columns = summary_schema_file(con)
        con.execute(sql)
        if name == through:
            return
    if through is not None:
        raise ValueError(f"no view named {through!r}")


_SUMMARY_SCHEMAS: dict[str, Path] = {}


def summary_schema_file(con: duckdb.DuckDBPyConnection) -> tuple[Path, str]:
    """A zero-row Parquet file with the columns of ``_trace_live`` on `con`, and those columns.

    It ends every list of summary files, so the summary scan has its columns in a store that was
    never compacted; a summary table built with other columns (another kaelum) is not read.
    It lives in a temporary folder, so that readers never write to the store.
    """
    import atexit
    import shutil
    import tempfile

    described = con.execute("DESCRIBE SELECT * FROM _trace_live").fetchall()
    columns = ",".join(f"{r[0]} {r[1]}" for r in described)
    path = _SUMMARY_SCHEMAS.get(columns)
    if path is None or not path.exists():
        d = Path(tempfile.mkdtemp(prefix="kaelum-summary-schema-"))
        atexit.register(shutil.rmtree, d, True)
        path = d / "s-summary.parquet"
        con.execute(f"COPY (SELECT * FROM _trace_live LIMIT 0) TO {_q(str(path))} (FORMAT parquet)")
        _SUMMARY_SCHEMAS[columns] = path
    return path, columns


def connect(
    path: str | os.PathLike[str] | None = None,
    contract: Contract = CURRENT,
    threads: int | None = None,
    as_of: AsOf = None,
    through: str | None = None,
) -> duckdb.DuckDBPyConnection:
    """An in-process DuckDB connection with the store's views (see docs/store.md).

    `path` is a folder or a URL, by default ``$KAELUM_STORE`` or ``./store``; StoreError if it is
    not a store. `as_of` (a version of the events table, an RFC 3339 timestamp, or
    ``{"events": N, "quarantine": M}``) fixes the snapshot: the store as it was then. Otherwise,
    on a local store every query (every transaction) reads the newest snapshot, resolved when it
    starts, so a long-lived connection sees each commit as soon as it is durable; on a URL store
    the connection reads the version that was newest when it connected (connect again for newer).
    ``snapshot_of(con)`` says which versions a connection read last. `through` creates only the
    views up to that one in dependency order (compaction needs those up to ``_trace_summary``).
    """
    info = open_store(default_store_path() if path is None else path)
    snapshots = Snapshots(info, as_of)
    con = duckdb.connect(":memory:")
    con.execute("SET TimeZone = 'UTC'")
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    if info.local is not None:
        files = SnapshotFiles(snapshots)
        con.create_function("kaelum_files", files, ["VARCHAR", "UBIGINT"], "VARCHAR[]", side_effects=True)
        scans = Scans.snapshot_files()
        _SNAPSHOT_OF[con] = lambda: files.last or snapshots.resolve()
        files.binding = True
    else:
        files = None
        snap = snapshots.resolve()
        scans = _register_url_snapshot(con, snapshots, snap, contract)
        _SNAPSHOT_OF[con] = lambda: snap
    install_views(con, scans, contract, files=files, through=through)
    if files is not None:
        files.binding = False
    return con


def _register_url_snapshot(con: duckdb.DuckDBPyConnection, snapshots: Snapshots, snap: Snapshot, contract: Contract) -> Scans:
    """Register the relations of one snapshot of a URL store on `con` (one version per connection):
    both tables, and, when the snapshot has a summary of this kaelum's columns, the summary, the
    events files it does not cover, and its conflicts set; the losing copies are computed here, once."""
    ev, q = snapshots.datasets(snap)
    con.register("_kaelum_events_dataset", ev)
    con.register("_kaelum_quarantine_dataset", q)
    summary = snap.summary if snap.summary is not None and snap.summary.columns == _live_summary_columns(contract) else None
    if summary is None:
        con.register("_kaelum_conflicts", compute_conflicts(con, "_kaelum_events_dataset"))
        return Scans.registered("_kaelum_events_dataset", "_kaelum_quarantine_dataset", "_kaelum_conflicts")
    fresh = frozenset(snap.events_files) - summary.base_files
    summary_ds, stored_conflicts = snapshots.summary_datasets(summary)
    con.register("_kaelum_events_fresh", snapshots.events_subset(ev, fresh))
    con.register("_kaelum_events_if_fresh", ev if fresh else EVENTS_TABLE_SCHEMA.empty_table())
    con.register("_kaelum_summary", summary_ds)
    con.register("_kaelum_conflicts_stored", stored_conflicts)
    con.register("_kaelum_conflicts", compute_conflicts(con, "_kaelum_events_dataset", "_kaelum_events_fresh", "_kaelum_conflicts_stored"))
    return Scans("_kaelum_events_dataset", "_kaelum_quarantine_dataset", summary="_kaelum_summary", fresh="_kaelum_events_fresh",
                 if_fresh="_kaelum_events_if_fresh", conflicts="_kaelum_conflicts")


_LIVE_SUMMARY_COLUMNS: dict[int, str] = {}


def _live_summary_columns(contract: Contract) -> str:
    """The columns of ``_trace_live`` under `contract` (what a usable summary was built with)."""
    cols = _LIVE_SUMMARY_COLUMNS.get(id(contract))
    if cols is None:
        con = duckdb.connect(":memory:")
        try:
            hive = "hive_partitioning = true, hive_types = {'date': DATE}"
            empty = Scans(f"read_parquet('{schema_file('events')}', {hive})", f"read_parquet('{schema_file('quarantine')}', {hive})",
                          conflicts=f"read_parquet('{conflicts_schema_file()}')")
            install_views(con, empty, contract)
            cols = _LIVE_SUMMARY_COLUMNS[id(contract)] = ",".join(f"{r[0]} {r[1]}" for r in con.execute("DESCRIBE SELECT * FROM _trace_live").fetchall())
        finally:
            con.close()
    return cols


# Per connection (weakly held: the entry goes with the connection), what it read last.
_SNAPSHOT_OF: "weakref.WeakKeyDictionary[duckdb.DuckDBPyConnection, Callable[[], Snapshot]]" = weakref.WeakKeyDictionary()


def snapshot_of(con: duckdb.DuckDBPyConnection) -> Snapshot:
    """The snapshot (table versions and files) the last query of `con` read — the one a pinned
    (``as_of``) or URL connection always reads."""
    try:
        return _SNAPSHOT_OF[con]()
    except KeyError:
        raise StoreError("this connection was not made by store.connect") from None


@dataclass(frozen=True)
class ViewInfo:
    name: str
    kind: str  # "view" or "macro"
    columns: tuple[tuple[str, str], ...]  # (name, DuckDB type)


def describe_views(con: duckdb.DuckDBPyConnection) -> list[ViewInfo]:
    """Every public view with its columns, and the table macros with the columns they return."""
    out = []
    for name in PUBLIC_VIEWS:
        rows = con.execute(f"DESCRIBE {name}").fetchall()
        out.append(ViewInfo(name, "view", tuple((r[0], r[1]) for r in rows)))
    for name in MACROS:
        rows = con.execute(f"DESCRIBE SELECT * FROM {name}({DEFAULT_MIN_REWARD})").fetchall()
        out.append(ViewInfo(f"{name}(min_reward)", "macro", tuple((r[0], r[1]) for r in rows)))
    return out



__all__ = ["connect", "describe_views", "snapshot_of", "view_sql", "install_views", "Scans", "PUBLIC_VIEWS", "StoreError"]
