"""Math: the final answer is checked against the caller's reference, else the value computed from the question.

A reference answer (`VerifyContext.reference`, e.g. a GSM8K label) decides first, by numeric
equivalence whatever the formatting or units (`$1,250.00` = `1250` = `1.25e3` = `1250 dollars`):
verifier "math.reference". Without one, computable questions (arithmetic expressions, "15% of 80",
"solve 2x + 3 = 11", "sum of 1 to 10", gcd/lcm, roots, means, ...; see `math_expr.compute_expected`)
are verified exactly: "math.sympy" (method "computed"). Every numeric equation written in a step
("17 * 23 = 391") is checked too; the share that hold is a reward component. Only questions with
neither (unlabelled word problems) fall back to agreement across the tree's other answers
("math.consistency") and the LLM judge; those verdicts are unchecked, and rewarded as such.
"""

from __future__ import annotations

import math
import re
from typing import Any

import sympy

from ._common import DomainBase, agreement, answer_text, ask_judge, consistency_passes, failed, norm_text
from .base import Verdict, VerifyContext
from .math_expr import compute_expected, decimals_of, fmt, parse_number, same_value, step_equations

_BOXED = re.compile(r"\\boxed\s*\{")
_VAR_EQ = re.compile(r"\b[a-zA-Z]\s*=\s*([^,;=]+?)(?=\s*(?:,|;|\bor\b|\band\b|$))")
# Scientific notation ("1.25e3"), which the expression parser does not read as one number.
_SCIENTIFIC = re.compile(r"(?<![\w.])(-?\d+(?:\.\d+)?[eE][-+]?\d{1,3})(?![\w.])")
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
    s = _SCIENTIFIC.sub(lambda m: _plain_decimal(m.group(1)), s)
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


def _plain_decimal(literal: str) -> str:
    """'1.25e3' -> '1250', '2.5E-2' -> '0.025' (exact: decimal arithmetic, no float rounding)."""
    from decimal import Decimal

    text = format(Decimal(literal), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


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


def _same_reference_value(answer: Any, answer_text: str, reference: Any, reference_text: str) -> bool:
    """Equal values, with rounding allowed to whichever side states its decimals (≥ 2).

    A reference of `3.33` accepts `10/3`, and an answer of `3.33` is accepted for a reference of `10/3`.
    """
    return same_value(answer, reference, answer_text) or (
        decimals_of(reference_text) >= 2 and same_value(reference, answer, reference_text))


def matches_reference(answer: str, reference: str) -> tuple[bool, str | None]:
    """(the answer states the reference's value(s), why not); both as normalised by `normalise_math_answer`.

    Numbers compare by value (one value, or the same set of values in any order); a reference that
    states no number ("no solution", "x > 2") compares as normalised text.
    """
    ref_vals = _values(reference)
    if ref_vals is None:
        ok = norm_text(answer) == norm_text(reference)
        return ok, None if ok else "the answer's text differs from the reference"
    vals = _values(answer)
    if vals is None:
        return False, f"answer is not a number or expression: {answer[:100]!r}"
    ref_parts = _answer_parts(reference)
    ans_parts = _answer_parts(answer)
    if len(vals) != len(ref_vals):
        return False, f"the answer states {len(vals)} value(s), the reference {len(ref_vals)}"
    ok = all(any(_same_reference_value(v, at, r, rt) for v, at in zip(vals, ans_parts))
             for r, rt in zip(ref_vals, ref_parts))
    if not ok:
        return False, "the answer's value differs from the reference"
    expected = sympy.FiniteSet(*ref_vals) if len(ref_vals) > 1 else ref_vals[0]
    if _unevaluated(answer, expected):
        return False, "the answer restates an expression instead of its value"
    return True, None


class MathDomain(DomainBase):
    name = "math"
    # See docs/domains.md: "correct" against the reference or the computed value, else consistency + judge.
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
        if ctx.reference is not None and str(ctx.reference).strip():
            return self._against_reference(answer, str(ctx.reference), steps, details)
        vals = _values(answer)
        computed = compute_expected(ctx.query)
        if computed is not None:
            expected, how = computed
            details.update(computed_by=how, expected=fmt(expected))
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
        details.update(agreeing_siblings=agreeing, siblings=len(ctx.sibling_answers))
        if judge_error:
            details["judge_error"] = judge_error
        steps_ok = steps is None or steps == 1.0
        passed = consistency_passes(share, agreeing) and steps_ok and (judge is None or judge >= 0.5)
        details["signals"] = {"consistency": share, "judge": judge, "steps": steps}
        parts = [p for p in (share, judge) if p is not None]
        # With a single answer only the judge gave evidence (and a judge alone never verifies).
        verifier = "math.judge" if share is None and judge is not None else "math.consistency"
        return Verdict(passed=passed, score=sum(parts) / len(parts) if parts else 0.0, verifier=verifier, details=details)

    def _against_reference(self, answer: str, reference: str, steps: float | None, details: dict[str, Any]) -> Verdict:
        """The caller's label decides, whatever the siblings agree on or the question computes to."""
        ref = normalise_math_answer(reference) or reference.strip()
        ok, why = matches_reference(answer, ref)
        details.update(reference=reference[:200], expected=ref[:200])
        vals = _values(answer)
        if vals is not None:
            details["answer_value"] = ", ".join(fmt(v) for v in vals)
        if why:
            details["reason"] = why
        details["signals"] = {"correct": 1.0 if ok else 0.0, "steps": steps}
        return Verdict(passed=ok, score=1.0 if ok else 0.0, verifier="math.reference", details=details)
