"""Models: resolving names to local weights, the tiny test model, LoRA adapters."""

import logging
import warnings

# PEFT imports bitsandbytes when it is installed, in every process (Ray's site actors
# too, where Flower turns DeprecationWarnings on and our CLI's filters do not reach). Two
# things that import prints are noise to a user, so they are stopped here, before PEFT is
# first imported; everything else bitsandbytes or torch says still shows:
# - its torch.compile decorators import torch's inductor, whose `torch.utils.mkldnn`
#   trips torch's own deprecation of `torch.jit.script_method` once, at import. Importing
#   that module first, with the warning silenced, leaves nothing to trip later (a filter
#   would not do: Flower's simulation inserts its own DeprecationWarning filter first);
# - its CPU backend tries to fetch a faster 4-bit kernel from the Hugging Face hub and
#   warns when it cannot (offline sites never can); it falls back to its built-in
#   kernel, which is what the k-bit tests and docs/scale.md measure.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import torch.utils.mkldnn  # noqa: F401


def _drop_hub_kernel_warning(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Failed to load CPU gemm_4bit_forward")


logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_drop_hub_kernel_warning)
