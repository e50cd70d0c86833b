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
import subprocess
import sys
import tempfile
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


def _checked(predicate: str) -> tuple[str, list[dict[str, Any]]]:
    """The predicate and its expression nodes, once it is known to be one safe expression."""
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
    return pred, found


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
    """
    pred = check_where(predicate)
    if table.num_rows == 0:
        return table
    limit = memory_limit_bytes + table.nbytes
    with tempfile.TemporaryDirectory(prefix="kaelum-where-") as tmp:
        rows_path, out_path, err_path = (os.path.join(tmp, n) for n in ("rows.arrow", "selected.arrow", "error.txt"))
        with pa.OSFile(rows_path, "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        # -P: the script's folder (train/) must not shadow modules the child imports.
        args = [sys.executable, "-P", os.path.abspath(__file__), rows_path, out_path, view, pred, str(limit)]
        with open(err_path, "wb") as err:
            proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        started = time.monotonic()
        try:
            while proc.poll() is None:
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
                time.sleep(0.02)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if proc.returncode != 0:
            with open(err_path, encoding="utf-8", errors="replace") as fh:
                text = fh.read().strip()
            message = text.splitlines()[-1] if text else f"exit status {proc.returncode}"
            if proc.returncode == _FAILED:
                message = text.splitlines()[0]
            raise WhereError(f"--where failed on {view}: {message}")
        with pa.memory_map(out_path) as src:
            selected = pa.ipc.open_file(src).read_all().column(0)
    return table.take(selected)


_FAILED = 3  # the child's exit status when DuckDB refused the predicate; its message is on stderr


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
    """In the child: write the positions of the rows of `view` where `pred` holds."""
    with pa.memory_map(rows_path) as src:
        table = pa.ipc.open_file(src).read_all()
    table = table.append_column(_ROW, pa.array(range(table.num_rows), pa.int64()))
    con = duckdb.connect(":memory:")
    con.register(view, table)
    con.execute("SET threads = 1")
    con.execute(f"SET memory_limit = '{max(64 << 20, memory_limit) >> 20}MB'")
    lock_down(con)
    try:
        # The outer query: `view` holds only rows already filtered, the predicate narrows them.
        selected = con.sql(f"select {_ROW} from (select * from {view}) as selected where ({pred}) order by {_ROW}").to_arrow_table()
    except duckdb.Error as exc:
        sys.stderr.write(str(exc).splitlines()[0] + "\n")
        sys.exit(_FAILED)
    with pa.OSFile(out_path, "wb") as sink, pa.ipc.new_file(sink, selected.schema) as writer:
        writer.write_table(selected)


if __name__ == "__main__":
    _evaluate(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
