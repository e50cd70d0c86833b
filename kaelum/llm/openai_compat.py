"""A worker model on an OpenAI-compatible server (vLLM, Ollama, llama.cpp server, OpenAI) over httpx.

POST {base_url}/chat/completions. The n samples of one call are asked for with `n`; a server that
rejects `n` or returns fewer choices gets the missing samples as separate concurrent requests (each
with its own seed) and is not asked for `n` again.

Transient failures (connection errors, timeouts, 408, 429, 5xx) are retried with exponential
backoff and jitter, waiting at least what a `Retry-After` header asks; after `max_retries` retries
the call raises LLMError naming the server and what to check.

The assistant prefix (the partial path LATS asks to continue), by `prefix_mode`:
- "completions": the chat template of the served model's tokenizer (`tokenizer`: a local model
  directory) is rendered here, ending inside the assistant turn right after the prefix, and sent
  as a raw prompt to POST {base_url}/completions. Works on any server with that endpoint, whatever
  it does with chat messages.
- "continue": a final assistant message holding the prefix, with vLLM's
  `continue_final_message: true, add_generation_prompt: false`; the server continues that message.
  Some servers accept these fields and still open a new assistant turn (llama-cpp-python's did:
  64% of replies to an `Answer:` prefix started over), so "auto" checks first.
- "user": the prefix is appended to the last user turn with an instruction to continue from there
  without repeating it; a reply that repeats the prefix anyway has it removed.
- "auto" (default): "completions" when a tokenizer is given. Otherwise, at the first prefix, one
  probe (`probe_continuation()`: "1, 2, 3, 4," must go on with "5"): "continue" when the server continues,
  else "user", with a warning that names KAELUM_LLM_TOKENIZER; also "user" when the server rejects
  those fields (HTTP 400/422).

Token counts come from the response's `usage`; the total completion tokens of n choices are split
across choices in proportion to their text length. When the server ignores `n` and the samples
are fetched with separate requests, the prompt tokens of every request are counted (the server
processed the prompt each time). A server that omits `usage` gets an estimate of one token per 4
characters (the usual rule of thumb for English with BPE tokenizers), per request.
"""

from __future__ import annotations

import email.utils
import logging
import math
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence
from urllib.parse import urlparse

import httpx

from kaelum.llm.base import Completion, LLMError, SamplingParams
from kaelum.llm.local import check_request, cut_at_stop

log = logging.getLogger(__name__)

PREFIX_MODES = ("auto", "completions", "continue", "user")
# The continuation probe: a server that continues the assistant message goes on with "5".
PROBE_MESSAGES = ({"role": "user", "content": "Count from 1 to 10, separated by commas."},)
PROBE_PREFIX = "1, 2, 3, 4,"
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


