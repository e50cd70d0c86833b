"""`kaelum ui`: a local web app over the trace store — trace list, search trees, datasets, charts,
quarantine and feedback — with a JSON API under /api/ (see docs/ui.md).

    from ui import UIConfig, create_app, serve
    serve(UIConfig(store="./store"))          # http://127.0.0.1:8642

Needs the `ui` extra (starlette, uvicorn); the server is imported on first use.
"""

from __future__ import annotations

from typing import Any

__all__ = ["UIConfig", "UIConfigError", "create_app", "serve"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import server

        return getattr(server, name)
    raise AttributeError(f"module 'ui' has no attribute {name!r}")
