"""Router: keyword scoring per domain, confidence, explicit override, default."""

from __future__ import annotations

import pytest

from kaelum.router import Router, route


@pytest.mark.parametrize(
    "query, domain",
    [
        ("What is 17 * 23?", "math"),
        ("Calculate the sum of the first 10 prime numbers.", "math"),
        ("Write a Python function that reverses a string.", "code"),
        ("All cats are mammals. All mammals are animals. Are all cats animals?", "logic"),
        ("If it rains then the street is wet. The street is not wet. Is it raining? True or false", "logic"),
        ("Who wrote the novel Frankenstein?", "factual"),
        ("What is the capital of Australia?", "factual"),
        ("Write a haiku about autumn rain.", "creative"),
        ("Compare the pros and cons of remote work for small companies.", "analysis"),
    ],
)
def test_routes_typical_queries(query, domain):
    r = route(query)
    assert r.domain == domain, r.scores
    assert r.method == "keywords"
    assert 0 < r.confidence <= 1


def test_strong_evidence_is_more_confident_than_weak():
    strong = route("Calculate 12 * 7 + 3 and simplify the fraction.")
    weak = route("Is 7 a lucky number?")
    assert strong.confidence > weak.confidence
    assert strong.confidence > 0.6


def test_explicit_domain_overrides_with_full_confidence():
    r = route("What is 17 * 23?", domain="creative")
    assert (r.domain, r.confidence, r.method) == ("creative", 1.0, "explicit")
    assert r.as_event() == {"domain": "creative", "confidence": 1.0, "method": "explicit"}


def test_no_cue_falls_back_to_the_default_with_uniform_confidence():
    r = route("hello there")
    assert (r.domain, r.method) == ("factual", "default")
    assert r.confidence == pytest.approx(1 / 6)


def test_bad_domains_are_refused_with_the_valid_ones_named():
    with pytest.raises(ValueError, match="unknown domain 'poetry'; expected one of math, code"):
        route("x", domain="poetry")
    with pytest.raises(ValueError, match="unknown domains"):
        Router(cues={"poetry": []})
