"""`--where`: a user's SQL predicate over `training_examples`, checked before anything loads.

The predicate is parsed by DuckDB's own parser as the single select expression of
`SELECT <predicate>` — on its own, not wrapped in parentheses, so `reward>0.9) or (1=1` is refused
(its parentheses do not balance) instead of closing a wrapper — and its parse tree is walked with an
allow-list: column references, constants, comparisons, boolean logic, CASE/CAST/BETWEEN/IN-lists,
lambdas and plain scalar functions. Subqueries, window functions, parameters, comments, several
statements, nesting deeper than `MAX_DEPTH` and every function that can reach files, the network,
settings, the environment or the clock (sleeps) are refused.

The checked predicate is applied by `filter_rows` in an outer query over rows the other filters
already selected (it never shares a WHERE clause with them), in a child process that holds only
those rows, whose DuckDB connection has external access switched off and its configuration locked,
and which is killed when it runs past a time limit or grows past a memory limit: a gap in the
allow-list can neither read a file nor hang or exhaust the machine.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.ipc

# Parse-tree classes a predicate may contain. Everything else (SUBQUERY, WINDOW, PARAMETER,
# STAR, COLUMNS, ...) is refused by name.
_ALLOWED_CLASSES = {
    "COLUMN_REF",
    "CONSTANT",
    "COMPARISON",
    "CONJUNCTION",
    "OPERATOR",
    "FUNCTION",
    "CASE",
    "CAST",
    "BETWEEN",
    "LAMBDA",
    "COLLATE",
}

# Scalar functions that look outside the rows: files, environment, settings, catalog, network.
_DENIED_FUNCTIONS = {
    "getenv",
    "current_setting",
    "current_database",
    "current_schema",
    "current_schemas",
    "current_query",
    "query",
    "query_table",
    "sql_auto_complete",
    "json_serialize_sql",
    "json_deserialize_sql",
    "json_execute_serialized_sql",
    "nextval",
    "currval",
    "setseed",
    "glob",
    "txid_current",
    "pg_get_viewdef",
    "pg_sleep",  # time, not the row: runaway predicates are also stopped by the time limit
    "sleep_ms",
}
_DENIED_PREFIXES = ("read_", "parquet_", "sniff_", "duckdb_", "pragma_", "iceberg_", "delta_", "http", "s3", "file")


MAX_DEPTH = 100  # nesting levels of the parse tree; deeper predicates are refused, not recursed into
TIME_LIMIT_S = 60.0  # wall clock for evaluating the predicate over the selected rows
MEMORY_LIMIT_BYTES = 2 << 30  # resident memory of the evaluating process, beyond the rows themselves


class WhereError(ValueError):
    """The --where predicate was refused. The message says why and what is allowed."""


def _scalar_functions() -> set[str]:
    con = duckdb.connect(":memory:")
    try:
        rows = con.execute(
            "select distinct function_name from duckdb_functions() where function_type in ('scalar', 'macro')"
        ).fetchall()
    finally:
        con.close()
    return {r[0].lower() for r in rows}


_SCALARS: set[str] | None = None


def _expressions(root: Any) -> list[dict[str, Any]]:
    """Every expression node under `root` (iteratively); WhereError past MAX_DEPTH expression levels."""
    found: list[dict[str, Any]] = []
    stack: list[tuple[Any, int]] = [(root, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            if "class" in node:
                depth += 1
                if depth > MAX_DEPTH:
                    raise _too_deep()
                found.append(node)
            stack.extend((v, depth) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth) for v in node)
    return found


def _too_deep() -> WhereError:
    return WhereError(f"--where nests expressions more than {MAX_DEPTH} levels deep; write it with fewer nested NOTs and parentheses")


def check_where(predicate: str) -> str:
    """Return the predicate unchanged if it is one safe expression; raise WhereError otherwise."""
    return _checked(predicate)[0]


def column_names(predicate: str) -> set[str]:
    """The names the (checked) predicate's column references use, lower-cased: columns, their
    qualifiers and lambda parameters alike. Whoever hands `filter_rows` only some columns keeps those
    of the view among these names, so the predicate reads what it would read over every column."""
    return {str(n).lower() for e in _checked(predicate)[1] if e["class"] == "COLUMN_REF" for n in e.get("column_names") or ()}


# Checked predicates by their text: a check parses the predicate in a DuckDB of its own (~30 ms),
# and one selection checks the same text several times (the page, the counts, the child's request).
_CHECKED: dict[str, tuple[str, tuple[dict[str, Any], ...]]] = {}
_CHECKED_MAX = 256


def _checked(predicate: str) -> tuple[str, tuple[dict[str, Any], ...]]:
    """The predicate and its expression nodes, once it is known to be one safe expression (cached:
    the check is a function of the text alone; a refused text is checked again and refused again)."""
    hit = _CHECKED.get(predicate)
    if hit is not None:
        return hit
    result = _check_uncached(predicate)
    if len(_CHECKED) >= _CHECKED_MAX:
        _CHECKED.clear()
    _CHECKED[predicate] = result
    return result


def _check_uncached(predicate: str) -> tuple[str, tuple[dict[str, Any], ...]]:
    global _SCALARS
    pred = predicate.strip()
    if not pred:
        raise WhereError("--where is empty; leave it out to select every example")
    try:
        tokens = duckdb.tokenize(pred)
    except Exception as exc:  # the tokenizer rejects e.g. unterminated strings
        raise WhereError(f"--where could not be parsed: {exc}") from None
    if any(kind == duckdb.token_type.comment for _, kind in tokens):
        raise WhereError("--where may not contain SQL comments (-- or /* */); write a single expression")
    # Token offsets are byte offsets into the UTF-8 text, not character offsets.
    raw = pred.encode("utf-8")
    # A ';' outside a string literal starts a second statement.
    semicolons = sum(1 for offset, kind in tokens if kind != duckdb.token_type.string_const and raw[offset : offset + 1] == b";")
    if semicolons:
        raise WhereError(
            "--where must be a single expression such as \"reward > 0.9 and domain = 'math'\"; "
            f"found {semicolons + 1} statements separated by ';'"
        )
    # Parentheses outside string literals must balance: a ')' that closes what it did not open is
    # how a fragment would escape the expression it is put in.
    depth = 0
    for offset, kind in tokens:
        if kind == duckdb.token_type.string_const:
            continue
        ch = raw[offset : offset + 1]
        if ch == b"(":
            depth += 1
            if depth > MAX_DEPTH:
                raise _too_deep()
        elif ch == b")":
            depth -= 1
            if depth < 0:
                at = len(raw[:offset].decode("utf-8", "replace")) + 1  # counted from 1, in characters
                raise WhereError(
                    f"--where must be one expression, not a query fragment: the ')' at character {at} closes a parenthesis it did not open"
                )
    if depth:
        raise WhereError(f"--where must be one expression, not a query fragment: {depth} '(' left open")
    sql = f"SELECT {pred}"
    try:
        statements = duckdb.extract_statements(sql)
    except Exception as exc:
        raise WhereError(f"--where is not a valid SQL expression: {str(exc).splitlines()[0]}") from None
    if len(statements) != 1:
        raise WhereError(f"--where must be a single expression; found {len(statements)} statements")
    con = duckdb.connect(":memory:")
    try:
        serialized = con.execute("select json_serialize_sql(?)", [sql]).fetchall()[0][0]
    except duckdb.Error as exc:
        raise WhereError(f"--where is not a valid SQL expression: {str(exc).splitlines()[0]}") from None
    finally:
        con.close()
    try:
        tree = json.loads(serialized)
    except RecursionError:
        raise _too_deep() from None
    if tree.get("error"):
        raise WhereError(f"--where is not a valid SQL expression: {tree.get('error_message', 'parse error')}")
    stmts = tree.get("statements", [])
    if len(stmts) != 1:
        raise WhereError(f"--where must be a single expression; found {len(stmts)} statements")
    node = stmts[0]["node"]
    if (
        node.get("type") != "SELECT_NODE"
        or len(node.get("select_list", [])) != 1
        or node.get("from_table", {}).get("type") != "EMPTY"
        or node.get("where_clause") is not None
        or node.get("group_expressions")
        or node.get("having") is not None
        or node.get("modifiers")
        or node.get("cte_map", {}).get("map")
    ):
        raise WhereError("--where must be a single expression, not a query fragment (no FROM, UNION, ORDER BY, ...)")
    if node["select_list"][0].get("alias"):
        raise WhereError("--where must be a single expression, not a named column (no AS ...)")
    found = _expressions(node["select_list"][0])
    if _SCALARS is None:
        _SCALARS = _scalar_functions()
    for expr in found:
        cls = expr["class"]
        if cls not in _ALLOWED_CLASSES:
            what = "subqueries" if cls == "SUBQUERY" else f"{cls.lower()} expressions"
            raise WhereError(f"--where may not contain {what}; use columns of training_examples, constants and scalar functions")
        if cls == "FUNCTION":
            name = str(expr.get("function_name", "")).lower()
            if expr.get("catalog") or expr.get("schema"):
                raise WhereError(f"--where may not call qualified function {name!r}")
            if name in _DENIED_FUNCTIONS or name.startswith(_DENIED_PREFIXES) or name not in _SCALARS:
                raise WhereError(
                    f"--where may not call {name}(): only scalar functions that read nothing outside the row are allowed"
                )
    return pred, tuple(found)


def lock_down(con: duckdb.DuckDBPyConnection) -> None:
    """Switch off file and network access and freeze the settings of `con` for the rest of its life."""
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")


_ROW = "__where_row"  # the row's position in the table handed to the child


def filter_rows(
    table: pa.Table,
    predicate: str,
    *,
    view: str = "training_examples",
    time_limit_s: float = TIME_LIMIT_S,
    memory_limit_bytes: int = MEMORY_LIMIT_BYTES,
) -> pa.Table:
    """The rows of `table` (named `view` in the SQL) for which the checked `predicate` is true.

    `table` holds only the rows the other filters kept; the predicate is the WHERE clause of an
    outer query over them in a child process (see the module docstring), so it can only narrow
    them. Raises WhereError when it fails, runs past `time_limit_s`, or its process grows past
    `memory_limit_bytes` of anonymous memory beyond the rows themselves.

    One call starts one child; a caller that filters again and again (``kaelum ui``'s dataset page)
    keeps a ``WhereWorker`` instead, which starts it once.
    """
    with WhereWorker() as worker:
        return worker.filter_rows(table, predicate, view=view, time_limit_s=time_limit_s, memory_limit_bytes=memory_limit_bytes)


class WhereWorker:
    """A child process that evaluates checked predicates one request at a time.

    Each request runs exactly as ``filter_rows`` describes: a new DuckDB connection in the child,
    holding only the request's rows, locked down, with the time and memory limits measured from
    the parent (memory as the child's growth during the request). A child that runs past a limit,
    fails or exits is killed and the next request starts a new one, so one runaway predicate
    never affects a later request. Starting Python and importing DuckDB and Arrow takes most of a
    one-shot call (~0.4-1 s); a worker pays it once. Thread-safe (requests queue on a lock).
    """

    # A child whose anonymous memory grew past this between requests (what DuckDB and the
    # allocator keep) is replaced before the next one.
    MAX_IDLE_ANON_BYTES = 512 << 20

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._err: Any = None
        self._tmp = tempfile.TemporaryDirectory(prefix="kaelum-where-")

    def __enter__(self) -> "WhereWorker":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self._stop()
            self._tmp.cleanup()

    def _start(self) -> subprocess.Popen[bytes]:
        # -P: the script's folder (train/) must not shadow modules the child imports.
        self._err = open(os.path.join(self._tmp.name, "error.txt"), "w+b")
        self._proc = subprocess.Popen([sys.executable, "-P", os.path.abspath(__file__), "--serve"],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err)
        return self._proc

    def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    pipe.close()
        if self._err is not None:
            self._err.close()
            self._err = None

    def _stderr_tail(self) -> str:
        if self._err is None:
            return ""
        self._err.flush()
        self._err.seek(0)
        text = self._err.read().decode("utf-8", errors="replace").strip()
        return text.splitlines()[-1] if text else ""

    def filter_rows(
        self,
        table: pa.Table,
        predicate: str,
        *,
        view: str = "training_examples",
        time_limit_s: float = TIME_LIMIT_S,
        memory_limit_bytes: int = MEMORY_LIMIT_BYTES,
    ) -> pa.Table:
        """``filter_rows`` in this worker's child (see there)."""
        return table.take(self.positions(table, predicate, view=view, time_limit_s=time_limit_s, memory_limit_bytes=memory_limit_bytes))

    def positions(
        self,
        table: pa.Table,
        predicate: str,
        *,
        view: str = "training_examples",
        time_limit_s: float = TIME_LIMIT_S,
        memory_limit_bytes: int = MEMORY_LIMIT_BYTES,
    ) -> pa.Array:
        """The positions (int64, ascending) of the rows of `table` for which the predicate holds, evaluated
        as ``filter_rows`` describes. A caller that needs other columns of the selected rows than the
        predicate reads sends only the columns it names (``column_names``) and takes the positions."""
        pred = check_where(predicate)
        if table.num_rows == 0:
            return pa.array([], pa.int64())
        with self._lock:
            if self._proc is not None and (self._proc.poll() is not None or _anon_rss(self._proc.pid) > self.MAX_IDLE_ANON_BYTES):
                self._stop()
            proc = self._proc or self._start()
            rows_path, out_path = (os.path.join(self._tmp.name, n) for n in ("rows.arrow", "selected.arrow"))
            with pa.OSFile(rows_path, "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
                writer.write_table(table)
            limit = _anon_rss(proc.pid) + memory_limit_bytes + table.nbytes
            request = {"rows": rows_path, "out": out_path, "view": view, "pred": pred, "limit": memory_limit_bytes + table.nbytes}
            try:
                reply = self._ask(proc, request, table, pred, view, limit, memory_limit_bytes, time_limit_s)
            except BaseException:
                self._stop()  # a child that was stopped, or did not answer, is not reused
                raise
            if reply.get("status") != "ok":
                raise WhereError(f"--where failed on {view}: {reply.get('message') or reply}")
            with pa.memory_map(out_path) as src:
                # Read whole before the map closes (the file is overwritten by the next request).
                return pa.array(pa.ipc.open_file(src).read_all().column(0).to_numpy().astype("int64", copy=True))

    def _ask(self, proc: subprocess.Popen[bytes], request: dict[str, Any], table: pa.Table, pred: str, view: str,
             limit: int, memory_limit_bytes: int, time_limit_s: float) -> dict[str, Any]:
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(json.dumps(request).encode() + b"\n")
            proc.stdin.flush()
        except OSError:
            raise WhereError(f"--where failed on {view}: its process exited ({self._stderr_tail() or proc.poll()})") from None
        started = time.monotonic()
        while True:
            ready, _, _ = select.select([proc.stdout], [], [], 0.02)
            if ready:
                line = proc.stdout.readline()
                if not line:
                    proc.wait()
                    raise WhereError(f"--where failed on {view}: {self._stderr_tail() or f'exit status {proc.returncode}'}")
                return json.loads(line)
            if time.monotonic() - started > time_limit_s:
                raise WhereError(
                    f"--where {pred!r} ran longer than {time_limit_s:g} s on {table.num_rows} rows of {view} and was stopped; "
                    "simplify it (no huge ranges or repeats)"
                )
            if _anon_rss(proc.pid) > limit:
                raise WhereError(
                    f"--where {pred!r} used more than {memory_limit_bytes >> 20} MiB evaluating {table.num_rows} rows of {view} "
                    "and was stopped; simplify it (no huge ranges, lists or repeats)"
                )


def _anon_rss(pid: int) -> int:
    """Anonymous resident memory of `pid` in bytes (0 where /proc is not there or it has exited)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"RssAnon:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def _evaluate(rows_path: str, out_path: str, view: str, pred: str, memory_limit: int) -> None:
    """In the child: write the positions of the rows of `view` where `pred` holds (duckdb.Error when
    DuckDB refuses the predicate)."""
    with pa.memory_map(rows_path) as src:
        table = pa.ipc.open_file(src).read_all()
    table = table.append_column(_ROW, pa.array(range(table.num_rows), pa.int64()))
    con = duckdb.connect(":memory:")
    try:
        con.register(view, table)
        con.execute("SET threads = 1")
        con.execute(f"SET memory_limit = '{max(64 << 20, memory_limit) >> 20}MB'")
        lock_down(con)
        # The outer query: `view` holds only rows already filtered, the predicate narrows them.
        selected = con.sql(f"select {_ROW} from (select * from {view}) as selected where ({pred}) order by {_ROW}").to_arrow_table()
    finally:
        con.close()
    with pa.OSFile(out_path, "wb") as sink, pa.ipc.new_file(sink, selected.schema) as writer:
        writer.write_table(selected)


def _serve() -> None:
    """In the child: one JSON request per line on stdin, one JSON reply per line on stdout."""
    for line in sys.stdin.buffer:
        r = json.loads(line)
        try:
            _evaluate(r["rows"], r["out"], r["view"], r["pred"], int(r["limit"]))
            reply: dict[str, Any] = {"status": "ok"}
        except duckdb.Error as exc:
            reply = {"status": "refused", "message": str(exc).splitlines()[0]}
        except Exception as exc:  # reported to the parent as the request's failure; the child goes on
            reply = {"status": "error", "message": f"{type(exc).__name__}: {exc}".splitlines()[0]}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    _serve()
