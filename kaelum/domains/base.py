"""The interface shared by the six domain modules (math, code, logic, factual, creative, analysis).

The search (kaelum.lats) only talks to a domain through this interface: extract the answer of a
terminal step, verify it, and compose a reward. Verifiers have no access to the search tree
beyond what `VerifyContext` hands them, and must never raise: a verifier that fails internally
returns a failed `Verdict` with the reason in `details["error"]`.

Every verdict says how it was reached (`Verdict.method`), out of the fixed set `METHODS`. Only the
`CHECKED_METHODS` check the answer against something independent of the model (a reference, a
computed value, tests, a formal model, the request's stated constraints); the others
(`consistency`, `judge`, `runs`) are weaker evidence, and the views keep them out of the default
training data. The method is derived from the verifier's name, in one place (`method_of_verifier`),
so that the runtime and the store's upcaster for old events cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, Sequence

# How a verdict was reached, strongest evidence first. docs/domains.md says what each guarantees.
METHODS = ("reference", "computed", "tests", "formal", "constraints", "consistency", "judge", "runs")
# The methods that check the answer itself; "verified" by one of these is what training trusts by default.
CHECKED_METHODS = ("reference", "computed", "tests", "formal", "constraints")

# Verifier names that predate the "<domain>.<method>" naming, kept because old events carry them.
_LEGACY_VERIFIER_METHODS = {"sympy": "computed", "sandbox": "tests", "run": "runs", "coverage": "constraints"}


def method_of_verifier(verifier: str | None) -> str | None:
    """The method of a verifier name: "math.reference" -> "reference", "math.sympy" -> "computed".

    A verifier is named "<domain>.<method>" (or one of the legacy suffixes above); any other name
    ("math.error", a custom domain's own name) has no method: nothing was checked, or we cannot tell.
    """
    if not isinstance(verifier, str) or "." not in verifier:
        return None
    suffix = verifier.rsplit(".", 1)[1]
    if suffix in METHODS:
        return suffix
    return _LEGACY_VERIFIER_METHODS.get(suffix)


# A judge asks the worker (or another model) a yes/no-ish question and returns a score in [0, 1].
# The search wires it to the LLM; verifiers use it for the "LLM judgement" components.
Judge = Callable[[str], float]


@dataclass(frozen=True)
class Verdict:
    passed: bool
    score: float  # in [0, 1]
    verifier: str  # "<domain>.<method>", e.g. "math.reference", "math.sympy" (computed), "code.sandbox" (tests)
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def method(self) -> str | None:
        """How the verdict was reached (one of METHODS), None when nothing could be checked."""
        return method_of_verifier(self.verifier)

    @property
    def checked(self) -> bool:
        """Whether the method checks the answer itself (CHECKED_METHODS), not agreement or opinion."""
        return self.method in CHECKED_METHODS


@dataclass(frozen=True)
class VerifyContext:
    """What a verifier may use besides the answer itself."""

    query: str
    steps: Sequence[str] = ()  # thoughts on the path to the terminal node (root excluded)
    sibling_answers: Sequence[str] = ()  # answers of other terminal nodes in the same tree (self-consistency)
    tests: Sequence[str] = ()  # code domain: test snippets given with the query
    entry_point: str | None = None  # code domain: the function HumanEval-style `check(candidate)` tests are given
    reference: str | None = None  # the caller's reference answer (a label), for every domain that can use one
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
