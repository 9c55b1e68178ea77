"""Loading base models and choosing device and numeric precision."""

from __future__ import annotations

import functools
import re
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch

from fedmedlora.errors import ConfigError
from fedmedlora.model.registry import resolve_model

PRECISIONS = ("auto", "fp32", "bf16-autocast")
DEVICES = "auto, cpu, cuda, cuda:N, mps, xpu, xpu:N"
_DEVICE = re.compile(r"^(auto|cpu|mps|(cuda|xpu)(:\d+)?)$")


@functools.cache
def _cpu_has_fast_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def check_device_name(device: str) -> str:
    """Refuse a device name torch would reject (or that no site could have) before
    anything loads; raises ValueError."""
    if not _DEVICE.match(device):
        raise ValueError(f"unknown device {device!r}; use one of {DEVICES}")
    return device


def pick_device(device: str = "auto") -> torch.device:
    try:
        check_device_name(device)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    chosen = torch.device(device)
    if chosen.type == "cuda" and (
        not torch.cuda.is_available() or (chosen.index or 0) >= torch.cuda.device_count()
    ):
        raise ConfigError(f"device {device!r}: no such CUDA device on this machine")
    return chosen


def resolve_precision(precision: str, device: torch.device) -> str:
    """bf16 autocast where the hardware runs it fast (measured 3x faster than fp32 for
    SmolLM2 LoRA steps on an AVX512-BF16 CPU), fp32 elsewhere. Weights stay fp32."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16-autocast" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16-autocast" if _cpu_has_fast_bf16() else "fp32"


def autocast(precision: str, device: torch.device) -> AbstractContextManager:
    if precision == "bf16-autocast":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model(name))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
QUANTIZATIONS = ("none", "nf4", "int8")


def quantization_config(quantization: str, dtype: str):
    """bitsandbytes settings for a k-bit base: nf4 with double quantization (QLoRA) and
    `dtype` as the compute dtype, or LLM.int8(). None for an unquantized base."""
    if quantization not in QUANTIZATIONS:
        raise ConfigError(f"quantization must be one of {QUANTIZATIONS}, got {quantization!r}")
    if quantization == "none":
        return None
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ConfigError(
            f"model.quantization {quantization} needs bitsandbytes: pip install 'fedmedlora[quant]'"
        ) from None
    from transformers import BitsAndBytesConfig

    if quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=DTYPES[dtype],
    )


# NO_HUB_KERNELS: transformers 5.x turns on Hugging Face hub kernels by default wherever
# the `kernels` package is installed (a transformers dependency). On a GPU the first
# `model.train()` then resolves kernels (rotary, ...) on the hub; offline, as a hospital
# site is, that raises and every site fails its first round (seen on an H200 by
# benchmarks/gpu_check.py). A site's model must load and train from local files alone,
# and the same code must run the same on every site, so hub kernels stay off.


def load_causal_lm(
    name: str,
    device: torch.device | None = None,
    *,
    dtype: str = "fp32",
    quantization: str = "none",
    attention: str = "sdpa",
    device_map: str | None = None,
    gradient_checkpointing: bool = False,
):
    """A frozen base model in eval mode, its weights in `dtype` (or k-bit quantized, with
    `dtype` for everything else and for compute). `device_map="auto"` spreads a model too
    big for one GPU over all the GPUs this process sees (accelerate's placement)."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    if dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {tuple(DTYPES)}, got {dtype!r}")
    hf_logging.disable_progress_bar()
    quant = quantization_config(quantization, dtype)
    device = device or torch.device("cpu")
    placement = device_map or (str(device) if quant is not None else None)
    model = AutoModelForCausalLM.from_pretrained(
        resolve_model(name),
        dtype=DTYPES[dtype],
        attn_implementation=attention,
        quantization_config=quant,
        device_map=placement,
        use_kernels=False,  # see NO_HUB_KERNELS
    )
    if quant is not None:
        # PEFT's own k-bit preparation: freezes the base, keeps norms and embeddings in
        # fp32 for stable training, and turns on checkpointing if asked.
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    elif gradient_checkpointing:
        # Non-reentrant checkpointing needs no input that requires grad, so it works with
        # a frozen embedding under LoRA; it only acts in train mode.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    head = model.get_output_embeddings()
    if head is not None:
        head.register_forward_pre_hook(_contiguous_input)
    model.requires_grad_(False)
    model.eval()
    return model if placement is not None else model.to(device)


def _contiguous_input(_module, args: tuple) -> tuple:
    """The LM head's input made contiguous. With `logits_to_keep` the model hands the head
    a slice of the hidden states; on a CPU a 16-bit linear layer on such a 3-D slice runs
    as a batched matmul that copies the head's weight once per batch row (measured: 216
    MiB for SmolLM2 at batch 4, it would be 4 GiB for Llama-3.1-8B). A contiguous copy of
    the slice costs batch x kept positions x hidden."""
    x = args[0]
    return (x.contiguous(), *args[1:]) if torch.is_tensor(x) else args


def load_token_classifier(
    name: str, num_labels: int, device: torch.device | None = None, seed: int = 0
):
    """An encoder with a fresh token-classification head (seeded, so every process builds
    the same head), frozen, in eval mode."""
    from transformers import AutoModelForTokenClassification
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the head is new by design: no "missing keys" report
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = AutoModelForTokenClassification.from_pretrained(
                resolve_model(name),
                num_labels=num_labels,
                dtype=torch.float32,
                use_kernels=False,  # see NO_HUB_KERNELS
            )
    finally:
        hf_logging.set_verbosity(verbosity)
    model.requires_grad_(False)
    model.eval()
    return model.to(device or torch.device("cpu"))


def meta_model(model_dir: str | Path, task: str = "generative"):
    """The model's architecture from its config.json on the meta device: every module
    with its shapes, no weights read, no memory used (compatibility checks)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForTokenClassification
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        config = AutoConfig.from_pretrained(str(model_dir))
        auto = AutoModelForCausalLM if task == "generative" else AutoModelForTokenClassification
        with torch.device("meta"):
            return auto.from_config(config)
    finally:
        hf_logging.set_verbosity(verbosity)
