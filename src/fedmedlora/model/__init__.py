"""Models: resolving names to local weights, the tiny test model, LoRA adapters."""

import logging


def _drop_hub_kernel_warning(record: logging.LogRecord) -> bool:
    # bitsandbytes' CPU backend tries, at import (PEFT imports it), to fetch a faster 4-bit
    # kernel from the Hugging Face hub and warns on every command when it cannot; offline
    # sites never can, and the built-in CPU kernel it falls back to is what the nf4 tests
    # and docs/scale.md measure. Only that one message is dropped.
    return not str(record.msg).startswith("Failed to load CPU gemm_4bit_forward")


logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_drop_hub_kernel_warning)
