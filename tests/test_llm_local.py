"""The local backend on the tiny random Llama, with both engines, and the model cache it relies on."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from kaelum.llm import LLMError, SamplingParams, load_llm, resolve_model
from kaelum.llm import models as cache
from kaelum.llm.engines import split_samples
from kaelum.llm.local import LocalLLM, cut_at_stop
from tests.tiny_model import make_tiny_llama

MESSAGES = [{"role": "system", "content": "Solve step by step."}, {"role": "user", "content": "What is 2+3?"}]
ENGINES = ["ctranslate2", "transformers"]


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A private KAELUM_HOME for this module (conversions are cached there)."""
    path = tmp_path_factory.mktemp("kaelum_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KAELUM_HOME", str(path))
        yield path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def llms(home, tiny) -> dict[str, LocalLLM]:
    return {e: LocalLLM.load(tiny, engine=e, model_name="tiny") for e in ENGINES}


def _hf_greedy(model_dir: Path, prompt_ids: list[int], max_new: int) -> list[int]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=max_new, do_sample=False, eos_token_id=[])
    return out[0, len(prompt_ids):].tolist()


@pytest.mark.parametrize("engine", ENGINES)
def test_n_samples_in_one_call(llms, engine):
    out = llms[engine].generate(MESSAGES, n=4, params=SamplingParams(max_tokens=12, temperature=1.0, seed=3))
    assert len(out) == 4
    assert len({c.text for c in out}) > 1  # the samples differ
    prompt_len = len(llms[engine].prompt_ids(MESSAGES))
    for c in out:
        assert c.prompt_tokens == prompt_len
        assert 1 <= c.completion_tokens <= 12 and c.latency_ms > 0
        assert c.finish_reason in ("stop", "length")
    assert len({c.latency_ms for c in out}) == 1  # one batched call


def test_seed_reproducible_per_call_with_transformers(llms):
    llm = llms["transformers"]
    params = SamplingParams(max_tokens=10, temperature=1.0, seed=42)
    first = [c.text for c in llm.generate(MESSAGES, n=3, params=params)]
    again = [c.text for c in llm.generate(MESSAGES, n=3, params=params)]
    other = [c.text for c in llm.generate(MESSAGES, n=3, params=SamplingParams(max_tokens=10, temperature=1.0, seed=43))]
    assert first == again
    assert first != other


def test_seed_reproducible_per_engine_stream_with_ctranslate2(home, tiny):
    """A fresh CTranslate2 engine given the same seeded calls repeats its samples (see CT2Engine)."""

    def run(seed: int) -> list[str]:
        llm = LocalLLM.load(tiny, engine="ctranslate2")
        texts = []
        for i in range(2):
            params = SamplingParams(max_tokens=10, temperature=1.0, seed=seed + i)
            texts += [c.text for c in llm.generate(MESSAGES, n=3, params=params)]
        return texts

    first, again, other = run(7), run(7), run(8)
    assert first == again
    assert first != other
    assert first[:3] != first[3:]  # the stream moves on between calls


def test_split_samples_spreads_n_over_replicas():
    assert split_samples(8, 2) == [(0, 4), (4, 4)]
    assert split_samples(3, 2) == [(0, 2), (2, 1)]
    assert split_samples(1, 4) == [(0, 1)]
    assert split_samples(5, 1) == [(0, 5)]


@pytest.mark.parametrize("replicas", [1, 2, 3])
def test_ctranslate2_replicas_share_a_call_without_repeating_samples(home, tiny, replicas, monkeypatch):
    """Each replica has its own seeded stream: the parts of one call differ, and a fresh engine
    with the same replicas and seeds reproduces them. (Replicas seeded alike would duplicate.)"""
    monkeypatch.setenv("KAELUM_ENGINE_REPLICAS", str(replicas))

    def run(seed: int) -> list[str]:
        llm = LocalLLM.load(tiny, engine="ctranslate2")
        assert llm.engine.replicas == replicas
        params = SamplingParams(max_tokens=10, temperature=1.0, seed=seed)
        return [c.text for c in llm.generate(MESSAGES, n=6, params=params)]

    first, again = run(11), run(11)
    assert first == again
    parts = [first[off:off + cnt] for off, cnt in split_samples(6, replicas)]
    assert all(a != b for i, a in enumerate(parts) for b in parts[i + 1:])


