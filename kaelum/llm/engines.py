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
from concurrent.futures import ThreadPoolExecutor, wait
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


def _positive_int_env(name: str) -> int | None:
    env = os.environ.get(name)
    if not env:
        return None
    try:
        value = int(env)
    except ValueError as exc:
        raise LLMError(f"{name} must be a positive integer, got {env!r}") from exc
    if value < 1:
        raise LLMError(f"{name} must be a positive integer, got {env!r}")
    return value


def configured_threads() -> int | None:
    """`KAELUM_THREADS` when set: the threads each engine computes with."""
    return _positive_int_env("KAELUM_THREADS")


def default_threads() -> int:
    """Threads for one engine: `KAELUM_THREADS`, else all cores up to 8."""
    return configured_threads() or max(1, min(8, os.cpu_count() or 1))


# Replicas are only worth their memory for small models: each holds its own copy of the weights.
REPLICA_MODEL_BYTES_MAX = 1 << 30


def configured_replicas() -> int | None:
    """`KAELUM_ENGINE_REPLICAS` when set: CTranslate2 generators sharing one engine's threads."""
    return _positive_int_env("KAELUM_ENGINE_REPLICAS")


def default_replicas(threads: int, model_bytes: int) -> int:
    """One single-threaded replica per thread for a small model, else one replica using every thread.

    A 135M-parameter model's matrices are too small for intra-op threads to pay for their per-layer
    synchronisation: on a 2-core machine, 8 samples decoded as one batch on 2 threads ran at about
    115 tokens/s, as two batches of 4 on two 1-thread replicas at about 230 (benchmarks/README.md).
    """
    configured = configured_replicas()
    if configured:
        return configured
    return threads if model_bytes <= REPLICA_MODEL_BYTES_MAX else 1


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).iterdir() if f.is_file())


def split_samples(n: int, parts: int) -> list[tuple[int, int]]:
    """(offset, count) of `n` samples spread over at most `parts` replicas, larger parts first."""
    parts = max(1, min(parts, n))
    base, extra = divmod(n, parts)
    out, offset = [], 0
    for i in range(parts):
        count = base + (1 if i < extra else 0)
        out.append((offset, count))
        offset += count
    return out


class CT2Engine:
    """CTranslate2 `Generator` replicas over a converted model (int8 on CPU by default).

    The n samples of one call are split across the replicas, each decoding its share as one batch
    on its own thread(s) at the same time (`default_replicas`); with one replica the whole call is
    one batch.

    Seeds: CTranslate2 samples from a thread-local Mersenne Twister that is seeded once, from the
    process-wide seed, when a generator's worker thread first samples; it cannot be reseeded
    afterwards. So the first sampling call seeds each replica's random stream (replica i from
    seed + i: replicas seeded alike would draw identical samples for the same prompt — which is
    also why this does not use one generator with `inter_threads` > 1, whose workers all seed from
    the same global seed), and later calls continue those streams. A fresh engine that receives
    the same sequence of calls produces the same samples (a LATS run with a seed is reproducible),
    but repeating one call with the same seed in the same engine does not repeat its samples. The
    transformers engine reseeds every call.
    """

    name = "ctranslate2"

    def __init__(self, generators: Sequence, tokenizer, end_ids: Sequence[int]):
        if not generators:
            raise ValueError("CT2Engine needs at least one generator")
        self._generators = list(generators)
        self._tokenizer = tokenizer
        self._end_ids = list(end_ids)
        self._stream_seeded = False
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(len(self._generators), thread_name_prefix="kaelum-ct2") if len(
            self._generators) > 1 else None

    @property
    def replicas(self) -> int:
        return len(self._generators)

    @classmethod
    def load(cls, ct2_model_dir: Path, tokenizer, end_ids: Sequence[int], *, device: str = "cpu",
             compute_type: str = "default", threads: int = 0, replicas: int = 0) -> "CT2Engine":
        """Generators over `ct2_model_dir`, computing in the type it was converted to.

        compute_type "default" keeps the conversion's quantization (CTranslate2 falls back to a
        type the device supports, e.g. float16 weights run as float32 on CPU). Not "auto": that is
        CTranslate2's "fastest type this device supports", int8_float32 on any x86 CPU, which
        silently ran a float32 (or float16) conversion quantised to int8.
        """
        import ctranslate2

        threads = threads or default_threads()
        if device != "cpu":
            replicas = replicas or 1  # a GPU batches well on its own
        replicas = replicas or default_replicas(threads, _dir_bytes(ct2_model_dir))
        intra = max(1, threads // replicas)
        generators = [
            ctranslate2.Generator(str(ct2_model_dir), device=device, compute_type=compute_type, intra_threads=intra)
            for _ in range(replicas)
        ]
        log.info("CTranslate2 engine: %d replica(s) x %d thread(s)", replicas, intra)
        return cls(generators, tokenizer, end_ids)

    def _seed_streams(self, seed: int, tokens: list[str]) -> None:
        """Seed every replica's thread-local stream: replica i from seed + i (see the class doc)."""
        import ctranslate2

        for i in range(len(self._generators) - 1, 0, -1):
            ctranslate2.set_random_seed(seed + i)
            # One sampled token makes that replica's worker thread draw, which seeds its stream.
            self._generators[i].generate_batch([tokens[:1]], max_length=1, sampling_topk=2,
                                               include_prompt_in_result=False)
        # Replica 0 seeds at its first real draw, as a single-replica engine always has.
        ctranslate2.set_random_seed(seed)

    def sample(self, prompt_ids, n, params, should_stop=None):
        tokens = self._tokenizer.convert_ids_to_tokens(list(prompt_ids))
        generated: list[list[int]] = [[] for _ in range(n)]
        stopped = [False] * n
        greedy = params.temperature <= 0
        # The callback must not reach this engine: CTranslate2 may drop its reference to it on its
        # own worker thread after the call returned, and if that were the engine's last reference
        # the generator would be destroyed on (and try to join) its own thread, which aborts.
        end_ids = self._end_ids

        def run(replica: int, offset: int, count: int):
            def on_token(step) -> bool:
                # Called once per generated token and batch index; True ends that index only.
                if step.token_id in end_ids:
                    return False
                i = offset + step.batch_id
                ids = generated[i]
                ids.append(step.token_id)
                if should_stop is not None and should_stop(i, ids):
                    stopped[i] = True
                    return True
                return False

            return self._generators[replica].generate_batch(
                [tokens] * count,
                max_length=params.max_tokens,
                include_prompt_in_result=False,
                end_token=self._end_ids,
                sampling_topk=1 if greedy else TOP_K,
                sampling_topp=1.0 if greedy else params.top_p,
                sampling_temperature=1.0 if greedy else params.temperature,
                # The per-token Python callback is only worth its cost when stop strings are watched.
                callback=on_token if should_stop is not None else None,
            )

        parts = split_samples(n, len(self._generators))
        with self._lock:
            if not self._stream_seeded and not greedy:
                self._seed_streams(_seed(params), tokens)
                self._stream_seeded = True
            try:
                if len(parts) == 1:
                    results = run(0, *parts[0])
                else:
                    futures = [self._pool.submit(run, r, off, cnt) for r, (off, cnt) in enumerate(parts)]
                    wait(futures)  # all replicas are idle again before the lock is released
                    results = [res for f in futures for res in f.result()]
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
