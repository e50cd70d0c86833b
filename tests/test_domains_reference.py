"""Reference answers in every domain, the method of each verdict, and rewards that measure something.

The cases of issue 15: a labelled word problem is checked against its label whatever the other
branches agree on; a single answer's "consistency" adds nothing; an answer nothing checked scores
at most UNCHECKED_REWARD_CAP and a checked right one at least CHECKED_REWARD_FLOOR.
"""

from __future__ import annotations

import json

import pytest

from kaelum.domains import DOMAIN_NAMES, VerifyContext, get_domain
from kaelum.domains._common import CHECKED_REWARD_FLOOR, UNCHECKED_REWARD_CAP, agreement
from kaelum.domains.base import CHECKED_METHODS, METHODS, Verdict, method_of_verifier
from kaelum.domains.code import reference_tests

FAST_SANDBOX = {"timeout_s": 5.0, "per_test_timeout_s": 2.0, "cpu_s": 3, "memory_mb": 256}

SADE = "Sade has 47 shells and finds 38 more. How many shells does Sade have now?"
WORD_PROBLEMS = [
    (SADE, "85", "12"),
    ("Mara has 46 coins and gives away 22. How many coins does Mara have left?", "24", "46"),
    ("Quill has 68 cards and finds 82 more. How many cards does Quill have now?", "150", "1"),
    ("A baker sells 12 boxes of 6 muffins. How many muffins does the baker sell?", "72", "18"),
]


def ctx(query: str, **kw) -> VerifyContext:
    return VerifyContext(query=query, **kw)


# --- math: the reference decides -------------------------------------------------------------

@pytest.mark.parametrize("query,right,wrong", WORD_PROBLEMS)
def test_word_problem_with_reference_right_verifies_wrong_does_not_whatever_the_siblings_say(query, right, wrong):
    d = get_domain("math")
    # Every sibling agrees with the wrong answer: it is still wrong.
    w = d.verify(wrong, ctx(query, reference=right, sibling_answers=[wrong] * 4))
    assert not w.passed and w.verifier == "math.reference" and w.method == "reference"
    # Every sibling disagrees with the right answer (and the judge says no): it is still right.
    r = d.verify(right, ctx(query, reference=right, sibling_answers=[wrong] * 4, judge=lambda p: 0.0))
    assert r.passed and r.method == "reference" and r.checked
    rw, rr = d.reward(w, 1.0, ctx(query)), d.reward(r, 0.0, ctx(query))
    assert rw.value <= UNCHECKED_REWARD_CAP < CHECKED_REWARD_FLOOR <= rr.value


@pytest.mark.parametrize("answer,reference", [
    ("$1,250.00", "1250"), ("1250", "$1,250.00"), ("1.25e3", "1250"), ("1250", "1.25e3"), ("1250 dollars", "1,250"),
    ("1,250", "1250.0"), ("10/3", "3.33"), ("3.33", "10/3"), ("0.5", "1/2"), ("2, -2", "-2 or 2"), ("25%", "25"),
])
def test_math_reference_numeric_equivalence(answer, reference):
    d = get_domain("math")
    a = d.extract_answer(f"Answer: {answer}")
    v = d.verify(a, ctx("How much is it?", reference=reference))
    assert v.passed, (a, v.details)


@pytest.mark.parametrize("answer,reference,why", [
    ("1251", "1250", "differs"), ("1.25e2", "1250", "differs"), ("2", "2, -2", "states 1 value"),
    ("3 * 4", "12", "restates an expression"), ("banana", "12", "not a number"), ("3.3", "10/3", "differs"),
])
def test_math_reference_rejects(answer, reference, why):
    d = get_domain("math")
    v = d.verify(d.extract_answer(f"Answer: {answer}"), ctx("How much is it?", reference=reference))
    assert not v.passed and why in v.details["reason"]


def test_math_reference_beats_the_computed_value_and_text_references():
    d = get_domain("math")
    # The caller's label is what "right" means, even when the question computes to something else.
    assert d.verify("5", ctx("What is 2 + 2?", reference="5")).verifier == "math.reference"
    assert d.verify("5", ctx("What is 2 + 2?", reference="5")).passed
    assert d.verify("No solution", ctx("Solve x + 1 = x", reference="no solution")).passed
    assert not d.verify("x = 3", ctx("Solve x + 1 = x", reference="no solution")).passed
    # Without a reference the computable question is checked by sympy.
    assert d.verify("4", ctx("What is 2 + 2?")).method == "computed"


