"""Fixtures shared by the runtime's tests (search, orchestrator, CLIs): reading and checking the traces they write.

Test doubles (the scripted LLM, the arithmetic domain) live in ``test_lats_support.py``, a module
without tests, and are imported by module name (``from test_lats_support import ScriptedLLM``):
pytest puts ``tests/`` on ``sys.path`` because this conftest lives there. No test module imports
helpers from another test module.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import jsonschema
import pytest

from kaelum.events import SCHEMA_PATH, validate_event

_SCHEMA = json.loads(Path(SCHEMA_PATH).read_text(encoding="utf-8"))


def _read_events(log_dir: Path) -> list[dict]:
    """Every event the run wrote, in order. One process writes one log file."""
    files = sorted(Path(log_dir).glob("*.jsonl"))
    assert len(files) == 1
    return [json.loads(line) for line in files[0].read_text().splitlines()]


def _check_trace_shape(events: list[dict], query: str) -> None:
    """The rules of docs/architecture.md that the store's views and the trainer rely on."""
    for e in events:
        validate_event(e)
        jsonschema.validate(e, _SCHEMA)
    assert [e["seq"] for e in events] == list(range(len(events)))
    assert len({e["trace_id"] for e in events}) == 1
    assert events[0]["type"] == "trace_started" and events[-1]["type"] == "trace_completed"
    assert [e["type"] for e in events].count("trace_completed") == 1
    nodes = {}
    for e in events:
        if e["type"] == "node_expanded":
            d = e["data"]
            assert d["node_id"] not in nodes
            if not nodes:
                assert (d["depth"], d["parent_id"], d["thought"], d["terminal"], d["answer"], d["llm"]) == (0, None, query, False, None, None)
            else:
                parent = nodes[d["parent_id"]]  # parents come before children
                assert d["depth"] == parent["depth"] + 1
                assert d["thought"].strip() and d["llm"]["model"]
                assert (d["answer"] is not None) <= d["terminal"]
            nodes[d["node_id"]] = d
        elif e["type"] in ("node_evaluated", "verification", "reflection"):
            assert e["data"]["node_id"] in nodes
    done = events[-1]["data"]
    assert {s["node_id"] for s in done["node_stats"]} == set(nodes)
    if done["status"] == "ok":
        path = done["best_path"]
        assert path[0] == events[1]["data"]["node_id"]
        for parent, child in zip(path, path[1:]):
            assert nodes[child]["parent_id"] == parent
        last = nodes[path[-1]]
        assert last["terminal"] and last["answer"] == done["final_answer"]


@pytest.fixture
def read_events() -> Callable[[Path], list[dict]]:
    """read_events(log_dir): the events of the run's one log file, as dicts, in order."""
    return _read_events


@pytest.fixture
def check_trace_shape() -> Callable[[list[dict], str], None]:
    """check_trace_shape(events, query): fails unless one trace's events have the shape the views rely on."""
    return _check_trace_shape
