"""Schema versions of the event payload, and the upcasters that read old versions as the current one.

Events are stored exactly as written, with their ``v``. Reading upcasts: a row whose ``v`` is older
than the reader's contract is passed through the chain ``upcast_v1_v2``, ``upcast_v2_v3``, ... until
it is at the current version. Each upcaster exists twice, kept equal by tests: as a Python function
on one payload (for code that handles single events) and as a DuckDB SQL expression on the JSON
payload (for the views, so that millions of old rows are upcast without leaving DuckDB).

The typed columns the writer extracts from the payload (``domain``, ``reward``, ``node_id`` ...)
are declared per contract version in ``Contract.fields``: column -> (DuckDB type, JSON key).
A contract version that renames a payload field changes the key, and the views re-derive the typed
columns of older rows from the upcast payload.

Version 2 added how each verdict was reached (``verification.method``, ``trace_completed.verified_by``).
``upcast_v1_v2`` derives a version-1 verification's method from its ``verifier`` name (and, for
``creative.constraints`` and ``analysis.coverage``, from whether any constraint or more than one
point was checked, or only the judge decided), with ``method_of_verifier``'s
table rendered as SQL (``method_sql``), so Python and SQL cannot disagree. A version-1
``trace_completed`` cannot say its method alone: the method is in another event, the final node's
``verification``. The upcaster leaves it absent, and the views take the final node's verification
method for every trace whose ``trace_completed`` does not state one (store/views.py, ``verified_by``).
The typed columns are unchanged by version 2.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from kaelum.domains.base import _LEGACY_VERIFIER_METHODS, METHODS, method_of_verifier
from kaelum.events import SCHEMA_VERSION


@dataclass(frozen=True)
class Upcaster:
    """Turns a payload of version ``from_version`` into one of ``from_version + 1``.

    ``sql`` is a DuckDB expression over the columns ``type`` (VARCHAR) and ``data`` (JSON) that
    yields the new ``data`` as JSON; ``python`` does the same for one payload.
    """

    name: str
    from_version: int
    python: Callable[[str, dict[str, Any]], dict[str, Any]]
    sql: str
    # Whether the upcaster may change the value of a typed column (``Contract.fields``); when no
    # upcaster of a chain does, the typed columns stored with an old row are already right and the
    # readers do not re-derive them from the upcast payload (a JSON parse per old row, on every query).
    changes_typed_columns: bool = True


# Typed columns of the stored segments: name -> (DuckDB type, JSON key in the payload at version 1).
# One JSON parse per row extracts all of them (DuckDB ``json_transform``); keys that a type does
# not carry come out NULL. ``reward`` is trace_completed.reward on trace_completed rows and the
# corrected reward on feedback rows; the views tell them apart by ``type``.
V1_FIELDS: dict[str, tuple[str, str]] = {
    "query": ("VARCHAR", "query"),
    "domain": ("VARCHAR", "domain"),
    "worker_model": ("VARCHAR", "worker_model"),
    "tags": ("VARCHAR[]", "tags"),
    "node_id": ("VARCHAR", "node_id"),
    "parent_id": ("VARCHAR", "parent_id"),
    "depth": ("INTEGER", "depth"),
    "thought": ("VARCHAR", "thought"),
    "terminal": ("BOOLEAN", "terminal"),
    "answer": ("VARCHAR", "answer"),
    "value": ("DOUBLE", "value"),
    "passed": ("BOOLEAN", "passed"),
    "score": ("DOUBLE", "score"),
    "status": ("VARCHAR", "status"),
    "final_answer": ("VARCHAR", "final_answer"),
    "best_path": ("VARCHAR[]", "best_path"),
    "verified": ("BOOLEAN", "verified"),
    "reward": ("DOUBLE", "reward"),
    "label": ("VARCHAR", "label"),
}


@dataclass(frozen=True)
class Contract:
    """What a reader or writer knows: the newest version, how to get there, and where fields live."""

    version: int
    fields: Mapping[str, tuple[str, str]] = field(default_factory=lambda: dict(V1_FIELDS))
    upcasters: tuple[Upcaster, ...] = ()

    def __post_init__(self) -> None:
        have = sorted(u.from_version for u in self.upcasters)
        if have != list(range(1, self.version)):
            raise ValueError(
                f"contract v{self.version} needs upcasters from versions {list(range(1, self.version))}, got {have}"
            )
        if set(self.fields) != set(V1_FIELDS):
            raise ValueError(f"contract fields must be exactly the typed columns {sorted(V1_FIELDS)}")

    @property
    def typed_columns_as_stored(self) -> bool:
        """True when no upcaster changes a typed column: every stored row's typed columns are current."""
        return not any(u.changes_typed_columns for u in self.upcasters)

    def chain(self, from_version: int) -> list[Upcaster]:
        by_from = {u.from_version: u for u in self.upcasters}
        return [by_from[v] for v in range(from_version, self.version)]

    def upcast(self, type_: str, data: dict[str, Any], v: int) -> dict[str, Any]:
        """The payload of a version-`v` event as the current version (Python path)."""
        if v > self.version:
            raise ValueError(f"schema version {v} is newer than this reader knows ({self.version}); upgrade kaelum")
        for u in self.chain(v):
            data = u.python(type_, data)
        return data

    def upcast_sql(self, from_version: int, data_expr: str = "data", type_expr: str = "type") -> str:
        """SQL for the payload of a version-`from_version` row as the current version."""
        expr = f"({data_expr})::JSON"
        for u in self.chain(from_version):
            expr = "(" + u.sql.replace("{data}", expr).replace("{type}", type_expr) + ")"
        return expr

    def json_structure(self) -> str:
        """The ``json_transform`` structure that extracts every typed column in one parse."""
        parts = [f'"{key}": "{typ}"' for typ, key in self.fields.values()]
        return "{" + ", ".join(parts) + "}"

    def extract_sql(self, data_expr: str) -> str:
        """SQL for a STRUCT of the typed columns of a current-version payload."""
        structure = self.json_structure().replace("'", "''")
        return f"json_transform({data_expr}, '{structure}')"

    def column_of(self, struct_expr: str, name: str) -> str:
        key = self.fields[name][1]
        return f'{struct_expr}."{key}"'


