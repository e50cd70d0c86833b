"""Inference engines behind the local backend: CTranslate2 (default) and transformers (fallback).

An engine samples `n` continuations of one tokenised prompt in one batched call and reports, per
sample, the generated token ids and why it ended. It knows nothing about chat templates or text:
`kaelum.llm.local` renders the prompt, decodes, and tells the engine through `should_stop` when a
sample has produced a stop string, so decoding of that sample ends early instead of running on to
`max_tokens` (LATS asks for one step at a time; without early stop most tokens would be wasted).
"""

from __future__ import annotations

import logging
import os
import random
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, Sequence

from kaelum.llm.base import LLMError, SamplingParams

log = logging.getLogger(__name__)

# Nucleus (top_p) sampling is applied within the TOP_K most likely tokens, as transformers does by
# default (top_k=50). Besides matching common practice, it matters for speed: top_p over the full
# 49k-token vocabulary sorts it at every step and halves CTranslate2's throughput on CPU.
TOP_K = 50

# should_stop(sample_index, generated_ids_so_far) -> True when that sample is finished.
StopCheck = Callable[[int, Sequence[int]], bool]


@dataclass(frozen=True)
class RawSample:
    token_ids: list[int]  # generated tokens, without the prompt and without the end token
    finish_reason: str  # "stop" (end token or stop string) | "length"


class Engine(Protocol):
    name: str

    def sample(
        self, prompt_ids: Sequence[int], n: int, params: SamplingParams, should_stop: StopCheck | None
    ) -> list[RawSample]: ...


def _seed(params: SamplingParams) -> int:
    # Without a seed every call draws a fresh one, so repeated calls differ (as with a server).
    return params.seed if params.seed is not None else random.SystemRandom().randrange(1, 2**31 - 1)


def configured_threads() -> int | None:
    """`KAELUM_THREADS` when set: the threads each engine computes with."""
    env = os.environ.get("KAELUM_THREADS")
    if not env:
        return None
    try:
        value = int(env)
    except ValueError as exc:
        raise LLMError(f"KAELUM_THREADS must be a positive integer, got {env!r}") from exc
    if value < 1:
        raise LLMError(f"KAELUM_THREADS must be a positive integer, got {env!r}")
    return value


def default_threads() -> int:
    """Threads for one engine: `KAELUM_THREADS`, else all cores up to 8."""
    return configured_threads() or max(1, min(8, os.cpu_count() or 1))


class CT2Engine:
    """CTranslate2 `Generator` over a converted model (int8 on CPU by default).

    Seeds: CTranslate2 samples from a thread-local Mersenne Twister that is seeded once, from the
    process-wide seed, when the generator's worker thread first samples; it cannot be reseeded
    afterwards. So the seed of the first sampling call seeds this engine's random stream, and later
    calls continue that stream: a fresh engine that receives the same sequence of calls produces the
    same samples (a LATS run with a seed is reproducible), but repeating one call with the same seed
    in the same engine does not repeat its samples. The transformers engine reseeds every call.
    """

    name = "ctranslate2"

    def __init__(self, generator, tokenizer, end_ids: Sequence[int]):
        self._generator = generator
        self._tokenizer = tokenizer
        self._end_ids = list(end_ids)
        self._stream_seeded = False
        self._lock = threading.Lock()

    @classmethod
    def load(cls, ct2_model_dir: Path, tokenizer, end_ids: Sequence[int], *, device: str = "cpu",
             compute_type: str = "auto", threads: int = 0) -> "CT2Engine":
        import ctranslate2

        generator = ctranslate2.Generator(
            str(ct2_model_dir), device=device, compute_type=compute_type, intra_threads=threads or default_threads()
        )
        return cls(generator, tokenizer, end_ids)

    def sample(self, prompt_ids, n, params, should_stop=None):
        import ctranslate2

        tokens = self._tokenizer.convert_ids_to_tokens(list(prompt_ids))
        generated: list[list[int]] = [[] for _ in range(n)]
        stopped = [False] * n

        def on_token(step) -> bool:
            # Called once per generated token and batch index; True ends that index only.
            if step.token_id in self._end_ids:
                return False
            ids = generated[step.batch_id]
            ids.append(step.token_id)
            if should_stop is not None and should_stop(step.batch_id, ids):
                stopped[step.batch_id] = True
                return True
            return False

        greedy = params.temperature <= 0
        with self._lock:
            if not self._stream_seeded and not greedy:
                ctranslate2.set_random_seed(_seed(params))
                self._stream_seeded = True
            try:
                results = self._generator.generate_batch(
                    [tokens] * n,
                    max_length=params.max_tokens,
                    include_prompt_in_result=False,
                    end_token=self._end_ids,
                    sampling_topk=1 if greedy else TOP_K,
                    sampling_topp=1.0 if greedy else params.top_p,
                    sampling_temperature=1.0 if greedy else params.temperature,
                    # The per-token Python callback is only worth its cost when stop strings are watched.
                    callback=on_token if should_stop is not None else None,
                )
            except RuntimeError as exc:  # e.g. prompt longer than the model's context
                raise LLMError(f"CTranslate2 generation failed: {exc}") from exc
        if should_stop is None:
            generated = [list(r.sequences_ids[0]) for r in results]
        out = []
        for ids, hit_stop in zip(generated, stopped):
            if hit_stop or len(ids) < params.max_tokens:
                out.append(RawSample(ids, "stop"))
            else:
                out.append(RawSample(ids, "length"))
        return out


