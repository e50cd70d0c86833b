"""The interface shared by the six domain modules (math, code, logic, factual, creative, analysis).

The search (kaelum.lats) only talks to a domain through this interface: extract the answer of a
terminal step, verify it, and compose a reward. Verifiers have no access to the search tree
beyond what `VerifyContext` hands them, and must never raise: a verifier that fails internally
returns a failed `Verdict` with the reason in `details["error"]`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, Sequence

# A judge asks the worker (or another model) a yes/no-ish question and returns a score in [0, 1].
# The search wires it to the LLM; verifiers use it for the "LLM judgement" components.
Judge = Callable[[str], float]


@dataclass(frozen=True)
class Verdict:
    passed: bool
    score: float  # in [0, 1]
    verifier: str  # e.g. "math.sympy", "code.sandbox"
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class VerifyContext:
    """What a verifier may use besides the answer itself."""

    query: str
    steps: Sequence[str] = ()  # thoughts on the path to the terminal node (root excluded)
    sibling_answers: Sequence[str] = ()  # answers of other terminal nodes in the same tree (self-consistency)
    tests: Sequence[str] = ()  # code domain: test snippets given with the query
    entry_point: str | None = None  # code domain: the function HumanEval-style `check(candidate)` tests are given
    reference: str | None = None  # factual domain: reference answer from a user-supplied file
    judge: Judge | None = None  # LLM judgement, None when unavailable (e.g. unit tests)
    options: Mapping[str, Any] = field(default_factory=dict)  # domain settings (sandbox limits, ...)


@dataclass(frozen=True)
class Reward:
    value: float  # in [0, 1]
    components: Mapping[str, float]  # documented, named components; logged with the trace


class Domain(Protocol):
    name: str

    def extract_answer(self, text: str) -> str | None:
        """The final answer in a model's terminal output (after 'Answer:'), normalised; None if absent."""
        ...

    def verify(self, answer: str | None, ctx: VerifyContext) -> Verdict:
        """Check the answer. Never raises."""
        ...

    def reward(self, verdict: Verdict, value: float | None, ctx: VerifyContext) -> Reward:
        """Compose the trace reward from the verdict and the search's value estimate of the path.

        `value` is None when the search made no value estimate (no LLM value judge): the reward is
        then composed from the verifier's signals alone."""
        ...
