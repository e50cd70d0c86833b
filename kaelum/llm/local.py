"""The local backend: a transformers model directory served by an inference engine.

The prompt is the tokenizer's chat template over `messages` with the generation prompt, followed
by `prefix` (the partial path LATS asks the model to continue). The `n` samples of one call are
generated in one batched engine call. Stop strings are watched while decoding, so a sample ends at
its first stop string; the returned text excludes the stop string, like the OpenAI API.

    llm = LocalLLM.load(path)                       # CTranslate2 int8 when available
    llm.generate(messages, n=4, params=SamplingParams(stop=("\\nStep",)), prefix="Step 1: ...\\n")
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Sequence

from kaelum.llm.base import Completion, LLMError, SamplingParams
from kaelum.llm.engines import CT2Engine, Engine, RawSample, TransformersEngine

log = logging.getLogger(__name__)

ENGINES = ("auto", "ctranslate2", "transformers")
# A stop string can only appear in the text decoded from the last few tokens; decoding a window of
# this many tokens (instead of everything generated so far) keeps the check O(1) per token.
_STOP_WINDOW_TOKENS = 32


def check_request(n: int, params: SamplingParams) -> None:
    """Reject an invalid request with one error that lists every problem."""
    problems = []
    if not isinstance(n, int) or n < 1:
        problems.append(f"n must be a positive integer, got {n!r}")
    if params.max_tokens < 1:
        problems.append(f"max_tokens must be >= 1, got {params.max_tokens}")
    if params.temperature < 0:
        problems.append(f"temperature must be >= 0, got {params.temperature}")
    if not 0 < params.top_p <= 1:
        problems.append(f"top_p must be in (0, 1], got {params.top_p}")
    if any(not s for s in params.stop):
        problems.append("stop strings must be non-empty")
    if problems:
        raise ValueError("invalid generation request: " + "; ".join(problems))


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """`text` up to its earliest stop string (excluded), and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


class LocalLLM:
    """A local model behind the `LLM` interface. Build it with `LocalLLM.load`."""

    def __init__(self, model_name: str, tokenizer, engine: Engine, model_dir: Path):
        self.model_name = model_name
        self.tokenizer = tokenizer
        self.engine = engine
        self.model_dir = model_dir

    @classmethod
    def load(
        cls,
        model_dir: str | Path,
        *,
        model_name: str | None = None,
        engine: str = "auto",
        quantization: str = "int8",
        device: str = "cpu",
        threads: int = 0,
    ) -> "LocalLLM":
        """Load the transformers model in `model_dir` (config.json + weights + tokenizer).

        engine: "ctranslate2" (converted once to `quantization`, cached by content hash),
        "transformers" (plain PyTorch), or "auto" (ctranslate2 when importable, else transformers).
        """
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
        model_dir = Path(model_dir)
        if not (model_dir / "config.json").is_file():
            raise LLMError(f"{model_dir} is not a model directory (no config.json)")
        from kaelum.quiet import quiet_third_party

        quiet_third_party()
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        except Exception as exc:
            raise LLMError(f"cannot load the tokenizer of {model_dir}: {exc}") from exc
        if not getattr(tokenizer, "chat_template", None):
            raise LLMError(
                f"the tokenizer in {model_dir} has no chat template; save one with the model "
                "(tokenizer.chat_template = ...; tokenizer.save_pretrained(dir))"
            )
        end_ids = _end_ids(model_dir, tokenizer)
        if engine == "auto":
            try:
                import ctranslate2  # noqa: F401

                engine = "ctranslate2"
            except ImportError:
                log.warning("ctranslate2 is not installed; generating with transformers (much slower)")
                engine = "transformers"
        if engine == "ctranslate2":
            from kaelum.llm.models import convert_ct2

            impl: Engine = CT2Engine.load(
                convert_ct2(model_dir, quantization), tokenizer, end_ids, device=device, threads=threads
            )
        else:
            impl = TransformersEngine.load(model_dir, tokenizer, end_ids, device=device, threads=threads)
        return cls(model_name or str(model_dir), tokenizer, impl, model_dir)

    def prompt_ids(self, messages: Sequence[dict[str, str]], prefix: str = "") -> list[int]:
        try:
            text = self.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
        except Exception as exc:
            raise ValueError(f"messages do not fit the chat template of {self.model_name}: {exc}") from exc
        # The template already holds the special tokens; the tokenizer must not add a second BOS.
        return self.tokenizer(text + prefix, add_special_tokens=False)["input_ids"]

    def generate(
        self,
        messages: Sequence[dict[str, str]],
        n: int = 1,
        params: SamplingParams = SamplingParams(),
        prefix: str = "",
    ) -> list[Completion]:
        check_request(n, params)
        prompt = self.prompt_ids(messages, prefix)
        decode = self.tokenizer.decode

        def should_stop(_i: int, ids: Sequence[int]) -> bool:
            tail = decode(ids[-_STOP_WINDOW_TOKENS:], skip_special_tokens=True)
            return any(s in tail for s in params.stop)

        started = time.perf_counter()
        raw: list[RawSample] = self.engine.sample(prompt, n, params, should_stop if params.stop else None)
        latency_ms = (time.perf_counter() - started) * 1000
        out = []
        for sample in raw:
            text = decode(sample.token_ids, skip_special_tokens=True)
            text, hit = cut_at_stop(text, params.stop)
            out.append(
                Completion(
                    text=text,
                    prompt_tokens=len(prompt),
                    completion_tokens=len(sample.token_ids),
                    finish_reason="stop" if hit else sample.finish_reason,
                    latency_ms=latency_ms,
                )
            )
        return out


def _end_ids(model_dir: Path, tokenizer) -> list[int]:
    """Token ids that end an assistant turn: the tokenizer's eos plus the generation config's."""
    ids: list[int] = []
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    try:
        from transformers import GenerationConfig

        gen_eos = GenerationConfig.from_pretrained(str(model_dir)).eos_token_id
    except Exception:  # no generation_config.json: the tokenizer's eos is all there is
        gen_eos = None
    for t in [gen_eos] if isinstance(gen_eos, int) else (gen_eos or []):
        if t is not None and int(t) not in ids:
            ids.append(int(t))
    if not ids:
        raise LLMError(f"{model_dir} defines no end-of-sequence token (tokenizer eos_token or generation_config)")
    return ids
