"""Client-level differential privacy for the global adapter (DP-FedAvg, McMahan et al.,
ICLR 2018): each site's update is clipped to L2 norm C over the whole adapter, the
clipped updates are averaged with equal weights, and Gaussian noise of standard
deviation z·C/n is added to the average. One site's participation then changes the
released adapter by at most C/n, which the noise hides; the privacy spent, (ε, δ), is
tracked over rounds by Flower's RDP accountant (see federation/aggregator.py).

This is central DP: the server sees the clipped updates and adds the noise, so it must
be trusted; what it protects is everything released, the global adapter every round.
Equal weights are part of the guarantee: example-count weights would let one site move
the average by more than C/n.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from fedmedlora.federation.aggregation import State
from fedmedlora.federation.methods.robust import norm_clipped_mean, update_norms, updates


class PrivacySettings(BaseModel):
    """Client-level differential privacy of the global adapter (docs/privacy.md)."""

    model_config = ConfigDict(extra="forbid")

    noise_multiplier: float = Field(0.0, ge=0, description="z; 0 turns DP off")
    clip_norm: float = Field(1.0, gt=0, description="C: L2 bound of each site's update")
    target_delta: float = Field(1e-5, gt=0, lt=1, description="the δ that ε is reported at")
    max_epsilon: float | None = Field(
        None, gt=0, description="skip rounds whose release would spend more ε than this"
    )

    @property
    def enabled(self) -> bool:
        return self.noise_multiplier > 0


class PrivacyBudgetExhausted(RuntimeError):
    """Another release would spend more than the configured maximum ε."""


def noise_std(noise_multiplier: float, clip_norm: float, n: int) -> float:
    """σ of the Gaussian noise added to the average of n updates clipped to C: z·C/n."""
    if not (noise_multiplier > 0 and clip_norm > 0 and n >= 1):
        raise ValueError(
            f"need noise_multiplier > 0, clip_norm > 0, n >= 1; got "
            f"{noise_multiplier}, {clip_norm}, {n}"
        )
    return noise_multiplier * clip_norm / n


def dp_average(
    global_state: State,
    states: Sequence[State],
    *,
    clip_norm: float,
    noise_multiplier: float,
    generator: torch.Generator,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """global + (mean of the clipped updates) + N(0, σ²) per coordinate, σ = z·C/n.
    `info`: the update norms, how many were clipped, σ."""
    if not (clip_norm > 0 and math.isfinite(clip_norm)):
        raise ValueError(f"clip_norm must be positive and finite, got {clip_norm}")
    deltas = updates(global_state, states)
    mean, info = norm_clipped_mean(deltas, [1.0] * len(deltas), max_norm=clip_norm)
    sigma = noise_std(noise_multiplier, clip_norm, len(deltas))
    out: dict[str, torch.Tensor] = {}
    for key, g in global_state.items():
        noise = torch.randn(g.shape, generator=generator, dtype=torch.float64) * sigma
        out[key] = (g.to(torch.float64) + mean[key].to(g.device) + noise.to(g.device)).to(g.dtype)
    return out, {
        "noise_std": sigma,
        "clip_norm": clip_norm,
        "clipped": sum(f < 1.0 for f in info["clip_factors"]),
        "norms": update_norms(deltas),
    }
