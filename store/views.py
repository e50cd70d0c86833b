"""Readers: an in-process DuckDB connection whose views turn the segments into traces and datasets.

Every view is derived from the segments at query time, except that per-trace views read the
summary compaction derived from the compacted segments for the traces no fresh segment touches.
A connection holds nothing on the store's files between queries: each query (transaction)
resolves a snapshot of the store anew (store/snapshot.py), so it sees every commit finished
before it started, all of a commit or none of it, and never a segment being written.

The definitions follow DESIGN.md ("Definitions the views implement"); docs/store.md lists every
view's columns. The SQL lives here, in one place, so that ``connect`` and the views-only DuckDB
file written by ``kaelum-sql attach-file`` define exactly the same views.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import duckdb

from kaelum.domains.base import CHECKED_METHODS

from .layout import SCHEMA_PARTITION, SCHEMA_SEGMENT, StoreError, StoreInfo, open_store
from .snapshot import SnapshotFiles
from .upcast import CURRENT, Contract, method_sql

DEFAULT_MIN_REWARD = 0.7


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


def _read(files: str, hive: bool = True) -> str:
    opts = "hive_partitioning = true, hive_types = {'date': DATE}" if hive else "hive_partitioning = false"
    return f"read_parquet({files}, {opts})"


def _scan(info: StoreInfo, kind: str, mode: str) -> str:
    """The segments of one kind as a read_parquet call.

    ``snapshot`` mode (``connect``): the files of the query's snapshot, from ``kaelum_files`` (see
    store/snapshot.py). ``glob`` mode (the views-only file for other DuckDB clients, which cannot
    call back into Python): every segment by glob, and the views de-duplicate all of them.
    """
    if mode == "snapshot":
        return _read(f"kaelum_files('{kind}', txid_current())", hive=kind != "derived")
    schema = info.events_dir / SCHEMA_PARTITION / SCHEMA_SEGMENT
    if kind == "fresh":
        return _read(f"[{_q(str(info.events_dir / '*' / '*.parquet'))}]")
    return _read(f"[{_q(str(schema))}]")


def _events_up(scan: str, contract: Contract) -> str:
    """Stored event rows of `scan`, typed columns at the reader's contract version (upcast on read)."""
    envelope = 'id, v, type, trace_id, seq, ts, source, source_path, "offset", writer, date'
    if not contract.upcasters:
        cols = ", ".join(f'"{n}"' for n in contract.fields)
        return f"SELECT {envelope}, data::JSON AS data, {cols} FROM {scan} WHERE date <> DATE '1970-01-01'"
    # Rows older than the contract: upcast the payload in SQL and re-derive the typed columns from
    # it. CASE evaluates a branch only for the rows that take it, so current rows pay nothing.
    cases = " ".join(f"WHEN {v} THEN {contract.upcast_sql(v)}" for v in range(1, contract.version))
    data = f"CASE v {cases} ELSE data::JSON END"
    if contract.typed_columns_as_stored:  # only the payload changes: the stored typed columns are current
        cols = ", ".join(f'"{n}"' for n in contract.fields)
        return f"SELECT {envelope}, {data} AS data, {cols} FROM {scan} WHERE date <> DATE '1970-01-01'"
    struct = contract.extract_sql("_d")
    typed = ", ".join(
        f'CASE WHEN v < {contract.version} THEN {contract.column_of("_x", n)} ELSE "{n}" END AS "{n}"' for n in contract.fields
    )
    return (
        f"SELECT {envelope}, _d AS data, {typed} FROM ("
        f"SELECT *, CASE WHEN v < {contract.version} THEN {struct} END AS _x FROM ("
        f"SELECT * EXCLUDE (data), {data} AS _d FROM {scan} WHERE date <> DATE '1970-01-01'))"
    )


# Which copy of a re-sent event (same id) the views keep among writer segments; compaction keeps
# the same one, so compacting never changes a view.
DEDUP_ORDER = 'writer, source, "offset"'


