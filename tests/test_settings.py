"""Settings: guide field names, KAELUM_* environment, .env, validation naming every bad field."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from kaelum import Settings
from kaelum.config import DOMAIN_MODEL_FIELDS
from kaelum.lats import LatsParams


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    # No stray KAELUM_* variable or .env of the developer's may leak into these tests.
    import os

    for key in list(os.environ):
        if key.startswith("KAELUM_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


def test_guide_field_names_and_per_domain_fallback():
    s = Settings(MATH_WORKER_MODEL="./finetuned_math", CODE_WORKER_MODEL="qwen2.5-coder")
    assert s.worker_model("math") == "./finetuned_math"
    assert s.worker_model("code") == "qwen2.5-coder"
    assert s.worker_model("logic") == "default"
    assert set(DOMAIN_MODEL_FIELDS.values()) <= set(Settings.model_fields)
    with pytest.raises(ValueError, match="unknown domain 'poetry'"):
        s.worker_model("poetry")


def test_environment_and_dotenv(monkeypatch, tmp_path):
    (tmp_path / ".env").write_text("KAELUM_LATS_SIMULATIONS=9\nKAELUM_LOGIC_WORKER_MODEL=from-dotenv\n")
    monkeypatch.setenv("KAELUM_MATH_WORKER_MODEL", "from-env")
    monkeypatch.setenv("KAELUM_LATS_SIMULATIONS", "7")  # the environment beats .env
    s = Settings()
    assert s.MATH_WORKER_MODEL == "from-env"
    assert s.LOGIC_WORKER_MODEL == "from-dotenv"
    assert s.LATS_SIMULATIONS == 7
    # Arguments beat both.
    assert Settings(LATS_SIMULATIONS=2).LATS_SIMULATIONS == 2


def test_invalid_values_fail_at_construction_naming_every_field():
    with pytest.raises(ValidationError) as err:
        Settings(LATS_BRANCHING=0, TOP_P=1.5, LATS_REWARD_THRESHOLD=-0.1, TEMPERATURE="hot")
    names = {e["loc"][0] for e in err.value.errors()}
    assert names == {"LATS_BRANCHING", "TOP_P", "LATS_REWARD_THRESHOLD", "TEMPERATURE"}


def test_cross_field_problems_are_reported_together(tmp_path):
    with pytest.raises(ValidationError) as err:
        Settings(OPENAI_BASE_URL="localhost:8000", FACTUAL_REFERENCE_FILE=tmp_path / "missing.jsonl", MAX_ROLLOUT_TOKENS=16, MAX_TOKENS_PER_STEP=32)
    msg = str(err.value)
    assert "OPENAI_BASE_URL" in msg and "FACTUAL_REFERENCE_FILE" in msg and "MAX_ROLLOUT_TOKENS" in msg


def test_unknown_field_is_refused():
    with pytest.raises(ValidationError, match="MATH_WORKER_MODLE"):
        Settings(MATH_WORKER_MODLE="x")


def test_api_key_is_secret_and_lats_params_are_typed():
    s = Settings(OPENAI_API_KEY="sk-very-secret", LATS_SIMULATIONS=3, LATS_BRANCHING=2, SEED=11, TEMPERATURE=0.3)
    assert "sk-very-secret" not in repr(s) and s.api_key() == "sk-very-secret"
    p = s.lats_params()
    assert isinstance(p, LatsParams)
    assert (p.simulations, p.branching, p.seed, p.temperature) == (3, 2, 11, 0.3)
    assert p.event_params() == {"simulations": 3, "max_depth": s.LATS_MAX_DEPTH, "branching": 2, "exploration": s.LATS_EXPLORATION, "temperature": 0.3, "seed": 11}


def test_domain_options_carry_sandbox_limits_and_reference_file(tmp_path):
    ref = tmp_path / "ref.jsonl"
    ref.write_text('{"question": "capital of France", "answer": "Paris"}\n')
    s = Settings(SANDBOX_TIMEOUT_S=3, SANDBOX_MEMORY_MB=128, FACTUAL_REFERENCE_FILE=ref)
    assert s.domain_options("code")["timeout_s"] == 3 and s.domain_options("code")["memory_mb"] == 128
    assert s.domain_options("factual") == {"reference_file": str(ref)}
    assert s.domain_options("math") == {}


def test_docs_settings_table_is_current():
    from pathlib import Path

    from kaelum.config import settings_reference

    doc = (Path(__file__).resolve().parents[1] / "docs" / "runtime.md").read_text(encoding="utf-8")
    assert settings_reference() in doc, "docs/runtime.md is stale: run python -m kaelum.config docs/runtime.md"


def test_every_search_default_is_the_one_in_lats_params():
    # Settings writes no search default of its own: the defaults a user gets through the runtime
    # (Settings) and through the library (LatsParams()) are the same, the wall-clock limit included.
    assert Settings().lats_params() == LatsParams()
    assert LatsParams().timeout_s == Settings().LATS_TIMEOUT_S == 600.0


def test_every_search_parameter_is_a_setting_except_the_per_domain_one():
    from dataclasses import fields

    fed = [f.json_schema_extra["lats_param"] for f in Settings.model_fields.values() if isinstance(f.json_schema_extra, dict) and "lats_param" in f.json_schema_extra]
    assert len(fed) == len(set(fed))
    # multiline_answers comes from the domain registry (kaelum.domains.registry), not from Settings.
    assert sorted(fed) == sorted(f.name for f in fields(LatsParams) if f.name != "multiline_answers")


def test_each_search_setting_reaches_its_parameter(monkeypatch):
    monkeypatch.setenv("KAELUM_LATS_TIMEOUT_S", "7.5")
    s = Settings(LATS_MAX_REFLECTIONS=1, LATS_REFLECTION=True, MAX_ANSWER_TOKENS=500, MAX_ROLLOUT_TOKENS=300, LATS_PRUNE_THRESHOLD=0.0)
    p = s.lats_params()
    assert (p.timeout_s, p.max_reflections, p.reflections, p.max_answer_tokens, p.max_rollout_tokens, p.prune_threshold) == (7.5, 1, True, 500, 300, 0.0)


def test_the_defaults_docs_runtime_md_names_are_the_defaults():
    # "Defaults, and why" quotes defaults in its prose (`LATS_BRANCHING=8`); they must be the code's.
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "runtime.md").read_text(encoding="utf-8")
    section = doc[doc.index("### Defaults, and why") : doc.index("**For a larger worker**")]
    quoted = dict(re.findall(r"`([A-Z][A-Z_]+)=([^`]+)`", section))
    assert len(quoted) >= 8
    defaults = Settings()
    for name, shown in quoted.items():
        assert getattr(Settings(**{name: shown}), name) == getattr(defaults, name), f"docs/runtime.md shows {name}={shown}"


def test_dotenv_may_hold_the_commands_variables_but_not_a_misspelt_setting(tmp_path, monkeypatch):
    """One `.env` for a deployment: $KAELUM_STORE and the other command-level variables beside the
    Settings are skipped, while an unknown KAELUM_ name (a typo of a setting) is still refused."""
    from kaelum.config import Settings

    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("KAELUM_STORE=s3://bucket/traces\nKAELUM_UI_TOKEN=t0k\nKAELUM_HOME=/tmp/h\nKAELUM_SEED=3\n")
    assert Settings().SEED == 3
    (tmp_path / ".env").write_text("KAELUM_STORE=./traces\nKAELUM_SEEED=3\n")
    with pytest.raises(ValidationError, match="kaelum_seeed"):
        Settings()


def test_every_kaelum_variable_the_code_reads_is_a_setting_or_a_command_variable():
    """The list of command-level variables (kaelum.config.COMMAND_VARIABLES) is complete: otherwise a
    `.env` holding a variable some command reads would make Settings refuse to start."""
    import pathlib
    import re

    from kaelum.config import COMMAND_VARIABLES, Settings

    root = pathlib.Path(__file__).resolve().parents[1]
    found = set()
    for pkg in ("kaelum", "store", "ingest", "train", "ui"):
        for f in (root / pkg).rglob("*.py"):
            found |= set(re.findall(r"KAELUM_[A-Z][A-Z0-9_]*[A-Z0-9]", f.read_text(encoding="utf-8")))
    settings = {f"KAELUM_{name}" for name in Settings.model_fields}
    assert found - settings - set(COMMAND_VARIABLES) == set()
    assert {"KAELUM_STORE", "KAELUM_UI_TOKEN"} <= found  # the scan sees the code
    assert not set(COMMAND_VARIABLES) & settings