def test_math_issue_15_figures_no_longer_hold():
    """The numbers the issue measured: 12 for Sade's 85 shells, verified by agreement, reward 1.0 alone."""
    d = get_domain("math")
    agreed = d.verify("12", ctx(SADE, sibling_answers=["12", "12", "12", "12"]))
    # Without a reference, agreement may still accept it, but as what it is: unchecked, and scored low.
    assert agreed.method == "consistency" and not agreed.checked
    assert d.reward(agreed, None, ctx(SADE)).value <= UNCHECKED_REWARD_CAP
    alone = d.verify("12", ctx(SADE))
    assert not alone.passed and alone.details["signals"]["consistency"] is None
    assert d.reward(alone, None, ctx(SADE)).value == 0.0


# --- consistency needs two answers ------------------------------------------------------------

def test_single_sample_consistency_adds_nothing_to_the_reward():
    for name, answer in (("math", "12"), ("logic", "the butler"), ("factual", "Paris")):
        d = get_domain(name)
        q = {"math": SADE, "logic": "Which suspect lied?", "factual": "Which city hosts the festival?"}[name]
        alone = d.verify(answer, ctx(q))
        assert not alone.passed and alone.details["signals"]["consistency"] is None, name
        # Same reward as no consistency at all: only the value estimate counts (and it is capped).
        r = d.reward(alone, 0.8, ctx(q))
        assert "consistency" not in r.components and r.value == pytest.approx(min(0.8, UNCHECKED_REWARD_CAP)), name
        assert d.reward(alone, None, ctx(q)).value == 0.0, name
    share, agreeing = agreement("8", [], lambda a, b: a == b)
    assert share is None and agreeing == 0
    assert agreement("8", ["8"], lambda a, b: a == b) == (1.0, 1)


def test_judge_alone_is_named_and_never_verifies():
    d = get_domain("math")
    v = d.verify("85", ctx(SADE, judge=lambda p: 1.0))
    assert v.verifier == "math.judge" and v.method == "judge" and not v.passed


# --- logic and code references ----------------------------------------------------------------

def test_logic_reference():
    d = get_domain("logic")
    q = "Which of the three suspects lied, given their statements?"
    assert d.verify("the butler", ctx(q, reference="The butler", sibling_answers=["the cook"] * 3)).passed
    wrong = d.verify("the cook", ctx(q, reference="The butler", sibling_answers=["the cook"] * 3))
    assert not wrong.passed and wrong.method == "reference"
    # Canonical forms: "Valid" = "yes"; the label wins over the formal result, which is recorded.
    syl = "All men are mortal. Socrates is a man. Is Socrates mortal?"
    assert d.verify("valid", ctx(syl, reference="Yes")).passed
    v = d.verify("no", ctx(syl, reference="No"))
    assert v.passed and v.details["formal_expected"] == "yes"


def test_code_reference_cases_become_tests():
    assert reference_tests([{"input": "add(1, 2)", "output": "3"}]) == ["assert (add(1, 2)) == (3), 'add(1, 2) should be 3'"]
    with pytest.raises(ValueError, match=r"case 0: needs string fields.*case 1: input 'add\(1,' is not a Python expression"):
        reference_tests([{"input": "add(1, 2)"}, {"input": "add(1,", "output": "1"}])
    with pytest.raises(ValueError, match="non-empty list"):
        reference_tests([])


def test_code_reference_right_and_wrong():
    d = get_domain("code", FAST_SANDBOX)
    ref = json.dumps([{"input": "add(1, 2)", "output": "3"}, {"input": "add(-1, 1)", "output": "0"}])
    c = ctx("Write add(a, b).", reference=ref)
    right = d.verify("def add(a, b):\n    return a + b\n", c)
    wrong = d.verify("def add(a, b):\n    return a + b if a > 0 else 7\n", c)
    assert right.passed and right.verifier == "code.reference" and right.method == "reference"
    assert right.details["tests_source"] == "reference" and right.details["tests_total"] == 2
    assert not wrong.passed and wrong.details["tests_passed"] == 1
    # A wrong solution that passes its own tests is still judged by the reference.
    selfish = d.verify("def add(a, b):\n    return a - b\nassert add(1, 1) == 0\n", c)
    assert not selfish.passed
    assert d.reward(wrong, 1.0, c).value <= UNCHECKED_REWARD_CAP < CHECKED_REWARD_FLOOR <= d.reward(right, 0.0, c).value
    bad = d.verify("def add(a, b):\n    return a + b\n", ctx("Write add(a, b).", reference="not json"))
    assert not bad.passed and "JSON list" in bad.details["error"]


