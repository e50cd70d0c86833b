"""Collecting training examples from the store: traces, preference pairs, filters, snapshot.

The trainer reads the store's views (`training_examples`, `preference_pairs`), never raw logs.
Selection runs in stages — domain, minimum reward, the user's `--where` — and remembers how many
examples each stage kept, so that "zero examples" can name the filter that removed them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from kaelum.prompts import format_completion, format_continuation, format_partial, worker_messages

from .where import WhereError, WhereWorker, check_where, column_names, lock_down

log = logging.getLogger("kaelum.train.data")

RECOMMENDED_PER_DOMAIN = 100  # the seed guide: "Recommended minimum: 100+ high-quality traces per domain"


class DataError(ValueError):
    """No usable examples, or no store. The message names the filter or the command that fixes it."""


@dataclass(frozen=True)
class Trace:
    """One row of `training_examples`: a complete, verified trace and its best path."""

    trace_id: str
    domain: str
    query: str
    steps: tuple[str, ...]
    final_answer: str
    reward: float
    verified: bool = True
    worker_model: str = ""
    started_at: Any = None
    completed_at: Any = None
    tags: tuple[str, ...] = ()
    verified_by: str | None = None  # the verdict's method: reference, computed, tests, ... (see kaelum.domains.base)

    def messages(self) -> list[dict[str, str]]:
        return worker_messages(self.domain, self.query)

    def completion(self) -> str:
        return format_completion(self.steps, self.final_answer)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "Trace":
        return cls(
            trace_id=row["trace_id"],
            domain=row["domain"],
            query=row["query"],
            steps=tuple(row.get("steps") or ()),
            final_answer=row.get("final_answer") or "",
            reward=float(row["reward"]) if row.get("reward") is not None else 0.0,
            verified=bool(row.get("verified", True)),
            worker_model=row.get("worker_model") or "",
            started_at=row.get("started_at"),
            completed_at=row.get("completed_at"),
            tags=tuple(row.get("tags") or ()),
            verified_by=row.get("verified_by"),
        )


@dataclass(frozen=True)
class PreferencePair:
    """One row of `preference_pairs`: two continuations of the same partial path, one better."""

    trace_id: str
    domain: str
    query: str
    branch_node_id: str
    prompt_steps: tuple[str, ...]
    chosen_steps: tuple[str, ...]
    chosen_answer: str
    chosen_value: float
    rejected_steps: tuple[str, ...]
    rejected_answer: str
    rejected_value: float

    def messages(self) -> list[dict[str, str]]:
        return worker_messages(self.domain, self.query)

    def prefix(self) -> str:
        return format_partial(self.prompt_steps)

    def chosen(self) -> str:
        return format_continuation(self.prompt_steps, self.chosen_steps, self.chosen_answer)

    def rejected(self) -> str:
        return format_continuation(self.prompt_steps, self.rejected_steps, self.rejected_answer)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "PreferencePair":
        return cls(
            trace_id=row["trace_id"],
            domain=row["domain"],
            query=row["query"],
            branch_node_id=row.get("branch_node_id") or "",
            prompt_steps=tuple(row.get("prompt_steps") or ()),
            chosen_steps=tuple(row.get("chosen_steps") or ()),
            chosen_answer=row.get("chosen_answer") or "",
            chosen_value=float(row.get("chosen_value") or 0.0),
            rejected_steps=tuple(row.get("rejected_steps") or ()),
            rejected_answer=row.get("rejected_answer") or "",
            rejected_value=float(row.get("rejected_value") or 0.0),
        )


@dataclass
class StoreSnapshot:
    """What the store held when the examples were read: enough to trace a model back to its events
    and to read exactly the same rows again (``--as-of events=N,quarantine=M``)."""

    path: str
    versions: dict[str, int]  # Delta table versions read: {"events": N, "quarantine": M}
    files: list[str]  # the events table's data files of that version, relative to the store
    event_count: int
    as_of: str | None = None  # what the user asked for, if anything

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "versions": self.versions, "as_of": self.as_of, "files": self.files,
                "file_count": len(self.files), "event_count": self.event_count}

    def as_of_arg(self) -> str:
        """The ``--as-of`` that reads this snapshot again."""
        return f"events={self.versions['events']},quarantine={self.versions['quarantine']}"


@dataclass
class Selection:
    """The examples a run trains on, how each filter narrowed them, and the store they came from."""

    examples: list[Any]
    stages: list[tuple[str, int]]  # (filter description, examples left after it)
    snapshot: StoreSnapshot | None = None
    view: str = "training_examples"

    @property
    def trace_ids(self) -> list[str]:
        return sorted({e.trace_id for e in self.examples})

    def per_domain(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for e in self.examples:
            out[e.domain] = out.get(e.domain, 0) + 1
        return dict(sorted(out.items()))


def trace_ids_hash(trace_ids: Sequence[str]) -> str:
    """sha256 over the sorted, newline-joined trace ids; the manifest's short fingerprint of the data."""
    return hashlib.sha256("\n".join(sorted(trace_ids)).encode()).hexdigest()


