"""`load_llm(spec)`: from a worker-model setting to a ready `LLM`.

Resolution rules, in order (docs/models.md has the user-facing version):

1. "", "default", "embedded", "SmolLM2-135M-Instruct" -> the embedded SmolLM2-135M-Instruct
   (pulled once into the cache). "HuggingFaceTB/SmolLM2-135M-Instruct" too, unless that id is in
   the local Hugging Face cache, which then wins.
2. "openai:<model>" -> <model> on the OpenAI-compatible server at `base_url` (or api.openai.com
   when only an api_key is given). "openai:*" -> the one model that server lists at GET /models
   (what Settings gives when only KAELUM_OPENAI_BASE_URL is set).
3. An existing directory -> a full model (config.json), or a LoRA adapter (adapter_config.json):
   its base (kaelum_manifest.json `base_model`, else adapter_config `base_model_name_or_path`) is
   resolved by these same rules, and the adapter is applied and merged once (cached).
4. An existing `.gguf` file -> converted once to safetensors (cached by content), served locally.
5. Anything else that looks like a path (starts with / . ~, or ends in .gguf) -> "not found".
6. Any other name, when `base_url` is given -> that model on the OpenAI-compatible server.
7. "hf:<id>" or a Hugging Face id present in the local Hugging Face cache (offline) -> local.
8. Otherwise an LLMError that says how to make the name resolvable.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from kaelum.llm import models
from kaelum.llm.base import LLM, LLMError

log = logging.getLogger(__name__)

OPENAI_DEFAULT_URL = "https://api.openai.com/v1"
_HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass(frozen=True)
class ModelSpec:
    """What a spec string names, before anything heavy is loaded."""

    kind: str  # embedded | local | adapter | gguf | hf | openai
    name: str  # recorded as model_name (worker_model in events)
    path: Path | None = None  # local | adapter | gguf | hf: the directory or file
    base: "ModelSpec | None" = None  # adapter: its base model
    base_url: str | None = None  # openai
    api_key: str | None = None  # openai


def _hf_cached(repo_id: str) -> Path | None:
    """The snapshot directory of `repo_id` in the local Hugging Face cache, without any network."""
    if not _HF_ID.match(repo_id):
        return None
    try:
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # not cached, malformed id, or huggingface_hub missing: not resolvable here
        return None
    return path if (path / "config.json").is_file() else None


def _looks_like_path(spec: str) -> bool:
    return spec.startswith(("/", ".", "~")) or spec.lower().endswith(".gguf") or spec.endswith("/")


def resolve_model(
    spec: str | None, *, base_url: str | None = None, api_key: str | None = None, _seen: tuple[str, ...] = ()
) -> ModelSpec:
    """Apply the resolution rules to `spec` without loading anything (may read small files)."""
    spec = (spec or "").strip()
    lowered = spec.lower()
    if lowered in models.EMBEDDED_ALIASES:
        if lowered == models.EMBEDDED_HF_ID.lower():
            cached = _hf_cached(models.EMBEDDED_HF_ID)
            if cached is not None:
                return ModelSpec("hf", spec, path=cached)
        return ModelSpec("embedded", models.EMBEDDED_NAME, path=models.embedded_dir())

    if lowered == "openai:*":
        if not base_url:
            raise LLMError("'openai:*' (the model the server serves) needs KAELUM_OPENAI_BASE_URL")
        return ModelSpec("openai", "*", base_url=base_url, api_key=api_key)

    if lowered.startswith("openai:"):
        model = spec.split(":", 1)[1].strip()
        if not model:
            raise LLMError("'openai:' needs a model name after the colon, e.g. openai:gpt-4o-mini")
        if not base_url and not api_key:
            raise LLMError(
                f"model {spec!r} needs an OpenAI-compatible server: set KAELUM_OPENAI_BASE_URL "
                "(e.g. http://localhost:8000/v1 for vLLM, http://localhost:11434/v1 for Ollama)"
            )
        return ModelSpec("openai", model, base_url=base_url or OPENAI_DEFAULT_URL, api_key=api_key)

    if lowered.startswith("hf:"):
        repo_id = spec.split(":", 1)[1].strip()
        cached = _hf_cached(repo_id)
        if cached is None:
            raise LLMError(_hf_missing(repo_id))
        return ModelSpec("hf", repo_id, path=cached)

    path = Path(spec).expanduser()
    if path.is_dir():
        return _resolve_dir(spec, path, base_url, api_key, _seen)
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return ModelSpec("gguf", spec, path=path.resolve())
        raise LLMError(f"model {spec!r} is a file but not a .gguf file; give a model directory or a GGUF file")
    if _looks_like_path(spec):
        raise LLMError(f"model {spec!r} not found: no such file or directory")

    if base_url:
        return ModelSpec("openai", spec, base_url=base_url, api_key=api_key)
    cached = _hf_cached(spec)
    if cached is not None:
        return ModelSpec("hf", spec, path=cached)
    raise LLMError(
        f"model {spec!r} is not a local directory or GGUF file, not in the Hugging Face cache, and no "
        "OpenAI base URL is set; use the embedded model (leave the setting empty, or run "
        f"`kaelum models pull`), download it while online (`hf download {spec}`), "
        "or set KAELUM_OPENAI_BASE_URL to serve it from an OpenAI-compatible server"
    )


def _hf_missing(repo_id: str) -> str:
    return (
        f"Hugging Face model {repo_id!r} is not in the local cache and Kaelum does not download at run "
        f"time; download it while online (`hf download {repo_id}`) or give a local directory"
    )


def _resolve_dir(spec: str, path: Path, base_url, api_key, seen: tuple[str, ...]) -> ModelSpec:
    path = path.resolve()
    if (path / "config.json").is_file():
        return ModelSpec("local", spec, path=path)
    if (path / "adapter_config.json").is_file():
        if str(path) in seen:
            raise LLMError(f"adapter {path} names itself (through its base models) as its base model")
        base_name, base_sha = models.adapter_base_reference(path)
        # A relative base path is taken relative to the adapter when it does not exist from here.
        if not Path(base_name).expanduser().exists() and (path / base_name).exists():
            base_name = str(path / base_name)
        try:
            base = resolve_model(base_name, base_url=None, api_key=None, _seen=seen + (str(path),))
        except LLMError as exc:
            # Trained elsewhere: the name does not resolve here, the content may still be cached.
            found = models.find_by_hash(base_sha) if base_sha else None
            if found is None:
                hint = f"; no model with its content (sha256 {base_sha[:12]}…) in {models.models_dir()} either" if base_sha else ""
                raise LLMError(f"base model of adapter {path}: {exc}{hint}") from exc
            log.info("base model %r of adapter %s found by content hash at %s", base_name, path, found)
            base = ModelSpec("local", str(found), path=found)
        if base_sha and base.path is not None and models.read_meta(base.path).get("sha256") not in (None, base_sha):
            log.warning("adapter %s was trained on %s with sha256 %s…; %s has other content", path, base_name, base_sha[:12], base.path)
        if base.kind == "adapter" or base.path is None:
            raise LLMError(f"base model {base_name!r} of adapter {path} must be a full local model")
        return ModelSpec("adapter", spec, path=path, base=base)
    raise LLMError(
        f"directory {path} holds neither a model (config.json) nor a LoRA adapter (adapter_config.json); "
        "point the setting at the output directory of kaelum-train or at a saved Hugging Face model"
    )


def model_dir(resolved: ModelSpec, *, progress: bool = True) -> Path:
    """A transformers model directory for a local spec, materialising it (pull, convert, merge) once."""
    if resolved.kind == "embedded":
        return models.ensure_embedded(progress=progress)
    if resolved.kind in ("local", "hf"):
        assert resolved.path is not None
        return resolved.path
    if resolved.kind == "gguf":
        assert resolved.path is not None
        return models.convert_gguf(resolved.path, progress=progress)
    if resolved.kind == "adapter":
        assert resolved.path is not None and resolved.base is not None
        return models.merge_adapter(resolved.path, model_dir(resolved.base, progress=progress))
    raise LLMError(f"model {resolved.name!r} is served by an OpenAI-compatible server, not a local directory")


def portable_reference(spec: str, *, progress: bool = True) -> dict[str, str]:
    """{"name", "sha256"} for a base model: a name other machines resolve, and its content hash.

    The embedded model is named by its Hugging Face id (which this resolver and every Hugging
    Face tool understand), a Hugging Face model by its id, anything else as given.
    """
    resolved = resolve_model(spec)
    if resolved.kind == "embedded":
        name = models.EMBEDDED_HF_ID
    elif resolved.kind == "hf":
        name = resolved.name
    else:
        name = spec
    return {"name": name, "sha256": models.content_hash(model_dir(resolved, progress=progress))}


def resolve_model_dir(spec: str, *, progress: bool = True) -> Path:
    """The local transformers directory for `spec` (for the trainer: the base model to fine-tune)."""
    return model_dir(resolve_model(spec), progress=progress)


_loaded: dict[tuple, LLM] = {}
_loaded_lock = threading.Lock()


def load_llm(
    spec: str | None,
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    timeout_s: float = 60,
    max_retries: int = 3,
    engine: str = "auto",
    quantization: str = "int8",
    device: str = "cpu",
    threads: int = 0,
    prefix_mode: str = "auto",
    tokenizer: str | None = None,
    progress: bool = True,
    reuse: bool = True,
) -> LLM:
    """A ready `LLM` for a worker-model setting (see the module docstring for the rules).

    Local models are loaded once per process and shared (`reuse=False` loads a fresh copy): six
    domains configured with the same model hold one copy in memory.
    """
    resolved = resolve_model(spec, base_url=base_url, api_key=api_key)
    if resolved.kind == "openai":
        from kaelum.llm.openai_compat import OpenAICompatLLM, served_model

        assert resolved.base_url is not None
        name = resolved.name
        if name == "*":
            name = served_model(resolved.base_url, resolved.api_key, timeout_s=timeout_s)
        return OpenAICompatLLM(
            name, resolved.base_url, resolved.api_key,
            timeout_s=timeout_s, max_retries=max_retries, prefix_mode=prefix_mode,
            tokenizer=(lambda: model_dir(resolve_model(tokenizer), progress=progress)) if tokenizer else None,
        )
    from kaelum.llm.local import LocalLLM

    key = (resolved.kind, str(resolved.path), resolved.name, engine, quantization, device, threads)
    with _loaded_lock:
        if reuse and key in _loaded:
            return _loaded[key]
        directory = model_dir(resolved, progress=progress)
        llm = LocalLLM.load(
            directory, model_name=resolved.name, engine=engine, quantization=quantization, device=device, threads=threads
        )
        if reuse:
            _loaded[key] = llm
        log.info("loaded %s (%s) from %s with %s", resolved.name, resolved.kind, directory, llm.engine.name)
        return llm
