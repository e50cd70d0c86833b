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

Version 1 is the only version so far, so ``CURRENT.upcasters`` is empty; the mechanism is exercised
by the tests with a synthetic version 2 (``tests/test_store_upcast.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

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


CURRENT = Contract(version=SCHEMA_VERSION)
