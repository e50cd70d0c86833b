"""The event contract as one DuckDB expression, so whole blocks of lines are checked in bulk.

``kaelum.events.validate_event`` is the authority; this module derives, from the same
``PAYLOAD_SPECS``, a SQL predicate that DuckDB evaluates vectorised over a column of raw lines.
The predicate is deliberately *conservative*: when it is true, ``validate_event`` is guaranteed
to accept the line (tests/test_ingest_parse.py checks this on mutated events); when it is false
or NULL, the line goes to the exact Python path, which either accepts it or gives the reason.

DuckDB's JSON reader is more lenient than JSON (it takes NaN, Infinity, trailing commas, numbers
that overflow a double), so lines that *might* use those go to the Python path too
(``TRAILING_COMMA_RE``, ``NONFINITE_RE``); a false alarm only costs speed.

One known divergence, kept for speed (checking it costs ~40% of the bulk path): an object with a
duplicated key is read first-wins here and last-wins by Python's JSON readers. JSON leaves that
case undefined (RFC 8259 §4); the stored event is the first-wins reading and is contract-valid.
"""

from __future__ import annotations

from kaelum.events import CURRENT_SPECS_CHECK, ENVELOPE_SPEC, PAYLOAD_SPECS, TS_RE, Field

# What DuckDB's JSON reader accepts but strict JSON (orjson) does not. Trailing commas are looked
# for in the raw line. NaN/Infinity (any case) only matter inside the payload (the envelope's numbers are checked field by field, unknown top-level keys
# are not stored), and the payload's text as json_extract gives it back is minified, so there a
# value starts right after ':', ',' or '['. The patterns may match inside strings too: a false
# alarm only sends the line to the exact path.
TRAILING_COMMA_RE = r",\s*[}\]]"
# Three patterns that each start with a literal are much faster than one starting with a class.
NONFINITE_RES = (r":-?[NnIi][AaNn]", r",-?[NnIi][AaNn]", r"\[-?[NnIi][AaNn]")


def _q(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


# Type tests on the JSON *text* of a value as json_extract returns it (the token as written, so
# it starts with its first significant character): string tests and casts, no second parse. The
# text comes from a parsed document, so a number is a JSON number token (NaN/Infinity in the
# payload are excluded up front): it is an integer iff it has no '.', 'e' or 'E'. An escaped
# spelling of an enum value ("\\u006dath") fails the test and goes to the exact path: safe.
_TYPE_TESTS = {
    "string": "starts_with({t}, '\"')",
    # At most 18 digits: always inside BIGINT (19-digit integers take the exact path). One regular
    # expression measured ~5% faster on the whole query than a cast plus three strpos.
    "integer": "regexp_full_match({t}, '-?(0|[1-9][0-9]{0,17})')",
    "number": "coalesce(isfinite(TRY_CAST({t} AS DOUBLE)), false)",
    "boolean": "{t} IN ('true', 'false')",
    "object": "starts_with({t}, '{')",
    "array": "starts_with({t}, '[')",
    "null": "{t} = 'null'",
}


class Paths:
    """The JSON paths one json_extract call fetches; `at(path)` is the SQL of that value."""

    def __init__(self, list_expr: str) -> None:
        self.list_expr = list_expr
        self.paths: list[str] = []

    def at(self, path: str) -> str:
        if path not in self.paths:
            self.paths.append(path)
        return f"{self.list_expr}[{self.paths.index(path) + 1}]::VARCHAR"

    def sql_list(self) -> str:
        return "[" + ", ".join(_q(p) for p in self.paths) + "]"


def _field_check(t: str, f: Field, sub, depth: int = 0) -> str:
    """SQL that is true iff the JSON text `t` (NULL when absent) satisfies `f`.

    `sub(name)` gives the JSON text of the member `name` of this value (for objects with known
    properties).
    """
    type_ok = " OR ".join(_TYPE_TESTS[name].replace("{t}", t) for name in f.types)
    inner: list[str] = []
    if f.enum is not None:
        values = [json_str(v) for v in f.enum if isinstance(v, str)]
        inner.append(f"{t} IN ({', '.join(map(_q, values))})")
    if f.minimum is not None:
        inner.append(f"TRY_CAST({t} AS DOUBLE) >= {float(f.minimum)!r}")
    if f.maximum is not None:
        inner.append(f"TRY_CAST({t} AS DOUBLE) <= {float(f.maximum)!r}")
    if f.properties is not None:
        for name, spec in f.properties.items():
            inner.append(_field_check(sub(name), spec, None if spec.properties is None else _nested(sub, name), depth + 1))
    if f.items is not None:
        inner.append(_items_check(t, f.items, depth))
    checks = f"({type_ok})"
    if inner:
        body = " AND ".join(inner)
        checks += f" AND ({t} = 'null' OR ({body}))" if "null" in f.types else f" AND ({body})"
    if f.required:
        return f"({t} IS NOT NULL AND {checks})"
    return f"({t} IS NULL OR ({checks}))"


# Arrays of plain scalars are checked on their minified text by one regular expression.
_ITEM_RES = {
    "string": r'"([^"\\]|\\.)*"',
    "integer": r"-?(0|[1-9][0-9]{0,17})",
    "number": r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]{1,2})?",
    "boolean": r"(true|false)",
}