def served_model(base_url: str, api_key: str | None = None, *, timeout_s: float = 10.0) -> str:
    """The one model the server at `base_url` lists at GET /models; LLMError saying what to set otherwise."""
    url = chat_completions_url(base_url).removesuffix("/chat/completions") + "/models"
    fix = (
        "set KAELUM_DEFAULT_WORKER_MODEL (or KAELUM_<DOMAIN>_WORKER_MODEL) to the name of a model it serves, "
        "or unset KAELUM_OPENAI_BASE_URL to use the embedded model"
    )
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        response = httpx.get(url, headers=headers, timeout=timeout_s)
        response.raise_for_status()
        names = [m["id"] for m in response.json().get("data", []) if isinstance(m, dict) and m.get("id")]
    except (httpx.HTTPError, ValueError, AttributeError, TypeError) as exc:
        raise LLMError(f"KAELUM_OPENAI_BASE_URL is set but no worker model is, and {url} did not list the served model ({exc}); {fix}") from None
    if len(names) != 1:
        listed = ", ".join(names[:10]) or "none"
        raise LLMError(f"KAELUM_OPENAI_BASE_URL is set but no worker model is, and {url} lists {len(names)} models ({listed}); {fix}")
    log.info("%s serves one model, %r: using it", url, names[0])
    return names[0]


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
        tokenizer: str | os.PathLike[str] | Callable[[], str | os.PathLike[str]] | None = None,
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
        if prefix_mode == "completions" and tokenizer is None:
            problems.append("prefix_mode 'completions' renders the chat template locally: it needs the served model's tokenizer (KAELUM_LLM_TOKENIZER)")
        if problems:
            raise ValueError("invalid OpenAI-compatible backend settings: " + "; ".join(problems))
        self.model_name = model
        self.url = chat_completions_url(base_url)
        self.completions_url = self.url.removesuffix("/chat/completions") + "/completions"
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.prefix_mode = prefix_mode
        # None: not known yet; learnt from the first call with n > 1.
        self.supports_n = supports_n
        # What "auto" settled on ("continue" or "user"), after the probe or a rejection.
        self._learnt_mode: str | None = None
        self.continues_prefix: bool | None = None  # the probe's verdict, once made
        self._tokenizer_source = tokenizer
        self._tokenizer: Any = None
        self._lock = threading.Lock()
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

    def render(self, messages: Sequence[dict[str, str]], prefix: str) -> str:
        """The raw prompt for /completions: the chat template, ending right after `prefix` in the assistant turn."""
        with self._lock:
            if self._tokenizer is None:
                from transformers import AutoTokenizer  # only this mode needs it (kaelum[local])

                source = self._tokenizer_source() if callable(self._tokenizer_source) else self._tokenizer_source
                self._tokenizer = AutoTokenizer.from_pretrained(str(Path(source)))
        tok = self._tokenizer
        msgs = [dict(m) for m in messages]
        if not prefix:
            return tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        opened = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        whole = tok.apply_chat_template(msgs + [{"role": "assistant", "content": prefix}], tokenize=False)
        # The assistant turn as the template writes it, cut right after the prefix (so the model
        # continues it); the template may strip the content's trailing whitespace: put it back.
        body = prefix.rstrip()
        at = whole.rfind(body)
        if not whole.startswith(opened) or at < len(opened):
            raise LLMError(f"the chat template of {self._tokenizer_source} does not write the assistant message verbatim; use KAELUM_LLM_PREFIX_MODE=continue or user")
        return whole[: at + len(body)] + prefix[len(body):]

    def _body(self, messages, prefix, mode, n, params: SamplingParams, seed: int | None) -> dict[str, Any]:
        if mode == "completions":
            extra: dict[str, Any] = {"prompt": self.render(messages, prefix)}
        else:
            msgs, extra = self._messages(messages, prefix, mode)
            extra = {"messages": msgs, **extra}
        body: dict[str, Any] = {
            "model": self.model_name,
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

    def _post(self, body: dict[str, Any], url: str | None = None) -> dict[str, Any]:
        """POST with retries. Raises _Rejected on a non-retryable 4xx, LLMError when retries run out."""
        url = url or self.url
        last = ""
        for attempt in range(self.max_retries + 1):
            wait = min(self.max_backoff_s, self.backoff_s * 2**attempt) * random.uniform(0.5, 1.5)
            try:
                response = self._client.post(url, json=body)
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
                log.warning("%s: %s; retry %d/%d in %.2fs", url, last, attempt + 1, self.max_retries, wait)
                time.sleep(wait)
        raise LLMError(
            f"OpenAI-compatible server at {url} failed after {self.max_retries + 1} attempts: {last}. "
            "Check that the server is running and serves this model, or raise the timeout/retries "
            "(KAELUM_LLM_TIMEOUT_S, KAELUM_LLM_MAX_RETRIES)."
        )

    # --- which prefix mode ----------------------------------------------------------------------

    def probe_continuation(self) -> bool:
        """One probe: does the server continue a final assistant message ("1, 2, 3, 4," -> "5")?"""
        body = self._body(PROBE_MESSAGES, PROBE_PREFIX, "continue", 1, SamplingParams(max_tokens=8, temperature=0.0), seed=0)
        try:
            data = self._post(body)
        except _Rejected:
            return False
        choices = data.get("choices") or [{}]
        text = str((choices[0].get("message") or {}).get("content") or choices[0].get("text") or "")
        return text.lstrip().startswith("5")

    def _mode(self, prefix: str) -> str:
        if self.prefix_mode != "auto":
            return self.prefix_mode
        if self._tokenizer_source is not None:
            return "completions"
        if not prefix:
            return self._learnt_mode or "continue"
        with self._lock:
            if self._learnt_mode is None:
                self.continues_prefix = self.probe_continuation()
                self._learnt_mode = "continue" if self.continues_prefix else "user"
                if not self.continues_prefix:
                    log.warning(
                        "%s does not continue a final assistant message (a probe started over); sending the prefix in the "
                        "user turn. Set KAELUM_LLM_TOKENIZER to the served model's tokenizer to continue it exactly via /completions",
                        self.url,
                    )
        return self._learnt_mode

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
        mode = self._mode(prefix)
        ask_n = n if (n > 1 and self.supports_n is not False) else 1
        while True:
            try:
                choices, usage = self._call(messages, prefix, mode, ask_n, params, params.seed)
                break
            except _Rejected as exc:
                if prefix and mode == "continue" and self.prefix_mode == "auto":
                    log.warning("%s rejected continue_final_message (%s); sending the prefix in the user turn", self.url, exc)
                    self._learnt_mode = mode = "user"
                elif ask_n > 1:
                    log.warning("%s rejected n=%d (%s); sampling with separate requests", self.url, ask_n, exc)
                    self.supports_n = False
                    ask_n = 1
                else:
                    raise LLMError(f"OpenAI-compatible server at {self.url} rejected the request: {exc}") from exc
        if n > 1 and ask_n > 1:
            self.supports_n = len(choices) >= n
        requests = 1
        if len(choices) < n:
            # Server ignored n (or returned fewer): fetch the rest concurrently, each with its own seed.
            missing = n - len(choices)
            seeds = [None if params.seed is None else params.seed + len(choices) + i for i in range(missing)]
            with ThreadPoolExecutor(max_workers=min(missing, 8)) as pool:
                results = list(pool.map(lambda s: self._call_or_raise(messages, prefix, mode, params, s), seeds))
            for more, more_usage in results:
                choices += more
                usage = _add_usage(usage, more_usage)
            requests += missing
        choices = choices[:n]
        latency_ms = (time.perf_counter() - started) * 1000
        return self._completions(messages, prefix, mode, choices, usage, params, latency_ms, requests)

    def _call(self, messages, prefix, mode, n, params, seed):
        url = self.completions_url if mode == "completions" else self.url
        data = self._post(self._body(messages, prefix, mode, n, params, seed), url)
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices:
            raise LLMError(f"OpenAI-compatible server at {self.url} returned no choices: {str(data)[:300]}")
        return choices, data.get("usage")

    def _call_or_raise(self, messages, prefix, mode, params, seed):
        try:
            return self._call(messages, prefix, mode, 1, params, seed)
        except _Rejected as exc:
            raise LLMError(f"OpenAI-compatible server at {self.url} rejected the request: {exc}") from exc

    def _completions(self, messages, prefix, mode, choices, usage, params, latency_ms, requests=1) -> list[Completion]:
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
            prompt_tokens = max(1, math.ceil(prompt_chars / 4)) * requests  # the server read it each time
            per_choice = [estimate_tokens(t) for t in texts]
        return [
            Completion(text=t, prompt_tokens=prompt_tokens, completion_tokens=c, finish_reason=r, latency_ms=latency_ms)
            for t, c, r in zip(texts, per_choice, reasons)
        ]


def _add_usage(a: dict | None, b: dict | None) -> dict | None:
    if not a or not b:
        return None  # one missing usage makes the total unknown: estimate instead
    # Every request made the server read the prompt again: that is what it processed (and bills).
    return {
        "prompt_tokens": int(a.get("prompt_tokens") or 0) + int(b.get("prompt_tokens") or 0),
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
