"""LoRA through PEFT, and the adapter tensors that travel between sites and server.

Only adapter tensors ever leave a site; they are exchanged as float32 (Flower arrays go
through numpy, which has no bfloat16) under PEFT's own state-dict keys, so an
aggregated adapter saves and loads with plain PEFT.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field


class LoraSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rank: int = Field(16, ge=1)
    alpha: float = Field(32.0, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | str = "all-linear"

    def peft_config(self, task_type: str = "CAUSAL_LM"):
        from peft import LoraConfig

        # The token-classification head is trained in full (PEFT's modules_to_save), so it
        # must not also get a LoRA adapter.
        exclude = ["classifier"] if task_type == "TOKEN_CLS" else None
        return LoraConfig(
            exclude_modules=exclude,
            r=self.rank,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=self.target_modules,
            task_type=task_type,
            bias="none",
        )


def add_lora(model, settings: LoraSettings, task_type: str = "CAUSAL_LM", seed: int = 0):
    """Wrap `model` with a fresh adapter; the seed makes lora_A identical everywhere, and
    lora_B starts at zero, so the wrapped model equals the base model."""
    from peft import get_peft_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        wrapped = get_peft_model(model, settings.peft_config(task_type))
    return wrapped.eval()  # the training loop switches to train mode itself


@contextmanager
def merged_lora(model) -> Iterator[int]:
    """LoRA folded into the base weights while the block runs (generation: one matmul per
    layer instead of three), then the base weights copied back bit for bit: unmerging by
    subtraction would leave float rounding in them. Yields the number of layers merged;
    layers on a quantized base (no float weight) stay as they are. Costs a copy of the
    adapted base weights, kept on the CPU."""
    from peft.tuners.lora import LoraLayer

    saved: list[tuple[LoraLayer, dict[str, torch.Tensor]]] = []
    try:
        with torch.no_grad():
            for module in model.modules() if isinstance(model, torch.nn.Module) else ():
                if not isinstance(module, LoraLayer) or module.merged or module.disable_adapters:
                    continue
                base = module.get_base_layer()
                weight = getattr(base, "weight", None)
                if weight is None or not weight.dtype.is_floating_point:
                    continue
                params = dict(base.named_parameters(recurse=False))
                saved.append(
                    (module, {n: p.detach().to("cpu", copy=True) for n, p in params.items()})
                )
                module.merge()
        yield len(saved)
    finally:
        with torch.no_grad():
            for module, params in saved:
                for name, p in module.get_base_layer().named_parameters(recurse=False):
                    p.copy_(params[name])
                module.merged_adapters.clear()


def frozen_parameter(name: str) -> bool:
    """Whether the site must freeze this parameter under FFA-LoRA (federation/methods/ffa): every
    lora_A factor.

    Takes `model.named_parameters()` names, which carry the adapter name
    (`...q_proj.lora_A.default.weight`, `...embed_tokens.lora_embedding_A.default`), and
    also state-dict keys, for use as a `freeze(name)` predicate in the training loop.
    """
    return ".lora_A." in name or ".lora_embedding_A." in name or name.endswith(".lora_embedding_A")


def offset_base_weights(model, offsets: dict[str, torch.Tensor]) -> None:
    """Set each named frozen base weight (a `named_parameters()` name, e.g.
    `...q_proj.base_layer.weight`) to its pretrained value plus `offsets[name]`.

    The pretrained values are kept on first use, so that the server can send the whole
    offset every round (FedEx-LoRA's residual) and a site apply it any number of times.
    """
    params = dict(model.named_parameters())
    unknown = sorted(set(offsets) - set(params))[:3]
    if unknown:
        raise ValueError(f"no base weight named {unknown} in this model")
    pretrained = model.__dict__.setdefault("_pretrained_weights", {})
    with torch.no_grad():
        for name, offset in offsets.items():
            p = params[name]
            if p.requires_grad:
                raise ValueError(f"{name} is trained, not a frozen base weight")
            if not p.is_floating_point():
                raise ValueError(
                    f"{name} is packed by quantization and cannot take an offset; load the "
                    "base unquantized"
                )
            if tuple(offset.shape) != tuple(p.shape):
                raise ValueError(f"{name}: offset {tuple(offset.shape)} != {tuple(p.shape)}")
            base = pretrained.setdefault(name, p.detach().clone())
            p.copy_(base + offset.to(device=p.device, dtype=p.dtype))


BASE_RESIDUAL = "base_residual.safetensors"
"""FedEx-LoRA's offsets of the frozen base weights, saved inside its adapter folder
(federation/methods/fedex.py): without them the adapter is not the federated model."""


def read_base_residual(folder: str | Path) -> dict[str, torch.Tensor]:
    """The base-weight offsets saved in an adapter folder; {} for every method but FedEx."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(folder) / BASE_RESIDUAL
    if not path.is_file():
        return {}
    try:
        return dict(load_file(str(path)))
    except (OSError, SafetensorError) as exc:
        raise ValueError(f"{path}: not a readable safetensors file ({exc})") from None


def apply_base_residual(model, folder: str | Path) -> int:
    """Add an adapter folder's base residual, if it has one, to `model`'s frozen base
    weights (the model as PEFT loaded it); returns how many weights it changed."""
    residual = read_base_residual(folder)
    try:
        offset_base_weights(model, residual)
    except ValueError as exc:
        raise ValueError(f"{Path(folder) / BASE_RESIDUAL}: {exc}") from None
    return len(residual)


def adapter_state(model) -> dict[str, torch.Tensor]:
    """The trainable adapter tensors (and a task head, if any), detached float32 copies."""
    from peft import get_peft_model_state_dict

    return {
        k: v.detach().to("cpu", torch.float32).clone()
        for k, v in get_peft_model_state_dict(model).items()
    }


def load_adapter_state(model, state: dict[str, torch.Tensor]) -> None:
    """Load adapter tensors, refusing keys or shapes that do not belong to this model."""
    from peft import set_peft_model_state_dict

    own = adapter_state(model)
    unknown = sorted(set(state) - set(own))
    missing = sorted(set(own) - set(state))
    bad = [k for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
    if unknown or missing or bad:
        raise ValueError(
            f"adapter does not fit this model: {len(unknown)} unknown keys {unknown[:3]}, "
            f"{len(missing)} missing {missing[:3]}, shape mismatch {bad[:3]}"
        )
    result = set_peft_model_state_dict(model, state)
    if getattr(result, "unexpected_keys", None):
        raise ValueError(f"PEFT did not accept adapter keys {result.unexpected_keys[:3]}")


def save_adapter(
    model,
    state: dict[str, torch.Tensor],
    out_dir: str | Path,
    base_residual: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write `state` as a standard PEFT adapter folder (adapter_config.json +
    adapter_model.safetensors), loadable with `PeftModel.from_pretrained`; a FedEx-LoRA
    adapter's `base_residual` goes in the same folder, so that it travels with it."""
    from safetensors.torch import save_file

    from fedmedlora.model.registry import portable_name

    load_adapter_state(model, state)
    out = Path(out_dir)
    model.save_pretrained(out)
    if base_residual:
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in base_residual.items()}
        save_file(tensors, str(out / BASE_RESIDUAL))
    # PEFT records the folder the base model was loaded from (a cache path here); the
    # adapter names the model portably instead, so it loads on another machine.
    config_file = out / "adapter_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    if config.get("base_model_name_or_path"):
        config["base_model_name_or_path"] = portable_name(config["base_model_name_or_path"])
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")
    return out


def adapter_bytes(state: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


def _lora_layers() -> tuple[type, ...]:
    from transformers.pytorch_utils import Conv1D

    return (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d, Conv1D)


def unmatched_targets(model, target_modules: list[str] | str) -> list[str]:
    """The LoRA targets that name no layer of `model` LoRA can wrap (PEFT would say so
    only after the weights are loaded). `model` may live on the meta device."""
    if target_modules == "all-linear":
        return []
    names = [n for n, m in model.named_modules() if isinstance(m, _lora_layers())]
    if isinstance(target_modules, str):  # PEFT: a string is a regex over full names
        return [] if any(re.fullmatch(target_modules, n) for n in names) else [target_modules]
    return [t for t in target_modules if not any(n == t or n.endswith("." + t) for n in names)]


_LORA_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<ab>[AB])\.weight$")


def adapter_problems(adapter: Path, model) -> list[str]:
    """Why the PEFT adapter folder `adapter` cannot go onto `model` (meta device is
    enough): no config, no weights, targets the model lacks, shapes of another rank or
    model. Reads only adapter_config.json and the safetensors header."""
    try:
        config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return [f"not a PEFT adapter folder ({type(exc).__name__}: adapter_config.json)"]
    if not isinstance(config, dict) or config.get("peft_type", "LORA") != "LORA":
        return ["adapter_config.json describes no LoRA adapter"]
    problems = []
    targets = config.get("target_modules") or []
    missing = unmatched_targets(model, sorted(targets) if isinstance(targets, list) else targets)
    if missing:
        problems.append(f"target modules {missing} are not in this model")
    weights = adapter / "adapter_model.safetensors"
    if not weights.is_file():
        return [*problems, "no adapter weights (adapter_model.safetensors is missing)"]
    try:
        from safetensors import safe_open

        with safe_open(str(weights), "pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises its own error types for broken files
        return [*problems, f"{weights.name} is not a readable safetensors file ({exc})"]
    modules = dict(model.named_modules())
    rank = config.get("r")
    wrong: list[str] = []
    for key, shape in shapes.items():
        match = _LORA_KEY.match(key)
        if match is None:
            continue
        module = modules.get(match["module"])
        if module is None:
            wrong.append(f"{match['module']} (no such module)")
            continue
        n_in, n_out = getattr(module, "in_features", None), getattr(module, "out_features", None)
        want = (rank, n_in) if match["ab"] == "A" else (n_out, rank)
        if None not in want and shape != want:
            wrong.append(f"{key.removeprefix('base_model.model.')} {shape}, expected {want}")
    if wrong:
        problems.append(
            f"{len(wrong)} adapter tensor(s) do not fit this model (rank {rank}): "
            + "; ".join(wrong[:3])
        )
    return problems