def test_ctranslate2_replicas_stop_each_sample_at_its_stop_string(home, tiny, monkeypatch):
    # Greedy samples are all the same text, so each of the 4 (2 per replica) must be cut at the same
    # place: a callback that mapped a replica's batch index to the wrong sample would show here.
    monkeypatch.setenv("KAELUM_ENGINE_REPLICAS", "2")
    llm = LocalLLM.load(tiny, engine="ctranslate2")
    greedy = SamplingParams(max_tokens=16, temperature=0)
    full = llm.generate(MESSAGES, n=1, params=greedy)[0].text
    stop = full[5:7]
    assert len(stop) == 2 and full.index(stop) >= 1
    cut = llm.generate(MESSAGES, n=4, params=SamplingParams(max_tokens=16, temperature=0, stop=(stop,)))
    assert [c.text for c in cut] == [full[: full.index(stop)]] * 4
    assert all(c.finish_reason == "stop" for c in cut)


def test_bad_replica_setting_is_refused(home, tiny, monkeypatch):
    monkeypatch.setenv("KAELUM_ENGINE_REPLICAS", "zero")
    with pytest.raises(LLMError, match="KAELUM_ENGINE_REPLICAS"):
        LocalLLM.load(tiny, engine="ctranslate2")


@pytest.mark.parametrize("engine", ENGINES)
def test_prefix_is_continued_not_repeated(llms, tiny, engine):
    llm = llms[engine]
    prefix = "Step 1: 2 + 3 = 5\n"
    plain = llm.prompt_ids(MESSAGES)
    with_prefix = llm.prompt_ids(MESSAGES, prefix)
    assert with_prefix[: len(plain)] == plain and len(with_prefix) > len(plain)
    out = llm.generate(MESSAGES, params=SamplingParams(max_tokens=8, temperature=0), prefix=prefix)[0]
    assert out.prompt_tokens == len(with_prefix)
    if engine == "transformers":
        # Exactly what plain transformers greedily generates after template + prefix.
        expected = llm.tokenizer.decode(_hf_greedy(tiny, with_prefix, 8), skip_special_tokens=True)
        assert out.text == expected
    assert not out.text.startswith(prefix.strip())


def test_engines_agree_greedily_in_float32(home, tiny, llms):
    """CTranslate2 without quantisation reproduces transformers' greedy tokens."""
    exact = LocalLLM.load(tiny, engine="ctranslate2", quantization="float32")
    # Computed in float32 as converted, not re-quantised at load ("auto" would pick int8 on CPU).
    assert {g.compute_type for g in exact.engine._generators} == {"float32"}
    params = SamplingParams(max_tokens=10, temperature=0)
    a = exact.generate(MESSAGES, params=params, prefix="Step 1:")[0]
    b = llms["transformers"].generate(MESSAGES, params=params, prefix="Step 1:")[0]
    assert a.text == b.text and a.completion_tokens == b.completion_tokens == 10