def open_store(store_path: str, as_of: Any = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the store's views over one snapshot, or a DataError naming the fix.

    The snapshot is `as_of` (a version, an RFC 3339 timestamp, or exact table versions), else the
    newest one now; either way every query of the connection reads the same versions, so counts,
    rows and the manifest agree even while an ingester commits.
    """
    import store
    from store.layout import is_url
    from store.snapshot import parse_as_of

    if not is_url(store_path) and not os.path.isdir(store_path):
        raise DataError(
            f"no store at {store_path} — run `kaelum-ingest --once --log-dir ./logs --store {store_path}` first, "
            "or pass --log-dir to ingest the logs before training"
        )
    try:
        parsed = parse_as_of(as_of) if isinstance(as_of, str) else as_of
        if parsed is None:  # pin the newest snapshot, so that every later query reads the same one
            probe = store.connect(store_path)
            try:
                parsed = store.snapshot_of(probe).versions
            finally:
                probe.close()
        return store.connect(store_path, as_of=parsed)
    except Exception as exc:
        raise DataError(f"cannot open the store at {store_path}: {exc}") from exc


def snapshot(store_path: str, con: duckdb.DuckDBPyConnection, as_of: Any = None) -> StoreSnapshot:
    """The snapshot `con` (from ``open_store``) reads: its table versions, files and event count."""
    import store
    from store.layout import is_url

    snap = store.snapshot_of(con)
    root = store_path if is_url(store_path) else os.path.abspath(store_path)
    prefix = root.rstrip("/") + "/"
    files = sorted(f[len(prefix):] if f.startswith(prefix) else f for f in snap.events_files)
    try:
        count = int(con.execute("select count(*) from events").fetchall()[0][0])
    except duckdb.Error:
        count = -1
    return StoreSnapshot(path=root, versions=snap.versions, files=files, event_count=count,
                         as_of=None if as_of is None else str(as_of))


def view_for(method: str) -> str:
    """The view `method` trains on (GRPO learns from its own samples: every complete trace's query, failed ones included)."""
    return {"dpo": "preference_pairs", "grpo": "trajectories"}.get(method, "training_examples")


def _first_stage(view: str, source: str | None = None) -> str:
    """The name of the first stage: every row of the view read (`source`: the view read for `view`)."""
    if source is not None and source != view:
        return f"{source} (complete and verified traces, unchecked methods included)"
    return f"{view} (complete and verified traces)" if view == "training_examples" else view


def _sql_filters(view: str, domain: str | None, min_reward: float | None) -> list[tuple[str, str, list[Any]]]:
    """(stage name, SQL clause, its parameters) of the filters before --where, applied cumulatively."""
    filters: list[tuple[str, str, list[Any]]] = []
    if domain is not None:
        filters.append((f"--domain {domain}", "domain = ?", [domain]))
    if min_reward is not None and view == "training_examples":
        filters.append((f"--min-reward {min_reward}", "reward >= ?", [min_reward]))
    return filters


def _key_columns(view: str) -> tuple[str, ...]:
    """What identifies an example of `view`; the examples are in this order."""
    return ("trace_id", "branch_node_id") if view == "preference_pairs" else ("trace_id",)


def _stage_counts_sql(rel: str, filters: list[tuple[str, str, list[Any]]], by: str | None = None) -> tuple[str, list[Any]]:
    """One scan of `rel`: its rows, then the rows left after each cumulative filter (so that an
    empty result can name the first culprit); per value of the column `by`, when given."""
    counts, params = ["count(*)"], []
    for i in range(1, len(filters) + 1):
        counts.append("count(*) filter (where " + " and ".join(f[1] for f in filters[:i]) + ")")
        params += [p for f in filters[:i] for p in f[2]]
    if by is None:
        return f"select {', '.join(counts)} from {rel}", params
    return f"select {by}, {', '.join(counts)} from {rel} group by {by} order by {by}", params


def _where_stage(pred: str) -> str:
    return f"--where {pred!r}"


def _where_positions(rows: pa.Table, pred: str, view: str, worker: WhereWorker | None = None) -> pa.Array:
    """The positions of `rows` the predicate keeps, in `worker`'s child or a child of its own.

    Never in the WHERE clause of the other filters: the predicate filters the rows they kept, in
    an outer query of its own (and a process of its own, with time and memory limits)."""
    try:
        if worker is not None:
            return worker.positions(rows, pred, view=view)
        with WhereWorker() as one:
            return one.positions(rows, pred, view=view)
    except WhereError as exc:
        raise DataError(str(exc)) from None


def _apply_where(kept: pa.Table, pred: str, view: str, worker: WhereWorker | None = None) -> pa.Table:
    return kept.take(_where_positions(kept, pred, view, worker))


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _predicate_columns(columns: Sequence[str], pred: str | None) -> list[str]:
    """The columns of a view (`columns`) that the checked predicate reads. A name that is no column
    (a lambda's parameter, a typo) and it gets every column: it then fails, or reads, exactly as
    over the trainer's rows."""
    if pred is None:
        return []
    named = column_names(pred)
    if not named <= {c.lower() for c in columns}:
        return list(columns)
    return [c for c in columns if c.lower() in named]


def select_rows(
    table: pa.Table,
    *,
    view: str,
    domain: str | None,
    min_reward: float | None,
    where: str | None,
) -> tuple[list[dict[str, Any]], list[tuple[str, int]]]:
    """Apply the filters in order to `table` (the rows of `view`); return the rows and the stage counts.

    The user's predicate runs last, over the rows the other filters kept, in `where.filter_rows`: a
    child process holding nothing but those rows, with external access switched off, the
    configuration locked, and a time and memory limit.
    """
    kept, counted = _select_table(table, view=view, domain=domain, min_reward=min_reward, where=where)
    return kept.to_pylist(), counted


def _select_table(
    table: pa.Table, *, view: str, domain: str | None, min_reward: float | None, where: str | None,
    where_worker: WhereWorker | None = None,
) -> tuple[pa.Table, list[tuple[str, int]]]:
    """``select_rows``, the kept rows as a table (of `table`'s columns); the predicate runs in
    `where_worker` when given, else in a child of its own."""
    pred = check_where(where) if where else None
    filters = _sql_filters(view, domain, min_reward)
    con = duckdb.connect(":memory:")
    try:
        con.register(view, table)
        lock_down(con)
        sql, params = _stage_counts_sql(view, filters)
        n = con.execute(sql, params).fetchall()[0]
        counted = [(_first_stage(view), int(n[0]))] + [(f[0], int(c)) for f, c in zip(filters, n[1:])]
        sql = f"select * from {view}"
        if filters:
            sql += " where " + " and ".join(f[1] for f in filters)
        sql += " order by " + ", ".join(_key_columns(view))
        kept = con.sql(sql, params=[p for f in filters for p in f[2]]).to_arrow_table()
    finally:
        con.close()
    if pred is not None:
        kept = _apply_where(kept, pred, view, where_worker)
        counted.append((_where_stage(pred), kept.num_rows))
    return kept, counted


@dataclass
class SelectionCounts:
    """What ``select_examples`` would select, without its examples: the stage counts, the examples
    per domain and the first few examples (the `kaelum ui` dataset page)."""

    stages: list[tuple[str, int]]  # as Selection.stages
    per_domain: dict[str, int]  # as Selection.per_domain()
    examples: list[Any]  # the first examples of the selection, in its order (Trace / PreferencePair)
    view: str = "training_examples"

    @property
    def selected(self) -> int:
        return self.stages[-1][1]


def count_selection(
    con: duckdb.DuckDBPyConnection,
    *,
    method: str = "sft",
    domain: str | None = None,
    min_reward: float | None = 0.7,
    where: str | None = None,
    include_unchecked: bool = False,
    limit: int = 3,
    where_worker: WhereWorker | None = None,
) -> SelectionCounts:
    """``select_examples``' selection over the store `con` reads (a ``store.connect`` connection or a
    cursor of one; run it in one transaction, so that all its queries read one snapshot), without
    reading every example: only the first `limit` examples are read whole.

    Without `where`, SFT's stage counts and examples per domain come from one aggregate scan of the
    view (per domain), the first examples from one top-N query. With one (and for DPO, whose view is computed over every tree at
    each read: once, here), ``select_rows``' own selection runs over the view's key, domain and
    reward columns and the columns the predicate names, the predicate as the trainer runs it
    (``where.filter_rows``, in a child process, over the rows the other filters kept).
    The caller applies ``check_stage_counts`` to the counts. A caller that counts again and again
    passes a ``where.WhereWorker``, so that each count does not start a child process of its own.
    """
    pred = check_where(where) if where else None
    view = view_for(method)
    source = examples_source(where, include_unchecked) if view == "training_examples" else view
    keys = _key_columns(view)
    order = ", ".join(keys)
    limit = max(0, int(limit))
    if pred is None and view != "preference_pairs":
        filters = _sql_filters(view, domain, min_reward)
        params = [p for f in filters for p in f[2]]
        cond = " and ".join(f[1] for f in filters) or "true"
        # Every stage's count and the examples per domain in one scan (each read of the view also
        # recomputes the traces fresh events touch): the stage counts per domain, summed.
        sql, count_params = _stage_counts_sql(source, filters, by="domain")
        groups = con.execute(sql, count_params).fetchall()
        totals = [sum(int(g[i]) for g in groups) for i in range(1, len(filters) + 2)]
        stages = [(_first_stage(view), totals[0])] + [(f[0], n) for f, n in zip(filters, totals[1:])]
        per_domain = {g[0]: int(g[-1]) for g in groups if g[-1]}
        # The first examples whole: a top-N over one read of the view (finding their keys first and
        # then their rows reads the view twice: 173 against 112 ms CPU over 700k examples).
        head = con.sql(f"select * from {source} where {cond} order by {order} limit {limit}", params=params).to_arrow_table().to_pylist() if limit else []
    elif view == "training_examples":
        kept, stages = _where_selection(con, source, view, keys, _sql_filters(view, domain, min_reward), pred, where_worker)
        per_domain = _value_counts(kept.column("domain"))
        # The first examples in the selection's order: the smallest keys (keys are unique).
        first = pc.select_k_unstable(kept, k=limit, sort_keys=[(k, "ascending") for k in keys]) if limit and kept.num_rows else []
        head = _rows_of(con, source, keys, kept.select(list(keys)).take(first).to_pylist())
    else:
        columns = [r[0] for r in con.execute(f"describe select * from {source}").fetchall()]
        for_pred = set(_predicate_columns(columns, pred))
        wanted = [c for c in columns if c in keys or c in ("domain", "reward") or c in for_pred]
        narrow = con.sql("select " + ", ".join(map(_quote_ident, wanted)) + f" from {source}").to_arrow_table()
        kept, stages = _select_table(narrow, view=view, domain=domain, min_reward=min_reward, where=where, where_worker=where_worker)
        per_domain = _value_counts(kept.column("domain"))
        head = _rows_of(con, source, keys, kept.select(list(keys)).slice(0, limit).to_pylist())
    stages[0] = (_first_stage(view, source), stages[0][1])
    make = PreferencePair.from_row if view == "preference_pairs" else Trace.from_row
    return SelectionCounts(stages=stages, per_domain=per_domain, examples=[make(r) for r in head], view=view)


def _where_selection(con: duckdb.DuckDBPyConnection, source: str, view: str, keys: tuple[str, ...], filters: list[tuple[str, str, list[Any]]],
                     pred: str, worker: WhereWorker | None) -> tuple[pa.Table, list[tuple[str, int]]]:
    """The rows of `source` (SFT's view) that the filters and then the predicate keep, as a narrow table
    (the keys and domain; in no particular order), and the stage counts: one scan of the view.

    The scan reads the key and domain columns, the columns the predicate names, and each cumulative
    filter as a boolean column (the filters' own SQL, so the counts are the trainer's); a key is only
    materialised for the rows the filters keep (at 1M traces reading every key measured about as long
    as the scan itself). The predicate then runs as ``select_rows`` runs it, in the child, over the
    kept rows and only the columns it names."""
    columns = [r[0] for r in con.execute(f"describe select * from {source}").fetchall()]
    for_pred = _predicate_columns(columns, pred)
    conds = [" and ".join(f[1] for f in filters[:i]) for i in range(1, len(filters) + 1)]
    params_of = [[p for f in filters[:i] for p in f[2]] for i in range(1, len(filters) + 1)]
    select, params = [], []
    for c in dict.fromkeys([*keys, "domain", *for_pred]):
        if conds and c in keys and c not in for_pred:
            select.append(f"case when {conds[-1]} then {_quote_ident(c)} end as {_quote_ident(c)}")
            params += params_of[-1]
        else:
            select.append(_quote_ident(c))
    for i, cond in enumerate(conds):
        select.append(f"({cond}) as __stage_{i}")
        params += params_of[i]
    narrow = con.sql(f"select {', '.join(select)} from {source}", params=params).to_arrow_table()
    stages = [(_first_stage(view), narrow.num_rows)]
    stages += [(f[0], int(pc.sum(narrow.column(f"__stage_{i}")).as_py() or 0)) for i, f in enumerate(filters)]
    kept = narrow.filter(narrow.column(f"__stage_{len(conds) - 1}")) if conds else narrow
    kept = kept.select([c for c in kept.column_names if not c.startswith("__stage_")])
    # Only the columns the predicate reads go to the child (at least one, to carry the row count).
    kept = kept.take(_where_positions(kept.select(for_pred or ["domain"]), pred, view, worker))
    stages.append((_where_stage(pred), kept.num_rows))
    return kept, stages


def _value_counts(column: Any) -> dict[str, int]:
    """{value: rows} of an Arrow column, sorted by value (``Selection.per_domain``'s form)."""
    counts = pc.value_counts(column)
    return dict(sorted(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist())))


def _rows_of(con: duckdb.DuckDBPyConnection, source: str, keys: tuple[str, ...], wanted: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of `source` with the key values `wanted`, in that order (read in the snapshot of the
    query that found the keys: the caller's transaction; a key gone since is left out).

    By literal trace ids, which reach the scan's trace_id statistics; a preference pair through
    ``store.reads`` (its trace's pairs computed over its events: the view walks every tree)."""
    if not wanted:
        return []
    from store.reads import PAIRS, scoped_sql, trace_ids_clause

    tids = list(dict.fromkeys(w["trace_id"] for w in wanted))
    if source == "preference_pairs":
        found_rows = [r for t in tids for r in con.sql(scoped_sql(t, f"select * from {PAIRS}")).to_arrow_table().to_pylist()]
    else:
        found_rows = con.sql(f"select * from {source} where {trace_ids_clause(tids)}").to_arrow_table().to_pylist()
    found = {tuple(r[k] for k in keys): r for r in found_rows}
    return [found[k] for k in (tuple(w[c] for c in keys) for w in wanted) if k in found]


# A --where that names the verdict method asks for traces by method, so it sees every method.
_NAMES_VERIFIED_BY = re.compile(r"\bverified_by\b", re.IGNORECASE)


def examples_source(where: str | None, include_unchecked: bool = False) -> str:
    """The view SFT examples are read from: `training_examples` (checked methods only), or
    `training_examples_all` when unchecked traces are asked for, by flag or by a `where` naming `verified_by`."""
    if include_unchecked or (where is not None and _NAMES_VERIFIED_BY.search(where)):
        return "training_examples_all"
    return "training_examples"


def select_examples(
    store_path: str,
    *,
    method: str = "sft",
    domain: str | None = None,
    min_reward: float | None = 0.7,
    where: str | None = None,
    include_unchecked: bool = False,
    as_of: Any = None,
) -> Selection:
    """Read the store's view for `method` and apply the filters. Raises DataError when nothing is left.

    SFT reads `training_examples`: traces verified by a method that checks the answer (reference,
    computed, tests, formal, constraints). `include_unchecked`, or a `where` that names
    `verified_by` (e.g. "verified_by = 'consistency'"), reads `training_examples_all` instead, so
    that traces only agreed on, judged or run are included knowingly, never by default.
    Everything is read from one snapshot of the store: `as_of` (see ``open_store``) or the newest.
    """
    if where:
        check_where(where)  # before the store is touched
    view = view_for(method)
    source = examples_source(where, include_unchecked) if view == "training_examples" else view
    con = open_store(store_path, as_of)
    try:
        snap = snapshot(store_path, con, as_of)
        try:
            table = con.sql(f"select * from {source}").to_arrow_table()
        except duckdb.Error as exc:
            raise DataError(f"the store at {store_path} has no {view} view: {str(exc).splitlines()[0]}") from None
    finally:
        con.close()
    rows, stages = select_rows(table, view=view, domain=domain, min_reward=min_reward, where=where)
    stages[0] = (_first_stage(view, source), stages[0][1])
    make = PreferencePair.from_row if view == "preference_pairs" else Trace.from_row
    sel = Selection(examples=[make(r) for r in rows], stages=stages, snapshot=snap, view=view)
    check_counts(sel)
    return sel


def check_counts(sel: Selection) -> None:
    """Zero examples is an error naming the filter that removed the last ones; few is a warning."""
    check_stage_counts(sel.stages, sel.per_domain(), sel.view)


def check_stage_counts(stages: Sequence[tuple[str, int]], per_domain: dict[str, int], view: str = "training_examples") -> None:
    """``check_counts`` from the counts alone (a Selection's or a SelectionCounts')."""
    if not sum(per_domain.values()):
        first, total = stages[0]
        if total == 0:
            hint = (
                "run the orchestrator with enable_logging=True, then `kaelum-ingest --once`"
                if view == "training_examples"
                else "preference pairs come from searches whose branches ended differently; run more queries"
            )
            raise DataError(f"no examples: the store's {first} is empty — {hint}")
        culprit = next((name for name, n in stages[1:] if n == 0), stages[-1][0])
        raise DataError(
            f"no examples left: {culprit} removed them all ({total} in {first}; "
            + ", ".join(f"{n} after {name}" for name, n in stages[1:])
            + "); relax that filter"
        )
    for dom, n in per_domain.items():
        if n < RECOMMENDED_PER_DOMAIN:
            log.warning(
                "only %d training examples for domain %s; the guide recommends %d+ high-quality traces per domain",
                n,
                dom,
                RECOMMENDED_PER_DOMAIN,
            )
