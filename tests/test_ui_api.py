"""`kaelum ui`'s JSON API against the real server on loopback, over a store ingested from real JSONL."""

from __future__ import annotations

import json
import time

import httpx
import pytest

import store
from ui_stores import XSS, RunningServer, build_store, simple_trace, write_logs

from ui.reader import TraceFilter
from ui.server import UIConfig


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("ui-api")
    store_dir, logs, ids = build_store(root)
    config = UIConfig(store=str(store_dir), port=0, user="alice", poll_s=0.5)
    with RunningServer(config) as srv, httpx.Client(base_url=srv.url, timeout=30) as http:
        yield http, ids, store_dir, srv


def _traces(http, **params):
    r = http.get("/api/traces", params=params)
    assert r.status_code == 200, r.text
    return r.json()


def test_list_counts_sort_and_paging(env):
    http, ids, _, _ = env
    d = _traces(http)
    assert d["total"] == d["matched"] == len(ids)
    assert {t["trace_id"] for t in d["traces"]} == set(ids.values())
    started = [t["started_at"] for t in d["traces"]]
    assert started == sorted(started, reverse=True)
    d = _traces(http, sort="reward", order="asc", limit=3)
    assert [t["reward"] for t in d["traces"]] == [0.0, 0.2, 0.35]
    page2 = _traces(http, sort="reward", order="asc", limit=3, offset=3)
    assert page2["matched"] == len(ids) and [t["reward"] for t in page2["traces"]] == [0.7, 0.75, 0.85]


@pytest.mark.parametrize(
    "params, keys",
    [
        ({"domain": "math"}, {"branch", "simple_math", "failed"}),
        ({"status": "failed"}, {"failed"}),
        ({"verified": "true"}, {"branch", "big", "simple_math", "simple_logic"}),
        ({"verified": "false"}, {"xss", "simple_factual", "failed"}),
        ({"reward_min": "0.7", "reward_max": "0.85"}, {"branch", "big", "simple_logic"}),
        ({"tag": "branchy"}, {"branch"}),
        ({"worker_model": "other-worker"}, {"simple_logic"}),
        ({"q": "capital of"}, {"simple_factual"}),  # in the query, any case
        ({"q": "42"}, {"simple_math", "simple_logic", "simple_factual"}),  # in the answer (and a query)
        ({"domain": "math", "verified": "true", "reward_min": "0.9"}, {"simple_math"}),
        ({"since": "2000-01-01T00:00:00Z", "until": "2000-01-02"}, set()),
    ],
)
def test_filters(env, params, keys):
    http, ids, _, _ = env
    d = _traces(http, **params)
    assert {t["trace_id"] for t in d["traces"]} == {ids[k] for k in keys}
    assert d["matched"] == len(keys) and d["total"] == len(ids)


def test_time_range_keeps_everything_started_in_it(env):
    http, ids, _, _ = env
    all_ = _traces(http)["traces"]
    first = min(t["started_at"] for t in all_)
    d = _traces(http, since=first, until="2999-01-01")
    assert d["matched"] == len(ids)
    assert _traces(http, since=first.replace("+00:00", "Z"))["matched"] == len(ids)


@pytest.mark.parametrize(
    "params, message",
    [
        ({"domain": "mathematics"}, "domain must be one of math, code"),
        ({"reward_min": "high"}, "reward_min must be a number"),
        ({"reward_min": "0.9", "reward_max": "0.1"}, "reward_min (0.9) is above reward_max (0.1)"),
        ({"reward_max": "2"}, "reward_max must be between 0.0 and 1.0"),
        ({"sort": "query; drop table x"}, "sort must be one of started_at"),
        ({"order": "sideways"}, "order must be asc or desc"),
        ({"limit": "100000"}, "limit must be between 1 and 500"),
        ({"since": "yesterday"}, "since must be an ISO 8601 time"),
        ({"verified": "maybe"}, "verified must be true or false"),
    ],
)
def test_bad_parameters_are_named(env, params, message):
    http = env[0]
    r = http.get("/api/traces", params=params)
    assert r.status_code == 400 and message in r.json()["error"]


def test_verified_by_filter_only_where_the_view_has_the_column():
    assert "verified_by" not in TraceFilter.parse({"verified_by": "tests"}, {"trace_id"}).applied
    f = TraceFilter.parse({"verified_by": "tests"}, {"trace_id", "verified_by"})
    assert f.applied == {"verified_by": "tests"} and f.where == "verified_by = ?" and f.params == ["tests"]


