"""load_llm's resolution rules: each kind of spec, each error. Nothing heavy is loaded here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kaelum.llm import LLMError, load_llm, resolve_model
from kaelum.llm import models as cache
from kaelum.llm.openai_compat import OpenAICompatLLM


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("KAELUM_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face hub cache; `add(repo_id)` lays out a cached snapshot like the hub does."""
    import huggingface_hub.constants

    root = tmp_path / "hf"
    root.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(root))

    def add(repo_id: str) -> Path:
        repo = root / ("models--" + repo_id.replace("/", "--"))
        snap = repo / "snapshots" / ("a" * 40)
        snap.mkdir(parents=True)
        (snap / "config.json").write_text(json.dumps({"model_type": "llama"}))
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text("a" * 40)
        return snap

    return add


@pytest.mark.parametrize("spec", ["", None, "default", "embedded", "SmolLM2-135M-Instruct", "smollm2-135m-instruct", "  default "])
def test_embedded_names(spec, home, hf_cache):
    r = resolve_model(spec)
    assert r.kind == "embedded" and r.name == "SmolLM2-135M-Instruct"
    assert r.path == home / "models" / "SmolLM2-135M-Instruct"


def test_embedded_hf_id_prefers_the_hf_cache(hf_cache):
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct").kind == "embedded"
    snap = hf_cache("HuggingFaceTB/SmolLM2-135M-Instruct")
    r = resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert r.kind == "hf" and r.path == snap


def test_openai_prefix():
    r = resolve_model("openai:gpt-4o-mini", base_url="http://127.0.0.1:9/v1", api_key="k")
    assert (r.kind, r.name, r.base_url, r.api_key) == ("openai", "gpt-4o-mini", "http://127.0.0.1:9/v1", "k")
    # With only a key, the official endpoint.
    assert resolve_model("openai:gpt-4o-mini", api_key="k").base_url == "https://api.openai.com/v1"
    with pytest.raises(LLMError, match=r"needs an OpenAI-compatible server: set KAELUM_OPENAI_BASE_URL"):
        resolve_model("openai:gpt-4o-mini")
    with pytest.raises(LLMError, match=r"needs a model name after the colon"):
        resolve_model("openai:", base_url="http://x/v1")


def test_any_name_goes_to_the_server_when_a_url_is_given(hf_cache):
    r = resolve_model("qwen2.5:7b", base_url="http://127.0.0.1:9/v1")
    assert (r.kind, r.name) == ("openai", "qwen2.5:7b")
    llm = load_llm("qwen2.5:7b", base_url="http://127.0.0.1:9/v1", timeout_s=3, max_retries=1)
    assert isinstance(llm, OpenAICompatLLM) and llm.timeout_s == 3 and llm.max_retries == 1
    assert llm.url == "http://127.0.0.1:9/v1/chat/completions"


def test_hf_id_in_the_local_cache(hf_cache):
    snap = hf_cache("org/some-model")
    r = resolve_model("org/some-model")
    assert (r.kind, r.name, r.path) == ("hf", "org/some-model", snap)
    assert resolve_model("hf:org/some-model").path == snap
    with pytest.raises(LLMError, match=r"'org/other' is not in the local cache .*hf download org/other"):
        resolve_model("hf:org/other")


def test_unknown_name_says_what_to_do(hf_cache):
    with pytest.raises(LLMError) as err:
        resolve_model("org/not-cached")
    msg = str(err.value)
    assert "'org/not-cached' is not a local directory or GGUF file, not in the Hugging Face cache" in msg
    assert "kaelum models pull" in msg and "KAELUM_OPENAI_BASE_URL" in msg


