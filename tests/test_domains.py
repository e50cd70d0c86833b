"""Verifiers and rewards of the six domains: right, wrong and malformed answers for each.

No LLM here: where a verifier uses the judge, a fixed function stands in for it (the judge's
contract is only "prompt in, score in [0, 1] out"), and one that raises shows the verifier still
does not.
"""

from __future__ import annotations

import json

import pytest

from kaelum.domains import DOMAIN_NAMES, VerifyContext, get_domain
from kaelum.domains.math_expr import MathParseError, compute_expected, parse_expr, step_equations
from kaelum.prompts import format_completion

FAST_SANDBOX = {"timeout_s": 5.0, "per_test_timeout_s": 2.0, "cpu_s": 3, "memory_mb": 256}


def ctx(query: str, **kw) -> VerifyContext:
    return VerifyContext(query=query, **kw)


def check_reward(domain, verdict, c, value=0.5):
    r = domain.reward(verdict, value, c)
    assert 0.0 <= r.value <= 1.0
    assert all(isinstance(v, float) for v in r.components.values())
    assert r.components.get("value") == value
    return r


# --- registry ---------------------------------------------------------------------------------

def test_get_domain_all_and_unknown():
    for name in DOMAIN_NAMES:
        d = get_domain(name)
        assert d.name == name
        assert d.extract_answer("no answer line here") is None
        v = d.verify(None, ctx("anything"))
        assert not v.passed and v.details["error"]
    with pytest.raises(ValueError, match="unknown domain 'poetry'; expected one of math, code"):
        get_domain("poetry")


# --- math -------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,expected", [
    ("Step 1: 17*23 = 391\nAnswer: 391", "391"),
    ("Answer: $1,234.50.", "1234.50"),
    ("Answer: \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("Answer: x = 4", "4"),
    ("Answer: 12 apples", "12"),
    ("Answer: The answer is 7/2.", "7/2"),
    # An equation as the answer states its result, not its first operand (SmolLM2 writes these).
    ("Answer: Remaining equation: 2 - 2 = 0", "0"),
    ("Answer: 4 + 9 = 13", "13"),
    ("Answer: So, 20 + 5 = 25.", "25"),
    ("Answer: 12 - 4 = 12 - 4 = 8", "8"),
    ("Answer: x = 2 or x = -2", "2, -2"),
    # Prose answers the 135M model writes (seen in the search benchmark).
    ("Answer: So, the answer is 20", "20"),
    ("Answer: Therefore, the total is $42.", "42"),
    ("Answer: The number of marbles left is 33 marbles.", "33"),
    ("Answer: The answer to the question of 6 + 4 - 6", "The answer to the question of 6 + 4 - 6"),
])
def test_math_extract(text, expected):
    assert get_domain("math").extract_answer(text) == expected


@pytest.mark.parametrize("query,value", [
    ("What is 17 * 23?", 391), ("Compute (3+4)^2", 49), ("What is 15% of 80?", 12), ("Solve 2x + 3 = 11", 4),
    ("What is the sum of 1 to 10?", 55), ("What is 12 plus 7 times 3?", 33), ("Calculate 5!", 120),
    ("What is the greatest common divisor of 12 and 18?", 6), ("What is 1,234 + 4,321?", 5555),
])
def test_math_computes_questions(query, value):
    got, _ = compute_expected(query)
    assert got == value


def test_math_parser_refuses_bombs_and_code():
    for bomb in ("9**9**9", "2^10000000", "factorial(100000)", "(" * 200 + "1" + ")" * 200):
        with pytest.raises(MathParseError):
            parse_expr(bomb)
    for code in ("__import__('os').system('true')", "().__class__", "open('x')", "[1, 2]", "lambda: 1"):
        with pytest.raises(MathParseError):
            parse_expr(code)
    assert compute_expected("What is 9**9**9?") is None
    assert compute_expected("Tom has 3 apples and buys 5 more. How many does he have?") is None


def test_math_right_wrong_malformed():
    d = get_domain("math")
    steps = ["17 * 23 = 17 * 20 + 17 * 3", "340 + 51 = 391"]
    c = ctx("What is 17 * 23?", steps=steps)
    right, wrong, bad = d.verify("391", c), d.verify("392", c), d.verify("banana", c)
    assert right.passed and right.score == 1.0 and right.verifier == "math.sympy" and right.details["expected"] == "391"
    assert not wrong.passed and wrong.score == 0.0
    assert not bad.passed and "not a number" in bad.details["error"]
    r_right, r_wrong = check_reward(d, right, c), check_reward(d, wrong, c)
    assert r_right.value > 0.85 > 0.35 > r_wrong.value
    assert r_right.components["correct"] == 1.0 and r_right.components["steps"] == 1.0


