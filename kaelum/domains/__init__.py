"""The six domains (math, code, logic, factual, creative, analysis) behind one interface.

    from kaelum.domains import get_domain
    domain = get_domain("math")
    answer = domain.extract_answer(model_output)
    verdict = domain.verify(answer, VerifyContext(query=...))
    reward = domain.reward(verdict, value, ctx)

Each domain's reward components, and what each verdict method (`verdict.method`, one of METHODS;
CHECKED_METHODS check the answer) guarantees, are documented in docs/domains.md. The domains
themselves (name, prompt, answer shape, worker setting, class) are declared once, in
`kaelum.domains.registry`.
"""

from __future__ import annotations

from typing import Any, Mapping

from .base import CHECKED_METHODS, METHODS, Domain, Judge, Reward, Verdict, VerifyContext, method_of_verifier
from .registry import DOMAIN_NAMES, DOMAIN_SPECS, DomainSpec, domain_spec


def get_domain(name: str, options: Mapping[str, Any] | None = None) -> Domain:
    """The domain called `name`, configured by `options` (sandbox limits for code, reference_file for factual).

    Raises ValueError naming the valid domains for an unknown name, or every problem with the options.
    """
    key = name.strip().lower() if isinstance(name, str) else None
    if key not in DOMAIN_NAMES:
        raise ValueError(f"unknown domain {name!r}; expected one of {', '.join(DOMAIN_NAMES)}")
    if options is not None and not isinstance(options, Mapping):
        raise ValueError(f"domain options must be a mapping, got {type(options).__name__}")
    return domain_spec(key).domain_class()(options)


__all__ = ["get_domain", "domain_spec", "DOMAIN_NAMES", "DOMAIN_SPECS", "DomainSpec", "Domain", "Judge", "Reward", "Verdict",
           "VerifyContext", "METHODS", "CHECKED_METHODS", "method_of_verifier"]
