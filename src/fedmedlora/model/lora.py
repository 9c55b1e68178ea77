"""LoRA through PEFT, and the adapter tensors that travel between sites and server.

Only adapter tensors ever leave a site; they are exchanged as float32 (Flower arrays go
through numpy, which has no bfloat16) under PEFT's own state-dict keys, so an
aggregated adapter saves and loads with plain PEFT.
"""

from __future__ import annotations

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


def save_adapter(model, state: dict[str, torch.Tensor], out_dir: str | Path) -> Path:
    """Write `state` as a standard PEFT adapter folder (adapter_config.json +
    adapter_model.safetensors), loadable with `PeftModel.from_pretrained`."""
    load_adapter_state(model, state)
    out = Path(out_dir)
    model.save_pretrained(out)
    return out


def adapter_bytes(state: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())