@pytest.mark.parametrize("spec", ["./missing-dir", "/abs/missing", "~/missing", "model.gguf", "out/"])
def test_missing_paths(spec, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(LLMError, match=r"not found: no such file or directory"):
        resolve_model(spec, base_url="http://x/v1")  # a path never falls through to the server


def test_full_model_directory(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text("{}")
    r = resolve_model(str(d))
    assert (r.kind, r.name, r.path) == ("local", str(d), d.resolve())


def test_directory_without_a_model(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(LLMError, match=r"holds neither a model \(config.json\) nor a LoRA adapter"):
        resolve_model(str(tmp_path / "empty"))


def _adapter(d: Path, manifest: dict | None, config_base: str | None) -> Path:
    d.mkdir(parents=True)
    (d / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": config_base, "peft_type": "LORA"}))
    if manifest is not None:
        (d / "kaelum_manifest.json").write_text(json.dumps(manifest))
    return d


def test_adapter_base_from_manifest_wins(tmp_path):
    a = _adapter(tmp_path / "out", {"base_model": "default"}, "/tmp/somewhere-gone")
    r = resolve_model(str(a))
    assert r.kind == "adapter" and r.base is not None and r.base.kind == "embedded"


def test_adapter_base_from_adapter_config(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text("{}")
    a = _adapter(tmp_path / "out", None, str(base))
    r = resolve_model(str(a))
    assert r.base is not None and (r.base.kind, r.base.path) == ("local", base.resolve())


def test_adapter_errors(tmp_path):
    no_base = _adapter(tmp_path / "a1", {}, None)
    with pytest.raises(LLMError, match=r"names no base model: add \"base_model\" to its kaelum_manifest.json"):
        resolve_model(str(no_base))
    bad_manifest = _adapter(tmp_path / "a2", None, "default")
    (bad_manifest / "kaelum_manifest.json").write_text("{not json")
    with pytest.raises(LLMError, match=r"kaelum_manifest.json is not valid JSON"):
        resolve_model(str(bad_manifest))
    on_server = _adapter(tmp_path / "a3", {"base_model": "openai:gpt-4o"}, None)
    with pytest.raises(LLMError, match=r"base model of adapter .* needs an OpenAI-compatible server"):
        resolve_model(str(on_server))
    # An adapter whose base is another adapter that points back at the first.
    a4 = _adapter(tmp_path / "a4", {"base_model": str(tmp_path / "a5")}, None)
    _adapter(tmp_path / "a5", {"base_model": str(a4)}, None)
    with pytest.raises(LLMError, match=r"names itself"):
        resolve_model(str(a4))


def test_gguf_and_other_files(tmp_path):
    g = tmp_path / "m.Q4.gguf"
    g.write_bytes(b"GGUF")
    r = resolve_model(str(g))
    assert (r.kind, r.path) == ("gguf", g.resolve())
    other = tmp_path / "weights.bin"
    other.write_bytes(b"x")
    with pytest.raises(LLMError, match=r"is a file but not a .gguf file"):
        resolve_model(str(other))


def test_content_hash_changes_with_content(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text("{}")
    (d / "model.safetensors").write_bytes(b"a" * 10)
    (d / "notes.md").write_text("ignored")
    h1 = cache.content_hash(d)
    (d / "notes.md").write_text("still ignored")
    assert cache.content_hash(d) == h1
    (d / "model.safetensors").write_bytes(b"b" * 10)
    assert cache.content_hash(d) != h1


def test_concurrent_builds_of_one_entry_build_it_once(home):
    import threading
    import time

    final = cache.models_dir() / "gguf" / "shared-entry"
    built, skipped = [], []
    start = threading.Barrier(4)

    def worker(i: int) -> None:
        start.wait()
        with cache.building(final) as tmp:
            if tmp is None:
                skipped.append(i)
                return
            time.sleep(0.2)  # a slow conversion: the others must wait, then find it done
            (tmp / "config.json").write_text("{}")
            cache.write_meta(tmp, name="shared", kind="gguf", source=f"worker {i}")
            built.append(i)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(built) == 1 and len(skipped) == 3
    assert cache.read_meta(final)["source"] == f"worker {built[0]}"