def test_facets(env):
    http = env[0]
    f = http.get("/api/facets").json()
    assert {x["value"]: x["count"] for x in f["domain"]} == {"math": 3, "logic": 2, "code": 1, "factual": 1}
    assert {x["value"] for x in f["tag"]} >= {"ui-test", "branchy", "big", "easy"}
    # The store has verdict methods (schema version 2, or v1 verifier names upcast): a drop-down for them.
    assert f["has_verified_by"] is True and "computed" in {x["value"] for x in f["verified_by"]}


def test_trace_tree_visits_verdicts_reflections_timeline(env):
    http, ids, _, _ = env
    d = http.get(f"/api/traces/{ids['branch']}").json()
    t = d["trace"]
    assert t["best_path"] == ["n0", "n2", "n3"] and t["reward"] == 0.85 and t["verified"] is True
    nodes = {n["node_id"]: n for n in d["nodes"]}
    assert set(nodes) == {"n0", "n1", "n2", "n3", "n4"}
    assert nodes["n3"]["parent_id"] == "n2" and nodes["n3"]["passed"] is True and nodes["n3"]["answer"] == "6"
    assert nodes["n1"]["passed"] is False and nodes["n1"]["verifier"] == "math.sympy"
    assert {k: n["visits"] for k, n in nodes.items()} == {"n0": 4, "n1": 1, "n2": 3, "n3": 2, "n4": 1}
    assert nodes["n2"]["value"] == 0.6 and nodes["n0"]["value"] is None
    assert nodes["n1"]["reflections"] == ["Adding was the wrong operation; multiply instead."]
    types = [e["type"] for e in d["timeline"]]
    assert types[0] == "trace_started" and types[-1] == "trace_completed" and types.count("node_expanded") == 5
    llm = [e for e in d["timeline"] if e["type"] == "node_expanded" and e.get("llm_model")]
    assert len(llm) == 4 and {e["prompt_tokens"] for e in llm} == {101, 102, 103, 104}
    assert d["llm_totals"] == {"calls": 4, "prompt_tokens": 410, "completion_tokens": 90, "latency_ms": 60.0}


def test_pairs_are_the_preference_pairs_of_the_trace(env):
    http, ids, store_dir, _ = env
    got = http.get(f"/api/traces/{ids['branch']}/pairs").json()["pairs"]
    assert [(p["branch_node_id"], p["chosen_node_id"], p["rejected_node_id"]) for p in got] == [("n0", "n3", "n1"), ("n2", "n3", "n4")]
    con = store.connect(store_dir)
    assert len(got) == con.execute("select count(*) from preference_pairs where trace_id = ?", [ids["branch"]]).fetchone()[0]


def test_big_tree_comes_whole(env):
    http, ids, _, _ = env
    d = http.get(f"/api/traces/{ids['big']}").json()
    assert len(d["nodes"]) == 2000 and d["trace"]["best_path"] == ["n0", "n2", "n7", "n24", "n73", "n221", "n666", "n1999"]
    assert sum(1 for n in d["nodes"] if n["parent_id"] == "n0") == 3


def test_unknown_trace_is_404(env):
    http = env[0]
    r = http.get("/api/traces/no-such-trace")
    assert r.status_code == 404 and "no trace 'no-such-trace'" in r.json()["error"]


def test_model_text_comes_back_verbatim_as_json_strings(env):
    """The API returns text as data (JSON strings); the pages insert it as text nodes (see the browser test)."""
    http, ids, _, _ = env
    r = http.get(f"/api/traces/{ids['xss']}")
    assert r.headers["content-type"].startswith("application/json")
    d = r.json()
    assert XSS in d["trace"]["query"] and XSS in d["trace"]["final_answer"]
    assert any(XSS in n["thought"] for n in d["nodes"]) and any(XSS in r for n in d["nodes"] for r in n["reflections"])


def test_charts(env):
    http, ids, _, _ = env
    d = http.get("/api/charts").json()
    assert d["bucket"] == "hour"
    assert sum(b["count"] for b in d["histogram"]) == len(ids)
    assert sum(s["traces"] for s in d["series"]) == len(ids)
    math = [s for s in d["series"] if s["domain"] == "math"]
    assert sum(s["traces"] for s in math) == 3
    assert d["histogram"][19]["count"] == 1  # reward 0.95 lands in the last bin
    only = http.get("/api/charts", params={"domain": "logic", "bucket": "day"}).json()
    assert only["bucket"] == "day" and {s["domain"] for s in only["series"]} == {"logic"}
    assert http.get("/api/charts", params={"bucket": "fortnight"}).status_code == 400


