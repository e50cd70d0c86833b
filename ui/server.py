"""`kaelum ui`'s web app: pages, the JSON API under /api/, feedback, and the guards in front of them.

    from ui.server import UIConfig, create_app, serve
    serve(UIConfig(store="./store", port=8642))

Guards (see docs/ui.md, "Security"), in the order a request meets them:

1. **Host.** Without a token the server only listens on loopback, and a request whose Host header
   is not a loopback name is refused (a DNS-rebinding page cannot reach the API).
2. **Token.** With `token` set, every request carries it (`Authorization: Bearer T` or `?token=T`)
   or gets 401.
3. **CSRF.** A POST needs the server's per-process CSRF token in `X-Kaelum-CSRF`, a JSON body, and,
   when the browser sends an Origin, the server's own origin.

Pages are static HTML and JavaScript (package data) that build the DOM with text nodes only, so
model text always renders as text; a strict Content-Security-Policy forbids inline script besides.
"""

from __future__ import annotations

import contextlib
import getpass
import hmac
import ipaddress
import json
import logging
import os
import secrets
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from . import reader
from .dataset import DatasetQuery, DatasetUnavailable, Renderer, WhereRunner, select
from .reader import BadRequest, NotFound, StoreReader, TooSlow

log = logging.getLogger("kaelum.ui")

STATIC = Path(__file__).parent / "static"
PAGES = {"/": "list.html", "/charts": "charts.html", "/datasets": "datasets.html", "/quarantine": "quarantine.html"}
CSRF_HEADER = "x-kaelum-csrf"
LOOPBACK_NAMES = ("localhost", "localhost.")
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
MAX_BODY = 16 * 1024
MAX_LABEL = 200
MAX_COMMENT = 4000


class UIConfigError(ValueError):
    """A setting `kaelum ui` cannot start with; the message names the flag and the fix."""


def is_loopback_literal(host: str) -> bool:
    """True if `host` is `localhost` or a loopback address as written (no name is looked up)."""
    h = host.strip().strip("[]")
    if h.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def is_loopback(host: str) -> bool:
    """True if `host` (an address or a name to bind) only ever means this machine."""
    if is_loopback_literal(host):
        return True
    h = host.strip().strip("[]")
    try:
        ipaddress.ip_address(h)
        return False
    except ValueError:
        pass
    try:
        addrs = {a[4][0] for a in socket.getaddrinfo(h, None)}
    except OSError:
        return False
    return bool(addrs) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addrs)


def default_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name (containers): a neutral default
        return "kaelum-ui"


@dataclass
class UIConfig:
    """Everything `kaelum ui` needs. `validate()` lists every problem at once."""

    store: str = "./store"  # --store (a path, or a URL the store understands)
    host: str = "127.0.0.1"  # --host
    port: int = 8642  # --port
    token: str | None = None  # --token / KAELUM_UI_TOKEN
    user: str = field(default_factory=lambda: os.environ.get("KAELUM_UI_USER") or default_user())  # --user / KAELUM_UI_USER
    model: str | None = None  # --model: render dataset examples with this tokenizer's chat template
    refresh_s: float = 10.0  # --refresh: reopen a URL store's connection after this many seconds (a local one never)
    poll_s: float = 5.0  # --poll: how often pages look for new traces
    writer_id: str = field(default_factory=lambda: "ui-" + "".join(c if c.isalnum() or c in "-_" else "_" for c in socket.gethostname())[:48])

    def validate(self) -> "UIConfig":
        problems = []
        if self.token is not None and not self.token.strip():
            problems.append("--token (or KAELUM_UI_TOKEN) is empty; give a real secret or leave it out")
        if not self.token and not is_loopback(self.host):
            problems.append(
                f"--host {self.host} is not a loopback address, and without a token anyone who can reach it could read the store "
                "and write feedback: add --token T (or set KAELUM_UI_TOKEN), or bind to 127.0.0.1"
            )
        if not 0 <= self.port <= 65535:
            problems.append(f"--port must be in 0..65535, got {self.port}")
        if not self.user.strip():
            problems.append("--user (or KAELUM_UI_USER) is empty; feedback events need a name in `by`")
        if self.poll_s <= 0:
            problems.append(f"--poll must be positive, got {self.poll_s}")
        if problems:
            raise UIConfigError("cannot start kaelum ui:\n" + "\n".join(f"  - {p}" for p in problems))
        return self


# --- guards -----------------------------------------------------------------------------------


def _error(status: int, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers or None)


