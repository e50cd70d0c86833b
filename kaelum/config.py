"""Settings: every knob of the runtime in one place, read from arguments, `KAELUM_*` variables and `.env`.

Field names follow the seed guide (`Settings(MATH_WORKER_MODEL="./finetuned_math")`). Each field
is also read from the environment with the prefix `KAELUM_` (``KAELUM_MATH_WORKER_MODEL=...``) and
from a `.env` file in the working directory. Invalid values fail at construction: pydantic collects
every problem and raises one `ValidationError` that names each field.

A worker model setting is a *spec* that `kaelum.llm.load_llm` understands: a model name on the
OpenAI-compatible server at `OPENAI_BASE_URL`, a local directory (full model or a LoRA adapter
written by `kaelum-train`), a `.gguf` file, a Hugging Face id in the local cache, or `"default"` for
the embedded SmolLM2-135M-Instruct. An unset domain model falls back to `DEFAULT_WORKER_MODEL`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .domains.registry import DOMAIN_SPECS
from .lats import LatsParams

# domain -> the Settings field naming its worker model; the fields are declared below, one per
# domain of the registry (tests/test_domain_registry.py checks the two agree).
DOMAIN_MODEL_FIELDS = {spec.name: spec.worker_field for spec in DOMAIN_SPECS}

EMBEDDED_MODEL = "default"
# The one model the server at OPENAI_BASE_URL serves (asked with GET /models): what a base URL
# alone, with no worker model set, means.
SERVED_MODEL = "openai:*"

_SEARCH_DEFAULTS = LatsParams()


def _search_field(param: str, **constraints: Any) -> Any:
    """A Settings field that feeds `LatsParams.<param>`, with LatsParams' default.

    The search defaults are written once, in `kaelum.lats.LatsParams`; Settings only adds the
    environment name, the bounds a user may set and the description. `Settings.lats_params`
    finds the parameter through the field's `lats_param` tag.
    """
    return Field(getattr(_SEARCH_DEFAULTS, param), json_schema_extra={"lats_param": param}, **constraints)


# `KAELUM_*` variables that commands read themselves, not Settings fields. A `.env` may hold them
# beside the Settings (one file for a deployment's variables); Settings skips them instead of
# refusing them as unknown. Any other unknown `KAELUM_*` name in `.env` is still an error, so a
# misspelt setting is never ignored. tests/test_settings.py checks this list against the code.
COMMAND_VARIABLES = (
    "KAELUM_STORE",  # kaelum.cliopts.STORE_ENV: the store of every command
    "KAELUM_STORE_OPTIONS",  # store.layout.STORE_OPTIONS_ENV: delta-rs storage options (JSON)
    "KAELUM_UI_TOKEN",  # kaelum ui --token
    "KAELUM_UI_USER",  # kaelum ui --user
    "KAELUM_IMPROVE_KILL_AT",  # train.improve.KILL_ENV: a testing hook
    "KAELUM_HOME",  # kaelum.llm.models: the model cache's root
    "KAELUM_THREADS",  # kaelum.llm.engines: threads per local engine
    "KAELUM_ENGINE_REPLICAS",  # kaelum.llm.engines: CTranslate2 generators per engine
)


class Settings(BaseSettings):
    """Runtime configuration. See docs/runtime.md for what each LATS knob does and why its default."""

    model_config = SettingsConfigDict(
        env_prefix="KAELUM_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="forbid",
        validate_default=True,
        case_sensitive=False,
    )

    # --- worker models (guide names) ------------------------------------------------------
    MATH_WORKER_MODEL: str | None = Field(None, description="worker model for math; unset = DEFAULT_WORKER_MODEL")
    CODE_WORKER_MODEL: str | None = Field(None, description="worker model for code")
    LOGIC_WORKER_MODEL: str | None = Field(None, description="worker model for logic")
    FACTUAL_WORKER_MODEL: str | None = Field(None, description="worker model for factual questions")
    CREATIVE_WORKER_MODEL: str | None = Field(None, description="worker model for creative writing")
    ANALYSIS_WORKER_MODEL: str | None = Field(None, description="worker model for analysis")
    DEFAULT_WORKER_MODEL: str = Field(EMBEDDED_MODEL, min_length=1, description="fallback worker; 'default' = embedded SmolLM2-135M-Instruct")

    # --- OpenAI-compatible server ------------------------------------------------------------
    OPENAI_BASE_URL: str | None = Field(None, description="e.g. http://localhost:8000/v1 (vLLM), http://localhost:11434/v1 (Ollama)")
    OPENAI_API_KEY: SecretStr | None = Field(None, description="API key for the server; never logged")
    LLM_TIMEOUT_S: float = Field(60.0, gt=0, description="per-request timeout")
    LLM_MAX_RETRIES: int = Field(3, ge=0, le=20, description="retries with backoff on transient server errors")
    LLM_PREFIX_MODE: Literal["auto", "completions", "continue", "user"] = Field(
        "auto",
        description="how a server continues a partial answer: completions (chat template rendered locally with LLM_TOKENIZER, "
        "sent to /v1/completions), continue (a final assistant message), user (in the user turn); auto = completions when "
        "LLM_TOKENIZER is set, else continue if a one-time probe shows the server continues, else user",
    )
    LLM_TOKENIZER: str | None = Field(
        None, description="the served model's tokenizer as a model spec ('default' for the embedded model, a directory): enables completions"
    )

    # --- LATS (defaults: kaelum.lats.LatsParams, which says how they were sized) -------------
    LATS_SIMULATIONS: int = _search_field("simulations", ge=1, le=10_000, description="select-expand-evaluate-simulate-backpropagate iterations")
    LATS_MAX_DEPTH: int = _search_field("max_depth", ge=1, le=64, description="maximum steps on a path (root = depth 0); expansions at the limit ask for answers")
    LATS_BRANCHING: int = _search_field("branching", ge=1, le=32, description="candidate next steps sampled per expansion (one batched call)")
    LATS_EXPLORATION: float = _search_field("exploration", ge=0, le=100, description="UCT exploration constant c")
    LATS_REWARD_THRESHOLD: float = _search_field("reward_threshold", ge=0, le=1, description="stop early once a verified answer reaches this reward")
    LATS_MAX_LLM_CALLS: int = _search_field("max_llm_calls", ge=1, le=100_000, description="hard budget of LLM calls per query")
    LATS_LLM_VALUE_WEIGHT: float = _search_field("llm_value_weight", ge=0, le=1, description="weight of the LLM value judgement vs. sibling self-consistency")
    LATS_JUDGE_SAMPLES: int = _search_field("judge_samples", ge=1, le=32, description="yes/no samples per LLM judgement (one batched call)")
    LATS_PRUNE_THRESHOLD: float = _search_field("prune_threshold", ge=0, le=1, description="children evaluated below this are pruned")
    LATS_REFLECTION: bool = _search_field("reflections", description="reflect on a failed answer (at most once per simulation); later expansions see it")
    LATS_MAX_REFLECTIONS: int = _search_field("max_reflections", ge=0, le=100, description="reflections kept in the prompt")
    LATS_TIMEOUT_S: float = _search_field("timeout_s", gt=0, description="wall-clock limit of one search; the trace ends with status 'timeout'")

    # --- sampling (defaults: kaelum.lats.LatsParams) ----------------------------------------
    TEMPERATURE: float = _search_field("temperature", ge=0, le=5, description="sampling temperature of expansions and rollouts")
    TOP_P: float = _search_field("top_p", gt=0, le=1, description="nucleus sampling")
    MAX_TOKENS_PER_STEP: int = _search_field("max_step_tokens", ge=4, le=8192, description="tokens for one expansion step")
    MAX_ROLLOUT_TOKENS: int = _search_field("max_rollout_tokens", ge=8, le=32_768, description="tokens for one simulation toward an answer")
    MAX_ANSWER_TOKENS: int = _search_field("max_answer_tokens", ge=4, le=32_768, description="tokens for an answer (code, prose) when it is asked for alone")
    SEED: int | None = _search_field("seed", ge=0, description="makes a search reproducible (with a backend that honours seeds)")

    # --- locations ---------------------------------------------------------------------------
    LOG_DIR: Path = Field(Path("./logs"), description="where TraceLogger writes JSONL")

    # --- domains -----------------------------------------------------------------------------
    SANDBOX_TIMEOUT_S: float = Field(10.0, gt=0, le=3600, description="code sandbox wall-clock limit per run")
    SANDBOX_CPU_S: int = Field(10, ge=1, le=3600, description="code sandbox CPU-seconds limit")
    SANDBOX_MEMORY_MB: int = Field(512, ge=32, le=65_536, description="code sandbox address-space limit")
    SANDBOX_FILE_SIZE_MB: int = Field(16, ge=1, le=65_536, description="code sandbox largest file it may write")
    FACTUAL_REFERENCE_FILE: Path | None = Field(None, description="JSON/JSONL of reference answers for factual questions")

    @model_validator(mode="before")
    @classmethod
    def _skip_command_variables(cls, data: Any) -> Any:
        if isinstance(data, dict):
            skip = {v.lower() for v in COMMAND_VARIABLES}
            data = {k: v for k, v in data.items() if not (isinstance(k, str) and k.lower() in skip)}
        return data

    @model_validator(mode="after")
    def _cross_field(self) -> "Settings":
        problems = []
        if self.OPENAI_BASE_URL is not None and not self.OPENAI_BASE_URL.startswith(("http://", "https://")):
            problems.append(f"OPENAI_BASE_URL: {self.OPENAI_BASE_URL!r} must start with http:// or https://")
        if self.FACTUAL_REFERENCE_FILE is not None and not self.FACTUAL_REFERENCE_FILE.is_file():
            problems.append(f"FACTUAL_REFERENCE_FILE: {str(self.FACTUAL_REFERENCE_FILE)!r} is not a file")
        if self.MAX_ROLLOUT_TOKENS < self.MAX_TOKENS_PER_STEP:
            problems.append(
                f"MAX_ROLLOUT_TOKENS: {self.MAX_ROLLOUT_TOKENS} is below MAX_TOKENS_PER_STEP ({self.MAX_TOKENS_PER_STEP}); "
                "a simulation must fit at least one step"
            )
        if problems:
            # One error listing every problem, each naming its field.
            raise ValueError("; ".join(problems))
        return self

    # --- derived views -------------------------------------------------------------------------

    def worker_model(self, domain: str) -> str:
        """The model spec that serves `domain` (its own field, else DEFAULT_WORKER_MODEL)."""
        if domain not in DOMAIN_MODEL_FIELDS:
            raise ValueError(f"unknown domain {domain!r}; expected one of {', '.join(DOMAIN_MODEL_FIELDS)}")
        spec = getattr(self, DOMAIN_MODEL_FIELDS[domain])
        if spec not in (None, ""):
            return spec
        if self.OPENAI_BASE_URL and not (self.model_fields_set & {"DEFAULT_WORKER_MODEL", *DOMAIN_MODEL_FIELDS.values()}):
            return SERVED_MODEL  # a base URL alone: use that server, not silently the embedded model
        return self.DEFAULT_WORKER_MODEL

    def api_key(self) -> str | None:
        return self.OPENAI_API_KEY.get_secret_value() if self.OPENAI_API_KEY is not None else None

    def lats_params(self) -> LatsParams:
        """The typed search parameters for `kaelum.lats` (`multiline_answers` is per domain: the registry's)."""
        return LatsParams(**{
            f.json_schema_extra["lats_param"]: getattr(self, name)
            for name, f in type(self).model_fields.items()
            if isinstance(f.json_schema_extra, dict) and "lats_param" in f.json_schema_extra
        })

    def domain_options(self, domain: str) -> dict[str, Any]:
        """Options handed to `kaelum.domains.get_domain` for `domain`."""
        if domain == "code":
            return {
                "timeout_s": self.SANDBOX_TIMEOUT_S,
                "cpu_s": self.SANDBOX_CPU_S,
                "memory_mb": self.SANDBOX_MEMORY_MB,
                "file_size_mb": self.SANDBOX_FILE_SIZE_MB,
            }
        if domain == "factual" and self.FACTUAL_REFERENCE_FILE is not None:
            return {"reference_file": str(self.FACTUAL_REFERENCE_FILE)}
        return {}


# --- generated documentation ---------------------------------------------------------------------

DOC_BEGIN = "<!-- settings:begin (generated by `python -m kaelum.config docs/runtime.md`) -->"
DOC_END = "<!-- settings:end -->"


def settings_reference() -> str:
    """The Markdown table of every Settings field, generated so the docs cannot drift."""
    rows = ["| field (env `KAELUM_<field>`) | default | meaning |", "|---|---|---|"]
    for name, f in Settings.model_fields.items():
        default = f.default
        shown = "unset" if default is None else (str(default) if not isinstance(default, Path) else default.as_posix())
        rows.append(f"| `{name}` | `{shown}` | {f.description or ''} |")
    return "\n".join(rows)


def update_docs(path: str) -> None:
    text = Path(path).read_text(encoding="utf-8")
    start, end = text.index(DOC_BEGIN) + len(DOC_BEGIN), text.index(DOC_END)
    Path(path).write_text(text[:start] + "\n" + settings_reference() + "\n" + text[end:], encoding="utf-8")


if __name__ == "__main__":  # python -m kaelum.config docs/runtime.md  regenerates the table
    import sys

    update_docs(sys.argv[1] if len(sys.argv) > 1 else "docs/runtime.md")