def _items_check(t: str, item: Field, depth: int) -> str:
    """SQL that is true iff every element of the JSON array text `t` satisfies `item`."""
    scalar = item.properties is None and item.items is None and item.enum is None and item.minimum is None and item.maximum is None
    if scalar and all(name in _ITEM_RES for name in item.types):
        e = "(" + "|".join(_ITEM_RES[name] for name in item.types) + ")"
        pattern = r"\[(" + e + r"(," + e + r")*)?\]"
        return f"regexp_full_match({t}, {_q(pattern)})"
    var = f"e{depth}"
    fast = _fast_objects_re(item)
    if item.properties is not None and any(p.required for p in item.properties.values()):
        # One parse of the array into a list of structs (members as JSON text). A non-object
        # element becomes a struct of NULLs and fails its required members.
        structure = "[{" + ", ".join(f'"{name}": "JSON"' for name in item.properties) + "}]"
        items = f"try(json_transform({t}, {_q(structure)}))"
        member = (lambda name, _v=var: _v + '."' + name + '"::VARCHAR')
        body = " AND ".join(_field_check(member(name), spec, None, depth + 1) for name, spec in item.properties.items())
        check = f"{var} IS NOT NULL AND {body}"
    else:
        items = f"json_extract({t}, '$[*]')"
        item_sub = (lambda name, _v=var: f"json_extract({_v}, {_q('$.' + name)})::VARCHAR")
        check = _field_check(f"{var}::VARCHAR", item, item_sub, depth + 1)
    # list_bool_and skips NULLs and gives NULL for an empty list: make both explicit. The text is
    # minified (json_extract wrote it), so an empty array is exactly '[]'.
    full = f"CASE WHEN {t} = '[]' THEN true ELSE coalesce(list_bool_and(list_transform({items}, lambda {var}: coalesce({check}, false))), false) END"
    if fast is None:
        return full
    # Arrays of small objects (trace_completed.node_stats) cost ~10% of the whole query with the
    # per-element check; one regular expression accepts their usual, canonical spelling and only
    # the rest takes the per-element path. CASE evaluates the ELSE branch for those rows only.
    return f"CASE WHEN regexp_full_match({t}, {_q(fast)}) THEN true ELSE {full} END"


# Canonical spellings that are certainly valid, for the fast path of arrays of objects. Bounded
# digit counts keep every accepted number inside what orjson and a double represent exactly enough.
_FAST_STRING = r'"([^"\\]|\\.)*"'
_FAST_INT = r"-?(0|[1-9][0-9]{0,17})"
_FAST_NONNEG_INT = r"(0|[1-9][0-9]{0,17})"
_FAST_NUMBER = r"-?(0|[1-9][0-9]{0,14})(\.[0-9]{1,17})?"
_FAST_NONNEG_NUMBER = r"(0|[1-9][0-9]{0,14})(\.[0-9]{1,17})?"
_FAST_UNIT_NUMBER = r"(0(\.[0-9]{1,17})?|1(\.0{1,17})?)"


def _fast_scalar_re(f: Field) -> str | None:
    if f.properties is not None or f.items is not None or f.enum is not None or not f.required:
        return None
    alts = []
    for typ in f.types:
        bounds = (f.minimum, f.maximum)
        if typ == "string" and bounds == (None, None):
            alts.append(_FAST_STRING)
        elif typ == "integer" and bounds == (None, None):
            alts.append(_FAST_INT)
        elif typ == "integer" and bounds == (0, None):
            alts.append(_FAST_NONNEG_INT)
        elif typ == "number" and bounds == (None, None):
            alts.append(_FAST_NUMBER)
        elif typ == "number" and bounds == (0, None):
            alts.append(_FAST_NONNEG_NUMBER)
        elif typ == "number" and bounds == (0, 1):
            alts.append(_FAST_UNIT_NUMBER)
        elif typ == "boolean" and bounds == (None, None):
            alts.append("(true|false)")
        elif typ == "null":
            alts.append("null")
        else:
            return None
    return "(" + "|".join(alts) + ")"


