"""Orchestrator: route → load the worker → LATS → verify → reward, and write the trace's events.

    from kaelum import Orchestrator
    orchestrator = Orchestrator(enable_logging=True, log_dir="./logs")
    result = orchestrator.run("What is 17 * 23?")

Every event is built with `kaelum.events.TraceEvents` (which validates it) and, with logging on,
written the moment it happens, so a crash loses nothing already produced. Whatever goes wrong
after `trace_started` (the server is down, the model cannot be loaded, a verifier raises) the
trace still ends with `trace_completed` status ``error`` and the reason.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Sequence

from .config import Settings
from .domains.base import Domain, Verdict
from .domains.registry import DOMAIN_SPECS
from .events import Event, TraceEvents
from .lats import LATS, LatsParams, Node, SearchObserver, SearchResult
from .llm.base import LLM
from .queries import load_queries  # noqa: F401 - the one reader of query files lives in kaelum.queries
from .router import Route, Router
from .tracelog import TraceLogger

log = logging.getLogger("kaelum.orchestrator")

# Domains whose steps routinely carry long answers (a code block, a paragraph): an expansion
# must be allowed to finish the answer in the same call.
LONG_ANSWER_DOMAINS = tuple(spec.name for spec in DOMAIN_SPECS if spec.multiline_answers)


@dataclass
class Result:
    """What `Orchestrator.run` returns."""

    trace_id: str
    query: str
    domain: str
    route: Route
    worker_model: str
    status: str  # ok | failed | error | timeout
    answer: str | None
    verified: bool
    reward: float
    reward_components: dict[str, float]
    best_path: list[str]
    usage: dict[str, int]
    duration_ms: float
    error: str | None = None
    tree: Node | None = None  # the search tree (None when the search never started)
    verified_by: str | None = None  # the final verdict's method (kaelum.domains.base.METHODS); None without one
    reflections: list[str] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)


def _json_safe(value: Any) -> Any:
    """Verifier details may hold sympy numbers, tuples, NaN: make them plain, finite JSON."""
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_json_safe(v) for v in value]
    return str(value)


def _unit(x: float) -> float:
    return min(max(float(x), 0.0), 1.0) if math.isfinite(float(x)) else 0.0


class _EventObserver(SearchObserver):
    """Turns what the search reports into contract events, emitted as they happen."""

    def __init__(self, emit: Callable[..., Event]) -> None:
        self.emit = emit

    def node_added(self, node: Node) -> None:
        self.emit(
            "node_expanded",
            node_id=node.id,
            parent_id=node.parent.id if node.parent is not None else None,
            depth=node.depth,
            thought=node.thought,
            terminal=node.terminal,
            answer=node.answer if node.terminal else None,
            llm=node.llm,
        )

    def node_evaluated(self, node: Node, value: float, signals: Mapping[str, Any]) -> None:
        self.emit("node_evaluated", node_id=node.id, value=_unit(value), signals=_json_safe(dict(signals)))

    def verified(self, node: Node, verdict: Verdict) -> None:
        self.emit(
            "verification",
            node_id=node.id,
            answer=node.answer,
            passed=bool(verdict.passed),
            score=_unit(verdict.score),
            verifier=str(verdict.verifier),
            method=verdict.method,
            details=_json_safe(dict(verdict.details)),
        )

    def reflected(self, node: Node, text: str) -> None:
        self.emit("reflection", node_id=node.id, text=text)


class Orchestrator:
    """Runs queries through LATS with the worker model of their domain.

    `llm` serves every domain when given (tests, a model you built yourself); otherwise each
    domain's worker comes from `settings.worker_model(domain)` through `kaelum.llm.load_llm`,
    loaded once and cached. `domain_factory` replaces `kaelum.domains.get_domain` (tests).
    """

    def __init__(
        self,
        settings: Settings | None = None,
        enable_logging: bool = False,
        log_dir: str | os.PathLike[str] | None = None,
        llm: LLM | None = None,
        router: Router | None = None,
        domain_factory: Callable[[str, Mapping[str, Any] | None], Domain] | None = None,
        logger: TraceLogger | None = None,
    ) -> None:
        self.settings = settings if settings is not None else Settings()
        self.enable_logging = enable_logging or logger is not None
        self.log_dir = os.fspath(log_dir) if log_dir is not None else os.fspath(self.settings.LOG_DIR)
        self._llm_override = llm
        self.router = router or Router()
        self._domain_factory = domain_factory
        self._logger = logger
        self._llms: dict[str, LLM] = {}
        self._lock = threading.Lock()

    # --- parts --------------------------------------------------------------------------------

    @property
    def logger(self) -> TraceLogger | None:
        if not self.enable_logging:
            return None
        if self._logger is None:
            self._logger = TraceLogger(self.log_dir)
        return self._logger

    def worker_spec(self, domain: str) -> str:
        if self._llm_override is not None:
            return self._llm_override.model_name
        return self.settings.worker_model(domain)

    def llm_for(self, domain: str) -> LLM:
        """The worker LLM of `domain`, loaded on first use and shared by domains with the same spec."""
        if self._llm_override is not None:
            return self._llm_override
        spec = self.settings.worker_model(domain)
        with self._lock:
            if spec not in self._llms:
                from .llm import load_llm  # imported late: backends pull heavy optional deps

                log.info("loading worker model %r for %s", spec, domain)
                self._llms[spec] = load_llm(
                    spec,
                    base_url=self.settings.OPENAI_BASE_URL,
                    api_key=self.settings.api_key(),
                    timeout_s=self.settings.LLM_TIMEOUT_S,
                    max_retries=self.settings.LLM_MAX_RETRIES,
                    prefix_mode=self.settings.LLM_PREFIX_MODE,
                    tokenizer=self.settings.LLM_TOKENIZER,
                )
            return self._llms[spec]

    def domain(self, name: str) -> Domain:
        options = self.settings.domain_options(name)
        if self._domain_factory is not None:
            return self._domain_factory(name, options)
        from .domains import get_domain

        return get_domain(name, options)

    def params_for(self, domain: str) -> LatsParams:
        params = self.settings.lats_params()
        if domain in LONG_ANSWER_DOMAINS:
            params = replace(
                params,
                multiline_answers=True,
                max_step_tokens=max(params.max_step_tokens, params.max_answer_tokens),
                max_rollout_tokens=max(params.max_rollout_tokens, params.max_answer_tokens * 2),
            )
        return params

    # --- one query ------------------------------------------------------------------------------

    def run(
        self,
        query: str,
        domain: str | None = None,
        tests: Sequence[str] | None = None,
        tags: Sequence[str] = (),
        reference: str | Sequence[Mapping[str, str]] | None = None,
    ) -> Result:
        """Answer `query`; with logging on, write its full event sequence.

        Bad input (an empty query, an unknown `domain`) raises ValueError before any event is
        written; every failure after that ends the trace with status ``error`` instead of raising.
        """
        if not isinstance(query, str) or not query.strip():
            raise ValueError("query must be a non-empty string")
        route = self.router.route(query, domain)
        params = self.params_for(route.domain)
        trace = TraceEvents()
        events: list[Event] = []
        logger = self.logger
        t0 = time.monotonic()

        def emit(type_: str, **data: Any) -> Event:
            event = trace.make(type_, **data)
            events.append(event)
            if logger is not None:
                logger.log(event)
            return event

        worker = self.worker_spec(route.domain)
        llm: LLM | None = None
        load_error: Exception | None = None
        try:
            llm = self.llm_for(route.domain)
            worker = llm.model_name
        except Exception as exc:  # reported in the trace below, after trace_started
            load_error = exc

        emit(
            "trace_started",
            query=query,
            domain=route.domain,
            router=route.as_event(),
            worker_model=worker,
            params=params.event_params(),
            tags=[str(t) for t in tags],
        )
        log.info("trace %s: %s query routed by %s (confidence %.2f)", trace.trace_id, route.domain, route.method, route.confidence)

        search: LATS | None = None
        outcome: SearchResult | None = None
        error: str | None = None
        try:
            if load_error is not None:
                raise load_error
            assert llm is not None
            dom = self.domain(route.domain)
            search = LATS(llm, dom, query, params, observer=_EventObserver(emit), tests=tuple(tests or ()), reference=reference, domain_options=self.settings.domain_options(route.domain))
            outcome = search.run()
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            log.exception("trace %s failed", trace.trace_id)

        duration_ms = (time.monotonic() - t0) * 1000
        usage = search.usage.as_dict() if search is not None else {"llm_calls": 0, "prompt_tokens": 0, "completion_tokens": 0}
        root = search.root if search is not None else None
        node_stats = [{"node_id": n.id, "visits": n.visits, "value": _unit(n.value)} for n in root.walk()] if root is not None else []

        if outcome is None:
            status, answer, verified, reward, components, best_path = "error", None, False, 0.0, {}, []
            verified_by = None
        else:
            status = outcome.status
            error = outcome.error
            best = outcome.best
            answer = outcome.final_answer
            verdict = outcome.verdict
            verified = bool(verdict.passed) if verdict is not None else False
            verified_by = verdict.method if verdict is not None else None
            r = outcome.reward
            reward = _unit(r.value) if r is not None else 0.0
            components = {str(k): _unit(v) for k, v in (r.components.items() if r is not None else ())}
            best_path = [n.id for n in best.path()] if best is not None else []

        # Written even when everything above failed: the trace must always be closed.
        emit(
            "trace_completed",
            status=status,
            final_answer=answer,
            best_path=best_path,
            verified=verified,
            verified_by=verified_by,
            reward=reward,
            reward_components=components,
            node_stats=node_stats,
            usage=usage,
            duration_ms=duration_ms,
            error=error,
        )
        if logger is not None:
            logger.flush()
        return Result(
            trace_id=trace.trace_id,
            query=query,
            domain=route.domain,
            route=route,
            worker_model=worker,
            status=status,
            answer=answer,
            verified=verified,
            reward=reward,
            reward_components=components,
            best_path=best_path,
            usage=usage,
            duration_ms=duration_ms,
            error=error,
            tree=root,
            verified_by=verified_by,
            reflections=list(search.reflections) if search is not None else [],
            events=events,
        )

    def close(self) -> None:
        if self._logger is not None:
            self._logger.close()

    def __enter__(self) -> "Orchestrator":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
