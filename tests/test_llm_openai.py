"""The OpenAI-compatible backend against a real HTTP server on loopback.

The server is a small threaded `http.server` implementing POST /v1/chat/completions, POST
/v1/completions and GET /v1/models; each test scripts how it misbehaves (fail the first k
requests, delay, ignore or reject `n`, reject vLLM's continue_final_message, accept it and open a
new turn anyway, omit usage) and the requests it received are inspected afterwards.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from kaelum.llm import LLMError, SamplingParams, load_llm
from kaelum.llm.openai_compat import CONTINUE_INSTRUCTION, PROBE_PREFIX, OpenAICompatLLM, chat_completions_url

MESSAGES = [{"role": "system", "content": "Solve."}, {"role": "user", "content": "What is 2+3?"}]


@dataclass
class Script:
    fail_first: int = 0
    fail_status: int = 503
    retry_after: str | None = None
    delay_first: int = 0  # delay this many first requests by delay_s
    delay_s: float = 0.0
    ignore_n: bool = False
    reject_n: bool = False
    reject_continue: bool = False
    omit_usage: bool = False
    continues: bool = True  # with continue_final_message: continue the message, or open a new turn
    models: tuple[str, ...] = ("served-model",)  # what GET /v1/models lists
    status: int = 200
    reply: str | None = None  # fixed reply text; default depends on the request
    requests: list[dict] = field(default_factory=list)
    headers: list[dict] = field(default_factory=list)
    times: list[float] = field(default_factory=list)


def _reply_text(body: dict, index: int, script: Script) -> str:
    if "prompt" in body:  # /v1/completions: the raw prompt ends where the model goes on
        return " 5, 6, 7" if body["prompt"].endswith(PROBE_PREFIX) else f" 2 + 3 = 5 (choice {index})\nAnswer: 5"
    msgs = body["messages"]
    if body.get("continue_final_message"):
        probe = msgs[-1]["content"] == PROBE_PREFIX
        if not script.continues:  # a new assistant turn, as llama-cpp-python's server did
            return "1, 2, 3, 4, 5, 6" if probe else f"Step 1: 2 + 3 is a sum. (choice {index})\nStep 2: so 5\nAnswer: 5"
        return " 5, 6, 7, 8" if probe else f"Step 2: 2 + 3 = 5 (choice {index})\nAnswer: 5"
    return f"Step 1: add (choice {index}, seed {body.get('seed')})\nAnswer: 5"


def _make_handler(script: Script):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep pytest output clean
            pass

        def _send(self, status: int, payload: dict, headers: dict | None = None):
            raw = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(raw)

        def do_GET(self):
            if self.path != "/v1/models":
                return self._send(404, {"error": f"no route {self.path}"})
            self._send(200, {"object": "list", "data": [{"id": m, "object": "model"} for m in script.models]})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            index = len(script.requests)
            script.requests.append(body)
            script.headers.append(dict(self.headers))
            script.times.append(time.monotonic())
            if self.path not in ("/v1/chat/completions", "/v1/completions"):
                return self._send(404, {"error": f"no route {self.path}"})
            if index < script.delay_first:
                time.sleep(script.delay_s)
            if index < script.fail_first:
                extra = {"Retry-After": script.retry_after} if script.retry_after else None
                return self._send(script.fail_status, {"error": "overloaded"}, extra)
            if script.status != 200:
                return self._send(script.status, {"error": {"message": "invalid api key"}})
            if script.reject_continue and "continue_final_message" in body:
                return self._send(400, {"error": {"message": "Unrecognized request argument: continue_final_message"}})
            n = int(body.get("n", 1))
            if script.reject_n and n > 1:
                return self._send(400, {"error": {"message": "n > 1 is not supported"}})
            if script.ignore_n:
                n = 1
            texts = [script.reply if script.reply is not None else _reply_text(body, i, script) for i in range(n)]
            raw = self.path == "/v1/completions"
            payload = {
                "id": f"cmpl-{index}",
                "object": "text_completion" if raw else "chat.completion",
                "model": body["model"],
                "choices": [
                    {"index": i, "text": t, "finish_reason": "stop"} if raw
                    else {"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": "stop"}
                    for i, t in enumerate(texts)
                ],
            }
            if not script.omit_usage:
                payload["usage"] = {"prompt_tokens": 17, "completion_tokens": 7 * n, "total_tokens": 17 + 7 * n}
            self._send(200, payload)

    return Handler


@pytest.fixture
def server():
    """Yields (base_url, script); the script may be changed before the first request."""
    script = Script()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(script))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1", script
    httpd.shutdown()
    httpd.server_close()


def _llm(base_url: str, **kw) -> OpenAICompatLLM:
    kw.setdefault("backoff_s", 0.01)
    kw.setdefault("timeout_s", 5)
    return OpenAICompatLLM("test-model", base_url, **kw)


def test_url_normalisation():
    assert chat_completions_url("http://h:8000") == "http://h:8000/v1/chat/completions"
    assert chat_completions_url("http://h:8000/v1/") == "http://h:8000/v1/chat/completions"
    assert chat_completions_url("https://api.example.com/openai/v2") == "https://api.example.com/openai/v2/chat/completions"
    with pytest.raises(LLMError, match="must look like http://host:port/v1"):
        chat_completions_url("localhost:8000")


def test_n_choices_in_one_request_with_usage_split(server):
    url, script = server
    out = _llm(url).generate(MESSAGES, n=3, params=SamplingParams(max_tokens=50, temperature=0.8, seed=7))
    assert len(script.requests) == 1
    body = script.requests[0]
    assert body["n"] == 3 and body["model"] == "test-model" and body["seed"] == 7
    assert body["max_tokens"] == 50 and body["temperature"] == 0.8 and body["messages"] == MESSAGES
    assert [c.text for c in out] == [_reply_text(body, i, script) for i in range(3)]
    assert sum(c.completion_tokens for c in out) == 21 and all(c.prompt_tokens == 17 for c in out)
    assert all(c.latency_ms > 0 and c.finish_reason == "stop" for c in out)


def test_server_ignoring_n_gets_separate_requests_with_distinct_seeds(server):
    url, script = server
    script.ignore_n = True
    llm = _llm(url)
    out = llm.generate(MESSAGES, n=3, params=SamplingParams(seed=10))
    assert len(out) == 3 and len(script.requests) == 3
    assert len({c.text for c in out}) == 3  # each follow-up had its own seed
    assert sorted(r.get("seed") for r in script.requests) == [10, 11, 12]
    assert llm.supports_n is False
    llm.generate(MESSAGES, n=2)
    assert all("n" not in r for r in script.requests[3:]) and len(script.requests) == 5


def test_server_rejecting_n_falls_back(server):
    url, script = server
    script.reject_n = True
    llm = _llm(url)
    out = llm.generate(MESSAGES, n=2)
    assert len(out) == 2 and llm.supports_n is False
    assert script.requests[0]["n"] == 2 and all("n" not in r for r in script.requests[1:])


def test_retries_transient_errors_then_succeeds(server):
    url, script = server
    script.fail_first = 2
    out = _llm(url, max_retries=3).generate(MESSAGES)
    assert len(out) == 1 and len(script.requests) == 3


def test_retry_after_is_respected(server):
    url, script = server
    script.fail_first, script.fail_status, script.retry_after = 1, 429, "1"
    _llm(url, max_retries=2).generate(MESSAGES)
    assert len(script.requests) == 2
    assert script.times[1] - script.times[0] >= 0.95


def test_gives_up_after_retries_with_clear_error(server):
    url, script = server
    script.fail_first = 100
    with pytest.raises(LLMError) as err:
        _llm(url, max_retries=2).generate(MESSAGES)
    assert len(script.requests) == 3
    msg = str(err.value)
    assert url in msg and "after 3 attempts" in msg and "HTTP 503" in msg and "server is running" in msg


def test_timeout_then_retry_succeeds(server):
    url, script = server
    script.delay_first, script.delay_s = 1, 1.5
    started = time.monotonic()
    out = _llm(url, timeout_s=0.5, max_retries=1).generate(MESSAGES)
    assert len(out) == 1 and len(script.requests) == 2
    assert time.monotonic() - started < 1.4  # the slow first response was not waited for


def test_timeout_every_time_raises(server):
    url, script = server
    script.delay_first, script.delay_s = 100, 1.0
    with pytest.raises(LLMError, match=r"no response within 0.3s"):
        _llm(url, timeout_s=0.3, max_retries=1).generate(MESSAGES)


def test_connection_refused_raises_after_retries():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    with pytest.raises(LLMError, match=r"failed after 2 attempts: ConnectError"):
        _llm(f"http://127.0.0.1:{port}/v1", max_retries=1).generate(MESSAGES)


def test_client_error_is_not_retried(server):
    url, script = server
    script.status = 401
    with pytest.raises(LLMError, match=r"rejected the request: HTTP 401.*invalid api key"):
        _llm(url, max_retries=3).generate(MESSAGES)
    assert len(script.requests) == 1


def test_api_key_sent_as_bearer(server):
    url, script = server
    OpenAICompatLLM("m", url, "sk-secret").generate(MESSAGES)
    assert script.headers[0]["Authorization"] == "Bearer sk-secret"


def test_prefix_continues_final_assistant_message(server):
    url, script = server
    prefix = "Step 1: 2 + 3 is a sum.\n"
    llm = _llm(url)
    out = llm.generate(MESSAGES, n=2, prefix=prefix)
    probe, body = script.requests
    assert probe["messages"][-1] == {"role": "assistant", "content": PROBE_PREFIX} and probe["temperature"] == 0.0
    assert llm.continues_prefix is True
    assert body["messages"][-1] == {"role": "assistant", "content": prefix}
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
    assert out[0].text.startswith("Step 2:")


def test_prefix_falls_back_to_user_turn_and_strips_repetition(server):
    url, script = server
    script.reject_continue = True
    prefix = "Step 1: 2 + 3 is a sum.\n"
    script.reply = prefix + "Step 2: it is 5\nAnswer: 5"  # the model restates the given step
    llm = _llm(url)
    out = llm.generate(MESSAGES, prefix=prefix)
    assert len(script.requests) == 2 and "continue_final_message" not in script.requests[1]
    user = script.requests[1]["messages"][-1]
    assert user["role"] == "user" and user["content"].endswith(CONTINUE_INSTRUCTION + prefix)
    assert out[0].text == "Step 2: it is 5\nAnswer: 5"
    llm.generate(MESSAGES, prefix=prefix)  # learnt: no second rejected attempt
    assert len(script.requests) == 3 and "continue_final_message" not in script.requests[2]


def test_missing_usage_is_estimated(server):
    url, script = server
    script.omit_usage, script.reply = True, "x" * 40
    out = _llm(url).generate(MESSAGES, n=2)
    assert [c.completion_tokens for c in out] == [10, 10]
    assert out[0].prompt_tokens == (len("Solve.") + len("What is 2+3?") + 3) // 4


def test_stop_strings_sent_and_applied_client_side(server):
    url, script = server
    script.reply = "Step 1: add\nStep 2: more"
    out = _llm(url).generate(MESSAGES, params=SamplingParams(stop=("\nStep",)))
    assert script.requests[0]["stop"] == ["\nStep"]
    assert out[0].text == "Step 1: add" and out[0].finish_reason == "stop"


def test_invalid_request_lists_every_problem(server):
    url, _ = server
    with pytest.raises(ValueError, match=r"n must be a positive integer.*top_p must be in"):
        _llm(url).generate(MESSAGES, n=0, params=SamplingParams(top_p=0))
    with pytest.raises(ValueError, match=r"timeout_s must be > 0.*prefix_mode must be one of"):
        OpenAICompatLLM("m", url, timeout_s=0, prefix_mode="bogus")


def test_load_llm_serves_names_from_the_server(server):
    url, script = server
    llm = load_llm("openai:served-model", base_url=url, timeout_s=5)
    assert llm.model_name == "served-model"
    assert llm.generate(MESSAGES)[0].text.startswith("Step 1:")
    plain = load_llm("llama3.2:1b", base_url=url)  # any other name goes to the server when a URL is set
    plain.generate(MESSAGES)
    assert [r["model"] for r in script.requests] == ["served-model", "llama3.2:1b"]


# --- servers that do not continue, /completions, fan-out usage, base URL alone ---------------


def test_a_server_that_opens_a_new_turn_is_detected_and_gets_the_prefix_in_the_user_turn(server, caplog):
    url, script = server
    script.continues = False  # accepts continue_final_message, then starts over
    llm = _llm(url)
    prefix = "Step 1: 2 + 3 is a sum.\n"
    with caplog.at_level("WARNING"):
        llm.generate(MESSAGES, prefix=prefix)
    assert llm.continues_prefix is False
    probe, asked = script.requests
    assert probe.get("continue_final_message") is True and "continue_final_message" not in asked
    assert asked["messages"][-1]["content"].endswith(CONTINUE_INSTRUCTION + prefix)
    assert "does not continue a final assistant message" in caplog.text and "KAELUM_LLM_TOKENIZER" in caplog.text
    llm.generate(MESSAGES, prefix=prefix)  # probed once per backend
    assert len(script.requests) == 3


def test_completions_mode_renders_the_chat_template_locally(server, tmp_path):
    from tests.tiny_model import make_tiny_llama

    url, script = server
    tok_dir = make_tiny_llama(tmp_path / "tok")
    prefix = "Step 1: 2 + 3 is a sum.\n"
    llm = _llm(url, tokenizer=tok_dir)  # auto + a tokenizer: completions, no probe
    out = llm.generate(MESSAGES, n=2, prefix=prefix)
    (body,) = script.requests
    assert "messages" not in body and body["n"] == 2
    assert body["prompt"] == (
        "<|im_start|>system\nSolve.<|im_end|>\n<|im_start|>user\nWhat is 2+3?<|im_end|>\n"
        "<|im_start|>assistant\nStep 1: 2 + 3 is a sum.\n"
    )
    assert out[0].text == " 2 + 3 = 5 (choice 0)\nAnswer: 5"
    llm.generate(MESSAGES)  # no prefix: the template's generation prompt
    assert script.requests[1]["prompt"].endswith("<|im_start|>assistant\n")
    with pytest.raises(ValueError, match=r"prefix_mode 'completions' .* needs the served model's tokenizer \(KAELUM_LLM_TOKENIZER\)"):
        OpenAICompatLLM("m", url, prefix_mode="completions")


def test_prompt_tokens_are_counted_for_every_fan_out_request(server):
    # Kaelum recorded 541 prompt tokens where the server processed 3,026.
    from kaelum.llm.base import UsageCounter

    url, script = server
    script.ignore_n = True
    out = _llm(url).generate(MESSAGES, n=3)
    assert len(script.requests) == 3
    usage = UsageCounter()
    usage.add(out)
    assert usage.prompt_tokens == 3 * 17 and usage.completion_tokens == 3 * 7
    script.omit_usage = True
    est = _llm(url).generate(MESSAGES, n=2)
    assert est[0].prompt_tokens == 2 * ((len("Solve.") + len("What is 2+3?") + 3) // 4)


def test_the_error_names_the_real_settings(server):
    url, script = server
    script.fail_first = 100
    with pytest.raises(LLMError, match=r"\(KAELUM_LLM_TIMEOUT_S, KAELUM_LLM_MAX_RETRIES\)"):
        _llm(url, max_retries=0).generate(MESSAGES)
    from kaelum.config import Settings

    assert {"LLM_TIMEOUT_S", "LLM_MAX_RETRIES"} <= set(Settings.model_fields)


def test_a_base_url_alone_uses_the_server(server, monkeypatch):
    from kaelum import Orchestrator, Settings

    url, script = server
    monkeypatch.setenv("KAELUM_OPENAI_BASE_URL", url)
    settings = Settings(_env_file=None)
    assert settings.worker_model("math") == "openai:*"
    llm = Orchestrator(settings).llm_for("math")
    assert llm.model_name == "served-model"
    llm.generate(MESSAGES)
    assert [r["model"] for r in script.requests] == ["served-model"]
    # An explicit worker model wins; the embedded one stays reachable by naming it.
    assert Settings(_env_file=None, DEFAULT_WORKER_MODEL="default").worker_model("math") == "default"
    # A server with several models: the error says exactly what to set.
    script.models = ("a", "b")
    with pytest.raises(LLMError, match=r"lists 2 models \(a, b\); set KAELUM_DEFAULT_WORKER_MODEL .* or unset KAELUM_OPENAI_BASE_URL"):
        Orchestrator(Settings(_env_file=None)).llm_for("math")
