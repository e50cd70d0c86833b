"""LLM backends: `load_llm(spec)` turns a worker-model setting into an `LLM`.

    from kaelum.llm import load_llm, SamplingParams
    llm = load_llm("")                                   # the embedded SmolLM2-135M-Instruct
    llm = load_llm("out/")                               # a kaelum-train output (adapter or merged)
    llm = load_llm("qwen2.5:7b", base_url="http://localhost:11434/v1")   # an OpenAI-compatible server

Importing this package is cheap: torch, transformers and ctranslate2 load only with a local model.
"""

from kaelum.llm.base import LLM, Completion, LLMError, SamplingParams, UsageCounter
from kaelum.llm.loader import ModelSpec, load_llm, resolve_model, resolve_model_dir

__all__ = [
    "LLM",
    "Completion",
    "LLMError",
    "ModelSpec",
    "SamplingParams",
    "UsageCounter",
    "load_llm",
    "resolve_model",
    "resolve_model_dir",
]
