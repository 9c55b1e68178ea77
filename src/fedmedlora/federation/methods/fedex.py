"""FedEx-LoRA (Singhal et al., 2025, "Exact Aggregation for Federated and Efficient
Fine-Tuning of Foundation Models"): the exact average of the sites' models, through a
residual added to the frozen base weight.

Sites train A and B as under Fed-MedLoRA, and the server averages each factor. The
product of averages is not the average of products; FedEx-LoRA keeps the difference,
s·(Σ_k p_k B_k A_k − B̄·Ā), and adds it to each module's frozen weight. The next global
model W₀ + R + s·B̄·Ā is then exactly the weighted average of the sites' models, while
the trainable adapter keeps its rank r. The residual R (one dense tensor per module,
the base weight's shape) travels down every round, under the base weight's own
parameter name (`...q_proj.base_layer.weight`), which the site adds to its pretrained
weight (`model.lora.offset_base_weights`); sites send back only A and B.

The cost is the download: a dense (out × in) tensor per adapted module, e.g. all of
SmolLM2-135M's linear weights each round. The final adapter is saved as PEFT's, with
`base_residual.safetensors` in its folder: the global model is the base weights plus the
residual, with the adapter on top (`model.lora.apply_base_residual`, which `fedmedlora
extract` and `personalize` call; plain `PeftModel.from_pretrained` ignores the file).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch

from fedmedlora.federation.aggregation import State, head_rows_from_trainers, weighted_average
from fedmedlora.federation.methods.base import (
    Combined,
    Method,
    MethodSettings,
    Round,
    register,
)
from fedmedlora.federation.methods.lora_pairs import lora_scaling, split_lora
from fedmedlora.model.lora import save_adapter

RESIDUAL_SUFFIX = ".base_layer.weight"  # PEFT's name of a LoRA module's frozen weight


def residual_keys(state: State) -> dict[str, tuple[str, str]]:
    """{residual key: (A key, B key)} for every linear LoRA module of `state`."""
    out = {}
    for prefix, (a_key, b_key) in split_lora(state).pairs.items():
        if not a_key.endswith(".lora_A.weight"):
            raise ValueError(f"FedEx-LoRA handles linear LoRA modules only, not {a_key!r}")
        out[prefix + RESIDUAL_SUFFIX] = (a_key, b_key)
    return out


def fedex_aggregate(
    states: list[State], weights: list[float], residual: State, scaling: float
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(factor averages, new residuals): `residual` plus, per module,
    scaling·(Σ_k w_k B_k A_k − B̄·Ā), computed in float64. Weights must sum to 1."""
    averaged = weighted_average(states, weights)
    out = {}
    for key, (a_key, b_key) in residual_keys(states[0]).items():
        exact = sum(
            w * (s[b_key].double() @ s[a_key].double())
            for s, w in zip(states, weights, strict=True)
        )
        product = averaged[b_key].double() @ averaged[a_key].double()
        error = scaling * (exact - product)
        out[key] = (residual[key].double() + error).to(residual[key].dtype)
    return averaged, out


class FedExSettings(MethodSettings):
    method: Literal["fedex"] = "fedex"


@register
class FedEx(Method):
    name = "fedex"
    settings_model = FedExSettings
    summary = "factor averages plus their error added to the frozen weight (exact)"

    def downlink(self, full: State) -> dict[str, torch.Tensor]:
        """The adapter and a zero residual per module (the start: nothing to correct)."""
        zeros = {
            key: torch.zeros(full[b].shape[0], full[a].shape[1], dtype=full[a].dtype)
            for key, (a, b) in residual_keys(full).items()
        }
        return {**full, **zeros}

    def uplink(self, sent: State) -> dict[str, torch.Tensor]:
        return {k: v for k, v in sent.items() if not k.endswith(RESIDUAL_SUFFIX)}

    def full(self, sent: State) -> dict[str, torch.Tensor]:
        return self.uplink(sent)

    def combine(self, rnd: Round) -> Combined:
        adapter = self.uplink(rnd.current)
        scaling = lora_scaling(self.lora.alpha, self.lora.rank)
        averaged, residual = fedex_aggregate(rnd.states, rnd.weights, rnd.current, scaling)
        averaged = head_rows_from_trainers(adapter, rnd.states, rnd.weights, averaged)
        return Combined({**averaged, **residual})

    def save(self, model: Any, sent: State, out_dir: Path) -> None:
        residual = {k: v for k, v in sent.items() if k.endswith(RESIDUAL_SUFFIX)}
        save_adapter(model, self.full(sent), out_dir / "adapter", base_residual=residual)
