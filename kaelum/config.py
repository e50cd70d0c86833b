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

from .lats import LatsParams

DOMAIN_MODEL_FIELDS = {
    "math": "MATH_WORKER_MODEL",
    "code": "CODE_WORKER_MODEL",
    "logic": "LOGIC_WORKER_MODEL",
    "factual": "FACTUAL_WORKER_MODEL",
    "creative": "CREATIVE_WORKER_MODEL",
    "analysis": "ANALYSIS_WORKER_MODEL",
}

EMBEDDED_MODEL = "default"
# The one model the server at OPENAI_BASE_URL serves (asked with GET /models): what a base URL
# alone, with no worker model set, means.
SERVED_MODEL = "openai:*"


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

    # --- LATS --------------------------------------------------------------------------------
    # Defaults are sized for the embedded 135M model on a 2-core CPU: wide and shallow (8 candidate
    # steps per batched call, answers asked for at depth 2), no LLM value judge and no reflections,
    # which a 135M model cannot do usefully and which spend its budget. Measured with
    # benchmarks/search_bench.py (20 held-out questions, 16 calls): these settings verified 16/20
    # and 17/20 in two runs at 5.5-6.6 calls per question; the previous defaults (branching 3,
    # depth 6, judge weight 0.5, reflections) verified 2/20 at 15.5 calls. docs/runtime.md has the
    # settings for a larger worker.
    LATS_SIMULATIONS: int = Field(4, ge=1, le=10_000, description="select-expand-evaluate-simulate-backpropagate iterations")
    LATS_MAX_DEPTH: int = Field(2, ge=1, le=64, description="maximum steps on a path (root = depth 0); expansions at the limit ask for answers")
    LATS_BRANCHING: int = Field(8, ge=1, le=32, description="candidate next steps sampled per expansion (one batched call)")
    LATS_EXPLORATION: float = Field(1.0, ge=0, le=100, description="UCT exploration constant c")
    LATS_REWARD_THRESHOLD: float = Field(0.8, ge=0, le=1, description="stop early once a verified answer reaches this reward")
    LATS_MAX_LLM_CALLS: int = Field(20, ge=1, le=100_000, description="hard budget of LLM calls per query")
    LATS_LLM_VALUE_WEIGHT: float = Field(0.0, ge=0, le=1, description="weight of the LLM value judgement vs. sibling self-consistency")
    LATS_JUDGE_SAMPLES: int = Field(3, ge=1, le=32, description="yes/no samples per LLM judgement (one batched call)")
    LATS_PRUNE_THRESHOLD: float = Field(0.1, ge=0, le=1, description="children evaluated below this are pruned")
    LATS_REFLECTION: bool = Field(False, description="reflect on a failed answer (at most once per simulation); later expansions see it")
    LATS_MAX_REFLECTIONS: int = Field(3, ge=0, le=100, description="reflections kept in the prompt")
    LATS_TIMEOUT_S: float = Field(600.0, gt=0, description="wall-clock limit of one search; the trace ends with status 'timeout'")

    # --- sampling ----------------------------------------------------------------------------
    TEMPERATURE: float = Field(0.8, ge=0, le=5, description="sampling temperature of expansions and rollouts")
    TOP_P: float = Field(0.95, gt=0, le=1, description="nucleus sampling")
    MAX_TOKENS_PER_STEP: int = Field(64, ge=4, le=8192, description="tokens for one expansion step")
    MAX_ROLLOUT_TOKENS: int = Field(256, ge=8, le=32_768, description="tokens for one simulation toward an answer")
    MAX_ANSWER_TOKENS: int = Field(384, ge=4, le=32_768, description="tokens for an answer (code, prose) when it is asked for alone")
    SEED: int | None = Field(None, ge=0, description="makes a search reproducible (with a backend that honours seeds)")

    # --- locations ---------------------------------------------------------------------------
    LOG_DIR: Path = Field(Path("./logs"), description="where TraceLogger writes JSONL")
    STORE_DIR: Path = Field(Path("./store"), description="the trace store used by kaelum-sql and kaelum-train")

    # --- domains -----------------------------------------------------------------------------
    SANDBOX_TIMEOUT_S: float = Field(10.0, gt=0, le=3600, description="code sandbox wall-clock limit per run")
    SANDBOX_CPU_S: int = Field(10, ge=1, le=3600, description="code sandbox CPU-seconds limit")
    SANDBOX_MEMORY_MB: int = Field(512, ge=32, le=65_536, description="code sandbox address-space limit")
    SANDBOX_FILE_SIZE_MB: int = Field(16, ge=1, le=65_536, description="code sandbox largest file it may write")
    FACTUAL_REFERENCE_FILE: Path | None = Field(None, description="JSON/JSONL of reference answers for factual questions")

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
        """The typed search parameters for `kaelum.lats`."""
        return LatsParams(
            simulations=self.LATS_SIMULATIONS,
            max_depth=self.LATS_MAX_DEPTH,
            branching=self.LATS_BRANCHING,
            exploration=self.LATS_EXPLORATION,
            reward_threshold=self.LATS_REWARD_THRESHOLD,
            max_llm_calls=self.LATS_MAX_LLM_CALLS,
            llm_value_weight=self.LATS_LLM_VALUE_WEIGHT,
            judge_samples=self.LATS_JUDGE_SAMPLES,
            prune_threshold=self.LATS_PRUNE_THRESHOLD,
            reflections=self.LATS_REFLECTION,
            max_reflections=self.LATS_MAX_REFLECTIONS,
            timeout_s=self.LATS_TIMEOUT_S,
            temperature=self.TEMPERATURE,
            top_p=self.TOP_P,
            max_step_tokens=self.MAX_TOKENS_PER_STEP,
            max_rollout_tokens=self.MAX_ROLLOUT_TOKENS,
            max_answer_tokens=self.MAX_ANSWER_TOKENS,
            seed=self.SEED,
        )

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
