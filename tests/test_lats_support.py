"""A scripted LLM and a small arithmetic domain for the search-mechanics tests (no tests here).

The scripted LLM classifies each request by what LATS asks for (an expansion, a rollout, a forced
answer, a value judgement, a reflection) and answers with the test's script for that kind, so a
test decides exactly what the "model" says and can inspect every prompt it was shown.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from kaelum.domains.base import Reward, Verdict, VerifyContext
from kaelum.lats import JUDGE_SYSTEM, REFLECT_SYSTEM
from kaelum.llm.base import Completion, SamplingParams


@dataclass
class Call:
    kind: str  # expand | rollout | answer | judge | reflect
    messages: list[dict[str, str]]
    n: int
    params: SamplingParams
    prefix: str

    @property
    def user(self) -> str:
        return self.messages[-1]["content"]

    @property
    def depth(self) -> int:
        """Steps already in the prefix."""
        return len(re.findall(r"^Step \d+:", self.prefix, re.MULTILINE))


Script = Callable[[Call], "str | Sequence[str]"]


class ScriptedLLM:
    model_name = "scripted-llm"

    def __init__(
        self,
        expand: Script | None = None,
        rollout: Script | None = None,
        answer: Script | None = None,
        judge: Script | None = None,
        reflect: Script | None = None,
        fail_on: str | None = None,
    ) -> None:
        self.scripts = {
            "expand": expand or (lambda c: [f"Step {c.depth + 1}: step {i}" for i in range(c.n)]),
            "rollout": rollout or (lambda c: "Step 9: done\nAnswer: 0"),
            "answer": answer or (lambda c: " 0"),
            "judge": judge or (lambda c: "yes"),
            "reflect": reflect or (lambda c: "Check the arithmetic."),
        }
        self.fail_on = fail_on
        self.calls: list[Call] = []

    @staticmethod
    def classify(messages: Sequence[dict[str, str]], params: SamplingParams, prefix: str) -> str:
        system = messages[0]["content"]
        if system == JUDGE_SYSTEM:
            return "judge"
        if system == REFLECT_SYSTEM:
            return "reflect"
        if prefix.endswith("Answer:"):
            return "answer"
        return "expand" if "\nStep" in params.stop else "rollout"

    def generate(self, messages, n=1, params=SamplingParams(), prefix=""):
        kind = self.classify(messages, params, prefix)
        call = Call(kind, [dict(m) for m in messages], n, params, prefix)
        self.calls.append(call)
        if self.fail_on == kind:
            raise RuntimeError(f"scripted failure on {kind}")
        out = self.scripts[kind](call)
        texts = [out] * n if isinstance(out, str) else list(out)
        return [Completion(text=t, prompt_tokens=11, completion_tokens=max(1, len(t.split())), latency_ms=1.0) for t in texts]

    def kinds(self) -> list[str]:
        return [c.kind for c in self.calls]


class SeededLLM(ScriptedLLM):
    """Steps drawn from the request's seed: reproducible with a seed, different across seeds."""

    def __init__(self) -> None:
        def expand(c: Call) -> list[str]:
            rng = random.Random(c.params.seed)
            return [f"Step {c.depth + 1}: add {rng.randint(0, 5)}" for _ in range(c.n)]

        def rollout(c: Call) -> str:
            rng = random.Random(c.params.seed)
            return f"Step {c.depth + 1}: total\nAnswer: {rng.randint(0, 3)}"

        def judge(c: Call) -> list[str]:
            rng = random.Random(c.params.seed)
            return [rng.choice(["yes", "no"]) for _ in range(c.n)]

        super().__init__(expand=expand, rollout=rollout, judge=judge)


class ArithmeticDomain:
    """Answers are integers; `expected` is the right one. Reward = 0.8 verifier + 0.2 path value."""

    name = "math"

    def __init__(self, expected: str = "5", raise_in_verify: bool = False) -> None:
        self.expected = expected
        self.raise_in_verify = raise_in_verify
        self.contexts: list[VerifyContext] = []

    def extract_answer(self, text: str) -> str | None:
        m = re.search(r"Answer:\s*(-?\d+)", text)
        return m.group(1) if m else None

    def verify(self, answer: str | None, ctx: VerifyContext) -> Verdict:
        self.contexts.append(ctx)
        if self.raise_in_verify:
            raise ZeroDivisionError("verifier blew up")
        if answer is None:
            return Verdict(False, 0.0, "test.int", {"error": "no answer"})
        ok = answer == self.expected
        return Verdict(ok, 1.0 if ok else 0.0, "test.int", {"expected_known": True})

    def reward(self, verdict: Verdict, value: float | None, ctx: VerifyContext) -> Reward:
        if value is None:  # no value estimate (no LLM judge): the verifier alone
            return Reward(verdict.score, {"verifier": verdict.score})
        comps = {"verifier": verdict.score, "path_value": value}
        return Reward(0.8 * verdict.score + 0.2 * value, comps)


def tree_shape(node: Any) -> list[tuple[str, str | None, str, bool, str | None]]:
    """A comparable picture of a tree: (id, parent id, thought, terminal, answer) per node."""
    return [(n.id, n.parent.id if n.parent else None, n.thought, n.terminal, n.answer) for n in node.walk()]
