"""A tiny, randomly initialised Llama with a locally trained tokenizer, for fast offline tests.

`make_tiny_llama(path)` writes a directory that `AutoModelForCausalLM.from_pretrained(path)` and
`AutoTokenizer.from_pretrained(path)` load like any Hugging Face model (safetensors weights,
tokenizer files, a ChatML chat template like SmolLM2's). Building takes about a second; the result
is cached per process by the hash of everything that determines it, so further calls only copy
files (and a call on a directory that already holds the same build returns at once).

    from tests.tiny_model import make_tiny_llama
    path = make_tiny_llama(tmp_path_factory.mktemp("tiny") / "model")
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
from pathlib import Path

# Special tokens, named like SmolLM2's so that code written against it works unchanged. The pad
# token is its own token (SmolLM2 reuses <|im_end|>) so that tests can tell padding from the end
# of a turn when building training labels.
BOS = "<|im_start|>"
EOS = "<|im_end|>"
PAD = "<|pad|>"
UNK = "<|endoftext|>"
SPECIAL_TOKENS = [UNK, BOS, EOS, PAD]

# ChatML, as in SmolLM2-135M-Instruct, with a shorter default system prompt.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Covers the prompt format of kaelum/prompts.py (system prompts, "Step N:", "Answer:"), digits,
# operators and common English, so that tokenisation of real prompts yields sensible merges.
_CORPUS = [
    "You are a careful math solver. Solve the problem step by step.",
    "Write each step on its own line as 'Step N: ...' and finish with a line 'Answer: <number or expression>'.",
    "You are an expert Python programmer. Reason step by step in lines 'Step N: ...', then finish with",
    "'Answer:' followed by one complete Python code block (```python ... ```) that solves the task.",
    "You are a precise logician. Answer yes no true false valid invalid or the requested value.",
    "You answer factual questions accurately. Reason briefly and finish with a short answer.",
    "You are a skilled writer who follows every constraint of the request. Plan, then finish with the piece.",
    "You are a rigorous analyst. Address each point asked and finish with your conclusion.",
    "Lessons from earlier failed attempts:",
    "What is 2+3? Step 1: Add 2 and 3 to get 5. Answer: 5",
    "What is 12 * 7? Step 1: 12 * 7 = 84. Answer: 84",
    "Compute 15 - 4 + 9. Step 1: 15 - 4 = 11. Step 2: 11 + 9 = 20. Answer: 20",
    "What is 100 / 4? Step 1: 100 / 4 = 25. Answer: 25",
    "Solve for x: 2x + 3 = 11. Step 1: Subtract 3 from both sides: 2x = 8. Step 2: Divide by 2: x = 4. Answer: 4",
    "If all cats are animals and Tom is a cat, is Tom an animal? Step 1: Tom is a cat. Answer: yes",
    "def add(a, b):\n    return a + b\n\nassert add(2, 3) == 5",
    "The quick brown fox jumps over the lazy dog. The answer is the number of the step.",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 25 30 42 50 64 99 100 1000",
    "+ - * / = ( ) ^ % < > <= >= == != . , : ; ? ! ' \" [ ] { } # _",
    "the a an of to and in is it that for on with as was by this are be at from or which first then so",
]

_VERSION = 1  # bump when the build below changes, so cached builds are not reused


def _key(hidden_size: int, num_layers: int, num_heads: int, vocab_size: int, seed: int) -> str:
    blob = json.dumps(
        {
            "v": _VERSION,
            "hidden": hidden_size,
            "layers": num_layers,
            "heads": num_heads,
            "vocab": vocab_size,
            "seed": seed,
            "template": CHAT_TEMPLATE,
            "corpus": _CORPUS,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


_built: dict[str, Path] = {}
_lock = threading.Lock()
_KEY_FILE = "tiny_model_key.txt"


def _build(out: Path, hidden_size: int, num_layers: int, num_heads: int, vocab_size: int, seed: int) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token=UNK))
    # Byte-level: every string round-trips, whatever characters a test uses.
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_CORPUS * 4, trainer=trainer)

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK, model_max_length=2048
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=2048,
        bos_token_id=ids[BOS],
        eos_token_id=ids[EOS],
        pad_token_id=ids[PAD],
        tie_word_embeddings=True,
        # Wider than the usual 0.02 so that greedy decoding of the random model varies from token
        # to token instead of repeating one token: tests can then tell a prefix was continued.
        initializer_range=0.1,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=ids[BOS], eos_token_id=ids[EOS], pad_token_id=ids[PAD]
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def make_tiny_llama(
    path: str | os.PathLike[str],
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    vocab_size: int = 512,
    seed: int = 0,
) -> Path:
    """Write a tiny random `LlamaForCausalLM` with its tokenizer to `path` and return `path`.

    Same arguments give byte-identical weights (seeded init), so tests may compare outputs across
    calls. `path` must not exist or must be a directory from an earlier call with the same arguments.
    """
    out = Path(path)
    key = _key(hidden_size, num_layers, num_heads, vocab_size, seed)
    marker = out / _KEY_FILE
    if marker.is_file() and marker.read_text().strip() == key:
        return out
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and does not hold this tiny model; pass a new directory")
    with _lock:
        src = _built.get(key)
        if src is None or not (src / _KEY_FILE).is_file():
            src = Path(tempfile.mkdtemp(prefix=f"kaelum-tiny-{key}-"))
            _build(src, hidden_size, num_layers, num_heads, vocab_size, seed)
            # Written last: a build that died half-way is never taken for a finished one.
            (src / _KEY_FILE).write_text(key + "\n")
            _built[key] = src
    shutil.copytree(src, out, dirs_exist_ok=True)
    return out
