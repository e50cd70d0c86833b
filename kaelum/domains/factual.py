"""Factual: a reference answer when one is known, else agreement across independent branches.

The reference comes from `VerifyContext.reference` (set by the caller) or from the JSONL file in
option `reference_file` — lines `{"question": ..., "answer": ..., "aliases": [...]}` — matched to
the query by normalised word overlap (no network). An answer matches a reference when, normalised
(case, articles, punctuation), it equals the answer or an alias, contains it as whole words, or
is a number equal to it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from difflib import SequenceMatcher
from pathlib import Path
from typing import Any, Mapping

from ._common import DomainBase, agreement, answer_text, ask_judge, consistency_passes, content_words, failed, stem
from .base import Verdict, VerifyContext

# Share of the content words (stemmed) two questions have in common, over the words of either.
MATCH_THRESHOLD = 0.6


def norm_fact(text: str) -> str:
    t = text.lower().strip()
    t = re.sub(r"[\"'`*_()\[\]]", "", t)
    t = re.sub(r"[.,;:!?]+", " ", t)
    t = re.sub(r"\b(?:the|a|an)\b", " ", t)
    t = re.sub(r"(?<=\d),(?=\d{3})", "", t)
    return " ".join(t.split())


def facts_agree(a: str, b: str) -> bool:
    """Same answer: equal normalised text, one containing the other as whole words, or ≥0.9 similar."""
    x, y = norm_fact(a), norm_fact(b)
    if not x or not y:
        return False
    if x == y:
        return True
    short, long = sorted((x, y), key=len)
    if len(short) >= 3 and re.search(rf"(?<!\w){re.escape(short)}(?!\w)", long):
        return True
    return SequenceMatcher(None, x, y).ratio() >= 0.9


@dataclass(frozen=True)
class ReferenceEntry:
    question: str
    answer: str
    aliases: tuple[str, ...] = ()


def load_references(path: str | Path) -> list[ReferenceEntry]:
    """Read a reference JSONL file; every bad line is reported in one error."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"reference_file {str(p)!r} does not exist; pass a JSONL file of "
                         '{"question": ..., "answer": ..., "aliases": [...]} lines')
    entries, problems = [], []
    for lineno, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as e:
            problems.append(f"line {lineno}: not JSON ({e.msg})")
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get("question"), str) or not isinstance(obj.get("answer"), str):
            problems.append(f"line {lineno}: needs string fields 'question' and 'answer'")
            continue
        aliases = obj.get("aliases", [])
        if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
            problems.append(f"line {lineno}: 'aliases' must be a list of strings")
            continue
        entries.append(ReferenceEntry(obj["question"], obj["answer"], tuple(aliases)))
    if problems:
        raise ValueError(f"invalid reference_file {str(p)!r}: " + "; ".join(problems[:10]))
    return entries


def _qkey(text: str) -> set[str]:
    return {stem(w) for w in content_words(re.sub(r"'s\b", "", text.lower()))}


class FactualDomain(DomainBase):
    name = "factual"
    WEIGHTS = {"reference": 0.70, "consistency": 0.45, "judge": 0.25, "value": 0.15}

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(options)
        ref = self.options.get("reference_file")
        self.references = load_references(ref) if ref else []

    def lookup(self, query: str) -> tuple[ReferenceEntry, float] | None:
        """The reference entry whose question best matches `query` (word overlap ≥ MATCH_THRESHOLD)."""
        q = _qkey(query)
        best, best_score = None, 0.0
        for e in self.references:
            k = _qkey(e.question)
            if not q or not k:
                continue
            # Word overlap, not character similarity: "capital of France" must not match "capital of Australia".
            score = len(q & k) / len(q | k)
            if score > best_score:
                best, best_score = e, score
        return (best, best_score) if best is not None and best_score >= MATCH_THRESHOLD else None

    def extract_answer(self, text: str) -> str | None:
        raw = answer_text(text)
        if raw is None:
            return None
        line = next((ln.strip() for ln in raw.splitlines() if ln.strip()), "")
        line = line.strip("*`\"' ").rstrip(".").strip()
        return line or None

    def _verify(self, answer: str | None, ctx: VerifyContext) -> Verdict:
        if answer is None or not norm_fact(answer):
            return failed("factual.reference", "no answer")
        details: dict[str, Any] = {}
        accepted: list[str] = []
        if ctx.reference:
            accepted = [ctx.reference]
            details["reference_source"] = "context"
        else:
            hit = self.lookup(ctx.query)
            if hit is not None:
                entry, score = hit
                accepted = [entry.answer, *entry.aliases]
                details.update(reference_source="file", reference_question=entry.question, match=round(score, 3))
        share, agreeing = agreement(answer, list(ctx.sibling_answers), facts_agree)
        details.update(agreeing_siblings=agreeing, siblings=len(ctx.sibling_answers))
        if accepted:
            ok = any(facts_agree(answer, a) for a in accepted)
            details.update(reference=accepted[0])
            details["signals"] = {"reference": 1.0 if ok else 0.0, "consistency": share}
            return Verdict(passed=ok, score=1.0 if ok else 0.0, verifier="factual.reference", details=details)
        judge, judge_error = ask_judge(ctx.judge, f"Question: {ctx.query}\nProposed answer: {answer}\n"
                                                  "Is the proposed answer factually correct? Reply with yes or no.")
        if judge_error:
            details["judge_error"] = judge_error
        passed = consistency_passes(share, agreeing) and (judge is None or judge >= 0.5)
        details["signals"] = {"consistency": share, "judge": judge}
        parts = [p for p in (share, judge) if p is not None]
        verifier = "factual.judge" if share is None and judge is not None else "factual.consistency"
        return Verdict(passed=passed, score=sum(parts) / len(parts) if parts else 0.0, verifier=verifier, details=details)
