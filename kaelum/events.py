"""The event contract: what the runtime writes, the ingester checks and the store keeps.

One event is one JSON object on one line (see docs/events.md). The envelope is the same for
every type; the payload (`data`) depends on `type`. The contract is declared once, in
``PAYLOAD_SPECS``, and everything else is derived from it: the fast validator the ingester runs
on every line, the checked-in JSON Schemas (``kaelum/schema/events.v<N>.json``) and the docs.

Events are immutable facts. Corrections are new events (``feedback``); a change to the contract
is a new schema version with an upcaster in ``store.upcast``.

Version 2 records how each verdict was reached: ``verification.method`` and
``trace_completed.verified_by`` (the final answer's method), out of ``VERDICT_METHODS``. Version 1
events are still valid and validated against their own payloads (``PAYLOAD_SPECS_BY_VERSION``);
readers upcast them (``store.upcast``).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping

from .domains.base import METHODS as VERDICT_METHODS
from .domains.registry import DOMAIN_NAMES

SCHEMA_VERSION = 2

EVENT_TYPES = (
    "trace_started",
    "node_expanded",
    "node_evaluated",
    "verification",
    "reflection",
    "trace_completed",
    "feedback",
)

DOMAINS = DOMAIN_NAMES  # declared in kaelum.domains.registry, which imports nothing heavy
TRACE_STATUSES = ("ok", "failed", "error", "timeout")


class EventError(ValueError):
    """An object that breaks the event contract. The message names the field and the rule."""


# --- the contract ---------------------------------------------------------------------------
#
# A field spec is (json types, required, description[, nested spec or enum]).
# JSON types: "string", "integer", "number", "boolean", "object", "array", "null".


@dataclass(frozen=True)
class Field:
    types: tuple[str, ...]
    required: bool
    doc: str
    enum: tuple[Any, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    properties: Mapping[str, "Field"] | None = None  # for objects with known keys
    items: "Field | None" = None  # for arrays


def _f(types: str, doc: str, required: bool = True, **kw: Any) -> Field:
    return Field(tuple(types.split("|")), required, doc, **kw)


_LLM_USAGE = {
    "model": _f("string", "model that produced the step"),
    "prompt_tokens": _f("integer", "prompt tokens of the call", minimum=0),
    "completion_tokens": _f("integer", "completion tokens attributed to this step", minimum=0),
    "latency_ms": _f("number", "wall-clock latency of the call in milliseconds", minimum=0),
}

ENVELOPE_SPEC: dict[str, Field] = {
    "v": _f("integer", "schema version of this event", minimum=1),
    "id": _f("string", "globally unique event id (UUIDv7); the idempotency key"),
    "type": _f("string", "event type", enum=EVENT_TYPES),
    "trace_id": _f("string", "one per Orchestrator query"),
    "seq": _f("integer", "0, 1, 2, ... within a trace", minimum=0),
    "ts": _f("string", "RFC 3339 UTC timestamp with microseconds, e.g. 2026-11-27T10:00:00.123456Z"),
    "data": _f("object", "payload of the type"),
}

PAYLOAD_SPECS: dict[str, dict[str, Field]] = {
    "trace_started": {
        "query": _f("string", "the user's query"),
        "domain": _f("string", "domain the query was routed to", enum=DOMAINS),
        "router": _f(
            "object",
            "routing decision",
            properties={
                "domain": _f("string", "domain the router chose", enum=DOMAINS),
                "confidence": _f("number", "router confidence in [0,1]", minimum=0, maximum=1),
                "method": _f("string", "how it was chosen: explicit | keywords | ..."),
            },
        ),
        "worker_model": _f("string", "model that serves the worker"),
        "params": _f(
            "object",
            "search parameters",
            properties={
                "simulations": _f("integer", "LATS simulation budget", minimum=0),
                "max_depth": _f("integer", "maximum tree depth", minimum=1),
                "branching": _f("integer", "children sampled per expansion", minimum=1),
                "exploration": _f("number", "UCT exploration constant", minimum=0),
                "temperature": _f("number", "sampling temperature", minimum=0),
                "seed": _f("integer|null", "random seed, null when unseeded"),
            },
        ),
        "tags": _f("array", "free-form labels", items=_f("string", "tag")),
    },
    "node_expanded": {
        "node_id": _f("string", "id of the new node, unique within the trace"),
        "parent_id": _f("string|null", "parent node id; null for the root"),
        "depth": _f("integer", "depth of the node (root = 0)", minimum=0),
        "thought": _f("string", "the step text"),
        "terminal": _f("boolean", "whether this step ends the solution"),
        "answer": _f("string|null", "final answer on terminal nodes, else null"),
        "llm": _f("object|null", "the LLM call that produced the node (null for the root)", properties=_LLM_USAGE),
    },
    "node_evaluated": {
        "node_id": _f("string", "evaluated node"),
        "value": _f("number", "value estimate in [0,1]", minimum=0, maximum=1),
        "signals": _f("object", "components of the value (llm judgement, verifier, consistency, ...)"),
    },
    "verification": {
        "node_id": _f("string", "terminal node whose answer was checked"),
        "answer": _f("string|null", "the answer checked"),
        "passed": _f("boolean", "whether the domain verifier accepted it"),
        "score": _f("number", "verifier score in [0,1]", minimum=0, maximum=1),
        "verifier": _f("string", "which verifier ran (e.g. math.reference, math.sympy, code.sandbox)"),
        "method": _f("string|null", "how the verdict was reached, from the verifier's name; null when nothing could be "
                     "checked (internal error). Absent in events that predate it: readers derive it from `verifier`",
                     required=False, enum=VERDICT_METHODS),
        "details": _f("object", "verifier-specific details"),
    },
    "reflection": {
        "node_id": _f("string", "failed terminal node the reflection is about"),
        "text": _f("string", "the reflection later expansions see"),
    },
    "trace_completed": {
        "status": _f("string", "outcome of the search", enum=TRACE_STATUSES),
        "final_answer": _f("string|null", "the answer returned to the caller"),
        "best_path": _f("array", "node ids from the root to the chosen terminal", items=_f("string", "node id")),
        "verified": _f("boolean", "whether the final answer passed its domain verifier"),
        "verified_by": _f("string|null", "the method of the final answer's verdict (reference, computed, tests, formal and "
                          "constraints check the answer; consistency, judge and runs do not); null without a verdict. "
                          "Absent in events that predate it: readers take the final node's verification method",
                          required=False, enum=VERDICT_METHODS),
        "reward": _f("number", "reward in [0,1]", minimum=0, maximum=1),
        "reward_components": _f("object", "named components the reward was composed from"),
        "node_stats": _f(
            "array",
            "visits and value of every node at the end of the search",
            items=_f(
                "object",
                "node statistics",
                properties={
                    "node_id": _f("string", "node id"),
                    "visits": _f("integer", "UCT visit count", minimum=0),
                    "value": _f("number", "mean backed-up value", minimum=0, maximum=1),
                },
            ),
        ),
        "usage": _f(
            "object",
            "LLM usage of the whole trace",
            properties={
                "llm_calls": _f("integer", "number of LLM calls", minimum=0),
                "prompt_tokens": _f("integer", "prompt tokens", minimum=0),
                "completion_tokens": _f("integer", "completion tokens", minimum=0),
            },
        ),
        "duration_ms": _f("number", "wall-clock duration of the trace", minimum=0),
        "error": _f("string|null", "reason when status is error, failed or timeout"),
    },
    "feedback": {
        "rating": _f("number|null", "a rating, free scale", required=False),
        "reward": _f("number|null", "corrected reward in [0,1]; overrides trace_completed.reward", required=False, minimum=0, maximum=1),
        "label": _f("string|null", "a label such as 'correct', 'wrong', 'harmful'", required=False),
        "by": _f("string", "who gave the feedback"),
        "comment": _f("string|null", "free text", required=False),
    },
}

# Fields each version added: (type, field). A version's payload specs are the newest minus what later versions added.
_ADDED_IN: dict[int, tuple[tuple[str, str], ...]] = {
    2: (("verification", "method"), ("trace_completed", "verified_by")),
}


def _specs_of(version: int) -> dict[str, dict[str, Field]]:
    later = {tf for v, added in _ADDED_IN.items() if v > version for tf in added}
    return {t: {n: f for n, f in spec.items() if (t, n) not in later} for t, spec in PAYLOAD_SPECS.items()}


PAYLOAD_SPECS_BY_VERSION: dict[int, dict[str, dict[str, Field]]] = {v: _specs_of(v) for v in range(1, SCHEMA_VERSION + 1)}



def _read_by_current(version: int) -> bool:
    """Whether every line valid against the current payloads is valid against `version`'s: true when the
    later versions only added optional fields (an older version allowed them as unknown extra fields)."""
    return all(
        all(PAYLOAD_SPECS[t].get(n) == f for n, f in spec.items())
        and all(not f.required for n, f in PAYLOAD_SPECS[t].items() if n not in spec)
        for t, spec in PAYLOAD_SPECS_BY_VERSION[version].items()
    )


# Versions whose lines the ingester may check with the current payload specs (its fast path).
CURRENT_SPECS_CHECK = tuple(v for v in PAYLOAD_SPECS_BY_VERSION if _read_by_current(v))

# The one timestamp form of the envelope (UTC, microseconds); the ingester's bulk check reuses the pattern.
TS_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}(Z|\+00:00)$")


# --- validation -----------------------------------------------------------------------------


def _type_ok(value: Any, types: tuple[str, ...]) -> bool:
    for t in types:
        if t == "string" and isinstance(value, str):
            return True
        if t == "integer" and isinstance(value, int) and not isinstance(value, bool):
            return True
        if t == "number" and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if t == "boolean" and isinstance(value, bool):
            return True
        if t == "object" and isinstance(value, dict):
            return True
        if t == "array" and isinstance(value, list):
            return True
        if t == "null" and value is None:
            return True
    return False


def _check(obj: Mapping[str, Any], spec: Mapping[str, Field], where: str) -> None:
    for name, f in spec.items():
        if name not in obj:
            if f.required:
                raise EventError(f"{where}{name}: required field is missing")
            continue
        value = obj[name]
        if not _type_ok(value, f.types):
            raise EventError(f"{where}{name}: expected {' or '.join(f.types)}, got {type(value).__name__}")
        if value is None:
            continue
        if f.enum is not None and value not in f.enum:
            raise EventError(f"{where}{name}: {value!r} is not one of {', '.join(map(str, f.enum))}")
        if f.minimum is not None and isinstance(value, (int, float)) and value < f.minimum:
            raise EventError(f"{where}{name}: {value} is below the minimum {f.minimum}")
        if f.maximum is not None and isinstance(value, (int, float)) and value > f.maximum:
            raise EventError(f"{where}{name}: {value} is above the maximum {f.maximum}")
        if f.properties is not None and isinstance(value, dict):
            _check(value, f.properties, f"{where}{name}.")
        if f.items is not None and isinstance(value, list):
            for i, item in enumerate(value):
                if not _type_ok(item, f.items.types):
                    raise EventError(f"{where}{name}[{i}]: expected {' or '.join(f.items.types)}, got {type(item).__name__}")
                if f.items.properties is not None and isinstance(item, dict):
                    _check(item, f.items.properties, f"{where}{name}[{i}].")


def validate_event(obj: Any, max_version: int = SCHEMA_VERSION) -> None:
    """Raise EventError if `obj` (a parsed JSON line) breaks the contract of its version.

    Payloads are checked field by field against the specs of their own version (an older
    version's payload is then the upcaster's business, ``store.upcast``); a version newer than
    ``max_version`` is refused with a reason that says so, so it can be quarantined rather than dropped.
    """
    if not isinstance(obj, dict):
        raise EventError(f"event: expected a JSON object, got {type(obj).__name__}")
    v = obj.get("v")
    if isinstance(v, int) and not isinstance(v, bool) and v > max_version:
        raise EventError(f"v: schema version {v} is newer than this reader knows ({max_version}); upgrade kaelum")
    _check(obj, ENVELOPE_SPEC, "")
    if not TS_RE.match(obj["ts"]):
        raise EventError(f"ts: {obj['ts']!r} is not RFC 3339 UTC with microseconds")
    if v in PAYLOAD_SPECS_BY_VERSION:
        _check(obj["data"], PAYLOAD_SPECS_BY_VERSION[v][obj["type"]], "data.")


# --- construction ---------------------------------------------------------------------------


def new_event_id() -> str:
    """A UUIDv7 (RFC 9562): 48-bit millisecond timestamp, then 74 random bits.

    Time-ordered ids keep Parquet min/max statistics on `id` useful and make ids sortable.
    """
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(secrets.token_bytes(10), "big")
    rand_a = rand >> 68 & 0xFFF  # 12 bits
    rand_b = rand & ((1 << 62) - 1)  # 62 bits
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def utc_now() -> str:
    """RFC 3339 UTC with microseconds, the only timestamp form the contract accepts."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_trace_id() -> str:
    return new_event_id()