@pytest.mark.parametrize(
    "query, answer, passed",
    [
        ("What is 3 * 4 + 15?", "3 * 4 + 15", False),  # restating the question is not computing it
        ("What is 3 * 4 + 15?", "54/2", False),  # an unreduced fraction is still an expression
        ("What is 3 * 4 + 15?", "27", True),
        ("What is 3 * 4 + 15?", "27.0", True),
        ("What is 1/2?", "1/2", True),  # a fraction in lowest terms is a value
        ("Solve x^2 = 4", "2, -2", True),
        ("What is 7 - 10?", "-3", True),
        ("What is the square root of 2?", "sqrt(2)", True),  # an irrational result is an expression
    ],
)
def test_math_answer_must_state_the_value_not_the_expression(query, answer, passed):
    verdict = get_domain("math").verify(answer, VerifyContext(query=query))
    assert verdict.passed is passed
    if not passed:
        assert verdict.details["reason"] == "the answer restates an expression instead of its value"


def test_math_step_equations_lower_the_reward():
    d = get_domain("math")
    good = ctx("What is 17 * 23?", steps=["17 * 23 = 391"])
    sloppy = ctx("What is 17 * 23?", steps=["17 * 20 = 350", "350 + 41 = 391"])
    vg, vs = d.verify("391", good), d.verify("391", sloppy)
    assert vg.passed and vs.passed
    assert [e["ok"] for e in vs.details["step_equations"]] == [False, True]
    assert d.reward(vs, 0.5, sloppy).value < d.reward(vg, 0.5, good).value
    assert step_equations(["x = 4", "so 7 = 7"]) == []  # no arithmetic claim


def test_math_multiple_solutions_and_rounding():
    d = get_domain("math")
    assert d.verify("2, -2", ctx("Solve x^2 = 4")).passed
    assert not d.verify("2", ctx("Solve x^2 = 4")).passed
    assert d.verify("3.33", ctx("What is 10 / 3?")).passed
    assert d.verify("10/3", ctx("What is 10 / 3?")).passed
    assert not d.verify("3.3", ctx("What is 10 / 3?")).passed
    assert d.verify("\\frac{1}{2}", ctx("What is 3 / 6?")).passed


def test_math_uncomputable_uses_agreement_and_judge():
    d = get_domain("math")
    q = "Tom has 3 apples and buys 5 more. How many apples does he have?"
    agree = d.verify("8", ctx(q, sibling_answers=["8", "8.0", "7"]))
    alone = d.verify("8", ctx(q, sibling_answers=["7", "9"]))
    assert agree.passed and agree.verifier == "math.consistency" and agree.details["agreeing_siblings"] == 2
    assert not alone.passed
    vetoed = d.verify("8", ctx(q, sibling_answers=["8"], judge=lambda prompt: 0.0))
    assert not vetoed.passed and vetoed.details["signals"]["judge"] == 0.0
    broken = d.verify("8", ctx(q, sibling_answers=["8"], judge=lambda prompt: 1 / 0))
    assert broken.passed and "judge failed" in broken.details["judge_error"]


# --- code -------------------------------------------------------------------------------------

ADD_OUTPUT = """Step 1: Add the two numbers.
Answer:
```python
def add(a, b):
    return a + b

assert add(1, 2) == 3
```
"""


def test_code_extract_and_model_tests():
    d = get_domain("code", FAST_SANDBOX)
    code = d.extract_answer(ADD_OUTPUT)
    assert code.startswith("def add(a, b):") and "assert add(1, 2) == 3" in code
    assert d.extract_answer("Answer: I am not sure.") is None
    v = d.verify(code, ctx("Write add(a, b)."))
    assert v.passed and v.details["tests_source"] == "model" and v.details["tests_total"] == 1
    r = check_reward(d, v, ctx("Write add(a, b)."))
    assert r.components["test_confidence"] == 0.8 and r.value < 0.85


def test_code_right_wrong_malformed_against_given_tests():
    d = get_domain("code", FAST_SANDBOX)
    tests = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "def test_big():\n    assert add(10**6, 1) == 1000001\n"]
    c = ctx("Write add(a, b).", tests=tests)
    right = d.verify("def add(a, b):\n    return a + b\n", c)
    partly = d.verify("def add(a, b):\n    return abs(a) + b\n", c)
    wrong = d.verify("def add(a, b):\n    return a - b\n", c)
    bad = d.verify("def add(a, b:\n    return", c)
    assert right.passed and right.score == 1.0 and right.details["tests_source"] == "given"
    assert not partly.passed and partly.score == pytest.approx(2 / 3)
    assert not wrong.passed and wrong.score == 0.0
    assert not bad.passed and "does not parse" in bad.details["error"]
    values = [check_reward(d, v, c).value for v in (right, partly, wrong, bad)]
    assert values[0] > values[1] > values[2] >= values[3]
    # The model's own (wrong) assertion does not break the run when tests are given.
    own_wrong = d.verify("def add(a, b):\n    return a + b\nassert add(1, 1) == 3\n", c)
    assert own_wrong.passed