def test_quarantine(env):
    http = env[0]
    d = http.get("/api/quarantine").json()
    assert d["total"] == 1
    line = d["lines"][0]
    assert line["raw_text"].startswith('{"v": 1, "type": "<script>') and "invalid JSON" in line["reason"]
    assert line["source_path"].endswith(".jsonl") and line["offset"] > 0
    assert http.get("/api/quarantine", params={"reason": "no such reason"}).json()["matched"] == 0


def test_dataset_selection_is_the_trainers(env):
    from train.data import select_examples

    http, ids, store_dir, _ = env
    d = http.get("/api/datasets", params={"domain": "math", "min_reward": "0.9"}).json()
    sel = select_examples(str(store_dir), domain="math", min_reward=0.9)
    assert [(s["filter"], s["count"]) for s in d["stages"]] == sel.stages
    assert d["selected"] == len(sel.examples) == 1 and d["per_domain"] == {"math": 1}
    assert d["warnings"] == ["only 1 training examples for domain math; the guide recommends 100+ high-quality traces per domain"]
    ex = d["examples"][0]
    assert ex["trace_id"] == ids["simple_math"] == sel.examples[0].trace_id
    assert ex["completion"] == sel.examples[0].completion() and ex["messages"] == sel.examples[0].messages()
    assert d["command"] == f"kaelum-train --model MODEL --store {store_dir} --domain math --min-reward 0.9 --dry-run"


def test_dataset_where_uses_the_trainers_guard(env):
    http = env[0]
    r = http.get("/api/datasets", params={"where": "reward > (select 0)"})
    assert r.status_code == 400 and r.json()["error"] == "--where may not contain subqueries; use columns of training_examples, constants and scalar functions"
    r = http.get("/api/datasets", params={"where": "read_text('/etc/passwd') <> ''"})
    assert r.status_code == 400 and "may not call read_text()" in r.json()["error"]
    d = http.get("/api/datasets", params={"where": "n_steps >= 2 and reward > 0.8", "min_reward": ""}).json()
    # 3, not 4: the big logic trace's verifier "logic.check" names no method, so it is no checked example.
    assert [s["count"] for s in d["stages"]] == [3, 2] and "--where 'n_steps >= 2 and reward > 0.8'" in d["command"]


def test_dataset_where_runs_in_one_kept_child_stopped_with_the_server(tmp_path_factory):
    """The page's predicates run in one child for the server's life (train.where.WhereWorker), with
    the same answers as the trainer's one-shot child; stopping the server stops it."""
    from train.data import select_examples

    store_dir, _, _ = build_store(tmp_path_factory.mktemp("ui-where"))
    want = len(select_examples(str(store_dir), min_reward=None, where="n_steps >= 2 and reward > 0.8").examples)
    with RunningServer(UIConfig(store=str(store_dir), port=0)) as srv, httpx.Client(base_url=srv.url, timeout=30) as http:
        pids = []
        for pred in ("n_steps >= 2 and reward > 0.8", "reward > 0.8 and n_steps >= 2"):
            d = http.get("/api/datasets", params={"where": pred, "min_reward": ""}).json()
            assert d["selected"] == want > 0
            pids.append(srv.ui.wheres.get()._proc.pid)
        assert pids[0] == pids[1]
        child = srv.ui.wheres.get()._proc
        assert child.poll() is None
    deadline = time.monotonic() + 10
    while child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert child.poll() is not None


def test_dataset_empty_selection_names_the_filter(env):
    http = env[0]
    d = http.get("/api/datasets", params={"domain": "creative"}).json()
    assert d["selected"] == 0 and d["problem"].startswith("no examples left: --domain creative removed them all")


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"domain": "math", "min_reward": 0.9},
        {"where": "reward < 0.95"},
        {"min_reward": None, "where": "n_steps >= 2 and Reward > 0.8"},
        {"min_reward": None, "where": "verified_by = 'consistency' or reward > 0.5"},  # reads training_examples_all
        {"min_reward": None, "where": "len(list_filter(steps, lambda s: contains(s, 'six'))) = 0"},  # a lambda's parameter
        {"min_reward": None, "where": "query ilike '%what%'"},
        {"include_unchecked": True, "min_reward": None},
        {"method": "dpo"},
        {"method": "dpo", "domain": "math", "where": "branch_node_id <> ''"},
    ],
)
def test_count_selection_is_the_trainers_selection_counted(env, kw):
    """`train.data.count_selection` (the dataset page's read) = `select_examples`: stages, examples per
    domain, view, and its first examples, without reading every example."""
    from train.data import count_selection, select_examples

    _, _, store_dir, _ = env
    sel = select_examples(str(store_dir), **kw)
    con = store.connect(store_dir)
    try:
        counts = count_selection(con, limit=2, **kw)
    finally:
        con.close()
    assert counts.stages == sel.stages and counts.per_domain == sel.per_domain() and counts.view == sel.view
    assert counts.selected == len(sel.examples) > 0
    assert counts.examples == sel.examples[:2]


