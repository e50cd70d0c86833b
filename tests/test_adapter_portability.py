"""An adapter names its base portably (a name plus a content hash) and loads where its trainer's cache is not."""

from __future__ import annotations

import json
import shutil

import pytest

from kaelum.llm import LLMError
from kaelum.llm import models
from kaelum.llm.loader import portable_reference, resolve_model
from tests.tiny_model import make_tiny_llama


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A KAELUM_HOME whose embedded-model entry is a tiny model (nothing is pulled)."""
    monkeypatch.setenv("KAELUM_HOME", str(tmp_path / "home"))
    entry = models.embedded_dir()
    make_tiny_llama(tmp_path / "tiny")
    shutil.copytree(tmp_path / "tiny", entry)
    models.write_meta(entry, name=models.EMBEDDED_NAME, kind="embedded", source="test")
    return entry


def _adapter(path, base_name_or_path: str, manifest: dict):
    path.mkdir()
    (path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "base_model_name_or_path": base_name_or_path, "r": 4}))
    (path / "kaelum_manifest.json").write_text(json.dumps(manifest))
    return path


def test_the_embedded_base_is_named_by_its_hub_id_with_its_content_hash(cache):
    ref = portable_reference("default")
    assert ref == {"name": "HuggingFaceTB/SmolLM2-135M-Instruct", "sha256": models.read_meta(cache)["sha256"]}
    assert resolve_model(ref["name"]).path == cache  # and that name resolves back to it


def test_an_adapter_trained_elsewhere_finds_its_base_by_content_hash(cache, tmp_path):
    sha = models.read_meta(cache)["sha256"]
    # Trained on another machine from a local directory that does not exist here.
    gone = "/home/someone/models/smol"
    adapter = _adapter(tmp_path / "adapter", gone, {"base_model": gone, "base_model_ref": {"name": gone, "sha256": sha}})
    spec = resolve_model(str(adapter))
    assert spec.kind == "adapter" and spec.base.path == cache
    # Without the hash only the name is there, and the error says what was looked for.
    bare = _adapter(tmp_path / "bare", gone, {"base_model": gone})
    with pytest.raises(LLMError, match="base model of adapter .*/bare: model '/home/someone/models/smol' not found"):
        resolve_model(str(bare))
    other = _adapter(tmp_path / "other", gone, {"base_model_ref": {"name": gone, "sha256": "0" * 64}})
    with pytest.raises(LLMError, match=r"no model with its content \(sha256 000000000000…\) in .*home/models either"):
        resolve_model(str(other))


def test_kaelum_train_writes_the_portable_name_into_adapter_config(cache, tmp_path):
    from train.manifest import portable_base

    out = tmp_path / "out"
    out.mkdir()
    # What peft writes: the absolute directory the base was loaded from (this machine's cache).
    (out / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "base_model_name_or_path": str(cache)}))
    ref = portable_base(str(out), "default")
    assert ref["name"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
