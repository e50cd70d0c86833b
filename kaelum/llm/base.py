"""The interface every LLM backend implements. No I/O here, no heavy imports.

A backend turns chat messages (plus an optional assistant prefix to continue) into `n` sampled
completions in one call, so that the n children of a LATS expansion are sampled together
(batched locally, `n=` on servers that support it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence, runtime_checkable


class LLMError(RuntimeError):
    """A backend failed (server down, timeout after retries, model not loadable). The message says what to do."""


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 0.95
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str = "stop"  # "stop" | "length"
    latency_ms: float = 0.0


@runtime_checkable
class LLM(Protocol):
    """A worker model. `model_name` is what the events record as worker_model / llm.model."""

    model_name: str

    def generate(
        self,
        messages: Sequence[dict[str, str]],
        n: int = 1,
        params: SamplingParams = SamplingParams(),
        prefix: str = "",
    ) -> list[Completion]:
        """Sample `n` completions of the assistant turn that starts with `prefix`.

        The returned text does not repeat `prefix`. Raises LLMError on failure.
        """
        ...


@dataclass
class UsageCounter:
    """Accumulates LLM usage over a trace."""

    llm_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latencies_ms: list[float] = field(default_factory=list)

    def add(self, completions: Sequence[Completion]) -> None:
        self.llm_calls += 1
        if completions:
            self.prompt_tokens += completions[0].prompt_tokens
            self.latencies_ms.append(max(c.latency_ms for c in completions))
        self.completion_tokens += sum(c.completion_tokens for c in completions)

    def as_dict(self) -> dict[str, int]:
        return {"llm_calls": self.llm_calls, "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens}