@dataclass(frozen=True)
class Event:
    """One immutable event. `data` is the type's payload as plain JSON values."""

    type: str
    trace_id: str
    seq: int
    data: Mapping[str, Any]
    id: str = field(default_factory=new_event_id)
    ts: str = field(default_factory=utc_now)
    v: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": self.v,
            "id": self.id,
            "type": self.type,
            "trace_id": self.trace_id,
            "seq": self.seq,
            "ts": self.ts,
            "data": dict(self.data),
        }

    def to_json_line(self) -> bytes:
        """One complete UTF-8 line, newline included; never contains a raw newline inside."""
        return (json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"), allow_nan=False) + "\n").encode("utf-8")

    def validate(self) -> "Event":
        validate_event(self.to_dict())
        return self

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> "Event":
        validate_event(obj)
        return cls(type=obj["type"], trace_id=obj["trace_id"], seq=obj["seq"], data=obj["data"], id=obj["id"], ts=obj["ts"], v=obj["v"])


class TraceEvents:
    """Builds the events of one trace with consecutive `seq` numbers. No I/O."""

    def __init__(self, trace_id: str | None = None) -> None:
        self.trace_id = trace_id or new_trace_id()
        self._seq = 0

    def make(self, type: str, **data: Any) -> Event:
        event = Event(type=type, trace_id=self.trace_id, seq=self._seq, data=data)
        event.validate()
        self._seq += 1
        return event


# --- derived artefacts ----------------------------------------------------------------------


def _field_schema(f: Field) -> dict[str, Any]:
    out: dict[str, Any] = {"description": f.doc}
    out["type"] = f.types[0] if len(f.types) == 1 else list(f.types)
    if f.enum is not None:
        out["enum"] = list(f.enum) + ([None] if "null" in f.types else [])
    if f.minimum is not None:
        out["minimum"] = f.minimum
    if f.maximum is not None:
        out["maximum"] = f.maximum
    if f.properties is not None:
        out.update(_object_schema(f.properties, closed=False))
    if f.items is not None:
        out["items"] = _field_schema(f.items)
    return out


def _object_schema(spec: Mapping[str, Field], closed: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "properties": {name: _field_schema(f) for name, f in spec.items()},
        "required": [name for name, f in spec.items() if f.required],
    }
    if closed:
        out["additionalProperties"] = False
    return out


def json_schema(version: int = SCHEMA_VERSION) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of an event line of `version`, derived from the specs above."""
    envelope = _object_schema(ENVELOPE_SPEC, closed=False)
    envelope["properties"]["v"] = {"description": ENVELOPE_SPEC["v"].doc, "const": version}
    envelope["properties"]["ts"]["pattern"] = TS_RE.pattern
    variants = []
    for type_name, spec in PAYLOAD_SPECS_BY_VERSION[version].items():
        variants.append(
            {
                "if": {"properties": {"type": {"const": type_name}}},
                "then": {"properties": {"data": {"type": "object", **_object_schema(spec, closed=False)}}},
            }
        )
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://kaelum.dev/schema/events.v{version}.json",
        "title": f"Kaelum event (schema version {version})",
        "type": "object",
        **envelope,
        "allOf": variants,
    }


def schema_path(version: int = SCHEMA_VERSION) -> str:
    """The checked-in JSON Schema of `version` (every version's file is kept, for old events)."""
    return os.path.join(os.path.dirname(__file__), "schema", f"events.v{version}.json")


SCHEMA_PATH = schema_path()


def write_json_schema(path: str | None = None, version: int = SCHEMA_VERSION) -> str:
    path = path or schema_path(version)
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(json_schema(version), fh, indent=2, ensure_ascii=False)
        fh.write("\n")
    return path


if __name__ == "__main__":  # python -m kaelum.events  regenerates the checked-in schemas
    for _v in PAYLOAD_SPECS_BY_VERSION:
        print(write_json_schema(version=_v))
