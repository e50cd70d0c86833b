"""Creative: the constraints stated in the request are checked deterministically, plus the LLM judge.

Recognised constraints (see `parse_constraints`): word, sentence and line counts ("in 50 words",
"at most 3 sentences", "exactly 4 lines"), words to include ("include the words moon and tide",
"use the word 'ember'") or avoid ("do not use the word love", "without the word sad"), opening
or closing words ("start with", "end with"), and forms: haiku (3 lines, 5-7-5 syllables by a
heuristic, ±1 per line), limerick (5 lines, AABBA rhyme by a suffix heuristic), acrostic (first
letters of the lines spell the given word).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

from ._common import DomainBase, answer_text, ask_judge, failed
from .base import Verdict, VerifyContext

_NUMWORDS = {w: i for i, w in enumerate("zero one two three four five six seven eight nine ten eleven twelve".split())}
_NUM = r"(\d+|zero|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve)"
_BOUND = r"(exactly|at\s+most|no\s+more\s+than|not\s+more\s+than|fewer\s+than|less\s+than|under|maximum\s+of|max\.?|up\s+to|at\s+least|more\s+than|over|minimum\s+of|about|around|roughly|approximately)?"


@dataclass(frozen=True)
class Constraint:
    name: str  # e.g. "words<=50", "include:moon", "form:haiku"
    check: Callable[[str], tuple[bool, str]]


def _num(s: str) -> int:
    return int(s) if s.isdigit() else _NUMWORDS[s.lower()]


def count_words(text: str) -> int:
    return len(re.findall(r"[A-Za-z0-9]+(?:['’-][A-Za-z0-9]+)*", text))


def count_sentences(text: str) -> int:
    return len([s for s in re.split(r"(?<=[.!?])\s+|\n+", text.strip()) if re.search(r"\w", s)])


def lines_of(text: str) -> list[str]:
    return [ln.strip() for ln in text.strip().splitlines() if ln.strip()]


def syllables(word: str) -> int:
    """Vowel groups, minus a silent final e, at least one: right for most common English words."""
    w = re.sub(r"[^a-z]", "", word.lower())
    if not w:
        return 0
    groups = len(re.findall(r"[aeiouy]+", w))
    if w.endswith("e") and not w.endswith(("le", "ee", "ye")) and groups > 1:
        groups -= 1
    if w.endswith("ed") and not w.endswith(("ted", "ded")) and groups > 1:
        groups -= 1
    return max(groups, 1)


def _rhyme_key(line: str) -> str:
    words = re.findall(r"[a-z']+", line.lower())
    if not words:
        return ""
    w = words[-1]
    m = re.search(r"[aeiouy]+[^aeiouy]*$", w)
    return m.group(0) if m else w[-2:]


def _bounded(kind: str, bound: str | None, n: int, counter: Callable[[str], int]) -> Constraint:
    b = re.sub(r"\s+", " ", (bound or "").lower())
    if b in ("at most", "no more than", "not more than", "maximum of", "max", "max.", "up to"):
        op, ok = "<=", lambda c: c <= n
    elif b in ("fewer than", "less than", "under"):
        op, ok = "<", lambda c: c < n
    elif b in ("at least", "minimum of"):
        op, ok = ">=", lambda c: c >= n
    elif b in ("more than", "over"):
        op, ok = ">", lambda c: c > n
    elif b == "exactly" or kind in ("lines", "sentences"):
        op, ok = "==", lambda c: c == n
    else:  # "in 50 words", "about 50 words": within 20 %
        op, ok = "~", lambda c: abs(c - n) <= max(2, round(0.2 * n))

    def check(text: str) -> tuple[bool, str]:
        c = counter(text)
        return ok(c), f"{c} {kind}"
    return Constraint(f"{kind}{op}{n}", check)


def _word_list(text: str) -> list[str]:
    quoted = re.findall(r"[\"'“‘]([^\"'”’]+)[\"'”’]", text)
    if quoted:
        return [q.strip().lower() for q in quoted if q.strip()]
    parts = re.split(r",\s*|\s+and\s+|\s+or\s+", text)
    return [p.strip().lower() for p in parts if p.strip() and len(p.split()) <= 3]


def _contains(text: str, word: str) -> bool:
    return re.search(rf"(?<![A-Za-z]){re.escape(word)}(?:s|es|ed|ing)?(?![A-Za-z])", text, re.IGNORECASE) is not None


def parse_constraints(request: str) -> list[Constraint]:
    r = request
    out: list[Constraint] = []
    for kind, counter in (("words", count_words), ("sentences", count_sentences), ("lines", lambda t: len(lines_of(t)))):
        unit = {"words": r"words?", "sentences": r"sentences?", "lines": r"lines?"}[kind]
        for m in re.finditer(rf"{_BOUND}\s*{_NUM}[\s-]+{unit}\b", r, re.IGNORECASE):
            out.append(_bounded(kind, m.group(1), _num(m.group(2)), counter))
    for m in re.finditer(r"(?:do\s+not|don't|never|must\s+not)\s+(?:use|include|mention|say)\s+(?:the\s+)?(?:words?\s+)?(.+?)(?:[.;]|$)|(?:without\s+(?:using\s+)?|avoid(?:ing)?\s+)(?:the\s+)?words?\s+(.+?)(?:[.;]|$)", r, re.IGNORECASE):
        for w in _word_list(m.group(1) or m.group(2)):
            out.append(Constraint(f"avoid:{w}", lambda t, w=w: (not _contains(t, w), "absent" if not _contains(t, w) else "present")))
    for m in re.finditer(r"(?<!not )(?<!n't )(?:include|includes|including|use|using|containing|contain|mention)\s+(?:the\s+)?words?\s+(.+?)(?:[.;]|$)", r, re.IGNORECASE):
        for w in _word_list(m.group(1)):
            out.append(Constraint(f"include:{w}", lambda t, w=w: (_contains(t, w), "present" if _contains(t, w) else "missing")))
    m = re.search(r"(?:start|begin)s?\s+with\s+(?:the\s+word\s+)?[\"'“]?([A-Za-z']+)", r, re.IGNORECASE)
    if m:
        w = m.group(1).lower()
        out.append(Constraint(f"starts:{w}", lambda t, w=w: ((re.findall(r"[a-z']+", t.lower()) or [""])[0] == w, "")))
    m = re.search(r"ends?\s+with\s+(?:the\s+word\s+)?[\"'“]?([A-Za-z']+)", r, re.IGNORECASE)
    if m:
        w = m.group(1).lower()
        out.append(Constraint(f"ends:{w}", lambda t, w=w: ((re.findall(r"[a-z']+", t.lower()) or [""])[-1] == w, "")))
    if re.search(r"\bhaiku\b", r, re.IGNORECASE):
        out.append(Constraint("form:haiku", _haiku))
    if re.search(r"\blimerick\b", r, re.IGNORECASE):
        out.append(Constraint("form:limerick", _limerick))
    m = re.search(r"\bacrostic\b.*?(?:spell(?:s|ing)?|for|of|word)\s+[\"'“]?([A-Za-z]{2,})", r, re.IGNORECASE)
    if m:
        word = m.group(1).upper()
        out.append(Constraint(f"form:acrostic:{word}", lambda t, word=word: _acrostic(t, word)))
    return out


def _haiku(text: str) -> tuple[bool, str]:
    ls = lines_of(text)
    counts = [sum(syllables(w) for w in re.findall(r"[A-Za-z']+", ln)) for ln in ls]
    ok = len(ls) == 3 and all(abs(c - e) <= 1 for c, e in zip(counts, (5, 7, 5)))
    return ok, f"{len(ls)} lines, syllables {counts}"


def _limerick(text: str) -> tuple[bool, str]:
    ls = lines_of(text)
    keys = [_rhyme_key(ln) for ln in ls]
    ok = len(ls) == 5 and keys[0] == keys[1] == keys[4] and keys[2] == keys[3] and keys[0] != ""
    return ok, f"{len(ls)} lines, endings {keys}"


def _acrostic(text: str, word: str) -> tuple[bool, str]:
    firsts = "".join(re.sub(r"^[^A-Za-z]*", "", ln)[:1].upper() for ln in lines_of(text))
    return firsts == word, f"first letters {firsts!r}"


class CreativeDomain(DomainBase):
    name = "creative"
    WEIGHTS = {"constraints": 0.60, "judge": 0.25, "value": 0.15}

    def extract_answer(self, text: str) -> str | None:
        raw = answer_text(text)
        if raw is None:
            return None
        body = re.sub(r"^```[^\n]*\n|\n?```\s*$", "", raw.strip()).strip()
        if len(body) >= 2 and body[0] == body[-1] and body[0] in "\"'“”":
            body = body[1:-1].strip()
        return body or None

    def _verify(self, answer: str | None, ctx: VerifyContext) -> Verdict:
        if answer is None or not re.search(r"\w", answer):
            return failed("creative.constraints", "no text in the answer")
        results = []
        for c in parse_constraints(ctx.query):
            ok, detail = c.check(answer)
            results.append({"constraint": c.name, "ok": bool(ok), "detail": detail})
        judge, judge_error = ask_judge(ctx.judge, f"Request: {ctx.query}\n\nPiece:\n{answer}\n\n"
                                                  "Does the piece fulfil the request and read well? Reply with yes or no.")
        frac = sum(r["ok"] for r in results) / len(results) if results else None
        details: dict[str, Any] = {"constraints": results, "words": count_words(answer),
                                   "signals": {"constraints": frac, "judge": judge}}
        if judge_error:
            details["judge_error"] = judge_error
        if frac is None and judge is None:
            details["error"] = "no checkable constraint in the request and no judge available"
            return Verdict(passed=False, score=0.0, verifier="creative.constraints", details=details)
        passed = (frac is None or frac == 1.0) and (judge is None or judge >= 0.5)
        parts = [p for p in (frac, judge) if p is not None]
        # Without a checkable constraint only the judge's opinion decided: an unchecked verdict.
        verifier = "creative.constraints" if frac is not None else "creative.judge"
        return Verdict(passed=passed, score=sum(parts) / len(parts), verifier=verifier, details=details)