def test_code_hostile_answer_is_a_failed_verdict():
    d = get_domain("code", FAST_SANDBOX)
    c = ctx("Write add(a, b).", tests=["assert add(1, 2) == 3"])
    v = d.verify("import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=1)\ndef add(a, b):\n    return a + b\n", c)
    assert not v.passed and "failed to run" in v.details["error"]
    v = d.verify("while True:\n    pass\n", ctx("loop", tests=["assert True"], options={"per_test_timeout_s": 0.5}))
    assert not v.passed and v.details["sandbox"]["load_error"] == "timeout"


def test_code_without_any_tests_is_not_verified():
    d = get_domain("code", FAST_SANDBOX)
    v = d.verify("print('hello')\n", ctx("Print hello."))
    assert not v.passed and v.verifier == "code.run" and v.details["signals"]["runs"] == 1.0
    assert check_reward(d, v, ctx("Print hello.")).value <= 0.5


def test_code_bad_sandbox_options_fail_at_construction():
    with pytest.raises(ValueError, match="timeout_s must be a positive number"):
        get_domain("code", {"timeout_s": -1})


# --- logic ------------------------------------------------------------------------------------

@pytest.mark.parametrize("query,right,wrong", [
    ("All men are mortal. Socrates is a man. Is Socrates mortal?", "Yes", "No"),
    ("All cats are mammals. Some mammals are dogs. Therefore, some cats are dogs. Is this argument valid?", "Invalid", "Valid"),
    ("No birds are fish. All sparrows are birds. Therefore, no sparrows are fish. Is this valid?", "valid", "invalid"),
    ("Is (p -> q) & p -> q a tautology?", "yes", "no"),
    ("Is p & ~p satisfiable?", "No", "Yes"),
    ("Are p -> q and ~q -> ~p equivalent?", "true", "false"),
    ("Given p -> q and q, does p follow?", "No, it does not follow.", "Yes"),
    ("If it rains, then the ground is wet. The ground is not wet. Does it follow that it does not rain?", "Yes", "No"),
])
def test_logic_formal_right_and_wrong(query, right, wrong):
    d = get_domain("logic")
    c = ctx(query)
    r, w = d.verify(d.extract_answer(f"Answer: {right}"), c), d.verify(d.extract_answer(f"Answer: {wrong}"), c)
    assert r.passed and r.verifier == "logic.formal", r.details
    assert not w.passed
    assert check_reward(d, r, c).value > check_reward(d, w, c).value


def test_logic_malformed_and_informal():
    d = get_domain("logic")
    c = ctx("All men are mortal. Socrates is a man. Is Socrates mortal?")
    bad = d.verify("purple", c)
    assert not bad.passed and "not yes/no" in bad.details["error"]
    q = "Which of the three suspects lied, given their statements?"
    v = d.verify("the butler", ctx(q, sibling_answers=["The butler.", "the gardener"]))
    assert v.passed and v.verifier == "logic.consistency"
    assert not d.verify("the cook", ctx(q, sibling_answers=["the butler"])).passed
    # A symbolic question whose formula does not parse falls back instead of raising.
    v = d.verify("yes", ctx("Is p -> a tautology?"))
    assert v.verifier == "logic.consistency" and "formalise_error" in v.details


# --- factual ----------------------------------------------------------------------------------

def test_factual_reference_file(tmp_path):
    ref = tmp_path / "ref.jsonl"
    ref.write_text(json.dumps({"question": "What is the capital of Australia?", "answer": "Canberra"}) + "\n"
                   + json.dumps({"question": "Who wrote Hamlet?", "answer": "William Shakespeare", "aliases": ["Shakespeare"]}) + "\n")
    d = get_domain("factual", {"reference_file": str(ref)})
    c = ctx("what's the capital of australia?")
    right, wrong = d.verify("Canberra", c), d.verify("Sydney", c)
    assert right.passed and right.details["reference_source"] == "file"
    assert not wrong.passed
    assert d.verify("Shakespeare", ctx("Who wrote the play Hamlet?")).passed
    assert check_reward(d, right, c).value > 0.7 > check_reward(d, wrong, c).value
    # A question the file does not cover falls back to agreement.
    v = d.verify("Paris", ctx("What is the capital of France?", sibling_answers=["Paris, France", "paris"]))
    assert v.passed and v.method == "consistency" and not v.checked


