"""Math: the final answer is checked with sympy against the value computed from the question.

Computable questions (arithmetic expressions, "15% of 80", "solve 2x + 3 = 11", "sum of 1 to 10",
gcd/lcm, roots, means, ...; see `math_expr.compute_expected`) are verified exactly. Every numeric
equation written in a step ("17 * 23 = 391") is checked too; the share that hold is a reward
component. Questions that cannot be computed (word problems) fall back to agreement across the
tree's other answers (self-consistency) and the LLM judge.
"""

from __future__ import annotations

import math
import re
from typing import Any

import sympy

from ._common import DomainBase, agreement, answer_text, ask_judge, consistency_passes, failed, norm_text
from .base import Verdict, VerifyContext
from .math_expr import compute_expected, fmt, parse_number, same_value, step_equations

_BOXED = re.compile(r"\\boxed\s*\{")
_VAR_EQ = re.compile(r"\b[a-zA-Z]\s*=\s*([^,;=]+?)(?=\s*(?:,|;|\bor\b|\band\b|$))")
_LEADING_NUMBER = re.compile(r"^\s*\$?\s*(-?\d[\d,]*(?:\.\d+)?(?:\s*/\s*\d+)?)")
_FILLER = re.compile(r"^(?:the\s+)?(?:final\s+)?(?:answer|result|value|total)\s*(?:is|=|:)\s*", re.IGNORECASE)
# Connectives small models open an answer line with ("So, the answer is 20").
_CONNECTIVE = re.compile(r"^(?:so|therefore|thus|hence|then|finally|overall|in total)\b[,:]?\s*", re.IGNORECASE)
# A sentence that ends by stating a number ("the number of apples left is 20 apples").
_STATED_NUMBER = re.compile(r"\b(?:is|are|equals|makes|gives)\s+(-?\d[\d,]*(?:\.\d+)?(?:/\d+)?)(?:\s*%|\s+[a-zA-Z]+)?\s*$",
                            re.IGNORECASE)


def _unbox(text: str) -> str:
    m = _BOXED.search(text)
    if not m:
        return text
    depth, i = 1, m.end()
    while i < len(text) and depth:
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        i += 1
    return text[m.end(): i - 1]


def normalise_math_answer(raw: str) -> str | None:
    """'$1,234.50.' → '1234.50'; '\\boxed{42}' → '42'; 'x = 4' → '4'; '12 apples' → '12'; 'x=2 or x=-2' → '2, -2'."""
    line = next((ln.strip() for ln in raw.splitlines() if ln.strip()), "")
    s = _unbox(line).strip().strip("*`").strip()
    s = _FILLER.sub("", _CONNECTIVE.sub("", s)).strip()
    s = s.replace("\\$", "").replace("$", "").replace("\\%", "%").strip()
    s = re.sub(r"[.;:]+$", "", s).strip()
    if not s:
        return None
    eqs = [m.group(1).strip() for m in _VAR_EQ.finditer(s)]
    if eqs and len(eqs) >= 1 and re.match(r"^\s*[a-zA-Z]\s*=", s):
        s = ", ".join(eqs)
    elif "=" in s:
        # An equation as the answer ("4 + 9 = 13", "Remaining equation: 2 - 2 = 0") states its
        # last side; its leading number would be an operand, not the result.
        last = s.rsplit("=", 1)[1].strip()
        if parse_number(last) is not None or _LEADING_NUMBER.match(last):
            s = last
    if parse_number(s) is not None or _parses_as_list(s):
        return re.sub(r"(?<=\d),(?=\d{3}\b)", "", s).rstrip("%").strip()
    m = _LEADING_NUMBER.match(s)
    if m:  # a number followed by units or words: keep the number
        return m.group(1).replace(",", "")
    m = _STATED_NUMBER.search(s)
    if m:  # prose that ends by stating its number
        return m.group(1).replace(",", "")
    return s


_LIST_SEPARATOR = re.compile(r"\s*(?:,|\bor\b|\band\b)\s*")


def _list_items(s: str) -> list[str]:
    """'2, -2' / '2 or -2' / '2 and -2' -> ['2', '-2']."""
    return [p for p in _LIST_SEPARATOR.split(s) if p]


def _parses_as_list(s: str) -> bool:
    parts = _list_items(s)
    return len(parts) > 1 and all(parse_number(p) is not None for p in parts)


def _answer_parts(answer: str) -> list[str]:
    """The answer as one value when it parses as one, else its list items."""
    return [answer] if parse_number(answer.rstrip("%")) is not None else _list_items(answer)