def test_code_partial_pass_never_outscores_a_checked_right_answer():
    d = get_domain("code", FAST_SANDBOX)
    tests = [f"assert add({i}, 1) == {i + 1}" for i in range(9)] + ["assert add(-5, 0) == -5"]
    c = ctx("Write add(a, b).", tests=tests)
    partly = d.verify("def add(a, b):\n    return abs(a) + b\n", c)
    right = d.verify("def add(a, b):\n    return a + b\n", c)
    assert not partly.passed and partly.score == pytest.approx(0.9)
    assert d.reward(partly, 1.0, c).value <= UNCHECKED_REWARD_CAP < d.reward(right, 0.0, c).value


# --- methods ---------------------------------------------------------------------------------

def test_method_of_every_verifier_name():
    assert METHODS == ("reference", "computed", "tests", "formal", "constraints", "consistency", "judge", "runs")
    assert set(CHECKED_METHODS) == {"reference", "computed", "tests", "formal", "constraints"}
    names = {
        "math.reference": "reference", "math.sympy": "computed", "math.consistency": "consistency", "math.judge": "judge",
        "code.reference": "reference", "code.sandbox": "tests", "code.run": "runs", "logic.formal": "formal",
        "logic.reference": "reference", "factual.reference": "reference", "factual.consistency": "consistency",
        "creative.constraints": "constraints", "creative.judge": "judge", "analysis.coverage": "constraints",
        "analysis.judge": "judge", "math.error": None, "custom": None, None: None,
    }
    for name, method in names.items():
        assert method_of_verifier(name) == method, name
    assert Verdict(True, 1.0, "math.sympy").checked and not Verdict(True, 1.0, "math.consistency").checked


def test_creative_and_analysis_methods():
    cr = get_domain("creative")
    assert cr.verify("A tale.", ctx("Write something lovely.", judge=lambda p: 1.0)).method == "judge"
    assert cr.verify("The cat slept. Then it woke.", ctx("Write a story in exactly 2 sentences.")).method == "constraints"
    an = get_domain("analysis")
    steps = ["Costs: building plants is expensive.", "Risks: accidents and waste storage.", "Benefits: low carbon output."]
    v = an.verify("Overall, nuclear power pays off where waste storage is solved.",
                  ctx("Discuss the costs, risks and benefits of nuclear power.", steps=steps))
    assert v.passed and v.method == "constraints"
    # One point only: echoing the request's words checks nothing; only a judge can accept it.
    q = "Why did the Roman empire decline?"
    echo = "Overall, the Roman empire declined for many reasons over several centuries."
    assert not an.verify(echo, ctx(q)).passed and an.verify(echo, ctx(q)).method == "judge"
    assert an.verify(echo, ctx(q, judge=lambda p: 1.0)).passed


def test_every_domain_bounds_unchecked_rewards():
    """Whatever the domain, an answer nothing checked scores at most the cap, even with a perfect value."""
    cases = {
        "math": ("12", ctx(SADE, sibling_answers=["12", "12"])),
        "code": ("print('hi')\n", ctx("Print hi.", options=FAST_SANDBOX)),
        "logic": ("the butler", ctx("Which suspect lied?", sibling_answers=["the butler"])),
        "factual": ("Paris", ctx("Which city hosts it?", sibling_answers=["Paris"])),
        "creative": ("A tale.", ctx("Write something lovely.", judge=lambda p: 1.0)),
        "analysis": ("Overall, it declined for many reasons over several centuries.", ctx("Why did Rome decline?", judge=lambda p: 1.0)),
    }
    assert set(cases) == set(DOMAIN_NAMES)
    for name, (answer, c) in cases.items():
        d = get_domain(name, FAST_SANDBOX if name == "code" else None)
        v = d.verify(answer, c)
        assert not v.checked, (name, v.verifier)
        r = d.reward(v, 1.0, c)
        assert r.value <= UNCHECKED_REWARD_CAP, (name, r)