def test_factual_context_reference_and_malformed(tmp_path):
    d = get_domain("factual")
    assert d.verify("Mount Everest", ctx("Highest mountain?", reference="Everest")).passed
    assert not d.verify("K2", ctx("Highest mountain?", reference="Everest")).passed
    assert not d.verify("...", ctx("Highest mountain?")).passed
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q"}\nnot json\n')
    with pytest.raises(ValueError, match="line 1: needs string fields.*line 2: not JSON"):
        get_domain("factual", {"reference_file": str(bad)})
    with pytest.raises(ValueError, match="does not exist"):
        get_domain("factual", {"reference_file": str(tmp_path / "missing.jsonl")})


# --- creative ---------------------------------------------------------------------------------

HAIKU_REQUEST = "Write a haiku about the sea. Include the words moon and tide. Do not use the word blue."


def test_creative_constraints_right_wrong_malformed():
    d = get_domain("creative")
    good = "Silver moon rises\nthe tide pulls the quiet shore\nwaves hum in the dark"
    bad_form = "The moon and the tide\nare blue"
    c = ctx(HAIKU_REQUEST)
    vg, vb = d.verify(d.extract_answer(f"Answer:\n{good}"), c), d.verify(bad_form, c)
    assert vg.passed and all(x["ok"] for x in vg.details["constraints"])
    failed = {x["constraint"] for x in vb.details["constraints"] if not x["ok"]}
    assert failed == {"avoid:blue", "form:haiku"} and not vb.passed
    assert check_reward(d, vg, c).value > check_reward(d, vb, c).value
    assert not d.verify("   ", c).passed


def test_creative_counts_and_judge():
    d = get_domain("creative")
    c = ctx("Write a story in at most 12 words, in exactly 2 sentences.")
    assert d.verify("The cat slept. Then it woke up hungry.", c).passed
    assert not d.verify("The cat slept all day long and then it woke up very hungry indeed.", c).passed
    # No checkable constraint: the judge decides; without one nothing is verified.
    assert d.verify("A tale.", ctx("Write something lovely.", judge=lambda p: 1.0)).passed
    assert not d.verify("A tale.", ctx("Write something lovely.", judge=lambda p: 0.0)).passed
    v = d.verify("A tale.", ctx("Write something lovely."))
    assert not v.passed and "no checkable constraint" in v.details["error"]


# --- analysis ---------------------------------------------------------------------------------

def test_analysis_coverage_and_conclusion():
    d = get_domain("analysis")
    q = "Discuss the costs, risks and benefits of nuclear power."
    steps = ["Costs: building plants is expensive.", "Risks: accidents and waste storage.", "Benefits: low carbon output."]
    good = ctx(q, steps=steps)
    v = d.verify(d.extract_answer(format_completion(steps, "Overall, nuclear power pays off where waste storage is solved.")), good)
    assert v.passed and v.details["signals"]["coverage"] == 1.0
    partial = ctx(q, steps=steps[:1])
    w = d.verify("Yes.", partial)
    assert not w.passed and w.details["signals"]["conclusion"] == 0.0
    assert [p["covered"] for p in w.details["points"]] == [True, False, False]
    assert check_reward(d, v, good).value > check_reward(d, w, partial).value
    assert not d.verify("", good).passed


def test_every_verifier_survives_an_internal_error(monkeypatch):
    import kaelum.domains.math as m

    monkeypatch.setattr(m, "compute_expected", lambda q: 1 / 0)
    v = get_domain("math").verify("4", ctx("What is 2 + 2?"))
    assert not v.passed and v.verifier == "math.error" and "ZeroDivisionError" in v.details["error"]


# --- property: the question parser agrees with exact arithmetic --------------------------------

from fractions import Fraction  # noqa: E402

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=60, deadline=None)
@given(a=st.integers(-999, 999), b=st.integers(-999, 999), c=st.integers(1, 50), op=st.sampled_from(["+", "-", "*", "/"]))
def test_math_question_matches_exact_arithmetic(a, b, c, op):
    expected = {"+": Fraction(a + b), "-": Fraction(a - b), "*": Fraction(a * b), "/": Fraction(a, c)}[op]
    rhs = c if op == "/" else b
    got, how = compute_expected(f"What is {a} {op} ({rhs})?")
    assert how == "expression" and Fraction(str(got)) == expected
    d = get_domain("math")
    answer = str(expected.numerator) if expected.denominator == 1 else f"{expected.numerator}/{expected.denominator}"
    assert d.verify(answer, ctx(f"What is {a} {op} ({rhs})?")).passed
    assert not d.verify(str(expected + 1), ctx(f"What is {a} {op} ({rhs})?")).passed
