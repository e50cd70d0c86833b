"""Known noise from optional dependencies, silenced so that a normal run prints what the user needs.

Each entry names what it hides and why it is noise; nothing else is touched, and errors always
show. Called by the command-line entry points and before a local model or the trainer loads.
"""

from __future__ import annotations

import logging
import warnings

# bitsandbytes, imported by peft whenever it is installed, warns on CPUs with AVX512-BF16 that its
# optional 4-bit CPU kernel could not be fetched, on every run, QLoRA or not. Kaelum runs 4-bit
# (QLoRA) on CUDA only, so the kernel is never used.
_BNB_LOGGER = "bitsandbytes.backends.cpu.ops"
_BNB_NOISE = "Failed to load CPU gemm_4bit_forward"
# Deprecation notices (FutureWarning) that these libraries raise about their own API or each
# other's: addressed to developers of the calling code, not to a user of Kaelum.
_FUTURE_WARNING_MODULES = r"(transformers|peft|trl|accelerate|huggingface_hub)(\..*)?$"

_done = False


class _DropBnbKernelNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno < logging.ERROR and str(record.msg).startswith(_BNB_NOISE))


def quiet_third_party() -> None:
    """Install the filters (idempotent)."""
    global _done
    if _done:
        return
    _done = True
    logging.getLogger(_BNB_LOGGER).addFilter(_DropBnbKernelNotice())
    warnings.filterwarnings("ignore", category=FutureWarning, module=_FUTURE_WARNING_MODULES)
