"""A worker model on an OpenAI-compatible server (vLLM, Ollama, llama.cpp server, OpenAI) over httpx.

POST {base_url}/chat/completions. The n samples of one call are asked for with `n`; a server that
rejects `n` or returns fewer choices gets the missing samples as separate concurrent requests (each
with its own seed) and is not asked for `n` again.

Transient failures (connection errors, timeouts, 408, 429, 5xx) are retried with exponential
backoff and jitter, waiting at least what a `Retry-After` header asks; after `max_retries` retries
the call raises LLMError naming the server and what to check.

The assistant prefix (the partial path LATS asks to continue), by `prefix_mode`:
- "continue": a final assistant message holding the prefix, with vLLM's
  `continue_final_message: true, add_generation_prompt: false`; the server continues that message.
  llama.cpp's server continues a final assistant message the same way.
- "user": the prefix is appended to the last user turn with an instruction to continue from there
  without repeating it; a reply that repeats the prefix anyway has it removed.
- "auto" (default): "continue" first; if the server rejects those fields (HTTP 400/422), "user"
  from then on.

Token counts come from the response's `usage`; the total completion tokens of n choices are split
across choices in proportion to their text length. A server that omits `usage` gets an estimate
of one token per 4 characters (the usual rule of thumb for English with BPE tokenizers).
"""

from __future__ import annotations

import email.utils
import logging
import math
import random
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence
from urllib.parse import urlparse

import httpx

from kaelum.llm.base import Completion, LLMError, SamplingParams
from kaelum.llm.local import check_request, cut_at_stop

log = logging.getLogger(__name__)

PREFIX_MODES = ("auto", "continue", "user")
CONTINUE_INSTRUCTION = (
    "Continue the solution below from exactly where it stops. Do not repeat the steps already "
    "written; write only what comes next.\n\n"
)
_RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
_MAX_RETRY_AFTER_S = 120.0


class _Rejected(Exception):
    """The server refused this request shape (4xx other than rate limiting)."""

    def __init__(self, status: int, body: str):
        super().__init__(f"HTTP {status}: {body[:300]}")
        self.status = status
        self.body = body


def chat_completions_url(base_url: str) -> str:
    """`http://h:8000` and `http://h:8000/v1` both mean `http://h:8000/v1/chat/completions`."""
    url = base_url.strip().rstrip("/")
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise LLMError(f"OpenAI base URL must look like http://host:port/v1, got {base_url!r}")
    last = parsed.path.rsplit("/", 1)[-1]
    if not (last.startswith("v") and last[1:].isdigit()):
        url += "/v1"
    return url + "/chat/completions"


def estimate_tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4)) if text else 0


