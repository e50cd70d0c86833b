"""Helpers of the `kaelum improve` tests (a module without tests; imported by module name).

The task is one the tiny Llama can learn in seconds: every query's answer is 7 ("What is 3 + 4?",
"What is 12 - 5?"). `fill_store` ingests verified traces of such queries into a real store;
`make_world` adds the training and held-out query files; `improve_args` is the command line.
"""

from __future__ import annotations

import json

from kaelum.events import TraceEvents
from kaelum.tracelog import TraceLogger

# Small searches: the tiny model's calls are cheap, but every round runs two of them per query.
# Depth 1: the one expansion asks for the answer directly, which is what the traces teach ("Answer: 7").
COLLECT = ["LATS_SIMULATIONS=1", "LATS_BRANCHING=2", "LATS_MAX_DEPTH=1", "LATS_MAX_LLM_CALLS=2", "MAX_TOKENS_PER_STEP=8",
           "MAX_ROLLOUT_TOKENS=8", "MAX_ANSWER_TOKENS=8"]
EVAL = ["LATS_MAX_DEPTH=1", "LATS_MAX_LLM_CALLS=2", "MAX_TOKENS_PER_STEP=8", "MAX_ROLLOUT_TOKENS=8", "MAX_ANSWER_TOKENS=8"]
EVAL_OVERRIDES = {"LATS_MAX_DEPTH": 1, "LATS_MAX_LLM_CALLS": 2, "MAX_TOKENS_PER_STEP": 8, "MAX_ROLLOUT_TOKENS": 8, "MAX_ANSWER_TOKENS": 8}


def write_trace(logger, query, steps, answer, *, verified=True, reward=1.0, tags=()):
    """One complete trace root → steps → terminal answer, as the runtime's events."""
    t = TraceEvents()
    llm = {"model": "tiny", "prompt_tokens": 30, "completion_tokens": 6, "latency_ms": 1.0}
    logger.log(t.make("trace_started", query=query, domain="math", router={"domain": "math", "confidence": 1.0, "method": "explicit"},
                      worker_model="tiny", params={"simulations": 1, "max_depth": 4, "branching": 1, "exploration": 1.0, "temperature": 0.7, "seed": 1},
                      tags=list(tags)))
    logger.log(t.make("node_expanded", node_id="n0", parent_id=None, depth=0, thought=query, terminal=False, answer=None, llm=None))
    parent = "n0"
    for i, s in enumerate(steps, 1):
        logger.log(t.make("node_expanded", node_id=f"n{i}", parent_id=parent, depth=i, thought=s, terminal=False, answer=None, llm=llm))
        logger.log(t.make("node_evaluated", node_id=f"n{i}", value=0.8, signals={}))
        parent = f"n{i}"
    k = len(steps) + 1
    logger.log(t.make("node_expanded", node_id=f"n{k}", parent_id=parent, depth=k, thought=f"Answer: {answer}", terminal=True, answer=answer, llm=llm))
    logger.log(t.make("node_evaluated", node_id=f"n{k}", value=reward, signals={}))
    logger.log(t.make("verification", node_id=f"n{k}", answer=answer, passed=verified, score=1.0 if verified else 0.0, verifier="math.sympy", details={}))
    logger.log(t.make("trace_completed", status="ok", final_answer=answer, best_path=[f"n{i}" for i in range(k + 1)], verified=verified,
                      reward=reward, reward_components={"verifier": 1.0 if verified else 0.0},
                      node_stats=[{"node_id": f"n{i}", "visits": 1, "value": 0.8} for i in range(k + 1)],
                      usage={"llm_calls": k, "prompt_tokens": 30 * k, "completion_tokens": 6 * k}, duration_ms=3.0, error=None))
    return t.trace_id


SEVEN_STORE = [f"What is {a} + {7 - a}?" for a in range(8)] + [f"What is {a} - {a - 7}?" for a in range(20, 28)]
SEVEN_TRAIN = [f"Compute {a} + {7 - a}." for a in range(1, 7)]
SEVEN_HELD = [f"What is {a} - {a - 7}?" for a in range(8, 20)]


def fill_store(root, queries=SEVEN_STORE, extra=()):
    """Ingest verified 'answer 7' traces (and `extra` (query, tags) traces) into root/store; return their ids."""
    from ingest import ingest_once

    ids = []
    with TraceLogger(root / "seed-logs", fsync="never") as lg:
        for q in queries:
            ids.append(write_trace(lg, q, [], "7"))
        for q, tags in extra:
            ids.append(write_trace(lg, q, [], "7", tags=tags))
    ingest_once(str(root / "seed-logs"), str(root / "store"), progress=False)
    return ids


def write_queries(path, queries):
    with open(path, "w", encoding="utf-8") as fh:
        for q in queries:
            fh.write(json.dumps({"query": q, "domain": "math"}) + "\n")
    return str(path)


def improve_args(root, model, *extra, queries=True, rounds=2):
    args = ["--domain", "math", "--held-out", str(root / "held.jsonl"), "--rounds", str(rounds), "--workdir", str(root / "W"),
            "--model", model, "--store", str(root / "store"), "--epochs", "10", "--lr", "1e-2", "--batch-size", "4",
            "--max-seq-len", "128", "--no-progress"]
    if queries:
        args += ["--queries", str(root / "train.jsonl")]
    for s in COLLECT:
        args += ["--collect-setting", s]
    for s in EVAL:
        args += ["--eval-setting", s]
    return args + list(extra)


def make_world(root):
    root.mkdir(parents=True, exist_ok=True)
    seeded = fill_store(root)
    write_queries(root / "train.jsonl", SEVEN_TRAIN)
    write_queries(root / "held.jsonl", SEVEN_HELD)
    return seeded