def test_dataset_dpo(env):
    http, ids, _, _ = env
    d = http.get("/api/datasets", params={"method": "dpo", "examples": "5"}).json()
    # The XSS trace's verifier ("code<img ...>.tests") is a checked method: its pair is selected too.
    assert d["view"] == "preference_pairs" and d["selected"] == 3
    ex = [e for e in d["examples"] if e["trace_id"] == ids["branch"] and e["branch_node_id"] == "n2"][0]
    assert ex["prefix"] == "Step 1: Multiply 2 by 3.\n"
    assert ex["chosen"].startswith("Step 2: Two times three is six.") and ex["rejected"].startswith("Step 2: Two times three is seven.")
    assert "--method dpo" in d["command"] and "--min-reward" not in d["command"]


def test_dataset_rendered_with_the_trainers_chat_template(tmp_path_factory, env):
    from tiny_model import make_tiny_llama
    from train.data import select_examples
    from train.dataset import as_rows, render_sft
    from train.trainer import load_tokenizer

    _, ids, store_dir, _ = env
    model = str(make_tiny_llama(tmp_path_factory.mktemp("tiny") / "model"))
    with RunningServer(UIConfig(store=str(store_dir), port=0, model=model)) as srv, httpx.Client(base_url=srv.url, timeout=60) as http:
        d = http.get("/api/datasets", params={"min_reward": "0.9"}).json()
    want = render_sft(load_tokenizer(model))(as_rows(select_examples(str(store_dir), min_reward=0.9).examples))
    assert d["rendered_with"] == model and f"--model {model}" in d["command"]
    assert [e["rendered"] for e in d["examples"]] == [{"prompt_text": w["prompt_text"], "completion_text": w["completion_text"]} for w in want]
    assert d["examples"][0]["rendered"]["prompt_text"].endswith("<|im_start|>assistant\n")


def _csrf(http):
    return http.get("/api/session").json()["csrf"]


def test_feedback_is_an_event_and_changes_the_effective_reward(env):
    http, ids, store_dir, srv = env
    tid = ids["simple_factual"]
    before = http.get(f"/api/traces/{tid}").json()["trace"]
    assert before["reward"] == 0.2 and before["feedback_count"] == 0
    r = http.post(f"/api/traces/{tid}/feedback", json={"reward": 0.9, "label": "correct", "comment": "Paris is right"},
                  headers={"X-Kaelum-CSRF": _csrf(http)})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["written"]["type"] == "feedback" and body["written"]["data"] == {"by": "alice", "reward": 0.9, "label": "correct", "comment": "Paris is right"}
    assert body["trace"]["reward"] == 0.9 and body["trace"]["completed_reward"] == 0.2 and body["trace"]["feedback_label"] == "correct"
    # The store holds it as an event written under the UI's writer id, seen by every reader.
    con = store.connect(store_dir)
    row = con.execute("select writer, data->>'$.by', seq from events where trace_id = ? and type = 'feedback'", [tid]).fetchall()
    assert row == [(srv.config.writer_id, "alice", 8)]
    assert con.execute("select reward from traces where trace_id = ?", [tid]).fetchone()[0] == 0.9
    assert _traces(http, reward_min="0.9", domain="factual")["matched"] == 1
    assert http.get(f"/api/traces/{tid}").json()["feedback"][0]["comment"] == "Paris is right"