@pytest.mark.parametrize("engine", ENGINES)
def test_stop_strings_cut_and_end_early(llms, engine):
    llm = llms[engine]
    greedy = SamplingParams(max_tokens=24, temperature=0)
    full = llm.generate(MESSAGES, params=greedy)[0]
    assert full.finish_reason == "length" and full.completion_tokens == 24
    stop = full.text[len(full.text) // 3 : len(full.text) // 3 + 2]
    assert stop.strip(), f"pick a visible stop string from {full.text!r}"
    cut = llm.generate(MESSAGES, params=SamplingParams(max_tokens=24, temperature=0, stop=(stop, "never-there")))[0]
    assert cut.text == full.text[: full.text.find(stop)]
    assert cut.finish_reason == "stop"
    assert cut.completion_tokens < full.completion_tokens  # decoding ended at the stop string


@pytest.mark.parametrize("engine", ENGINES)
def test_invalid_request(llms, engine):
    with pytest.raises(ValueError, match=r"n must be a positive integer.*max_tokens must be >= 1.*temperature must be >= 0"):
        llms[engine].generate(MESSAGES, n=0, params=SamplingParams(max_tokens=0, temperature=-1))


def test_cut_at_stop_picks_the_earliest():
    assert cut_at_stop("a\nStep 2: b\nAnswer: c", ("\nAnswer", "\nStep")) == ("a", True)
    assert cut_at_stop("abc", ("x",)) == ("abc", False)


def test_ct2_conversion_cached_by_content(home, tiny, tmp_path):
    first = cache.ct2_dir(tiny, "int8")
    assert cache.is_complete(first)  # converted by the llms fixture
    stamp = (first / "model.bin").stat().st_mtime_ns
    LocalLLM.load(tiny, engine="ctranslate2")
    assert (first / "model.bin").stat().st_mtime_ns == stamp  # reused, not converted again
    # A different model (new weights, same layout) gets its own conversion.
    other = make_tiny_llama(tmp_path / "other", seed=1)
    assert cache.ct2_dir(other, "int8") != first
    LocalLLM.load(other, engine="ctranslate2")
    assert cache.is_complete(cache.ct2_dir(other, "int8"))
    kinds = {(m.kind, m.path) for m in cache.list_models()}
    assert ("ct2", first) in kinds and ("ct2", cache.ct2_dir(other, "int8")) in kinds


def test_failed_build_leaves_nothing_that_looks_finished(home):
    final = cache.models_dir() / "merged" / "broken"
    with pytest.raises(RuntimeError, match="boom"):
        with cache.building(final) as tmp:
            (tmp / "config.json").write_text("{}")
            raise RuntimeError("boom")
    assert not final.exists()
    assert not any(p.name.startswith(".tmp-broken") for p in final.parent.iterdir())
    assert all(m.path != final for m in cache.list_models())


def test_missing_chat_template_is_a_clear_error(home, tiny, tmp_path):
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(tiny, bare)
    (bare / "chat_template.jinja").unlink()
    cfg = json.loads((bare / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(LLMError, match="has no chat template"):
        LocalLLM.load(bare, engine="transformers")


def _make_adapter(base: Path, out: Path, *, manifest_base: str | None, config_base: str) -> Path:
    """A LoRA adapter with non-zero weights (so merging changes the outputs), as kaelum-train writes it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base)
    lora = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(model, lora)
    peft_model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    cfg = json.loads((out / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = config_base
    (out / "adapter_config.json").write_text(json.dumps(cfg))
    if manifest_base is not None:
        (out / "kaelum_manifest.json").write_text(json.dumps({"base_model": manifest_base}))
    return out


def test_adapter_directory_is_detected_merged_and_served(home, tiny, tmp_path, llms):
    adapter = _make_adapter(tiny, tmp_path / "out", manifest_base=str(tiny), config_base="/gone/tmp/base")
    resolved = resolve_model(str(adapter))
    assert resolved.kind == "adapter" and resolved.base is not None and resolved.base.path == tiny.resolve()

    llm = load_llm(str(adapter), engine="transformers", reuse=False)
    assert llm.model_name == str(adapter)
    merged_dir = llm.model_dir
    assert cache.read_meta(merged_dir)["kind"] == "merged"

    # The served model is the base with the adapter merged: same greedy tokens as peft's own merge.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    import torch

    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny), str(adapter)).merge_and_unload()
    prompt = llm.prompt_ids(MESSAGES, "Step 1:")
    expected = reference.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False, eos_token_id=[])[0, len(prompt):]
    got = llm.generate(MESSAGES, params=SamplingParams(max_tokens=8, temperature=0), prefix="Step 1:")[0]
    base_out = llms["transformers"].generate(MESSAGES, params=SamplingParams(max_tokens=8, temperature=0), prefix="Step 1:")[0]
    assert got.text == llm.tokenizer.decode(expected.tolist(), skip_special_tokens=True)
    assert got.text != base_out.text  # the adapter changed the model

    # Loading again reuses the merged cache entry.
    again = load_llm(str(adapter), engine="transformers", reuse=False)
    assert again.model_dir == merged_dir


def test_adapter_base_from_adapter_config_and_relative(home, tiny, tmp_path):
    import shutil

    shutil.copytree(tiny, tmp_path / "base")
    adapter = _make_adapter(tiny, tmp_path / "out", manifest_base=None, config_base="../base")
    resolved = resolve_model(str(adapter))
    assert resolved.base is not None and resolved.base.path == (tmp_path / "base").resolve()


def test_adapter_with_missing_base_names_it(home, tiny, tmp_path):
    adapter = _make_adapter(tiny, tmp_path / "out", manifest_base="/nowhere/base-model", config_base="x")
    with pytest.raises(LLMError, match=r"base model of adapter .*'/nowhere/base-model' not found"):
        resolve_model(str(adapter))


def test_load_llm_reuses_one_instance_per_model(home, tiny):
    a = load_llm(str(tiny), engine="transformers")
    b = load_llm(str(tiny), engine="transformers")
    assert a is b and a.model_name == str(tiny)
    assert os.fspath(a.model_dir) == os.fspath(tiny.resolve())