def _retry_after_s(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return min(_MAX_RETRY_AFTER_S, max(0.0, float(value)))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return min(_MAX_RETRY_AFTER_S, max(0.0, when - time.time()))


class OpenAICompatLLM:
    """`LLM` over an OpenAI-compatible chat completions endpoint."""

    def __init__(
        self,
        model: str,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout_s: float = 60.0,
        max_retries: int = 3,
        backoff_s: float = 0.5,
        max_backoff_s: float = 20.0,
        prefix_mode: str = "auto",
        supports_n: bool | None = None,
        transport: httpx.BaseTransport | None = None,
    ):
        problems = []
        if not model:
            problems.append("model name is empty")
        if timeout_s <= 0:
            problems.append(f"timeout_s must be > 0, got {timeout_s}")
        if max_retries < 0:
            problems.append(f"max_retries must be >= 0, got {max_retries}")
        if backoff_s < 0 or max_backoff_s < 0:
            problems.append("backoff_s and max_backoff_s must be >= 0")
        if prefix_mode not in PREFIX_MODES:
            problems.append(f"prefix_mode must be one of {', '.join(PREFIX_MODES)}, got {prefix_mode!r}")
        if problems:
            raise ValueError("invalid OpenAI-compatible backend settings: " + "; ".join(problems))
        self.model_name = model
        self.url = chat_completions_url(base_url)
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.prefix_mode = prefix_mode
        # None: not known yet; learnt from the first call with n > 1.
        self.supports_n = supports_n
        # Set when "auto" finds that the server rejects continue_final_message.
        self._user_mode_learnt = False
        headers = {"Content-Type": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._client = httpx.Client(headers=headers, timeout=httpx.Timeout(timeout_s), transport=transport)

    def close(self) -> None:
        self._client.close()

    # --- request shapes -------------------------------------------------------------------------

    def _messages(self, messages: Sequence[dict[str, str]], prefix: str, mode: str) -> tuple[list[dict], dict]:
        msgs = [dict(m) for m in messages]
        if not prefix:
            return msgs, {}
        if mode == "continue":
            msgs.append({"role": "assistant", "content": prefix})
            return msgs, {"continue_final_message": True, "add_generation_prompt": False}
        user_idx = max((i for i, m in enumerate(msgs) if m.get("role") == "user"), default=None)
        note = CONTINUE_INSTRUCTION + prefix
        if user_idx is None:
            msgs.append({"role": "user", "content": note})
        else:
            msgs[user_idx]["content"] = msgs[user_idx]["content"].rstrip() + "\n\n" + note
        return msgs, {}

    def _body(self, messages, prefix, mode, n, params: SamplingParams, seed: int | None) -> dict[str, Any]:
        msgs, extra = self._messages(messages, prefix, mode)
        body: dict[str, Any] = {
            "model": self.model_name,
            "messages": msgs,
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            **extra,
        }
        if n > 1:
            body["n"] = n
        if params.stop:
            body["stop"] = list(params.stop)
        if seed is not None:
            body["seed"] = seed
        return body

    # --- transport ------------------------------------------------------------------------------

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST with retries. Raises _Rejected on a non-retryable 4xx, LLMError when retries run out."""
        last = ""
        for attempt in range(self.max_retries + 1):
            wait = min(self.max_backoff_s, self.backoff_s * 2**attempt) * random.uniform(0.5, 1.5)
            try:
                response = self._client.post(self.url, json=body)
            except httpx.TimeoutException as exc:
                last = f"no response within {self.timeout_s:g}s ({type(exc).__name__})"
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code == 200:
                    try:
                        return response.json()
                    except ValueError:
                        last = f"invalid JSON in the response: {response.text[:200]!r}"
                elif response.status_code in _RETRY_STATUS:
                    last = f"HTTP {response.status_code}: {response.text[:200]}"
                    retry_after = _retry_after_s(response)
                    if retry_after is not None:
                        wait = max(wait, retry_after)
                else:
                    raise _Rejected(response.status_code, response.text)
            if attempt < self.max_retries:
                log.warning("%s: %s; retry %d/%d in %.2fs", self.url, last, attempt + 1, self.max_retries, wait)
                time.sleep(wait)
        raise LLMError(
            f"OpenAI-compatible server at {self.url} failed after {self.max_retries + 1} attempts: {last}. "
            "Check that the server is running and serves this model, or raise the timeout/retries "
            "(KAELUM_OPENAI_TIMEOUT_S, KAELUM_OPENAI_MAX_RETRIES)."
        )

    # --- the interface --------------------------------------------------------------------------

    def generate(
        self,
        messages: Sequence[dict[str, str]],
        n: int = 1,
        params: SamplingParams = SamplingParams(),
        prefix: str = "",
    ) -> list[Completion]:
        check_request(n, params)
        started = time.perf_counter()
        mode = "continue" if self.prefix_mode == "auto" else self.prefix_mode
        if self.prefix_mode == "auto" and self._user_mode_learnt:
            mode = "user"
        ask_n = n if (n > 1 and self.supports_n is not False) else 1
        while True:
            try:
                choices, usage = self._call(messages, prefix, mode, ask_n, params, params.seed)
                break
            except _Rejected as exc:
                if prefix and mode == "continue" and self.prefix_mode == "auto":
                    log.warning("%s rejected continue_final_message (%s); sending the prefix in the user turn", self.url, exc)
                    self._user_mode_learnt = True
                    mode = "user"
                elif ask_n > 1:
                    log.warning("%s rejected n=%d (%s); sampling with separate requests", self.url, ask_n, exc)
                    self.supports_n = False
                    ask_n = 1
                else:
                    raise LLMError(f"OpenAI-compatible server at {self.url} rejected the request: {exc}") from exc
        if n > 1 and ask_n > 1:
            self.supports_n = len(choices) >= n
        if len(choices) < n:
            # Server ignored n (or returned fewer): fetch the rest concurrently, each with its own seed.
            missing = n - len(choices)
            seeds = [None if params.seed is None else params.seed + len(choices) + i for i in range(missing)]
            with ThreadPoolExecutor(max_workers=min(missing, 8)) as pool:
                results = list(pool.map(lambda s: self._call_or_raise(messages, prefix, mode, params, s), seeds))
            for more, more_usage in results:
                choices += more
                usage = _add_usage(usage, more_usage)
        choices = choices[:n]
        latency_ms = (time.perf_counter() - started) * 1000
        return self._completions(messages, prefix, mode, choices, usage, params, latency_ms)

    def _call(self, messages, prefix, mode, n, params, seed):
        data = self._post(self._body(messages, prefix, mode, n, params, seed))
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices:
            raise LLMError(f"OpenAI-compatible server at {self.url} returned no choices: {str(data)[:300]}")
        return choices, data.get("usage")

    def _call_or_raise(self, messages, prefix, mode, params, seed):
        try:
            return self._call(messages, prefix, mode, 1, params, seed)
        except _Rejected as exc:
            raise LLMError(f"OpenAI-compatible server at {self.url} rejected the request: {exc}") from exc

    def _completions(self, messages, prefix, mode, choices, usage, params, latency_ms) -> list[Completion]:
        texts, reasons = [], []
        for choice in choices:
            message = choice.get("message") or {}
            text = message.get("content")
            if text is None:
                text = choice.get("text", "")
            text = str(text)
            if mode == "user" and prefix:
                text = _drop_repeated_prefix(text, prefix)
            text, hit = cut_at_stop(text, params.stop)
            texts.append(text)
            reasons.append("length" if choice.get("finish_reason") == "length" and not hit else "stop")
        if usage and isinstance(usage.get("completion_tokens"), int):
            prompt_tokens = int(usage.get("prompt_tokens") or 0)
            per_choice = _split(int(usage["completion_tokens"]), texts)
        else:
            prompt_chars = sum(len(m.get("content", "")) for m in messages) + len(prefix)
            prompt_tokens = max(1, math.ceil(prompt_chars / 4))
            per_choice = [estimate_tokens(t) for t in texts]
        return [
            Completion(text=t, prompt_tokens=prompt_tokens, completion_tokens=c, finish_reason=r, latency_ms=latency_ms)
            for t, c, r in zip(texts, per_choice, reasons)
        ]


def _add_usage(a: dict | None, b: dict | None) -> dict | None:
    if not a or not b:
        return None  # one missing usage makes the total unknown: estimate instead
    return {
        "prompt_tokens": int(a.get("prompt_tokens") or 0),  # the same prompt each time: count it once
        "completion_tokens": int(a.get("completion_tokens") or 0) + int(b.get("completion_tokens") or 0),
    }


def _split(total: int, texts: Sequence[str]) -> list[int]:
    """Split `total` tokens across texts in proportion to their length; the parts sum to `total`."""
    if len(texts) == 1:
        return [total]
    chars = [len(t) for t in texts]
    whole = sum(chars)
    if whole == 0:
        base = [total // len(texts)] * len(texts)
        base[0] += total - sum(base)
        return base
    parts = [total * c // whole for c in chars]
    parts[chars.index(max(chars))] += total - sum(parts)
    return parts


def _drop_repeated_prefix(text: str, prefix: str) -> str:
    """In "user" mode a model sometimes restates the given steps before continuing; drop them."""
    stripped = text.lstrip()
    body = prefix.strip()
    if body and stripped.startswith(body):
        return stripped[len(body):].lstrip("\n")
    return text