@pytest.mark.parametrize(
    "csrf, headers, body, status, message",
    [
        (False, {}, {"reward": 0.5}, 403, "missing or wrong x-kaelum-csrf header"),
        (False, {"X-Kaelum-CSRF": "guess"}, {"reward": 0.5}, 403, "missing or wrong x-kaelum-csrf header"),
        (True, {"Origin": "http://evil.example"}, {"reward": 0.5}, 403, "cross-origin request refused"),
        (True, {}, {"reward": 1.5}, 400, "reward must be a number in [0, 1]"),
        (True, {}, {"reward": True}, 400, "reward must be a number in [0, 1]"),
        (True, {}, {}, 400, "give a corrected reward, a label"),
        (True, {}, {"label": ""}, 400, "label must be a non-empty string"),
        (True, {}, {"reward": 0.5, "by": "mallory"}, 400, "unknown fields by"),
    ],
)
def test_bad_feedback_is_refused_and_writes_nothing(env, csrf, headers, body, status, message):
    http, ids, store_dir, _ = env
    tid = ids["branch"]
    h = {**({"X-Kaelum-CSRF": _csrf(http)} if csrf else {}), **headers}
    r = http.post(f"/api/traces/{tid}/feedback", json=body, headers=h)
    assert r.status_code == status and message in r.json()["error"]
    con = store.connect(store_dir)
    assert con.execute("select count(*) from events where trace_id = ? and type = 'feedback'", [tid]).fetchone()[0] == 0


def test_feedback_as_a_form_post_is_refused(env):
    http, ids, _, _ = env
    r = http.post(f"/api/traces/{ids['branch']}/feedback", content=b"reward=0.1", headers={"X-Kaelum-CSRF": _csrf(http), "Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 403 and "application/json" in r.json()["error"]


def test_feedback_on_unknown_trace_is_404(env):
    http = env[0]
    r = http.post("/api/traces/nope/feedback", json={"reward": 0.5}, headers={"X-Kaelum-CSRF": _csrf(http)})
    assert r.status_code == 404


def test_new_traces_appear_while_ingesting(env, tmp_path):
    """Live updates: a trace ingested after the server started is listed by the next request."""
    from ingest import ingest_once

    http, ids, store_dir, _ = env
    before = _traces(http)["total"]
    tid, evs = simple_trace("A brand new question?", "analysis", True, 0.8)
    logs = tmp_path / "more-logs"
    write_logs(logs, {"new": (tid, evs)}, garbage=False)
    ingest_once(logs, store_dir, writer_id="ui-test-ingest-2", progress=False)
    d = _traces(http, domain="analysis")
    assert _traces(http)["total"] == before + 1 and [t["trace_id"] for t in d["traces"]] == [tid]


def test_session_and_pages(env):
    http = env[0]
    s = http.get("/api/session").json()
    assert s["user"] == "alice" and len(s["csrf"]) >= 32
    for path in ("/", "/charts", "/datasets", "/quarantine", "/traces/anything"):
        r = http.get(path)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert "script-src 'self'" in r.headers["content-security-policy"]
        settings = json.loads(__import__("html").unescape(r.text.split('data-settings="')[1].split('"')[0]))
        assert settings["csrf"] == s["csrf"]
    assert http.get("/static/app.js").status_code == 200


def test_a_slow_query_is_interrupted_with_a_clear_error():
    import duckdb

    from ui.reader import TooSlow, time_limit

    cur = duckdb.connect(":memory:")
    with pytest.raises(TooSlow, match="counting forever took over 0.2 s on this store and was stopped"):
        with time_limit(cur, 0.2, "counting forever"):
            cur.execute("select count(*) from range(1000000000000) a, range(1000) b").fetchall()
    assert cur.execute("select 42").fetchone() == (42,)  # the cursor is usable afterwards


def test_the_server_starts_without_torch_or_the_trainer():
    import subprocess
    import sys

    code = "import sys, ui.server, ui.cli; bad = sorted(m for m in ('torch', 'transformers', 'train') if m in sys.modules); print(bad)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_datasets_without_torch(env, monkeypatch):
    """Without torch the selection still works; rendering with --model says what to install."""
    import sys

    from train.data import select_examples

    http, _, store_dir, _ = env
    want = len(select_examples(str(store_dir)).examples)
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    for name in ("train.dataset", "train.trainer"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    assert http.get("/api/datasets").json()["selected"] == want > 0
    with RunningServer(UIConfig(store=str(store_dir), port=0, model="HuggingFaceTB/SmolLM2-135M-Instruct")) as srv:
        r = httpx.get(srv.url + "/api/datasets", timeout=60)
    assert r.status_code == 503
    assert "rendering with --model HuggingFaceTB/SmolLM2-135M-Instruct needs the train extra" in r.json()["error"]
    assert "pip install 'kaelum[train]'" in r.json()["error"]
