"""Fed-MedLoRA+: data-aware site weights for the adapter average.

Example counts say how much a site trained, not how good its adapter is for the
federation; Fed-MedLoRA+ weights each site by how well its adapter does on validation
data (a softmax over negative validation losses), optionally mixed with the size weights
so that no site with data is ever ignored entirely.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from fedmedlora.federation.aggregation import State, weighted_average


def plus_weights(
    val_losses: Sequence[float],
    num_examples: Sequence[float],
    temperature: float = 1.0,
    size_mix: float = 0.0,
) -> list[float]:
    """Site weights (1 - size_mix)·softmax(-loss / T) + size_mix·(n_k / Σ n), summing to 1.

    Lower validation loss gets more weight; T → ∞ tends to equal weights, T → 0 to all
    weight on the best site. Computed as exp((min_loss - loss_k) / T), so that no
    exponent is positive and huge losses or tiny temperatures cannot overflow. Counts
    must be non-negative; they must sum to more than zero only when size_mix > 0.
    """
    if not val_losses:
        raise ValueError("no sites to weight")
    if len(val_losses) != len(num_examples):
        raise ValueError(f"{len(val_losses)} losses but {len(num_examples)} example counts")
    losses = [float(v) for v in val_losses]
    counts = [float(n) for n in num_examples]
    if not all(math.isfinite(v) for v in losses):
        raise ValueError(f"validation losses must be finite, got {losses}")
    if not all(math.isfinite(n) and n >= 0 for n in counts):
        raise ValueError(f"example counts must be finite and non-negative, got {counts}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be finite and > 0, got {temperature}")
    if not (0.0 <= size_mix <= 1.0):
        raise ValueError(f"size_mix must be in [0, 1], got {size_mix}")
    best = min(losses)
    # (best - v) may overflow to -inf for absurd spreads; exp(-inf) = 0 is the right limit.
    exps = [math.exp((best - v) / temperature) for v in losses]
    z = math.fsum(exps)  # >= 1: the best site contributes exp(0)
    softmax = [e / z for e in exps]
    if size_mix == 0.0:
        return softmax
    total = math.fsum(counts)
    if total <= 0:
        raise ValueError(f"size_mix > 0 needs a positive example total, got {counts}")
    return [(1 - size_mix) * s + size_mix * n / total for s, n in zip(softmax, counts, strict=True)]


def plus_aggregate(
    states: Sequence[State],
    val_losses: Sequence[float],
    num_examples: Sequence[float],
    *,
    temperature: float = 1.0,
    size_mix: float = 0.0,
) -> dict[str, torch.Tensor]:
    """Fed-MedLoRA+ aggregation: `weighted_average` (A and B averaged separately, as in
    Fed-MedLoRA) with `plus_weights` instead of the example counts."""
    if len(states) != len(val_losses):
        raise ValueError(f"{len(states)} states but {len(val_losses)} validation losses")
    weights = plus_weights(val_losses, num_examples, temperature, size_mix)
    return weighted_average(states, weights)
