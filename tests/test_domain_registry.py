"""The domain registry is the only list of domains: every other list is derived from it, and
importing the cheap modules that read it loads no verifier dependency."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kaelum import Settings
from kaelum.config import DOMAIN_MODEL_FIELDS
from kaelum.domains import DOMAIN_NAMES, get_domain
from kaelum.domains.registry import DOMAIN_SPECS, domain_spec
from kaelum.events import DOMAINS, SCHEMA_PATH
from kaelum.orchestrator import LONG_ANSWER_DOMAINS, Orchestrator
from kaelum.prompts import SYSTEM_PROMPTS, worker_messages

NAMES = ("math", "code", "logic", "factual", "creative", "analysis")


def test_the_registry_holds_the_six_domains_once_each():
    assert tuple(s.name for s in DOMAIN_SPECS) == NAMES
    assert len({s.worker_field for s in DOMAIN_SPECS}) == len(DOMAIN_SPECS)


def test_every_derived_list_equals_the_registry():
    assert DOMAINS == DOMAIN_NAMES == NAMES
    assert SYSTEM_PROMPTS == {s.name: s.system_prompt for s in DOMAIN_SPECS}
    assert DOMAIN_MODEL_FIELDS == {s.name: s.worker_field for s in DOMAIN_SPECS}
    assert LONG_ANSWER_DOMAINS == tuple(s.name for s in DOMAIN_SPECS if s.multiline_answers) == ("code", "creative", "analysis")
    # Settings declares one worker field per domain, and no other.
    declared = {name for name in Settings.model_fields if name.endswith("_WORKER_MODEL") and name != "DEFAULT_WORKER_MODEL"}
    assert declared == set(DOMAIN_MODEL_FIELDS.values())
    # Every domain enum of the checked-in JSON Schema is the registry's too.
    enums = list(_domain_enums(json.loads(Path(SCHEMA_PATH).read_text(encoding="utf-8"))))
    assert enums and all(e == list(NAMES) for e in enums)


def _domain_enums(schema):
    if isinstance(schema, dict):
        for key, value in schema.items():
            if key == "domain" and isinstance(value, dict) and "enum" in value:
                yield value["enum"]
            yield from _domain_enums(value)
    elif isinstance(schema, list):
        for value in schema:
            yield from _domain_enums(value)


@pytest.mark.parametrize("spec", DOMAIN_SPECS, ids=lambda s: s.name)
def test_each_spec_drives_its_domain_prompt_worker_and_answer_shape(spec):
    domain = get_domain(spec.name)
    assert isinstance(domain, spec.domain_class()) and domain.name == spec.name
    assert worker_messages(spec.name, "q")[0] == {"role": "system", "content": spec.system_prompt}
    s = Settings(**{spec.worker_field: f"model-for-{spec.name}"})
    assert s.worker_model(spec.name) == f"model-for-{spec.name}"
    assert Orchestrator(Settings()).params_for(spec.name).multiline_answers is spec.multiline_answers


def test_an_unknown_domain_is_refused_with_the_valid_ones_named():
    for lookup in (domain_spec, get_domain, lambda name: worker_messages(name, "q"), Settings().worker_model):
        with pytest.raises(ValueError, match="unknown domain 'poetry'; expected one of math, code, logic, factual, creative, analysis"):
            lookup("poetry")


def test_importing_the_registry_readers_loads_no_verifier_dependency():
    code = (
        "import sys, kaelum.events, kaelum.domains, kaelum.prompts, kaelum.config\n"
        "heavy = sorted(m for m in ('sympy', 'kaelum.domains.math', 'kaelum.domains.code') if m in sys.modules)\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
