"""`--where`: a user's SQL predicate over `training_examples`, checked before anything loads.

The predicate is parsed by DuckDB's own parser as the single select expression of
`SELECT (<predicate>)` and its parse tree is walked with an allow-list: column references,
constants, comparisons, boolean logic, CASE/CAST/BETWEEN/IN-lists, lambdas and plain scalar
functions. Subqueries, window functions, parameters, comments, several statements and every
function that can reach files, the network, settings or the environment are refused. The
checked predicate is then run on a connection whose external access is switched off and whose
configuration is locked (see `run_where`), so a gap in the allow-list still cannot read a file.
"""

from __future__ import annotations

import json
from typing import Any

import duckdb

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
}
_DENIED_PREFIXES = ("read_", "parquet_", "sniff_", "duckdb_", "pragma_", "iceberg_", "delta_", "http", "s3", "file")


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


def _walk(node: Any, found: list[dict[str, Any]]) -> None:
    if isinstance(node, dict):
        if "class" in node:
            found.append(node)
        for value in node.values():
            _walk(value, found)
    elif isinstance(node, list):
        for value in node:
            _walk(value, found)


def check_where(predicate: str) -> str:
    """Return the predicate unchanged if it is one safe expression; raise WhereError otherwise."""
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
    # A ';' outside a string literal starts a second statement.
    semicolons = sum(1 for offset, kind in tokens if kind != duckdb.token_type.string_const and pred[offset] == ";")
    if semicolons:
        raise WhereError(
            "--where must be a single expression such as \"reward > 0.9 and domain = 'math'\"; "
            f"found {semicolons + 1} statements separated by ';'"
        )
    try:
        statements = duckdb.extract_statements(f"SELECT ({pred})")
    except Exception as exc:
        raise WhereError(f"--where is not a valid SQL expression: {str(exc).splitlines()[0]}") from None
    if len(statements) != 1:
        raise WhereError(f"--where must be a single expression; found {len(statements)} statements")
    con = duckdb.connect(":memory:")
    try:
        raw = con.execute("select json_serialize_sql(?)", [f"SELECT ({pred})"]).fetchall()[0][0]
    finally:
        con.close()
    tree = json.loads(raw)
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
    found: list[dict[str, Any]] = []
    _walk(node["select_list"][0], found)
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
    return pred


def lock_down(con: duckdb.DuckDBPyConnection) -> None:
    """Switch off file and network access and freeze the settings of `con` for the rest of its life."""
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
