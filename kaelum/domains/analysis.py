"""Analysis: every point the request asks about is addressed, and a conclusion is stated; plus the judge.

The request is split into the points it asks (`asked_points`): numbered or bulleted items, else
its separate questions, else the items of a list after a verb such as "compare", "discuss" or
"evaluate" ("discuss the costs, risks and benefits"), else the request as one point. A point is
covered when at least half of its content words (crudely stemmed; at least one) appear in the
steps or the answer. The conclusion is the answer itself: it must be a statement of at least
eight words, or shorter with a concluding marker ("overall", "therefore", "recommend", ...).

Coverage of two or more stated points is a check of the request's constraints (method
"constraints", verifier "analysis.coverage"): it guarantees that each point is addressed, not that
the analysis is sound. A request with a single point can only be accepted by the judge
("analysis.judge"), an unchecked verdict.
"""

from __future__ import annotations

import re
from typing import Any

from ._common import DomainBase, answer_text, ask_judge, content_words, failed, stem, unique
from .base import Verdict, VerifyContext

_LIST_VERB = re.compile(r"\b(?:compare|contrast|discuss|analy[sz]e|explain|evaluate|consider|address|cover|assess|"
                        r"describe|examine|outline|weigh|identify|summari[sz]e)\s+(.+)", re.IGNORECASE)
_MARKERS = re.compile(r"\b(?:overall|therefore|thus|hence|in conclusion|to conclude|in summary|on balance|"
                      r"recommend|conclude|should|best|the key|ultimately|so\b)", re.IGNORECASE)


def asked_points(request: str) -> list[str]:
    text = request.strip()
    items = re.findall(r"(?m)^\s*(?:\d+[.)]|[-*•]|\([a-z0-9]\))\s+(.+)$", text)
    if len(items) >= 2:
        return [i.strip() for i in items]
    questions = [q.strip() for q in re.findall(r"[^?.!\n]+\?", text)]
    if len(questions) >= 2:
        return questions
    pc = re.search(r"(?i)\b(pros|advantages|benefits|strengths)\s+and\s+(cons|disadvantages|drawbacks|risks|weaknesses)\s+(of\s+[^.?!;]+)", text)
    if pc:  # "the pros and cons of X" → "pros of X", "cons of X"
        return [f"{pc.group(1)} {pc.group(3)}", f"{pc.group(2)} {pc.group(3)}"]
    m = _LIST_VERB.search(text)
    if m:
        tail = re.split(r"[.?!;]", m.group(1))[0]
        tail = re.sub(r"^(?:the\s+)?", "", tail, flags=re.IGNORECASE)
        parts = [p.strip() for p in re.split(r",\s*(?:and\s+|or\s+)?|\s+and\s+|\s+versus\s+|\s+vs\.?\s+", tail) if p.strip()]
        parts = [p for p in parts if content_words(p)]
        if len(parts) >= 2:
            return parts
    return [text] if content_words(text) else []


def covered(point: str, text_stems: set[str]) -> tuple[bool, list[str]]:
    """(addressed, missing words): at least half the point's content words appear in the text."""
    words = unique(stem(w) for w in content_words(point))
    if not words:
        return True, []
    missing = [w for w in words if w not in text_stems]
    needed = max(1, (len(words) + 1) // 2)
    return len(words) - len(missing) >= needed, missing


def conclusion_score(answer: str) -> float:
    n = len(re.findall(r"[A-Za-z0-9']+", answer))
    if n >= 8 or (n >= 3 and _MARKERS.search(answer)):
        return 1.0
    return 0.5 if n >= 4 else 0.0


class AnalysisDomain(DomainBase):
    name = "analysis"
    WEIGHTS = {"coverage": 0.45, "conclusion": 0.20, "judge": 0.20, "value": 0.15}

    def extract_answer(self, text: str) -> str | None:
        raw = answer_text(text)
        if raw is None:
            return None
        body = raw.strip().strip("*").strip()
        return body or None

    def _verify(self, answer: str | None, ctx: VerifyContext) -> Verdict:
        if answer is None or not re.search(r"\w", answer):
            return failed("analysis.coverage", "no conclusion in the answer")
        points = asked_points(ctx.query)
        stems = {stem(w) for w in content_words(" ".join([*ctx.steps, answer]))}
        rows = []
        for p in points:
            ok, missing = covered(p, stems)
            rows.append({"point": p[:200], "covered": ok, "missing": missing[:10]})
        coverage = sum(r["covered"] for r in rows) / len(rows) if rows else None
        concl = conclusion_score(answer)
        judge, judge_error = ask_judge(ctx.judge, f"Request: {ctx.query}\n\nAnalysis:\n" + "\n".join(ctx.steps)
                                       + f"\nConclusion: {answer}\n\nIs this a sound analysis that answers the request "
                                       "with a justified conclusion? Reply with yes or no.")
        details: dict[str, Any] = {"points": rows, "signals": {"coverage": coverage, "conclusion": concl, "judge": judge}}
        if judge_error:
            details["judge_error"] = judge_error
        if coverage is None:
            details["error"] = "no point to check could be found in the request"
        passed = coverage is not None and coverage == 1.0 and concl == 1.0 and (judge is None or judge >= 0.5)
        parts = [p for p in (coverage, concl, judge) if p is not None]
        verifier = "analysis.coverage"
        if len(points) < 2:
            # A request that states no separate points is "covered" by echoing its own words: that
            # checks nothing, so only the judge can accept the answer (an unchecked verdict).
            verifier = "analysis.judge"
            passed = passed and judge is not None
        return Verdict(passed=passed, score=sum(parts) / len(parts), verifier=verifier, details=details)