class Guard:
    """ASGI middleware: Host check, token check, CSRF check on unsafe methods, security headers."""

    def __init__(self, app: Callable[..., Awaitable[None]], config: UIConfig, csrf: str) -> None:
        self.app, self.config, self.csrf = app, config, csrf

    def _host_ok(self, host: str) -> bool:
        if self.config.token:
            return True  # the token gates every request; the Host check only matters without one
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        # Literal names only: a rebinding attacker's own name resolves to 127.0.0.1 too.
        return is_loopback_literal(name) if name else False

    def _token_ok(self, request: Request) -> bool:
        want = self.config.token
        if not want:
            return True
        auth = request.headers.get("authorization", "")
        got = auth[7:].strip() if auth.lower().startswith("bearer ") else request.query_params.get("token", "")
        return hmac.compare_digest(got.encode(), want.encode())

    def _csrf_problem(self, request: Request) -> str | None:
        if not hmac.compare_digest(request.headers.get(CSRF_HEADER, "").encode(), self.csrf.encode()):
            return f"missing or wrong {CSRF_HEADER} header (the pages send it; scripts read it from GET /api/session)"
        origin = request.headers.get("origin")
        if origin is not None:
            own = f"{request.url.scheme}://{request.headers.get('host', '')}"
            if origin != own:
                return f"cross-origin request refused (Origin {origin!r} is not {own!r})"
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return "send the body as application/json"
        return None

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        response: Response | None = None
        if not self._host_ok(request.headers.get("host", "")):
            response = _error(421, "this server only answers requests addressed to localhost / 127.0.0.1")
        elif not self._token_ok(request):
            response = _error(401, "a token is required: send Authorization: Bearer <token> or add ?token=<token>", **{"WWW-Authenticate": "Bearer"})
        elif request.method not in ("GET", "HEAD", "OPTIONS"):
            problem = self._csrf_problem(request)
            if problem:
                response = _error(403, problem)

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                for k, v in (
                    ("content-security-policy", CSP),
                    ("x-content-type-options", "nosniff"),
                    ("referrer-policy", "no-referrer"),
                    ("x-frame-options", "DENY"),
                    ("cache-control", "no-store"),
                ):
                    headers.append((k.encode(), v.encode()))
                message = {**message, "headers": headers}
            await send(message)

        if response is not None:
            await response(scope, receive, send_with_headers)
        else:
            await self.app(scope, receive, send_with_headers)


# --- the app ----------------------------------------------------------------------------------