def _fast_objects_re(item: Field) -> str | None:
    """A regular expression for an array of objects with exactly the declared members, in declared
    order, each a plain scalar; None when the item spec has no such canonical form."""
    if item.properties is None or tuple(item.types) != ("object",) or item.items is not None:
        return None
    members = []
    for name, f in item.properties.items():
        value = _fast_scalar_re(f)
        if value is None or not name.replace("_", "").isalnum() or not name.isascii():
            return None
        members.append(f'"{name}":{value}')
    obj = r"\{" + ",".join(members) + r"\}"
    return r"\[(" + obj + "(," + obj + r")*)?\]"


def _nested(sub, name: str):
    return lambda inner_name: sub(f"{name}.{inner_name}")


def json_str(value: str) -> str:
    import json

    return json.dumps(value, ensure_ascii=False)


ENVELOPE_FIELDS = list(ENVELOPE_SPEC)  # v, id, type, trace_id, seq, ts, data


def _payload_checks() -> tuple[list[str], str]:
    """Per type: a column fetching that type's payload paths, and the CASE that checks them.

    Each payload is parsed once, with only its own type's paths (one extraction column per type,
    computed only for the rows of that type).
    """
    columns, cases = [], []
    for i, (type_name, spec) in enumerate(PAYLOAD_SPECS.items()):
        d = Paths(f"d{i}")
        parts = []
        for name, f in spec.items():
            sub = (lambda inner, _n=name, _d=d: _d.at(f"$.{_n}.{inner}"))
            parts.append(_field_check(d.at(f"$.{name}"), f, sub))
        tq = _q(json_str(type_name))
        columns.append(f"CASE WHEN type_json = {tq} THEN json_extract(data_json, {d.sql_list()}) END AS d{i}")
        cases.append(f"WHEN {tq} THEN ({' AND '.join(parts)})")
    return columns, " ".join(cases)


def _unquote(x: str) -> str:
    # The value of a JSON string: its text without the quotes unless it holds an escape.
    return f"CASE WHEN contains({x}, '\\') THEN json_extract_string({x}, '$') ELSE ({x})[2:-2] END"


def build_query(table: str) -> str:
    """One SELECT over `table(line VARCHAR, off BIGINT)` giving the store's columns and `ok`.

    `line` is the raw line, newline included. Rows with ok = true are contract-valid events of
    a version the current payload specs check (``kaelum.events.CURRENT_SPECS_CHECK``); every other
    row must be decided by the exact Python path. The JSON of a line is parsed once for the
    envelope and once for the payload of its type (json_extract with a list of paths); the checks
    then look at the JSON text of each value.
    """
    env = Paths("j")
    payload_columns, payload_cases = _payload_checks()
    t = {n: env.at(f"$.{n}") for n in ENVELOPE_FIELDS}
    no_sub = lambda name: "NULL"  # the envelope has no objects with declared members
    env_ok = " AND ".join(_field_check(t[n], f, no_sub) for n, f in ENVELOPE_SPEC.items())
    ts_pattern = _q('"' + TS_RE.pattern.lstrip("^").rstrip("$") + '"')
    finite = " AND ".join(f"NOT regexp_matches({t['data']}, {_q(r)})" for r in NONFINITE_RES)
    return f"""
WITH env AS (
    -- try(): a line that is not JSON gives NULL (→ exact path) instead of failing the query.
    SELECT off, CASE WHEN starts_with(line, '{{') AND NOT regexp_matches(line, {_q(TRAILING_COMMA_RE)})
                     THEN try(json_extract(line, {env.sql_list()})) END AS j
    FROM {table}
), body AS (
    SELECT *, {", ".join(payload_columns)}, TRY_CAST({_unquote("ts_json")} AS TIMESTAMPTZ) AS ts_value
    FROM (SELECT off, j, {t['type']} AS type_json, {t['ts']} AS ts_json,
                 CASE WHEN starts_with({t['data']}, '{{') AND {finite} THEN {t['data']} END AS data_json
          FROM env)
)
SELECT
    off,
    TRY_CAST({t['v']} AS INTEGER) AS v,
    {_unquote(t['id'])} AS id,
    {_unquote("type_json")} AS type,
    {_unquote(t['trace_id'])} AS trace_id,
    TRY_CAST({t['seq']} AS BIGINT) AS seq,
    ts_value AS ts,
    {t['data']} AS data,
    coalesce(
        data_json IS NOT NULL
        AND {env_ok}
        AND {t['v']} IN ({", ".join(f"'{v}'" for v in CURRENT_SPECS_CHECK)})
        AND regexp_full_match(ts_json, {ts_pattern})
        AND ts_value IS NOT NULL
        AND CASE type_json {payload_cases} ELSE false END,
        false) AS ok
FROM body
"""
