"""docs/domains.md states every reward weight; this keeps the table and the code in step."""

from __future__ import annotations

import re
from pathlib import Path

from kaelum.domains import DOMAIN_NAMES, get_domain
from kaelum.domains.code import MODEL_TEST_CONFIDENCE, NO_TEST_CONFIDENCE
from kaelum.domains.sandbox import SandboxLimits

DOC = Path(__file__).resolve().parents[1] / "docs" / "domains.md"


def test_weight_table_matches_the_code():
    rows = re.findall(r"^\| (\w+) \| `(\w+)` \| ([0-9.]+) \|", DOC.read_text(), re.MULTILINE)
    documented: dict[str, dict[str, float]] = {}
    for domain, component, weight in rows:
        documented.setdefault(domain, {})[component] = float(weight)
    assert documented == {name: dict(get_domain(name).WEIGHTS) for name in DOMAIN_NAMES}


def test_documented_constants_match_the_code():
    text = DOC.read_text()
    assert f"{MODEL_TEST_CONFIDENCE} for tests the model wrote" in text
    assert f"{NO_TEST_CONFIDENCE} when there were no tests" in text
    defaults = SandboxLimits()
    for name in ("timeout_s", "per_test_timeout_s", "cpu_s", "memory_mb", "file_size_mb", "max_processes", "max_output_bytes"):
        value = getattr(defaults, name)
        value = int(value) if float(value).is_integer() else value
        assert f"`{name}` ({value})" in text, name