class UI:
    """The app's state: the store reader, the dataset renderer, the CSRF token, the feedback writer."""

    def __init__(self, config: UIConfig) -> None:
        self.config = config
        self.reader = StoreReader(config.store, refresh_s=config.refresh_s)
        self.renderer = Renderer(config.model)
        self.wheres = WhereRunner()
        self.csrf = secrets.token_urlsafe(32)
        self._write_lock = threading.Lock()  # one SegmentWriter per writer id at a time

    def page(self, name: str) -> HTMLResponse:
        from html import escape
        from urllib.parse import quote

        html = (STATIC / name).read_text(encoding="utf-8")
        settings = json.dumps(self.session(None))
        # Settings go in a data attribute (escaped as an attribute value), never into a script; with
        # a token, the page's own scripts and styles carry it like every other request.
        token = f"?token={quote(self.config.token, safe='')}" if self.config.token else ""
        return HTMLResponse(html.replace("{{settings}}", escape(settings, quote=True)).replace("{{q}}", escape(token, quote=True)))

    def api(self, fn: Callable[[Request], Any]) -> Callable[[Request], Response]:
        """A sync endpoint (Starlette runs it in a worker thread) with the API's error mapping."""

        def endpoint(request: Request) -> Response:
            try:
                return JSONResponse(fn(request))
            except BadRequest as exc:
                return _error(400, str(exc))
            except NotFound as exc:
                return _error(404, str(exc))
            except (DatasetUnavailable, TooSlow) as exc:
                return _error(503, str(exc))
            except Exception as exc:  # noqa: BLE001 - a store error is reported, the server keeps running
                log.exception("request %s failed", request.url.path)
                return _error(500, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")

        return endpoint

    def _params(self, request: Request) -> dict[str, str]:
        return {k: v for k, v in request.query_params.items() if k != "token"}

    # endpoints (each runs in a worker thread with its own cursor)

    def traces(self, request: Request) -> Any:
        with self.reader.cursor() as cur:
            return reader.list_traces(cur, self._params(request))

    def facets(self, request: Request) -> Any:
        with self.reader.cursor() as cur:
            return reader.facets(cur)

    def trace(self, request: Request) -> Any:
        with self.reader.cursor() as cur:
            return reader.trace_detail(cur, request.path_params["trace_id"])

    def pairs(self, request: Request) -> Any:
        with self.reader.cursor() as cur:
            return {"pairs": reader.trace_pairs(cur, request.path_params["trace_id"])}

    def charts(self, request: Request) -> Any:
        with self.reader.cursor() as cur:
            return reader.charts(cur, self._params(request))

    def quarantine(self, request: Request) -> Any:
        with self.reader.cursor() as cur:
            return reader.quarantine(cur, self._params(request))

    def datasets(self, request: Request) -> Any:
        q = DatasetQuery.parse(self._params(request))
        with self.reader.cursor() as cur:
            return select(cur, q, self.config.store, self.renderer, self.wheres)

    def close(self) -> None:
        """Stop what the app started: the dataset page's `--where` child."""
        self.wheres.close()

    def session(self, request: Request | None) -> Any:
        return {"csrf": self.csrf, "user": self.config.user, "poll_s": self.config.poll_s, "store": self.config.store}

    def feedback(self, request: Request, body: bytes) -> Any:
        """Write one `feedback` event through `store.append_events`; return the trace as the views now show it."""
        import store
        from kaelum.events import Event, EventError

        trace_id = request.path_params["trace_id"]
        if len(body) > MAX_BODY:
            raise BadRequest(f"the body is over {MAX_BODY} bytes")
        try:
            payload = json.loads(body or b"{}")
        except ValueError as exc:
            raise BadRequest(f"the body is not JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise BadRequest("the body must be a JSON object such as {\"reward\": 0.9, \"label\": \"correct\"}")
        unknown = set(payload) - {"reward", "label", "comment", "rating"}
        if unknown:
            raise BadRequest(f"unknown fields {', '.join(sorted(unknown))}; send reward, label, comment or rating")
        data: dict[str, Any] = {"by": self.config.user}
        reward = payload.get("reward")
        if reward is not None:
            if isinstance(reward, bool) or not isinstance(reward, (int, float)) or not 0.0 <= float(reward) <= 1.0:
                raise BadRequest(f"reward must be a number in [0, 1], got {reward!r}")
            data["reward"] = float(reward)
        for name, limit in (("label", MAX_LABEL), ("comment", MAX_COMMENT)):
            v = payload.get(name)
            if v is not None:
                if not isinstance(v, str) or not v.strip() or len(v) > limit:
                    raise BadRequest(f"{name} must be a non-empty string of at most {limit} characters")
                data[name] = v.strip()
        rating = payload.get("rating")
        if rating is not None:
            if isinstance(rating, bool) or not isinstance(rating, (int, float)):
                raise BadRequest(f"rating must be a number, got {rating!r}")
            data["rating"] = rating
        if not any(k in data for k in ("reward", "label", "rating", "comment")):
            raise BadRequest("give a corrected reward, a label, a rating or a comment")
        with self.reader.cursor() as cur:
            seq = reader.trace_exists(cur, trace_id)
        event = Event(type="feedback", trace_id=trace_id, seq=seq, data=data).to_dict()
        with self._write_lock:
            try:
                store.append_events(self.config.store, [event], writer_id=self.config.writer_id)
            except EventError as exc:
                raise BadRequest(f"the feedback breaks the event contract: {exc}") from None
        with self.reader.cursor() as cur:
            detail = reader.trace_detail(cur, trace_id)
        return {"written": event, "trace": detail["trace"], "feedback": detail["feedback"]}


def create_app(config: UIConfig) -> Starlette:
    config.validate()
    ui = UI(config)

    def page(name: str) -> Callable[[Request], Response]:
        def endpoint(request: Request) -> Response:
            return ui.page(name)

        return endpoint

    async def feedback(request: Request) -> Response:
        body = await request.body()
        handler = ui.api(lambda r: ui.feedback(r, body))
        from starlette.concurrency import run_in_threadpool

        return await run_in_threadpool(handler, request)

    routes = [Route(path, page(name)) for path, name in PAGES.items()]
    routes += [
        Route("/traces/{trace_id}", page("trace.html")),
        Route("/api/session", ui.api(ui.session)),
        Route("/api/traces", ui.api(ui.traces)),
        Route("/api/facets", ui.api(ui.facets)),
        Route("/api/traces/{trace_id}", ui.api(ui.trace)),
        Route("/api/traces/{trace_id}/pairs", ui.api(ui.pairs)),
        Route("/api/traces/{trace_id}/feedback", feedback, methods=["POST"]),
        Route("/api/charts", ui.api(ui.charts)),
        Route("/api/quarantine", ui.api(ui.quarantine)),
        Route("/api/datasets", ui.api(ui.datasets)),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        ui.close()

    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.ui = ui
    guarded = Guard(app, config, ui.csrf)
    guarded.ui = ui  # type: ignore[attr-defined]
    return guarded  # type: ignore[return-value]


def serve(config: UIConfig, log_level: str = "warning") -> None:
    """Run the server in the foreground until interrupted."""
    import uvicorn

    app = create_app(config)
    uvicorn.run(app, host=config.host, port=config.port, log_level=log_level)
