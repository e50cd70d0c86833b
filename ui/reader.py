"""The UI's read side: queries over the store's views (`store.connect`), one function per API resource.

Every function takes a DuckDB cursor of a `StoreReader` and returns plain JSON-ready values.
Filters arrive as strings from query parameters; `TraceFilter.parse` checks them and names the
parameter that is wrong. Columns that only some stores have (`verified_by`) are looked up in the
view's live definition, so the same code works before and after such a column lands.
"""

from __future__ import annotations

import json
import math
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Iterator, Mapping

import duckdb

from store.reads import EVENTS, NODES, PAIRS, TRACE, scoped_sql, trace_ids_clause

LIST_COLUMNS = (
    "trace_id, domain, query, worker_model, tags, started_at, completed_at, status, final_answer, verified, "
    "reward, completed_reward, feedback_reward, feedback_label, feedback_count, duration_ms, llm_calls"
)
SORTS = ("started_at", "completed_at", "reward", "domain", "status", "duration_ms", "llm_calls", "feedback_count")
MAX_PAGE = 500
DEEP_PAGE = 1000  # offset + limit from which the list reads its page in two steps
TEXT_PREVIEW = 240  # characters of query / answer shown per row of the list
BUCKETS = ("hour", "day", "week", "month")
HISTOGRAM_BINS = 20


class BadRequest(ValueError):
    """A parameter the API cannot use; the message names it and says what it accepts."""


class NotFound(LookupError):
    """No such trace."""


class TooSlow(RuntimeError):
    """A query ran past its time limit and was interrupted; the message says which and why."""


@contextmanager
def time_limit(cur: duckdb.DuckDBPyConnection, seconds: float, what: str) -> Iterator[None]:
    """Interrupt the queries of `cur` that are still running after `seconds` (a slow view must not
    hold one of the server's few worker threads for minutes); raise TooSlow naming `what`."""
    timer = threading.Timer(seconds, cur.interrupt)
    timer.daemon = True
    timer.start()
    try:
        yield
    except duckdb.InterruptException:
        raise TooSlow(f"{what} took over {seconds:g} s on this store and was stopped") from None
    finally:
        timer.cancel()


