"""An expansion's terminals are checked at the same time where the domain allows it
(VERIFY_CONCURRENTLY: sandboxed checks that ask no judge), with the same verdicts, rewards and
events, in the same order, as checking them one after another."""

from __future__ import annotations

import threading

from kaelum.domains import get_domain
from kaelum.domains.base import Verdict, VerifyContext
from kaelum.lats import LATS, LatsParams
from test_lats_support import ArithmeticDomain, ScriptedLLM, tree_shape

QUERY = "What is 2 + 3?"


def params(**kw) -> LatsParams:
    base = dict(simulations=1, max_depth=2, branching=4, exploration=1.0, llm_value_weight=0.0, prune_threshold=0.0,
                reflections=False, max_llm_calls=100, seed=0)
    base.update(kw)
    return LatsParams(**base)




def four_answers() -> ScriptedLLM:
    return ScriptedLLM(expand=lambda c: [f"Step 1: try {i}\nAnswer: {i + 3}" for i in range(c.n)])


class MeetingDomain(ArithmeticDomain):
    """Each check waits (at most 10 s) until `parties` checks are inside verify at once."""

    VERIFY_CONCURRENTLY = True

    def __init__(self, parties: int) -> None:
        super().__init__("5")
        self.barrier = threading.Barrier(parties, timeout=10)
        self.met: list[bool] = []

    def verify(self, answer: str | None, ctx: VerifyContext) -> Verdict:
        try:
            self.barrier.wait()
            self.met.append(True)
        except threading.BrokenBarrierError:
            self.met.append(False)
        return super().verify(answer, ctx)


class Recorder:
    def __init__(self) -> None:
        self.log: list[tuple] = []

    def node_added(self, node):
        self.log.append(("node", node.id, node.answer))

    def node_evaluated(self, node, value, signals):
        self.log.append(("eval", node.id, value, dict(signals)))

    def verified(self, node, verdict):
        self.log.append(("verify", node.id, verdict.passed, verdict.verifier))

    def reflected(self, node, text):
        self.log.append(("reflect", node.id, text))


def test_terminals_of_one_expansion_are_checked_at_the_same_time():
    dom = MeetingDomain(parties=4)
    result = LATS(four_answers(), dom, QUERY, params()).run()
    terminals = [c for c in result.root.children if c.terminal]
    assert len(terminals) == 4
    # All four checks were inside verify together: one after another, the barrier would break.
    assert dom.met == [True] * 4
    assert result.final_answer == "5" and result.verdict.passed


def test_a_domain_that_does_not_allow_it_is_checked_one_at_a_time():
    dom = MeetingDomain(parties=2)
    dom.VERIFY_CONCURRENTLY = False
    dom.barrier = threading.Barrier(2, timeout=0.2)
    LATS(four_answers(), dom, QUERY, params()).run()
    assert dom.met and not any(dom.met)


def test_concurrent_checks_give_the_same_search_as_sequential_ones_with_the_real_code_domain():
    """The real code domain (sandboxed tests): same tree, verdicts, rewards and event order."""
    answers = [
        "```python\ndef add(a, b):\n    return a + b\n```",
        "```python\ndef add(a, b):\n    return a - b\n```",
        "```python\ndef add(a, b):\n    return a * b\n```",
        "```python\ndef add(a, b):\n    return b + a\n```",
    ]
    llm = lambda: ScriptedLLM(expand=lambda c: [f"Step 1: write add #{i}\nAnswer:\n{answers[i]}" for i in range(c.n)])  # noqa: E731
    tests = ("assert add(2, 3) == 5", "assert add(-1, 1) == 0")
    runs = {}
    for concurrent in (True, False):
        code = get_domain("code")
        code.VERIFY_CONCURRENTLY = concurrent
        rec = Recorder()
        result = LATS(llm(), code, "Write add(a, b).", params(multiline_answers=True, max_answer_tokens=300),
                      tests=tests, observer=rec).run()
        verdicts = [(c.answer, c.verdict.passed, c.verdict.verifier, c.prior) for c in result.root.children if c.terminal]
        runs[concurrent] = (tree_shape(result.root), verdicts, [e[:3] for e in rec.log], result.final_answer)
    assert runs[True] == runs[False]
    assert [v[1] for v in runs[True][1]] == [True, False, False, True]
