"""Stores for the `kaelum ui` tests, built the real way: TraceLogger JSONL → `ingest.ingest_once`.

`build_store(root)` writes these traces (keys of the returned dict):

  branch   math, verified, reward 0.85: root → n1 (terminal, failed, reflected on) and n2 → n3 (passed,
           best) / n4 (failed); one preference pair at branch node n0 (n3 over n1) and one at n2 (n3 over n4)
  xss      code, unverified: `<script>` and `<img onerror=…>` in the query, thoughts, answers, reflection,
           tags, worker model and verifier name
  big      logic: a 2,000-node tree (fan-out 3, breadth first), best path to the last node
  simple_* a few plain traces over domains, statuses and rewards (one failed search)

plus one line of garbage (with markup in it) that the ingester quarantines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kaelum.events import TraceEvents
from kaelum.tracelog import TraceLogger

XSS_SCRIPT = "<script>window.__xss = (window.__xss || 0) + 1</script>"
XSS_IMG = '<img src=x onerror="window.__xss = (window.__xss || 0) + 1">'
XSS = f"{XSS_SCRIPT} and {XSS_IMG}"

PARAMS = {"simulations": 4, "max_depth": 4, "branching": 2, "exploration": 1.0, "temperature": 0.7, "seed": 7}


def _llm(i: int = 0) -> dict[str, Any]:
    return {"model": "tiny-worker", "prompt_tokens": 100 + i, "completion_tokens": 20 + i, "latency_ms": 12.5 + i}


def start(t: TraceEvents, query: str, domain: str = "math", tags: tuple[str, ...] = ("ui-test",), model: str = "tiny-worker"):
    return t.make("trace_started", query=query, domain=domain, router={"domain": domain, "confidence": 0.9, "method": "keywords"},
                  worker_model=model, params=PARAMS, tags=list(tags))


def node(t: TraceEvents, nid: str, parent: str | None, depth: int, thought: str, terminal: bool = False, answer: str | None = None, i: int = 0):
    return t.make("node_expanded", node_id=nid, parent_id=parent, depth=depth, thought=thought, terminal=terminal, answer=answer,
                  llm=None if parent is None else _llm(i))


def value(t: TraceEvents, nid: str, v: float):
    return t.make("node_evaluated", node_id=nid, value=v, signals={"llm": v})


def verify(t: TraceEvents, nid: str, answer: str, passed: bool, verifier: str = "math.sympy"):
    return t.make("verification", node_id=nid, answer=answer, passed=passed, score=1.0 if passed else 0.0, verifier=verifier, details={})


def done(t: TraceEvents, best_path: list[str], answer: str | None, verified: bool, reward: float, status: str = "ok",
         stats: list[dict[str, Any]] | None = None, calls: int = 3):
    return t.make("trace_completed", status=status, final_answer=answer, best_path=best_path, verified=verified, reward=reward,
                  reward_components={"verifier": reward}, node_stats=stats or [],
                  usage={"llm_calls": calls, "prompt_tokens": 30 * calls, "completion_tokens": 15 * calls},
                  duration_ms=1500.0, error=None if status == "ok" else "no verified answer")


def branch_trace() -> tuple[str, list]:
    t = TraceEvents()
    q = "What is 2*3?"
    evs = [start(t, q, tags=("ui-test", "branchy")), node(t, "n0", None, 0, q),
           node(t, "n1", "n0", 1, "Add 2 and 2.", True, "4", 1), value(t, "n1", 0.2), verify(t, "n1", "4", False),
           t.make("reflection", node_id="n1", text="Adding was the wrong operation; multiply instead."),
           node(t, "n2", "n0", 1, "Multiply 2 by 3.", i=2), value(t, "n2", 0.6),
           node(t, "n3", "n2", 2, "Two times three is six.", True, "6", 3), value(t, "n3", 0.9), verify(t, "n3", "6", True),
           node(t, "n4", "n2", 2, "Two times three is seven.", True, "7", 4), value(t, "n4", 0.1), verify(t, "n4", "7", False),
           done(t, ["n0", "n2", "n3"], "6", True, 0.85,
                stats=[{"node_id": n, "visits": v, "value": 0.5} for n, v in (("n0", 4), ("n1", 1), ("n2", 3), ("n3", 2), ("n4", 1))])]
    return t.trace_id, evs


def xss_trace() -> tuple[str, list]:
    t = TraceEvents()
    q = f"Write code {XSS}"
    evs = [start(t, q, domain="code", tags=("ui-test", XSS_IMG), model=f"model{XSS_IMG}"), node(t, "n0", None, 0, q),
           node(t, "n1", "n0", 1, f"Thought {XSS}", True, f"answer {XSS}", 1), value(t, "n1", 0.4),
           verify(t, "n1", f"answer {XSS}", False, verifier=f"code{XSS_IMG}.tests"),
           t.make("reflection", node_id="n1", text=f"Reflection {XSS}"),
           node(t, "n2", "n0", 1, f"Other {XSS}", True, f"ok {XSS}", 2), value(t, "n2", 0.8),
           verify(t, "n2", f"ok {XSS}", True, verifier=f"code{XSS_IMG}.tests"),
           done(t, ["n0", "n2"], f"ok {XSS}", False, 0.35)]
    return t.trace_id, evs


def big_trace(n_nodes: int = 2000) -> tuple[str, list]:
    t = TraceEvents()
    q = "Is the big tree usable?"
    evs = [start(t, q, domain="logic", tags=("ui-test", "big")), node(t, "n0", None, 0, q)]
    depth = {0: 0}
    for i in range(1, n_nodes):
        parent = (i - 1) // 3
        depth[i] = depth[parent] + 1
        terminal = 3 * i + 1 >= n_nodes  # the leaves
        evs.append(node(t, f"n{i}", f"n{parent}", depth[i], f"Step {i} of the big search", terminal, "yes" if terminal else None, i % 7))
        evs.append(value(t, f"n{i}", (i % 100) / 100))
    path, i = [], n_nodes - 1
    while True:
        path.append(f"n{i}")
        if i == 0:
            break
        i = (i - 1) // 3
    evs.append(verify(t, f"n{n_nodes - 1}", "yes", True, verifier="logic.check"))
    evs.append(done(t, list(reversed(path)), "yes", True, 0.7, calls=n_nodes - 1))
    return t.trace_id, evs


def simple_trace(query: str, domain: str, verified: bool, reward: float, status: str = "ok", tags: tuple[str, ...] = ("ui-test",),
                 model: str = "tiny-worker") -> tuple[str, list]:
    t = TraceEvents()
    if status != "ok":
        return t.trace_id, [start(t, query, domain, tags, model), node(t, "n0", None, 0, query), done(t, [], None, False, 0.0, status=status)]
    evs = [start(t, query, domain, tags, model), node(t, "n0", None, 0, query), node(t, "n1", "n0", 1, "Work it out."), value(t, "n1", 0.7),
           node(t, "n2", "n1", 2, "So the answer is 42.", True, "42", 1), value(t, "n2", 0.9), verify(t, "n2", "42", verified),
           done(t, ["n0", "n1", "n2"], "42", verified, reward)]
    return t.trace_id, evs


def all_traces() -> dict[str, tuple[str, list]]:
    out = {"branch": branch_trace(), "xss": xss_trace(), "big": big_trace()}
    out["simple_math"] = simple_trace("What is 6*7?", "math", True, 0.95, tags=("ui-test", "easy"))
    out["simple_logic"] = simple_trace("Is 42 even?", "logic", True, 0.75, model="other-worker")
    out["simple_factual"] = simple_trace("Capital of France?", "factual", False, 0.2)
    out["failed"] = simple_trace("Prove P=NP", "math", False, 0.0, status="failed")
    return out


GARBAGE = b'{"v": 1, "type": "<script>window.__xss=1</script>", broken\n'


def write_logs(log_dir: Path, traces: dict[str, tuple[str, list]], garbage: bool = True) -> None:
    with TraceLogger(log_dir, fsync="never") as lg:
        for _tid, evs in traces.values():
            lg.log_many(evs)
        if garbage:
            lg.write_line(GARBAGE)


def build_store(root: Path) -> tuple[Path, Path, dict[str, str]]:
    """Write the logs under root/logs and ingest them into root/store; return (store, logs, {key: trace_id})."""
    from ingest import ingest_once

    traces = all_traces()
    logs, store_dir = root / "logs", root / "store"
    write_logs(logs, traces)
    ingest_once(logs, store_dir, writer_id="ui-test-ingest", progress=False)
    return store_dir, logs, {k: v[0] for k, v in traces.items()}


class RunningServer:
    """The real app under uvicorn on 127.0.0.1 and a free port, in a thread of this process."""

    def __init__(self, config) -> None:  # noqa: ANN001 - ui.server.UIConfig
        import socket
        import threading

        import uvicorn

        from ui.server import create_app

        if not config.port:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                config.port = s.getsockname()[1]
        self.config = config
        self.app = create_app(config)
        self.ui = self.app.ui
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=config.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, name="ui-test-server", daemon=True)
        self.url = f"http://127.0.0.1:{config.port}"

    def __enter__(self) -> "RunningServer":
        import time

        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the ui server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