class StoreReader:
    """One `store.connect` connection shared by all requests; each request uses its own cursor.

    Opening a connection installs the views (about half a second), so it is not done per request.
    On a local store a cursor's every query resolves the store's snapshot anew (docs/store.md,
    "What a reader sees"), summary included, so new commits are visible at once and the connection
    is never reopened (reopening cost 0.9 CPU-s at 1M traces, every `refresh_s`, beside the
    requests). A URL store's connection reads the version newest at connect time, so it is
    reopened, in the background and without making a request wait, once it is older than
    `refresh_s`: new commits then show within `refresh_s`. A replaced
    connection is closed only when its last cursor is done (closing it under a running query
    would pull the database from under that query).
    """

    def __init__(self, path: str, refresh_s: float = 10.0) -> None:
        import store
        from store.layout import is_url

        self._connect = lambda: store.connect(path)
        self.path = path
        self.refresh_s = refresh_s if is_url(path) else -1.0  # negative: never reopened
        self._lock = threading.Lock()
        self._con = self._connect()
        self._opened = time.monotonic()
        self._users: dict[int, int] = {id(self._con): 0}  # open cursors per connection
        self._retired: dict[int, duckdb.DuckDBPyConnection] = {}
        self._refreshing = False

    def _reopen(self) -> None:
        try:
            con = self._connect()
        except Exception:  # noqa: BLE001 - keep serving from the old connection; a later request retries
            con = None
        with self._lock:
            if con is not None:
                old = self._con
                self._con = con
                self._users[id(con)] = 0
                self._retire(old)
            self._opened = time.monotonic()
            self._refreshing = False

    def _retire(self, con: duckdb.DuckDBPyConnection) -> None:
        if self._users.get(id(con), 0) == 0:
            self._users.pop(id(con), None)
            con.close()
        else:
            self._retired[id(con)] = con

    @contextmanager
    def cursor(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with self._lock:
            if self.refresh_s >= 0 and time.monotonic() - self._opened > self.refresh_s and not self._refreshing:
                self._refreshing = True
                threading.Thread(target=self._reopen, name="kaelum-ui-reopen", daemon=True).start()
            con = self._con
            self._users[id(con)] += 1
            cur = con.cursor()
        try:
            yield cur
        finally:
            cur.close()
            with self._lock:
                self._users[id(con)] -= 1
                if id(con) in self._retired and self._users[id(con)] == 0:
                    self._retire(self._retired.pop(id(con)))

    def close(self) -> None:
        with self._lock:
            self._retire(self._con)


# --- helpers ----------------------------------------------------------------------------------


@contextmanager
def one_snapshot(cur: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """The queries of `cur` inside read one snapshot of the store: a local store resolves one per
    transaction (docs/store.md, "What a reader sees"), so the parts of a page agree with each other."""
    cur.execute("BEGIN TRANSACTION")
    try:
        yield
    finally:
        cur.execute("ROLLBACK")  # nothing was written


def jsonable(v: Any) -> Any:
    if isinstance(v, (datetime, date)):
        return v.isoformat()
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return None
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, dict):
        return {k: jsonable(x) for k, x in v.items()}
    return v


def rows(cur: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
    res = cur.execute(sql, params or [])
    cols = [d[0] for d in res.description]
    return [{c: jsonable(v) for c, v in zip(cols, r)} for r in res.fetchall()]


def view_columns(cur: duckdb.DuckDBPyConnection, view: str) -> set[str]:
    """The columns `view` has in this store's live definition (no scan)."""
    return {r[0] for r in cur.execute("select column_name from duckdb_columns() where table_name = ?", [view]).fetchall()}


def _preview(s: Any) -> Any:
    return s if not isinstance(s, str) or len(s) <= TEXT_PREVIEW else s[: TEXT_PREVIEW - 1] + "…"


def _float(params: Mapping[str, str], name: str, lo: float | None = None, hi: float | None = None) -> float | None:
    raw = (params.get(name) or "").strip()
    if not raw:
        return None
    try:
        v = float(raw)
    except ValueError:
        raise BadRequest(f"{name} must be a number, got {raw!r}") from None
    if math.isnan(v) or (lo is not None and v < lo) or (hi is not None and v > hi):
        raise BadRequest(f"{name} must be between {lo} and {hi}, got {raw!r}")
    return v


def _int(params: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = (params.get(name) or "").strip()
    if not raw:
        return default
    try:
        v = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer, got {raw!r}") from None
    if not lo <= v <= hi:
        raise BadRequest(f"{name} must be between {lo} and {hi}, got {v}")
    return v


def _time(params: Mapping[str, str], name: str) -> datetime | None:
    raw = (params.get(name) or "").strip()
    if not raw:
        return None
    try:
        t = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"{name} must be an ISO 8601 time such as 2026-11-27 or 2026-11-27T10:00:00Z, got {raw!r}") from None
    if t.tzinfo is None:
        from datetime import timezone

        t = t.replace(tzinfo=timezone.utc)
    return t


# --- the trace list ---------------------------------------------------------------------------


@dataclass
class TraceFilter:
    """The list's filters as SQL over `source`: a WHERE clause and its parameters.

    `source` is ``traces``, or, for a free-text search, ``_trace_summary``: the same rows with
    every column of ``traces`` and ``search_text``, the query and answer lower-cased once when the
    summary was built (store.views.SEARCH_TEXT_SQL), so that a search does not lower-case every
    trace's text again."""

    clauses: list[str] = field(default_factory=list)
    params: list[Any] = field(default_factory=list)
    applied: dict[str, Any] = field(default_factory=dict)
    source: str = "traces"

    def add(self, name: str, value: Any, clause: str, *params: Any) -> None:
        self.applied[name] = jsonable(value)
        self.clauses.append(clause)
        self.params.extend(params)

    @property
    def where(self) -> str:
        return " and ".join(self.clauses) if self.clauses else "true"

    @classmethod
    def parse(cls, p: Mapping[str, str], columns: set[str]) -> "TraceFilter":
        from kaelum.events import DOMAINS, TRACE_STATUSES

        f = cls()
        for name, allowed in (("domain", DOMAINS), ("status", TRACE_STATUSES)):
            v = (p.get(name) or "").strip()
            if v:
                if v not in allowed:
                    raise BadRequest(f"{name} must be one of {', '.join(allowed)}, got {v!r}")
                f.add(name, v, f"{name} = ?", v)
        v = (p.get("verified") or "").strip().lower()
        if v:
            if v not in ("true", "false"):
                raise BadRequest(f"verified must be true or false, got {v!r}")
            f.add("verified", v == "true", "verified = ?" if v == "true" else "coalesce(verified, false) = ?", v == "true")
        lo, hi = _float(p, "reward_min", 0.0, 1.0), _float(p, "reward_max", 0.0, 1.0)
        if lo is not None and hi is not None and lo > hi:
            raise BadRequest(f"reward_min ({lo}) is above reward_max ({hi})")
        if lo is not None:
            f.add("reward_min", lo, "reward >= ?", lo)
        if hi is not None:
            f.add("reward_max", hi, "reward <= ?", hi)
        for name, clause in (("tag", "list_contains(tags, ?)"), ("worker_model", "worker_model = ?")):
            v = (p.get(name) or "").strip()
            if v:
                f.add(name, v, clause, v)
        if "verified_by" in columns:
            v = (p.get("verified_by") or "").strip()
            if v:
                f.add("verified_by", v, "verified_by = ?", v)
        since, until = _time(p, "since"), _time(p, "until")
        if since is not None:
            f.add("since", since, "started_at >= ?", since)
        if until is not None:
            f.add("until", until, "started_at < ?", until)
        text = (p.get("q") or "").strip().lower()
        if text and "\n" not in text:  # search_text holds the query and the answer on one line each
            f.source = "_trace_summary"
            f.add("q", text, "contains(search_text, ?)", text)
        elif text:
            f.add("q", text, "(contains(lower(query), ?) or contains(lower(coalesce(final_answer, '')), ?))", text, text)
        return f


def list_traces(cur: duckdb.DuckDBPyConnection, p: Mapping[str, str]) -> dict[str, Any]:
    columns = view_columns(cur, "traces")
    f = TraceFilter.parse(p, columns)
    sort = (p.get("sort") or "started_at").strip()
    if sort not in SORTS:
        raise BadRequest(f"sort must be one of {', '.join(SORTS)}, got {sort!r}")
    order = (p.get("order") or "desc").strip().lower()
    if order not in ("asc", "desc"):
        raise BadRequest(f"order must be asc or desc, got {order!r}")
    limit = _int(p, "limit", 50, 1, MAX_PAGE)
    offset = _int(p, "offset", 0, 0, 10**9)
    extra = ", verified_by" if "verified_by" in columns else ""
    with one_snapshot(cur):  # the counts and the page agree
        # Both counts in one scan: the filtered count and the store's total.
        total, matched = cur.execute(f"select count(*), count(*) filter (where {f.where}) from {f.source}", f.params).fetchall()[0]
        order_by = f"order by {sort} {order} nulls last, trace_id limit {limit} offset {offset}"
        if offset + limit <= DEEP_PAGE:
            items = rows(cur, f"select {LIST_COLUMNS}{extra} from {f.source} where {f.where} {order_by}", f.params)
        else:
            # A deep page in two steps: its sorted ids (only the sort and filter columns of every
            # trace), then the shown columns of those ids alone (the summary is sorted by trace_id,
            # so they are a few row groups). Keeping offset + limit whole rows in the sort instead
            # took 1.4-1.7x longer at 1M traces; a shallow page is cheaper in one query (each read
            # of `traces` also recomputes the traces that fresh events touch).
            ids = [r[0] for r in cur.execute(f"select trace_id from {f.source} where {f.where} {order_by}", f.params).fetchall()]
            found = {r["trace_id"]: r for r in rows(
                cur, f"select {LIST_COLUMNS}{extra} from traces where {trace_ids_clause(ids)}")} if ids else {}
            items = [found[i] for i in ids]
    for r in items:
        r["query"], r["final_answer"] = _preview(r["query"]), _preview(r["final_answer"])
    return {
        "total": int(total),
        "matched": int(matched or 0),
        "offset": offset,
        "limit": limit,
        "sort": sort,
        "order": order,
        "filters": f.applied,
        "has_verified_by": "verified_by" in columns,
        "traces": items,
    }


def facets(cur: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    """The values the list's drop-downs offer: domains, statuses, worker models, tags (most used first).

    One scan for the scalar columns (grouping sets) and one for the tags."""
    columns = view_columns(cur, "traces")
    cols = ("domain", "status", "worker_model") + (("verified_by",) if "verified_by" in columns else ())
    sets = ", ".join(f"({c})" for c in cols)
    picked = " ".join(f"WHEN grouping({c}) = 0 THEN '{c}'" for c in cols)
    value = " ".join(f"WHEN grouping({c}) = 0 THEN {c}::VARCHAR" for c in cols)
    found = cur.execute(
        f"select case {picked} end as col, case {value} end as value, count(*) as n from traces "
        f"group by grouping sets ({sets}) order by n desc, value"
    ).fetchall()
    out: dict[str, Any] = {c: [] for c in cols}
    for col, v, n in found:
        if v is not None and len(out[col]) < 50:
            out[col].append({"value": v, "count": int(n)})
    out["tag"] = [
        {"value": v, "count": int(n)}
        for v, n in cur.execute("select t, count(*) from (select unnest(tags) as t from traces) group by 1 order by 2 desc, 1 limit 50").fetchall()
    ]
    out["has_verified_by"] = "verified_by" in columns
    return out


# --- one trace --------------------------------------------------------------------------------


def trace_detail(cur: duckdb.DuckDBPyConnection, trace_id: str) -> dict[str, Any]:
    """The trace's summary, its tree (flat nodes with visits, verdicts and reflections), its timeline
    and its feedback. The client builds the tree from `parent_id`; `best_path` marks the chosen path.

    Everything is read through `store.reads` (the views' rows of this trace, computed over its
    events only), in one snapshot."""
    with one_snapshot(cur):
        found = rows(cur, scoped_sql(trace_id, f"select * from {TRACE}"))
        if not found:
            raise NotFound(f"no trace {trace_id!r} in the store")
        trace = found[0]
        nodes = rows(
            cur,
            scoped_sql(trace_id, "select node_id, parent_id, depth, thought, terminal, answer, value, evaluations, passed, "
                       "verification_score, verifier, llm_model, prompt_tokens, completion_tokens, latency_ms, expanded_at, seq "
                       f"from {NODES} order by seq"),
        )
        # node_expanded events are the `nodes` rows just read (one per node, with their LLM usage), so
        # they are not read again (they are the largest: every thought).
        events = rows(
            cur,
            scoped_sql(trace_id, "select type, seq, ts, node_id, value, passed, score, status, reward, label, "
                       "case when type in ('reflection', 'trace_completed', 'feedback', 'verification') then data end as data "
                       f"from {EVENTS} where type <> 'node_expanded' order by ts, seq"),
        )
    visits: dict[str, int] = {}
    reflections: dict[str, list[str]] = {}
    feedback: list[dict[str, Any]] = []
    completion: dict[str, Any] | None = None
    verifiers: dict[str, str] = {}
    for e in events:
        data = json.loads(e.pop("data")) if e.get("data") is not None else None
        if e["type"] == "trace_completed" and data is not None:
            completion = data  # events are ordered by time: the latest completion wins, as in the views
            visits = {s.get("node_id"): s.get("visits") for s in data.get("node_stats") or [] if isinstance(s, dict)}
            e["summary"] = {k: data.get(k) for k in ("status", "verified", "reward", "final_answer", "error")}
        elif e["type"] == "reflection" and data is not None:
            reflections.setdefault(e["node_id"], []).append(data.get("text", ""))
            e["text"] = data.get("text", "")
        elif e["type"] == "feedback" and data is not None:
            fb = {k: data.get(k) for k in ("by", "reward", "label", "rating", "comment")}
            fb["ts"] = e["ts"]
            feedback.append(fb)
            e["summary"] = fb
        elif e["type"] == "verification" and data is not None:
            e["verifier"] = data.get("verifier")
            if e.get("node_id"):
                verifiers[e["node_id"]] = data.get("verifier")
    expanded = [
        {"type": "node_expanded", "seq": n["seq"], "ts": n["expanded_at"], "node_id": n["node_id"],
         **{k: n[k] for k in ("llm_model", "prompt_tokens", "completion_tokens", "latency_ms")}}
        for n in nodes
    ]
    timeline = sorted(events + expanded, key=lambda e: (e["ts"] or "", e["seq"]))
    for n in nodes:
        n["visits"] = visits.get(n["node_id"])
        n["reflections"] = reflections.get(n["node_id"], [])
    usage = (completion or {}).get("usage") or {}
    return {
        "trace": trace,
        "nodes": nodes,
        "timeline": timeline,
        "feedback": feedback,
        "reward_components": (completion or {}).get("reward_components") or {},
        "usage": usage,
        "llm_totals": {
            "calls": sum(1 for n in nodes if n.get("llm_model")),
            "prompt_tokens": sum(n.get("prompt_tokens") or 0 for n in nodes),
            "completion_tokens": sum(n.get("completion_tokens") or 0 for n in nodes),
            "latency_ms": sum(n.get("latency_ms") or 0 for n in nodes),
        },
    }


PAIRS_LIMIT_S = 20.0


def trace_pairs(cur: duckdb.DuckDBPyConnection, trace_id: str, limit_s: float = PAIRS_LIMIT_S) -> list[dict[str, Any]]:
    """The sibling pairs `preference_pairs` takes from this trace (what DPO would train on), computed
    over this trace's events (`store.reads.pairs_of`); stopped after `limit_s` all the same (a
    pathological tree must not hold a worker thread)."""
    with time_limit(cur, limit_s, "computing this trace's preference pairs"):
        return rows(
            cur,
            scoped_sql(trace_id, "select branch_node_id, chosen_node_id, chosen_value, chosen_answer, rejected_node_id, "
                       f"rejected_value, rejected_answer from {PAIRS} order by branch_node_id"),
        )


def trace_exists(cur: duckdb.DuckDBPyConnection, trace_id: str) -> int:
    """The next free `seq` of the trace (for a new feedback event); NotFound if there is no such trace."""
    found = cur.execute(scoped_sql(trace_id, f"select max(seq) from {EVENTS}")).fetchall()
    if not found or found[0][0] is None:
        raise NotFound(f"no trace {trace_id!r} in the store")
    return int(found[0][0]) + 1


# --- charts -----------------------------------------------------------------------------------


def charts(cur: duckdb.DuckDBPyConnection, p: Mapping[str, str]) -> dict[str, Any]:
    """Verified rate and mean reward per domain and time bucket, and a reward histogram, over the
    traces the list's filters select."""
    f = TraceFilter.parse(p, view_columns(cur, "traces"))
    bucket = (p.get("bucket") or "").strip()
    if bucket and bucket not in BUCKETS:
        raise BadRequest(f"bucket must be one of {', '.join(BUCKETS)}, got {bucket!r}")
    # One scan of the traces for everything: per (domain, hour) and per reward bin at once (grouping
    # sets), then the hours rolled up into the bucket, which the span of the hours chooses when the
    # request names none. Three scans (span, series, histogram) measured 2.5x as long at 1M traces
    # with fresh events (benchmarks/README.md).
    chosen = f"'{bucket}'" if bucket else (
        "(SELECT CASE WHEN max(hi) - min(lo) <= INTERVAL 3 DAY OR min(lo) IS NULL THEN 'hour' "
        "WHEN max(hi) - min(lo) <= INTERVAL 120 DAY THEN 'day' ELSE 'week' END FROM g WHERE is_series AND h IS NOT NULL)"
    )
    found = cur.execute(
        f"""
        WITH g AS MATERIALIZED (
            SELECT grouping(b) = 1 AS is_series, domain, h, b, count(*) AS n, count(*) FILTER (WHERE verified) AS nv,
                   sum(reward) AS rs, count(reward) AS rc, min(started_at) AS lo, max(started_at) AS hi
            FROM (SELECT domain, date_trunc('hour', started_at) AS h, least(floor(reward * {HISTOGRAM_BINS}), {HISTOGRAM_BINS - 1})::int AS b,
                         started_at, verified, reward
                  FROM {f.source} WHERE {f.where})
            GROUP BY GROUPING SETS ((domain, h), (b))
        ), pick AS (SELECT {chosen} AS bucket)
        SELECT 'series' AS kind, (SELECT bucket FROM pick) AS bucket_name, domain, date_trunc((SELECT bucket FROM pick), h) AS bucket,
               sum(n)::BIGINT AS traces, sum(nv) / sum(n) AS verified_rate, sum(rs) / nullif(sum(rc), 0) AS mean_reward, NULL::INT AS b
        FROM g WHERE is_series AND h IS NOT NULL GROUP BY domain, date_trunc((SELECT bucket FROM pick), h)
        UNION ALL
        SELECT 'histogram', (SELECT bucket FROM pick), NULL, NULL, sum(n)::BIGINT, NULL, NULL, b FROM g WHERE NOT is_series AND b IS NOT NULL GROUP BY b
        """,
        f.params,
    ).fetchall()
    bucket = next((r[1] for r in found), None) or bucket or "hour"
    series = sorted(
        ({"domain": r[2], "bucket": r[3], "traces": int(r[4]), "verified_rate": float(r[5]), "mean_reward": None if r[6] is None else float(r[6])}
         for r in found if r[0] == "series"),
        key=lambda x: (x["bucket"], x["domain"] or ""),
    )
    series = [{k: jsonable(v) for k, v in x.items()} for x in series]
    hist = {int(r[7]): int(r[4]) for r in found if r[0] == "histogram"}
    bins = [{"lo": i / HISTOGRAM_BINS, "hi": (i + 1) / HISTOGRAM_BINS, "count": int(hist.get(i, 0))} for i in range(HISTOGRAM_BINS)]
    return {"bucket": bucket, "filters": f.applied, "series": series, "histogram": bins}


# --- quarantine -------------------------------------------------------------------------------

RAW_PREVIEW = 4000


def quarantine(cur: duckdb.DuckDBPyConnection, p: Mapping[str, str]) -> dict[str, Any]:
    limit = _int(p, "limit", 50, 1, MAX_PAGE)
    offset = _int(p, "offset", 0, 0, 10**9)
    reason = (p.get("reason") or "").strip().lower()
    where, params = ("contains(lower(reason), ?)", [reason]) if reason else ("true", [])
    # The conflicting ids' rows come from the snapshot's conflicts set (computed once per snapshot,
    # store/conflicts.py), so the view is the quarantine table's rows and a small file: 17-19 ms
    # at 1M traces with 200 lines (benchmarks/README.md). Counts and page read one snapshot; the
    # ties are broken by writer and reason, so that consecutive pages neither repeat nor skip a line.
    with one_snapshot(cur):
        total, matched = cur.execute(f"select count(*), count(*) filter (where {where}) from quarantine", params).fetchone()
        items = rows(
            cur,
            f'select source, source_path, "offset", reason, left(raw_text, {RAW_PREVIEW}) as raw_text, length(raw_text) as raw_length, '
            f"writer, quarantined_at from quarantine where {where} order by quarantined_at desc, source_path, \"offset\", writer, reason "
            f"limit {limit} offset {offset}",
            params,
        )
    return {"total": int(total), "matched": int(matched or 0), "offset": offset, "limit": limit, "lines": items}
