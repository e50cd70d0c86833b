"""The event contract as one DuckDB expression, so whole blocks of lines are checked in bulk.

``kaelum.events.validate_event`` is the authority; this module derives, from the same
``PAYLOAD_SPECS``, a SQL predicate that DuckDB evaluates vectorised over a column of raw lines.
The predicate is deliberately *conservative*: when it is true, ``validate_event`` is guaranteed
to accept the line (tests/test_ingest_parse.py checks this on mutated events); when it is false
or NULL, the line goes to the exact Python path, which either accepts it or gives the reason.

DuckDB's JSON reader is more lenient than JSON (it takes NaN, Infinity, trailing commas, numbers
that overflow a double), so lines that *might* use those go to the Python path too
(``SUSPICIOUS_RE``); a false alarm only costs speed.

One known divergence, kept for speed (checking it costs ~40% of the bulk path): an object with a
duplicated key is read first-wins here and last-wins by Python's JSON readers. JSON leaves that
case undefined (RFC 8259 §4); the stored event is the first-wins reading and is contract-valid.
"""

from __future__ import annotations

from kaelum.events import ENVELOPE_SPEC, PAYLOAD_SPECS, SCHEMA_VERSION, Field, _TS_RE

# Anything DuckDB's parser accepts but strict JSON (orjson) does not, found anywhere in the line.
SUSPICIOUS_RE = r"[:,\[]\s*-?([Nn][Aa][Nn]|[Ii][Nn][Ff]|[0-9]+(\.[0-9]+)?[eE][+-]?[0-9]{3})|,\s*[}\]]"


def _q(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


# Type tests on the JSON *text* of a value as json_extract returns it (minified, so it starts
# with its first significant character): string tests, no second parse. An escaped spelling of
# an enum value ("\\u006dath") fails the test and goes to the exact path, which is safe.
_INT_RE = "-?(0|[1-9][0-9]{0,17})"  # fits in 64 bits for sure; longer ones take the exact path
_NUM_RE = "-?(0|[1-9][0-9]*)(\\.[0-9]+)?([eE][+-]?[0-9]{1,2})?"
_TYPE_TESTS = {
    "string": "starts_with({t}, '\"')",
    "integer": "regexp_full_match({t}, '" + _INT_RE + "')",
    "number": "regexp_full_match({t}, '" + _NUM_RE + "')",
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
        var = f"e{depth}"
        it = f"{var}::VARCHAR"
        item_sub = (lambda name, _v=var: f"json_extract({_v}, {_q('$.' + name)})::VARCHAR")
        item = _field_check(it, f.items, item_sub, depth + 1)
        inner.append(f"coalesce(list_bool_and(list_transform(json_extract({t}, '$[*]'), lambda {var}: {item})), true)")
    checks = f"({type_ok})"
    if inner:
        body = " AND ".join(inner)
        checks += f" AND ({t} = 'null' OR ({body}))" if "null" in f.types else f" AND ({body})"
    if f.required:
        return f"({t} IS NOT NULL AND {checks})"
    return f"({t} IS NULL OR ({checks}))"


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


def build_query(table: str) -> str:
    """One SELECT over `table(line VARCHAR, off BIGINT)` giving the store's columns and `ok`.

    `line` is the raw line, newline included. Rows with ok = true are contract-valid events of
    the current schema version; every other row must be decided by the exact Python path. The
    JSON of a line is parsed once for the envelope and once for the payload (json_extract with a
    list of paths); the checks then look at the minified JSON text of each value.
    """
    env = Paths("j")
    payload_columns, payload_cases = _payload_checks()
    t = {n: env.at(f"$.{n}") for n in ENVELOPE_FIELDS}
    no_sub = lambda name: "NULL"  # the envelope has no objects with declared members
    env_ok = " AND ".join(_field_check(t[n], f, no_sub) for n, f in ENVELOPE_SPEC.items())
    ts_pattern = _q('"' + _TS_RE.pattern.lstrip("^").rstrip("$") + '"')
    return f"""
WITH raw AS (
    SELECT off, json_valid(line) AND NOT regexp_matches(line, {_q(SUSPICIOUS_RE)}) AS parsable, line
    FROM {table}
), env AS (
    SELECT off, CASE WHEN parsable AND json_type(line) = 'OBJECT' THEN json_extract(line, {env.sql_list()}) END AS j
    FROM raw
), body AS (
    SELECT *, {", ".join(payload_columns)}
    FROM (SELECT off, j, {t['type']} AS type_json, CASE WHEN starts_with({t['data']}, '{{') THEN {t['data']} END AS data_json FROM env)
)
SELECT
    off,
    TRY_CAST({t['v']} AS INTEGER) AS v,
    json_extract_string({t['id']}, '$') AS id,
    json_extract_string({t['type']}, '$') AS type,
    json_extract_string({t['trace_id']}, '$') AS trace_id,
    TRY_CAST({t['seq']} AS BIGINT) AS seq,
    TRY_CAST(json_extract_string({t['ts']}, '$') AS TIMESTAMPTZ) AS ts,
    {t['data']} AS data,
    coalesce(
        data_json IS NOT NULL
        AND {env_ok}
        AND {t['v']} = '{SCHEMA_VERSION}'
        AND regexp_full_match({t['ts']}, {ts_pattern})
        AND TRY_CAST(json_extract_string({t['ts']}, '$') AS TIMESTAMPTZ) IS NOT NULL
        AND CASE {t['type']} {payload_cases} ELSE false END,
        false) AS ok
FROM body
"""
