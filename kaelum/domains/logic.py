"""Logic: a reference answer decides; else propositional and syllogistic questions are formalised and checked.

A reference (`VerifyContext.reference`: "yes", "False", "the butler", ...) is compared in canonical
form (`canonical`: "Valid" = "yes", "Cannot be determined" = "unknown"): verifier "logic.reference".
Without one, see `logic_formal` for the recognised forms. A recognised question is verified exactly
(truth table / Venn models): "yes"-type answers (yes, true, valid, it follows) must match an
entailment, "no"-type answers (no, false, invalid, cannot be determined) a non-entailment. Anything
else falls back to self-consistency across the tree's answers and the LLM judge (unchecked).
"""

from __future__ import annotations

import re
from typing import Any

from ._common import DomainBase, agreement, answer_text, ask_judge, consistency_passes, failed, norm_text
from .base import Verdict, VerifyContext
from .logic_formal import LogicParseError, formalise

_YES = {"yes", "true", "valid", "it follows", "follows", "entailed", "correct", "tautology", "satisfiable",
        "equivalent", "sound", "always true"}
_NO = {"no", "false", "invalid", "not valid", "does not follow", "it does not follow", "not entailed", "incorrect",
       "not equivalent", "unsatisfiable", "not a tautology"}
_UNKNOWN = {"unknown", "cannot be determined", "can't be determined", "undetermined", "not enough information",
            "uncertain", "it cannot be determined", "indeterminate"}


def canonical(answer: str) -> str:
    """'Yes.' → 'yes'; 'Valid' → 'yes'; 'False' → 'no'; 'Cannot be determined' → 'unknown'; else the text."""
    t = norm_text(answer)
    t = re.sub(r"^(?:the\s+)?(?:answer|argument|conclusion|statement|it)\s+(?:is\s+)?", "", t).strip(" .,:")
    first = re.split(r"[,.;:!(]|\bbecause\b|\bsince\b|\bas\b", t, maxsplit=1)[0].strip()
    word = first.split(" ", 1)[0] if first else ""
    for cand in (t, first, word):
        if cand in _UNKNOWN:
            return "unknown"
        if cand in _NO:
            return "no"
        if cand in _YES:
            return "yes"
    return t


class LogicDomain(DomainBase):
    name = "logic"
    WEIGHTS = {"reference": 0.80, "formal": 0.80, "consistency": 0.50, "judge": 0.30, "value": 0.20}

    def extract_answer(self, text: str) -> str | None:
        raw = answer_text(text)
        if raw is None:
            return None
        line = next((ln.strip() for ln in raw.splitlines() if ln.strip()), "")
        line = line.strip("*`\"' ")
        return canonical(line) if line else None

    def _verify(self, answer: str | None, ctx: VerifyContext) -> Verdict:
        if answer is None or not answer.strip():
            return failed("logic.formal", "no answer")
        details: dict[str, Any] = {}
        try:
            formal = formalise(ctx.query)
        except LogicParseError as e:
            formal, details["formalise_error"] = None, str(e)
        ans = canonical(answer)
        if ctx.reference is not None and str(ctx.reference).strip():
            expected = canonical(str(ctx.reference))
            ok = ans == expected
            details.update(reference=str(ctx.reference)[:200], expected=expected, answer=ans)
            if formal is not None and formal.expected != expected:
                # The label wins, but a formal result that disagrees with it is worth seeing.
                details["formal_expected"] = formal.expected
            details["signals"] = {"reference": 1.0 if ok else 0.0}
            return Verdict(passed=ok, score=1.0 if ok else 0.0, verifier="logic.reference", details=details)
        if formal is not None:
            details.update(formal_kind=formal.kind, expected=formal.expected, answer=ans)
            if formal.note:
                details["formalisation"] = formal.note[:500]
            if ans not in ("yes", "no", "unknown"):
                return failed("logic.formal", f"answer is not yes/no/true/false/valid/invalid: {answer[:80]!r}",
                              signals={"formal": 0.0}, **details)
            ok = ans == formal.expected or (formal.expected == "no" and ans == "unknown" and formal.kind != "tautology")
            details["signals"] = {"formal": 1.0 if ok else 0.0}
            return Verdict(passed=ok, score=1.0 if ok else 0.0, verifier="logic.formal", details=details)

        share, agreeing = agreement(ans, list(ctx.sibling_answers), lambda a, b: canonical(a) == canonical(b))
        judge, judge_error = ask_judge(ctx.judge, f"Question: {ctx.query}\nProposed answer: {answer}\n"
                                                  "Is the proposed answer logically correct? Reply with yes or no.")
        details.update(agreeing_siblings=agreeing, siblings=len(ctx.sibling_answers))
        if judge_error:
            details["judge_error"] = judge_error
        passed = consistency_passes(share, agreeing) and (judge is None or judge >= 0.5)
        details["signals"] = {"consistency": share, "judge": judge}
        parts = [p for p in (share, judge) if p is not None]
        verifier = "logic.judge" if share is None and judge is not None else "logic.consistency"
        return Verdict(passed=passed, score=sum(parts) / len(parts) if parts else 0.0, verifier=verifier, details=details)
