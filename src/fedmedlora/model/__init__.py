"""Models: resolving names to local weights, the tiny test model, LoRA adapters."""

import logging
import warnings

# PEFT imports bitsandbytes when it is installed, in every process (Ray's site actors
# too, where our CLI's warning filters do not reach). Two things it prints on every
# command are noise to a user, so they are dropped here, before PEFT is first imported:
# - its CPU backend tries to fetch a faster 4-bit kernel from the Hugging Face hub and
#   warns when it cannot (offline sites never can); it falls back to its built-in kernel,
#   which is what the nf4 tests and docs/scale.md measure;
# - its torch.compile decorators import torch's inductor, which trips torch's own
#   deprecation of `torch.jit.script_method`.
# Only these two messages; everything else bitsandbytes or torch says still shows.
warnings.filterwarnings(
    "ignore", message=r"`torch\.jit\.script_method` is deprecated", category=DeprecationWarning
)


def _drop_hub_kernel_warning(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Failed to load CPU gemm_4bit_forward")


logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_drop_hub_kernel_warning)
