"""Routes a query to one of the six domains by weighted patterns; an explicit domain wins.

Each domain has a list of (pattern, weight) cues. A query's score for a domain is the sum of the
weights of the cues it matches; confidence is the winner's share of all scores, discounted when
the evidence is thin (a single weak cue is not a confident decision). With no cue at all the
query goes to `factual` with the confidence of a uniform guess, method "default".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping

from .events import DOMAINS


@dataclass(frozen=True)
class Route:
    domain: str
    confidence: float  # in [0, 1]
    method: str  # explicit | keywords | default
    scores: Mapping[str, float] = field(default_factory=dict)

    def as_event(self) -> dict[str, object]:
        """The `router` object of `trace_started`."""
        return {"domain": self.domain, "confidence": round(self.confidence, 4), "method": self.method}


def _cues(*pairs: tuple[str, float]) -> list[tuple[re.Pattern[str], float]]:
    return [(re.compile(p, re.IGNORECASE), w) for p, w in pairs]


CUES: dict[str, list[tuple[re.Pattern[str], float]]] = {
    "math": _cues(
        (r"\d+\s*[-+*/^×÷]\s*\d+", 3.0),
        (r"\b(calculate|compute|evaluate|simplify|solve|sum|product|quotient|remainder|divided|multiplied|plus|minus|times)\b", 2.0),
        (r"\b(equation|integral|derivative|percent|percentage|fraction|square root|prime|factorial|average|mean)\b", 2.0),
        (r"\bhow (many|much)\b", 1.5),
        (r"\d", 0.5),
        (r"%", 1.0),
    ),
    "code": _cues(
        (r"```", 3.0),
        (r"\b(python|javascript|java|rust|c\+\+|golang|typescript|sql)\b", 2.5),
        (r"\b(function|def |class |method|algorithm|implement|refactor|debug|compile|unit tests?|script|program|code)\b", 2.0),
        (r"\b(return(s)?|list|array|string|dict(ionary)?|integer input)\b", 0.75),
        (r"\bassert\b", 2.0),
    ),
    "logic": _cues(
        (r"\b(all|no|some) \w+ are\b", 2.5),
        (r"\bif\b.+\bthen\b", 2.0),
        (r"\b(implies|therefore|syllogism|valid|invalid|premises?|conclusion follows|contradiction|tautology)\b", 2.0),
        (r"\b(true or false|necessarily|logically)\b", 2.0),
        (r"\b(and|or|not)\b.*\b(is true|is false)\b", 1.5),
    ),
    "factual": _cues(
        (r"^\s*(who|when|where|which)\b", 2.0),
        (r"\b(capital of|population of|invented|discovered|founded|born|located|year did|author of|wrote the)\b", 2.0),
        (r"^\s*what (is|was|are|were) the\b", 1.0),
        (r"\b(history|country|city|river|planet|element)\b", 1.0),
    ),
    "creative": _cues(
        (r"\b(poem|haiku|limerick|sonnet|story|short story|lyrics|song|slogan|tagline|fable)\b", 3.0),
        (r"\b(write|compose|imagine|invent|describe creatively)\b", 1.0),
        (r"\b(rhym\w*|metaphor|verse|stanza|in the style of)\b", 2.0),
    ),
    "analysis": _cues(
        (r"\b(analy[sz]e|analysis|compare|contrast|evaluate the|assess|critique|trade-?offs?|pros and cons)\b", 3.0),
        (r"\b(advantages|disadvantages|implications|impact|strengths|weaknesses|recommend)\b", 2.0),
        (r"\b(why does|why do|explain why)\b", 1.0),
    ),
}


class Router:
    """Keyword/pattern router. `route(query, domain=...)` with an explicit domain skips scoring."""

    def __init__(self, cues: Mapping[str, list[tuple[re.Pattern[str], float]]] = CUES, default: str = "factual") -> None:
        unknown = sorted(set(cues) - set(DOMAINS))
        if unknown:
            raise ValueError(f"router cues name unknown domains {unknown}; expected a subset of {', '.join(DOMAINS)}")
        if default not in DOMAINS:
            raise ValueError(f"unknown default domain {default!r}; expected one of {', '.join(DOMAINS)}")
        self.cues = cues
        self.default = default

    def scores(self, query: str) -> dict[str, float]:
        return {d: sum(w for pat, w in cues if pat.search(query)) for d, cues in self.cues.items()}

    def route(self, query: str, domain: str | None = None) -> Route:
        if domain is not None:
            if domain not in DOMAINS:
                raise ValueError(f"unknown domain {domain!r}; expected one of {', '.join(DOMAINS)}")
            return Route(domain, 1.0, "explicit")
        scores = self.scores(query)
        total = sum(scores.values())
        if total == 0:
            return Route(self.default, 1.0 / len(DOMAINS), "default", scores)
        # Ties go to the earlier domain in DOMAINS, so routing is deterministic.
        best = max(DOMAINS, key=lambda d: (scores.get(d, 0.0), -DOMAINS.index(d)))
        share = scores[best] / total
        # Thin evidence (total weight below ~4) pulls the confidence toward a uniform guess.
        strength = min(total / 4.0, 1.0)
        confidence = strength * share + (1 - strength) / len(DOMAINS)
        return Route(best, min(max(confidence, 0.0), 1.0), "keywords", scores)


def route(query: str, domain: str | None = None) -> Route:
    """Route with the default cues."""
    return Router().route(query, domain)