def _values(answer: str) -> list[Any] | None:
    """The numeric value(s) an answer states, or None when it states none."""
    whole = parse_number(answer.rstrip("%"))
    if whole is not None:
        return [whole]
    vals = [parse_number(p) for p in _list_items(answer)]
    return vals if vals and all(v is not None for v in vals) else None


_LITERAL_RE = re.compile(r"^[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:e[-+]?\d+)?%?$", re.IGNORECASE)
_FRACTION_RE = re.compile(r"^([-+]?\d+)\s*/\s*(\d+)$")
_LATEX_FRACTION_RE = re.compile(r"^\\d?frac\{\s*([-+]?\d+)\s*\}\{\s*(\d+)\s*\}$")


def _states_a_value(part: str) -> bool:
    """A number literal or a fraction in lowest terms: a computed value, not an expression."""
    part = _LATEX_FRACTION_RE.sub(r"\1/\2", part.strip())
    if _LITERAL_RE.match(part):
        return True
    m = _FRACTION_RE.match(part)
    return bool(m) and int(m.group(2)) > 1 and math.gcd(int(m.group(1)), int(m.group(2))) == 1


def _unevaluated(answer: str, expected: Any) -> bool:
    """True when the answer restates an expression instead of computing it ('3 * 4 + 15' for 27).

    Only for rational expected values: an irrational result (sqrt(2), pi/4) is itself an expression.
    """
    exp = list(expected) if isinstance(expected, sympy.FiniteSet) else [expected]
    if not all(getattr(e, "is_Rational", False) for e in exp):
        return False
    return not all(_states_a_value(p) for p in _answer_parts(answer.strip()))


def _matches(answer: str, vals: list[Any], expected: Any) -> bool:
    if isinstance(expected, sympy.FiniteSet):
        exp = list(expected)
        return len(vals) == len(exp) and all(any(same_value(v, e, answer) for v in vals) for e in exp)
    return len(vals) == 1 and same_value(vals[0], expected, answer)


def same_answer(a: str, b: str) -> bool:
    """Two answers agree: equal values when both are numeric, else equal normalised text."""
    va, vb = _values(a), _values(b)
    if va is not None and vb is not None:
        return len(va) == len(vb) and all(any(same_value(x, y, a) for y in vb) for x in va)
    return norm_text(a) == norm_text(b)


class MathDomain(DomainBase):
    name = "math"
    # See docs/domains.md: "correct" when the question is computable, else consistency + judge.
    WEIGHTS = {"correct": 0.70, "consistency": 0.45, "judge": 0.25, "steps": 0.15, "value": 0.15}

    def extract_answer(self, text: str) -> str | None:
        raw = answer_text(text)
        return normalise_math_answer(raw) if raw is not None else None

    def _verify(self, answer: str | None, ctx: VerifyContext) -> Verdict:
        if answer is None or not answer.strip():
            return failed("math.sympy", "no answer")
        checks = step_equations(list(ctx.steps))
        steps = sum(c["ok"] for c in checks) / len(checks) if checks else None
        details: dict[str, Any] = {"step_equations": checks[:20]}
        vals = _values(answer)
        computed = compute_expected(ctx.query)
        if computed is not None:
            expected, how = computed
            details.update(method=how, expected=fmt(expected))
            if vals is None:
                return failed("math.sympy", f"answer is not a number or expression: {answer[:100]!r}",
                              signals={"correct": 0.0, "steps": steps}, **details)
            ok = _matches(answer, vals, expected)
            if ok and _unevaluated(answer, expected):
                ok = False
                details["reason"] = "the answer restates an expression instead of its value"
            details["answer_value"] = ", ".join(fmt(v) for v in vals)
            details["signals"] = {"correct": 1.0 if ok else 0.0, "steps": steps}
            return Verdict(passed=ok, score=1.0 if ok else 0.0, verifier="math.sympy", details=details)

        share, agreeing = agreement(answer, list(ctx.sibling_answers), same_answer)
        judge, judge_error = ask_judge(ctx.judge, f"Question: {ctx.query}\nProposed final answer: {answer}\n"
                                                  "Is the proposed answer correct? Reply with yes or no.")
        details.update(method="consistency", agreeing_siblings=agreeing, siblings=len(ctx.sibling_answers))
        if judge_error:
            details["judge_error"] = judge_error
        steps_ok = steps is None or steps == 1.0
        passed = consistency_passes(share, agreeing) and steps_ok and (judge is None or judge >= 0.5)
        details["signals"] = {"consistency": share, "judge": judge, "steps": steps}
        parts = [share] + ([judge] if judge is not None else [])
        return Verdict(passed=passed, score=sum(parts) / len(parts), verifier="math.consistency", details=details)