def _trace_views(p: str, src: str) -> list[tuple[str, str]]:
    """The per-trace helpers over the event relation `src`, named with prefix `p`.

    They exist twice: over ``events`` (prefix ``_``, used by ``nodes`` and ``preference_pairs``)
    and over ``_events_live`` (prefix ``_l``: only the traces that fresh segments touch), whose
    ``_trace_live`` is also what compaction stores as the derived per-trace summary.
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


def _summary_sql(p: str) -> str:
    """One row per trace: the columns of ``traces`` plus the best path's steps and ``complete``."""
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
               (t.started_at IS NOT NULL AND t.status = 'ok' AND coalesce(pc.nodes_ok AND pc.last_ok, false)) AS complete
        FROM t LEFT JOIN pc ON pc.trace_id = t.trace_id
        """


TRACE_COLUMNS = (
    "trace_id, domain, query, worker_model, tags, router_method, router_confidence, started_at, completed_at, status, "
    "final_answer, best_path, verified, verified_by, reward, completed_reward, feedback_reward, feedback_label, feedback_count, "
    "duration_ms, error, llm_calls"
)


def view_sql(
    info: StoreInfo, contract: Contract = CURRENT, events_source: str | None = None, mode: str = "glob"
) -> list[tuple[str, str]]:
    """(name, CREATE statement) of every view and macro, in dependency order.

    `mode` is ``snapshot`` for ``connect`` (segments from the query's snapshot, compacted ones read
    as they are, per-trace rows from the derived summary) or ``glob`` (every segment by glob, all
    de-duplicated: the views-only file for other DuckDB clients). `events_source` replaces the
    segment scan (a SELECT with the columns of ``_events_all``); the benchmark uses it to ask the
    raw JSONL the very same questions.
    """
    qglob = _q(info.quarantine_glob())
    defs: list[tuple[str, str]] = []
    snapshot = mode == "snapshot" and events_source is None

    def view(name: str, body: str) -> None:
        defs.append((name, f"CREATE OR REPLACE VIEW {name} AS {body}"))

    if events_source is not None:
        view("_events_compacted", f"SELECT * FROM ({events_source}) WHERE false")
        view("_events_fresh_raw", events_source)
    else:
        view("_events_compacted", _events_up(_scan(info, "compacted", mode), contract))
        view("_events_fresh_raw", _events_up(_scan(info, "fresh", mode), contract))
    view("_events_all", "SELECT * FROM _events_compacted UNION ALL SELECT * FROM _events_fresh_raw")
    # Re-sent events share an id; the views keep one. Compacted segments hold no id twice
    # (compaction de-duplicates), so they are read as they are; only the fresh segments are
    # de-duplicated, among themselves and against the compacted ones. Partitioning by
    # (type, trace_id, id) rather than id alone is the same for re-sent events (identical content)
    # and lets DuckDB push a view's filter on type or trace_id below the de-duplication.
    # The compacted rows a fresh row may duplicate: in snapshot mode none are read when there is no
    # fresh segment (``compacted_if_fresh``), so a compacted store pays nothing for this check.
    if snapshot:
        view("_events_c_if_fresh", _events_up(_scan(info, "compacted_if_fresh", mode), contract))
    else:
        view("_events_c_if_fresh", "SELECT * FROM _events_compacted")
    # The anti-join first, the window last: a view's filter on type then reaches the scan (DuckDB
    # pushes it through a window partitioned by type, not into a window below an anti-join).
    view(
        "_events_fresh",
        "SELECT * FROM (SELECT * FROM _events_fresh_raw f "
        "WHERE NOT EXISTS (SELECT 1 FROM _events_c_if_fresh c WHERE c.type = f.type AND c.trace_id = f.trace_id AND c.id = f.id)) "
        f"QUALIFY row_number() OVER (PARTITION BY type, trace_id, id ORDER BY {DEDUP_ORDER}) = 1",
    )
    view("events", "SELECT * FROM _events_compacted UNION ALL SELECT * FROM _events_fresh")
    for name, body in _trace_views("", "events"):
        view(name, body)
    if snapshot:
        # Per-trace rows come from the summary that compaction derived from the compacted segments,
        # except for the traces that fresh segments touch: those are recomputed from all their events.
        view("_touched", "SELECT DISTINCT trace_id FROM _events_fresh_raw")
        view(
            "_events_live",
            "SELECT * FROM _events_c_if_fresh c WHERE c.trace_id IN (SELECT trace_id FROM _touched) UNION ALL SELECT * FROM _events_fresh",
        )
        for name, body in _trace_views("_l", "_events_live"):
            view(name, body)
        view("_trace_live", _summary_sql("_l"))
        view("_trace_live_columns", _trace_columns_sql("_l"))
        derived = f"{_scan(info, 'derived', mode)} d WHERE NOT EXISTS (SELECT 1 FROM _touched t WHERE t.trace_id = d.trace_id)"
        view("_trace_summary", f"SELECT * FROM {derived} UNION ALL SELECT * FROM _trace_live")
        view("traces", f"SELECT {TRACE_COLUMNS} FROM {derived} UNION ALL SELECT {TRACE_COLUMNS} FROM _trace_live_columns")
    else:
        view("_trace_live", _summary_sql(""))
        view("_trace_summary", "SELECT * FROM _trace_live")
        view("traces", _trace_columns_sql(""))
    view(
        "_node_value",
        "SELECT trace_id, node_id, arg_max(value, (ts, seq, id)) AS value, count(*) AS evaluations "
        "FROM events WHERE type = 'node_evaluated' GROUP BY trace_id, node_id",
    )
    view(
        "_node_verdict",
        "SELECT trace_id, node_id, arg_max(passed, (ts, seq, id)) AS passed, arg_max(score, (ts, seq, id)) AS score, "
        "arg_max(data->>'$.verifier', (ts, seq, id)) AS verifier, "
        f"arg_max_null({_verification_method()}, (ts, seq, id)) AS method "
        "FROM events WHERE type = 'verification' GROUP BY trace_id, node_id",
    )
    view(
        "nodes",
        """
        SELECT n.trace_id, n.node_id, n.parent_id, n.depth, n.thought, n.terminal, n.answer,
               v.value, v.evaluations, r.passed, r.score AS verification_score, r.verifier, r.method AS verification_method,
               n.data->>'$.llm.model' AS llm_model, (n.data->>'$.llm.prompt_tokens')::BIGINT AS prompt_tokens,
               (n.data->>'$.llm.completion_tokens')::BIGINT AS completion_tokens,
               (n.data->>'$.llm.latency_ms')::DOUBLE AS latency_ms, n.ts AS expanded_at, n.seq
        FROM _node_expanded n
        LEFT JOIN _node_value v ON v.trace_id = n.trace_id AND v.node_id = n.node_id
        LEFT JOIN _node_verdict r ON r.trace_id = n.trace_id AND r.node_id = n.node_id
        """,
    )
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
    defs.append(
        (
            "high_reward_trajectories_at",
            "CREATE OR REPLACE MACRO high_reward_trajectories_at(min_reward) AS TABLE "
            "SELECT * FROM trajectories WHERE reward >= min_reward",
        )
    )
    view("high_reward_trajectories", f"SELECT * FROM trajectories WHERE reward >= {DEFAULT_MIN_REWARD}")
    view(
        "training_examples_all",
        """
        SELECT trace_id, domain, query, steps, final_answer, reward, verified, verified_by, worker_model, started_at,
               completed_at, tags, len(steps) AS n_steps, completed_reward, feedback_label
        FROM trajectories WHERE complete AND verified
        """,
    )
    view("training_examples", f"SELECT * FROM training_examples_all WHERE verified_by IN ({_CHECKED_SQL})")
    defs.append(
        (
            "training_examples_at",
            "CREATE OR REPLACE MACRO training_examples_at(min_reward) AS TABLE "
            "SELECT * FROM training_examples WHERE reward >= min_reward",
        )
    )
    # Preference pairs: only terminals whose verdict a checked method reached are outcomes (a branch
    # that "passed" by agreement may be wrong, one that "failed" by it may be right), then:
    # in a trace with both a passed and a failed verified terminal, walk each such
    # terminal up to the root; a passed and a failed terminal whose paths part at node b form a
    # pair branching at b. Per branch node, the best-valued passed and worst-valued failed terminal.
    # Paths are built from node ids only; thoughts are looked up for the chosen pairs at the end
    # (carrying every path's thought list through the pairing was 2.5x slower at 1M events).
    view(
        "preference_pairs",
        """
        WITH RECURSIVE
        leaves AS (
            SELECT n.trace_id, n.node_id, r.passed, v.value, n.answer
            FROM _node_expanded n JOIN _node_verdict r ON r.trace_id = n.trace_id AND r.node_id = n.node_id
            LEFT JOIN _node_value v ON v.trace_id = n.trace_id AND v.node_id = n.node_id
            WHERE n.terminal AND r.passed IS NOT NULL AND r.method IN (""" + _CHECKED_SQL + """)
        ),
        mixed AS (SELECT trace_id FROM leaves GROUP BY trace_id HAVING bool_or(passed) AND bool_or(NOT passed)),
        tree AS MATERIALIZED (
            SELECT n.trace_id, n.node_id, n.parent_id, n.thought FROM _node_expanded n SEMI JOIN mixed m ON m.trace_id = n.trace_id
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
        FROM chosen p JOIN _started s ON s.trace_id = p.trace_id JOIN thoughts th ON th.trace_id = p.trace_id
        """,
    )
    qscan = _read("kaelum_files('quarantine', txid_current())") if snapshot else _read(qglob)
    view(
        "quarantine",
        f"SELECT source, source_path, \"offset\", reason, raw_text, raw, writer, quarantined_at, date FROM {qscan} "
        "WHERE date <> DATE '1970-01-01' "
        'QUALIFY row_number() OVER (PARTITION BY source, "offset" ORDER BY quarantined_at, writer) = 1',
    )
    return defs


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


_DERIVED_SCHEMAS: dict[tuple, Path] = {}
_DERIVED_LOCK = threading.Lock()


def _derived_schema_file(con: duckdb.DuckDBPyConnection, contract: Contract) -> Path:
    """A zero-row Parquet file with the columns of the per-trace summary (one per process and contract).

    It ends every list of derived files, so that the summary scan has its columns in a store that
    was never compacted; it lives in a temporary folder, so that readers never write to the store.
    """
    key = (contract.version, tuple(sorted(contract.fields.items())))
    with _DERIVED_LOCK:
        path = _DERIVED_SCHEMAS.get(key)
        if path is None or not path.exists():
            d = Path(tempfile.mkdtemp(prefix="kaelum-store-schema-"))
            atexit.register(shutil.rmtree, d, True)
            path = d / "s-derived.parquet"
            con.execute(f"COPY (SELECT * FROM _trace_live LIMIT 0) TO {_q(str(path))} (FORMAT parquet)")
            _DERIVED_SCHEMAS[key] = path
        return path


def install_views(
    con: duckdb.DuckDBPyConnection,
    info: StoreInfo,
    contract: Contract = CURRENT,
    events_source: str | None = None,
    mode: str = "glob",
    files: SnapshotFiles | None = None,
) -> None:
    """Create the views on `con`. ``snapshot`` mode registers ``kaelum_files`` (pass `files` to fix the
    snapshot, as compaction does; by default each query resolves the store's current one)."""
    if mode == "snapshot" and events_source is None:
        files = files or SnapshotFiles(info)
        con.create_function("kaelum_files", files, ["VARCHAR", "UBIGINT"], "VARCHAR[]", side_effects=True)
    for name, sql in view_sql(info, contract, events_source, mode):
        if name == "_trace_summary" and files is not None and files.derived_schema is None:
            files.derived_schema = _derived_schema_file(con, contract)
        con.execute(sql)


def connect(path: str | os.PathLike[str] | None = None, contract: Contract = CURRENT, threads: int | None = None) -> duckdb.DuckDBPyConnection:
    """An in-process DuckDB connection with the store's views (see docs/store.md).

    `path` defaults to ``$KAELUM_STORE`` or ``./store``. Raises StoreError if it is not a store.
    Every query (every transaction) reads one consistent snapshot of the store, resolved when it
    starts: a long-lived connection sees each commit as soon as it is durable.
    """
    info = open_store(default_store_path() if path is None else path)
    con = duckdb.connect(":memory:")
    con.execute("SET TimeZone = 'UTC'")
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    install_views(con, info, contract, mode="snapshot")
    return con


def default_store_path() -> Path:
    return Path(os.environ.get("KAELUM_STORE") or "./store")


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


def write_views_file(store_path: str | os.PathLike[str], target: str | os.PathLike[str] | None = None) -> Path:
    """Write a small DuckDB file holding only the view definitions (absolute segment paths).

    Any DuckDB client opens it (``duckdb -readonly <file>``) and queries the views; the writer
    never touches it, and it holds no data, so it never goes stale except when the store moves.
    """
    info = open_store(store_path)
    info = StoreInfo(info.path.resolve(), info.layout_version)
    target = Path(target) if target is not None else info.path / "views.duckdb"
    tmp = target.with_name(f".{target.name}.partial")
    tmp.unlink(missing_ok=True)
    con = duckdb.connect(str(tmp))
    try:
        install_views(con, info)
        con.execute("CHECKPOINT")
    finally:
        con.close()
    os.replace(tmp, target)
    return target


__all__ = ["connect", "describe_views", "write_views_file", "view_sql", "PUBLIC_VIEWS", "StoreError"]
