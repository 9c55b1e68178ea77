"""The FedProx site term (Li et al., MLSys 2020): the site adds (μ/2)·Σ‖w − w_g‖² to its
loss, which keeps its local steps near the global model it started from and so limits client drift
when sites' data differ. Only the trainable (adapter) tensors need the term.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch


def proximal_term(
    model_params: Mapping[str, torch.Tensor],
    global_params: Mapping[str, torch.Tensor],
    mu: float,
) -> torch.Tensor:
    """(mu/2)·Σ_key ‖w − w_g‖², a scalar differentiable w.r.t. `model_params` (its
    gradient is mu·(w − w_g)); `global_params` are treated as constants.

    Both mappings must have the same keys and shapes; the caller maps the model's
    parameter names to the adapter's keys (PEFT's named_parameters include the adapter
    name, e.g. `lora_A.default.weight`, which get_peft_model_state_dict strips).
    """
    if not (math.isfinite(mu) and mu >= 0):
        raise ValueError(f"mu must be finite and >= 0, got {mu}")
    if not model_params:
        raise ValueError("no parameters for the proximal term")
    if set(model_params) != set(global_params):
        diff = sorted(set(model_params) ^ set(global_params))[:3]
        raise ValueError(f"model and global parameters have different keys (e.g. {diff})")
    squares = []
    for key, w in model_params.items():
        g = global_params[key]
        if g.shape != w.shape:
            raise ValueError(f"{key}: global shape {tuple(g.shape)} != {tuple(w.shape)}")
        squares.append((w - g.detach().to(device=w.device, dtype=w.dtype)).square().sum())
    return 0.5 * mu * torch.stack(squares).sum()
