"""The six domains, declared once: everything else that names a domain is derived from `DOMAIN_SPECS`.

The event contract's domain enum (`kaelum.events.DOMAINS`), `kaelum.domains.DOMAIN_NAMES` and
`get_domain`, the worker model fields of `Settings` (`kaelum.config.DOMAIN_MODEL_FIELDS`), the
system prompts (`kaelum.prompts.SYSTEM_PROMPTS`) and the domains whose answers span lines
(`kaelum.orchestrator.LONG_ANSWER_DOMAINS`) all read this table. tests/test_domain_registry.py
checks that each derived list equals it.

This module imports nothing heavy: `kaelum.events` (which the ingester loads for every line) and
`import kaelum.domains` must stay cheap. A domain's class is named by its import path and loaded
on first use (`DomainSpec.domain_class`), so sympy loads only with math.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class DomainSpec:
    name: str  # the domain as events, the router, the CLI and the store's partitions spell it
    system_prompt: str  # what a worker of this domain is told (kaelum.prompts.worker_messages)
    # True where an answer is a code block or prose: an expansion must have room to finish it in
    # the same call, and an answer asked for on its own is not cut at its first line.
    multiline_answers: bool
    worker_field: str  # the Settings field naming this domain's worker model
    class_path: str  # "module:Class" of the implementation, imported by `domain_class`

    def domain_class(self) -> Any:
        """The implementing class (imported here, not at module load: see the module docstring)."""
        module, _, attr = self.class_path.partition(":")
        return getattr(importlib.import_module(module), attr)


DOMAIN_SPECS: tuple[DomainSpec, ...] = (
    DomainSpec(
        name="math",
        system_prompt=(
            "You are a careful math solver. Solve the problem step by step. "
            "Write each step on its own line as 'Step N: ...' and finish with a line 'Answer: <number or expression>'."
        ),
        multiline_answers=False,
        worker_field="MATH_WORKER_MODEL",
        class_path="kaelum.domains.math:MathDomain",
    ),
    DomainSpec(
        name="code",
        system_prompt=(
            "You are an expert Python programmer. Reason step by step in lines 'Step N: ...', then finish with "
            "'Answer:' followed by one complete Python code block (```python ... ```) that solves the task."
        ),
        multiline_answers=True,
        worker_field="CODE_WORKER_MODEL",
        class_path="kaelum.domains.code:CodeDomain",
    ),
    DomainSpec(
        name="logic",
        system_prompt=(
            "You are a precise logician. Reason step by step in lines 'Step N: ...' and finish with a line "
            "'Answer: <yes/no/true/false/valid/invalid or the requested value>'."
        ),
        multiline_answers=False,
        worker_field="LOGIC_WORKER_MODEL",
        class_path="kaelum.domains.logic:LogicDomain",
    ),
    DomainSpec(
        name="factual",
        system_prompt=(
            "You answer factual questions accurately. Reason briefly in lines 'Step N: ...' and finish with a line "
            "'Answer: <short answer>'."
        ),
        multiline_answers=False,
        worker_field="FACTUAL_WORKER_MODEL",
        class_path="kaelum.domains.factual:FactualDomain",
    ),
    DomainSpec(
        name="creative",
        system_prompt=(
            "You are a skilled writer who follows every constraint of the request. Plan in lines 'Step N: ...' and "
            "finish with 'Answer:' followed by the finished piece."
        ),
        multiline_answers=True,
        worker_field="CREATIVE_WORKER_MODEL",
        class_path="kaelum.domains.creative:CreativeDomain",
    ),
    DomainSpec(
        name="analysis",
        system_prompt=(
            "You are a rigorous analyst. Address each point asked in lines 'Step N: ...' and finish with "
            "'Answer:' followed by your conclusion."
        ),
        multiline_answers=True,
        worker_field="ANALYSIS_WORKER_MODEL",
        class_path="kaelum.domains.analysis:AnalysisDomain",
    ),
)

DOMAIN_NAMES: tuple[str, ...] = tuple(spec.name for spec in DOMAIN_SPECS)

_BY_NAME = {spec.name: spec for spec in DOMAIN_SPECS}


def domain_spec(name: str) -> DomainSpec:
    """The spec of the domain called `name`; ValueError naming the valid domains otherwise."""
    spec = _BY_NAME.get(name) if isinstance(name, str) else None
    if spec is None:
        raise ValueError(f"unknown domain {name!r}; expected one of {', '.join(DOMAIN_NAMES)}")
    return spec