def method_sql(verifier_expr: str) -> str:
    """SQL for ``method_of_verifier(verifier)`` over a VARCHAR expression (NULL when it has no method)."""
    # A CASE on the suffix evaluates it once (no regular expression: this runs per verification row).
    table = {**{m: m for m in METHODS}, **_LEGACY_VERIFIER_METHODS}
    whens = " ".join(f"WHEN '{k}' THEN '{v}'" for k, v in table.items())
    return f"(CASE WHEN contains({verifier_expr}, '.') THEN (CASE string_split({verifier_expr}, '.')[-1] {whens} END) END)"


def _v1_verification_method(data: dict[str, Any]) -> str | None:
    verifier = data.get("verifier")
    signals = (data.get("details") or {}).get("signals") or {}
    if verifier == "creative.constraints" and signals.get("constraints") is None and signals.get("judge") is not None:
        return "judge"  # version 1 named the judge-only creative verdict after the constraints
    if verifier == "analysis.coverage" and len((data.get("details") or {}).get("points") or []) < 2:
        return "judge"  # one point "covered" by echoing the request checks nothing (as version 2 says)
    return method_of_verifier(verifier)


def _v1_to_v2(type_: str, data: dict[str, Any]) -> dict[str, Any]:
    if type_ != "verification":
        return data
    method = _v1_verification_method(data)
    # No method (e.g. "math.error"): left absent, which v2 reads as "derive it from the verifier" (= none).
    return data if method is None else {**data, "method": method}


def _json_null(expr: str) -> str:
    return f"coalesce(json_type({expr}), 'NULL') = 'NULL'"


_CONSTRAINTS = _json_null("{data}->'$.details.signals.constraints'")
_JUDGE = _json_null("{data}->'$.details.signals.judge'")
_VERIFIER_METHOD = method_sql("{data}->>'$.verifier'")
_V1_METHOD_SQL = (
    f"CASE WHEN {{data}}->>'$.verifier' = 'creative.constraints' AND {_CONSTRAINTS} AND NOT {_JUDGE} THEN 'judge' "
    "WHEN {data}->>'$.verifier' = 'analysis.coverage' "
    "AND coalesce(json_array_length({data}->'$.details.points'), 0) < 2 THEN 'judge' "
    f"ELSE {_VERIFIER_METHOD} END"
)

UPCAST_V1_V2 = Upcaster(
    name="upcast_v1_v2",
    from_version=1,
    python=_v1_to_v2,
    # A NULL method in the patch removes nothing and adds nothing (JSON merge patch), as in Python.
    sql="CASE WHEN {type} = 'verification' THEN json_merge_patch({data}, json_object('method', " + _V1_METHOD_SQL + ")) ELSE {data} END",
    changes_typed_columns=False,  # it only adds verification.method, which is no typed column
)

CURRENT = Contract(version=SCHEMA_VERSION, upcasters=(UPCAST_V1_V2,))