class TransformersEngine:
    """transformers `generate` with the n samples batched; the fallback when ctranslate2 is missing."""

    name = "transformers"

    def __init__(self, model, tokenizer, end_ids: Sequence[int]):
        self._model = model
        self._tokenizer = tokenizer
        self._end_ids = list(end_ids)
        self._lock = threading.Lock()

    @classmethod
    def load(cls, model_dir: Path, tokenizer, end_ids: Sequence[int], *, device: str = "cpu",
             threads: int = 0) -> "TransformersEngine":
        import torch
        from transformers import AutoModelForCausalLM

        threads = threads or configured_threads() or 0
        if threads:  # otherwise torch's own default (all cores)
            torch.set_num_threads(threads)
        try:
            model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).to(device)
        except Exception as exc:
            raise LLMError(f"transformers cannot load {model_dir}: {exc}") from exc
        model.eval()
        return cls(model, tokenizer, end_ids)

    def sample(self, prompt_ids, n, params, should_stop=None):
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        prompt_len = len(prompt_ids)
        end_ids = set(self._end_ids)
        stop_len: list[int | None] = [None] * n  # generated length at which a stop string was seen

        class _Stop(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
                for i in range(input_ids.shape[0]):
                    if stop_len[i] is not None:
                        done[i] = True
                        continue
                    ids = input_ids[i, prompt_len:].tolist()
                    if end_ids.intersection(ids):
                        continue  # generate() itself ends (and then pads) sequences at an end token
                    if should_stop is not None and should_stop(i, ids):
                        stop_len[i] = len(ids)
                        done[i] = True
                return done

        pad = self._tokenizer.pad_token_id if self._tokenizer.pad_token_id is not None else self._end_ids[0]
        input_ids = torch.tensor([list(prompt_ids)] * n, device=self._model.device)
        greedy = params.temperature <= 0
        kwargs = dict(do_sample=False) if greedy else dict(
            do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=TOP_K
        )
        with self._lock, torch.random.fork_rng(devices=[]), torch.inference_mode():
            torch.manual_seed(_seed(params))
            try:
                out = self._model.generate(
                    input_ids=input_ids,
                    attention_mask=torch.ones_like(input_ids),
                    max_new_tokens=params.max_tokens,
                    eos_token_id=self._end_ids,
                    pad_token_id=pad,
                    stopping_criteria=StoppingCriteriaList([_Stop()]),
                    **kwargs,
                )
            except Exception as exc:
                raise LLMError(f"transformers generation failed: {exc}") from exc
        samples = []
        for i in range(n):
            row = out[i, prompt_len:].tolist()
            if stop_len[i] is not None:
                samples.append(RawSample(row[: stop_len[i]], "stop"))
                continue
            ids, ended = [], False
            for t in row:
                if t in end_ids:
                    ended = True
                    break
                ids.append(t)
            finish = "stop" if ended or len(ids) < params.max_tokens else "length"
            samples.append(RawSample(ids, finish))
        return samples
