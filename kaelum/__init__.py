"""Kaelum: LATS reasoning runtime whose traces fine-tune its own worker models.

Heavy pieces are imported lazily so that `import kaelum` stays cheap for the ingester.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "Orchestrator": "kaelum.orchestrator",
    "Settings": "kaelum.config",
    "TraceLogger": "kaelum.tracelog",
    "Event": "kaelum.events",
}

__all__ = list(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'kaelum' has no attribute {name!r}")
